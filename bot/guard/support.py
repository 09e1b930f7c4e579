"""Every sentence of the answer is supported: a cited passage says it, in its words or in the
other language's, or by meaning.

A sentence is supported by a window of a cited passage (one of its sentences with the next one,
under the passage's title and heading) that holds ``SUPPORT_MIN`` of the sentence's words, as
themselves or as their translation (CC-CEDICT glosses; numbers by value; ``SUPPORT_MIN_ACROSS``
for a passage in the other language, where the dictionary's glosses miss synonyms). A paraphrase, or a
sentence in the other language whose words the dictionary does not bridge, is supported when it
holds ``MEANING_WORDS`` of them and the embedder finds it close in meaning to the window's
sentences (cosine ``MEANING_MIN``, each language's mean taken out as retrieval does). Across
languages the dictionary misses synonyms (确认 is "confirm", the passage says "acknowledge") and
the embedder rates a sentence and its translation low once each language's mean is taken out
(multilingual-e5-small: 0.29-0.62 on the rejected answers, under MEANING_MIN), so a sentence is also supported by a window in the other
language that holds every word both languages write alike (its amounts; SEV1, main, CI in a
Chinese sentence; names in an English one: they stand in for the meaning the embedder cannot
compare), ``MEANING_WORDS`` of its words (one Chinese character alone not counted) and each of
those anchors in a clause negated as the sentence's is. Short
sentences ("Yes.", "See [1].") and refusals are not judged on their own, and a sentence that
announces a list or a command ("Three strategies:") is judged together with what follows it. An
answer of nothing but such short sentences ("No, no. No.") says nothing to support: refused.
"""

from __future__ import annotations

import re

import numpy as np

from bot.guard.answer import Answer, Claim, Problem
from bot.guard.names import names_in as _names
from bot.guard.reading import PassageReading, Said, clauses, covered, key, negated, words
from bot.prompt import language_of
from rag.search.keyword import _normalise

SUPPORT_MIN = 0.7  # share of a sentence's words found in one window: supported by words alone
SUPPORT_MIN_ACROSS = 0.6  # the same for a window in the other language (the dictionary misses synonyms: 事故 is "accident", not "incident")
MEANING_WORDS = 0.4  # share of its words that must be there for meaning to decide
MEANING_MIN = 0.75  # cosine similarity (language means taken out) of the sentence to the window's sentences
MIN_WORDS = 3  # shorter sentences are not judged on their own
SOMETHING_WORDS = 1  # an answer needs a sentence with a word of its own (or a number or a name): "The secondary." has one, "No, no." none
WINDOWS_BY_MEANING = 3  # the windows holding most of a sentence's words, compared by meaning
_ANNOUNCES = (":", "：")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_SIMPLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_NAMED = re.compile(r"[A-Z0-9]{2,}|[A-Z][a-z]+[A-Z]|`|--[a-z]")  # "SEV1.", "PagerDuty.", "`--tp 2`": short, but something  # a sentence that announces a list or a command is judged with what follows it


def check(answer: Answer) -> list[Problem]:
    windows = [(p, k, found) for p in answer.sources for k, found in p.windows()]
    problems = []
    for k, claim in enumerate(answer.claims):
        if not claim.said or len(claim.words) < MIN_WORDS:
            continue
        said = claim.words
        if claim.said.endswith(_ANNOUNCES) and k + 1 < len(answer.claims):
            said = said + answer.claims[k + 1].words  # "Three strategies:" says what the list after it says
        ranked = sorted(((covered(said, found), p, j, found) for p, j, found in windows), key=lambda x: -x[0])
        language = language_of(claim.said)
        if any(share >= (SUPPORT_MIN if p.language == language else SUPPORT_MIN_ACROSS) for share, p, _, _ in ranked):
            continue
        if any(p.language != language and _anchored(claim, said, p, j, found) for share, p, j, found in ranked):
            continue
        closest = [(p, j) for share, p, j, _ in ranked[:WINDOWS_BY_MEANING] if share >= MEANING_WORDS]
        if answer.meaning is not None and _close(answer, claim, closest):
            continue
        problems.append(Problem("support", "is not in the cited passages", claim.text, claim.index))
    if not answer.refusal and not any(len(c.words) >= SOMETHING_WORDS or c.quantities or _NAMED.search(c.said) for c in answer.claims):
        problems.append(Problem("support", "it says nothing the passages could support (only “yes”, “no” or a few words)"))
    return problems


def _anchored(claim: Claim, said: list[str], passage: PassageReading, k: int, found: Said) -> bool:
    """Across languages: the window holds every word the sentence writes as both languages write
    it (its amounts with a unit and, in a Chinese sentence, its Latin words: SEV1, main, CI, incident
    commander; in an English one, its names), MEANING_WORDS of all its words, and each
    anchor in a clause negated as the sentence's clause holding it is."""
    chinese = language_of(claim.said) == "zh"
    anchors = [key(q) for q in claim.quantities if q.unit]  # a bare count ("first", "two") is no anchor: a list's "1." has it
    if chinese:
        anchors += [w for w in said if not _HAN.search(w) and not w[:1].isdigit()]
    else:
        anchors += [_normalise(n.lower()) for n in _names(claim.said) if _SIMPLE_NAME.match(n)]
    # one Chinese character is a word of many senses: its glosses match too much to count here ("内", "发")
    held = [w for w in said if found.has(w) and not (len(w) == 1 and _HAN.match(w))]
    if not anchors or not all(found.has(a) for a in anchors) or len(held) < MEANING_WORDS * len(said):
        return False
    # A clause of the sentence holding an anchor says it as the window's clause holding it does: both negated or neither
    # ("5 分钟内不用确认" is not "Acknowledge a page within 5 minutes").
    window = [c for j in (k, k + 1) if j < len(passage.sentences) for c in passage.sentences[j].clauses]
    for clause in clauses(claim.said):
        its = set(words(clause)) & set(anchors)
        if its and not any(c.negated == negated(clause) for c in window if any(c.said.has(a) for a in its)):
            return False
    return True


def _close(answer: Answer, claim: Claim, windows: list[tuple[PassageReading, int]]) -> bool:
    if not windows:
        return False
    texts = list(dict.fromkeys(p.sentences[j].text for p, k in windows for j in (k, k + 1) if j < len(p.sentences)))
    assert answer.meaning is not None
    vectors = answer.meaning([claim.said, *texts])
    return float(np.max(vectors[1:] @ vectors[0])) >= MEANING_MIN
