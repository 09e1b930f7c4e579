"""Evidence: for each retrieved passage, the sentence (or two) that best answers the question.

Ready right after retrieval, so every front end can show it before the model writes a word,
and the extractive answer is built from it. A sentence scores by meaning (the query
encoder's cosine similarity between the question and the sentence) and by words (the share of
the question's keywords the sentence contains, jieba-segmented and stemmed like the keyword
search), plus a little of its passage's retrieval score. Sentences are cut at Chinese and
Latin sentence ends, semicolons, and line breaks (list items are sentences).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bot.prompt import language_of
from rag.search.keyword import tokenize
from rag.search.retriever import Passage

# The weights of a sentence's score: meaning, words, and the passage it comes from.
SIMILARITY_WEIGHT = 0.5
COVERAGE_WEIGHT = 0.4
PASSAGE_WEIGHT = 0.1
SHORT_QUOTE = 40  # characters: a quote shorter than this (or ending in ':') takes the next sentence even past MAX_QUOTE
MAX_QUOTE = 400  # characters shown of one quote
REPEATED = 0.6  # a sentence whose words are mostly in the previous answer was already said
MAX_EMBEDDED = 8  # sentences compared with the question by meaning, at most, of each language (embedding is the slow part)

# After 。！？；!?; (and a closing quote or bracket), or after . followed by space and a capital, digit or CJK.
_SENTENCE_END = re.compile(r"(?<=[。！？；!?;])[”’」』)）\]]*\s*|(?<=[^0-9]\.)[”’)\]]*\s+(?=[A-Z0-9\"“(\[\u3400-\u9fff])")
_LIST_MARK = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)、]|#{1,6})\s+")
_MARKDOWN = re.compile(r"\*\*|__|`")
_FENCE = re.compile(r"(```[\s\S]*?(?:```|$))")  # fenced code blocks (an unclosed one runs to the end of the chunk)
_CJK_END = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]$")
_CJK_START = re.compile(r"^[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]")
_COLONS = (":", "：")

EXTRACTIVE_LEAD = "Here is what the documents say:"
EXTRACTIVE_LEAD_ZH = "知识库文档中的相关内容："

Similarity = Callable[[str, Sequence[str]], Sequence[float]]  # cosine similarity of the question to each text


@dataclass(frozen=True)
class Evidence:
    n: int  # the passage's number (as the answer cites it), from 1
    quote: str
    score: float


def sentences(text: str) -> list[str]:
    """The sentences of a passage, cut at Chinese and Latin sentence ends; a heading or list item
    starts a new one, a line wrapped inside a paragraph is joined again, and a code block is one
    "sentence" (its lines joined), not cut."""
    return [sentence for paragraph in paragraphs(text) for sentence in paragraph]


def paragraphs(text: str) -> list[list[str]]:
    """The sentences of a passage by paragraph (a list item and a code block are paragraphs of their own)."""
    out: list[list[str]] = []
    for segment, code in _segments(text):
        parts = [segment] if code else [part.strip() for part in _SENTENCE_END.split(segment) if part and part.strip()]
        if parts:
            out.append(parts)
    return out


def _segments(text: str) -> list[tuple[str, bool]]:
    """Paragraphs, list items and code blocks, each with whether it is code."""
    segments: list[tuple[str, bool]] = []
    for block in _FENCE.split(text):
        if block.startswith("```"):
            lines = [line.strip() for line in block.strip("`").splitlines()[1:] if line.strip()]
            if lines:
                segments.append((" ".join(lines), True))
            continue
        segments.extend((segment, False) for segment in _prose(block))
    return segments


def _prose(text: str) -> list[str]:
    segments: list[str] = []
    joinable = False  # whether the next plain line continues the last segment
    for raw in text.splitlines():
        starts_item = bool(_LIST_MARK.match(raw))
        line = _MARKDOWN.sub("", _LIST_MARK.sub("", raw)).strip()
        if not line or set(line) <= set("|-: ") or raw.lstrip().startswith("#"):
            joinable = False  # a blank line or a table rule ends the paragraph; a heading is no answer (the passage names it)
            continue
        if joinable and not starts_item and segments:
            segments[-1] = joined(segments[-1], line)
        else:
            segments.append(line)
        joinable = not line.endswith(("。", "！", "？", ":", "："))
    return segments


def coverage(question_terms: set[str], text: str) -> float:
    """The share of the question's keywords found in ``text``."""
    if not question_terms:
        return 0.0
    return len(question_terms & set(tokenize(text))) / len(question_terms)


def pick_evidence(
    question: str, passages: Sequence[Passage], similarity: Similarity | None, *, previous: str = "", already_said: str = ""
) -> list[Evidence]:
    """One quote per passage (its best sentence and the next one), best first.
    For a follow-up, ``previous`` is the question before it (its words count less than the
    follow-up's own) and sentences ``already_said`` (in the previous answer) count half."""
    terms = set(tokenize(question))
    earlier = set(tokenize(previous)) - terms
    candidates: list[tuple[int, list[str], int]] = []  # (passage number, its sentences, index of one)
    for n, passage in enumerate(passages, start=1):
        parts = sentences(passage.text)
        candidates.extend((n, parts, k) for k in range(len(parts)))
    if not candidates:
        return []
    texts = [parts[k] for _, parts, k in candidates]
    words = [coverage(terms, t) if not earlier else 0.7 * coverage(terms, t) + 0.3 * coverage(earlier, t) for t in texts]
    meaning = np.zeros(len(texts), dtype=np.float32)
    if similarity is not None:
        asked = f"{previous}\n{question}" if previous else question
        chosen = _worth_embedding(question, passages, candidates, words)
        meaning[chosen] = np.asarray(similarity(asked, [texts[i] for i in chosen]), dtype=np.float32)
        spread = meaning[chosen]
        if len(chosen) > 1 and float(spread.max() - spread.min()) > 1e-6:
            # Spread over 0-1 for this question: embedders differ in the band their cosines use (e5's is narrow and high).
            meaning[chosen] = (spread - spread.min()) / (spread.max() - spread.min())
    best: dict[int, Evidence] = {}
    for (n, parts, k), text, cosine, share in zip(candidates, texts, meaning, words, strict=True):
        score = SIMILARITY_WEIGHT * float(cosine) + COVERAGE_WEIGHT * share + PASSAGE_WEIGHT * passages[n - 1].score
        if already_said and coverage(set(tokenize(text)), already_said) >= REPEATED:
            score *= 0.5
        if n not in best or score > best[n].score:
            best[n] = Evidence(n, _quote(parts, k), round(score, 4))
    return sorted(best.values(), key=lambda e: -e.score)


def _worth_embedding(question: str, passages: Sequence[Passage], candidates: list[tuple[int, list[str], int]], words: list[float]) -> list[int]:
    """The sentences compared by meaning: of the passages in the question's language, the
    MAX_EMBEDDED that share the most words with it; of passages in another language (which share
    none), the first MAX_EMBEDDED, best passage first."""
    language = language_of(question)
    other = {n for n, p in enumerate(passages, start=1) if language_of(p.text) != language}
    same = sorted((i for i, c in enumerate(candidates) if c[0] not in other), key=lambda i: (-words[i], i))
    foreign = [i for i, c in enumerate(candidates) if c[0] in other]
    return sorted(same[:MAX_EMBEDDED] + foreign[:MAX_EMBEDDED])


def joined(text: str, more: str) -> str:
    """``more`` after ``text``: with a space, but none next to Chinese."""
    glue = "" if not text or _CJK_END.search(text) or _CJK_START.match(more) else " "
    return f"{text}{glue}{more}"


def _quote(parts: list[str], k: int) -> str:
    """The best sentence and the one after it in the passage (the answer often follows the
    sentence that matches the question: a list, a value, a command), when both fit MAX_QUOTE
    (a short one, or one ending in a colon, takes the next all the same). A quote that announces
    what follows (ends in a colon: a list's items) goes on with what follows while it fits."""
    quote, end = parts[k], k + 1
    announced = quote.endswith(_COLONS)
    if end < len(parts) and (len(quote) < SHORT_QUOTE or announced or len(quote) + 1 + len(parts[end]) <= MAX_QUOTE):
        quote, end = joined(quote, parts[end]), end + 1
        announced = announced or quote.endswith(_COLONS)
        while announced and end < len(parts) and len(quote) + 1 + len(parts[end]) <= MAX_QUOTE:
            quote, end = joined(quote, parts[end]), end + 1
    return quote if len(quote) <= MAX_QUOTE else quote[: MAX_QUOTE - 1] + "…"


def answer_quotes(evidence: Sequence[Evidence], close: float = 0.9) -> list[Evidence]:
    """The quotes an extractive answer gives: the best, the next when it scores nearly as well,
    and the first passage's (retrieval's best) when neither is from it."""
    if not evidence:
        return []
    best = evidence[0]
    chosen = [best, *(e for e in evidence[1:2] if e.score >= close * best.score)]
    if all(e.n != 1 for e in chosen):
        chosen += [e for e in evidence if e.n == 1]
    return chosen


def extractive_answer(question: str, evidence: Sequence[Evidence], passages: Sequence[Passage]) -> str:
    """The answer built from the evidence alone: each quote with its source and number, framed in the question's language."""
    chinese = language_of(question) == "zh"
    lines = []
    for e in answer_quotes(evidence):
        source = passages[e.n - 1].title or passages[e.n - 1].path
        lines.append(f"{source} [{e.n}]：“{e.quote}”" if chinese else f"{source} [{e.n}]: “{e.quote}”")
    lead = EXTRACTIVE_LEAD_ZH if chinese else EXTRACTIVE_LEAD
    return lead + "\n\n" + "\n\n".join(lines)


def shorten(quote: str, limit: int = 200) -> str:
    return quote if len(quote) <= limit else quote[: limit - 1] + "…"


def evidence_preview(evidence: Sequence[Evidence], passages: Sequence[Passage]) -> str:
    """What a chat message shows while the answer is written: the best quote and its source."""
    if not evidence:
        return ""
    best = evidence[0]
    source = passages[best.n - 1].title or passages[best.n - 1].path
    return f"📄 {source} [{best.n}]: “{shorten(best.quote)}”\n\n"
