"""The grounding guard: does the model's answer say only what its cited passages say?

Checks, all on the finished answer:
- it cites at least one passage, and only passages that exist;
- every sentence is supported: most of its keywords (jieba words for Chinese, stemmed words
  for English, as the keyword search reads them) stand together in one or two neighbouring
  sentences of a cited passage;
- every number and every name (a capitalised word inside a sentence, or a code-like word) is
  in the cited passages;
- it is written in the question's language.

Word overlap cannot see that "the primary is paged" contradicts "the secondary is paged": the
guard is a filter for the wrong answers a small model writes most often (invented numbers,
names and sentences, wrong language, no citations), not a proof.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from bot.evidence import sentences
from bot.prompt import CITATION, language_of
from rag.search.keyword import tokenize
from rag.search.retriever import Passage

SUPPORT_MIN = 0.7  # share of a sentence's keywords found in one passage window
MIN_KEYWORDS = 3  # shorter sentences ("Yes.", "See [1].") are not judged on their own

_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
_NAME = re.compile(r"(?<![.!?。！？:：]\s)(?<!^)\b[A-Z][a-zA-Z0-9]*(?:[-_][A-Za-z0-9]+)*\b|\b[a-z]+(?:_[a-z0-9]+)+\b|--[a-z][a-z0-9-]+")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    problems: list[str] = field(default_factory=list)  # why not, in words a reader understands

    @property
    def reason(self) -> str:
        return "; ".join(self.problems) if self.problems else "every sentence, number and name is in the cited passages"


def check_answer(answer: str, question: str, passages: Sequence[Passage]) -> Verdict:
    problems: list[str] = []
    cited_all = [int(m.group(1)) for m in CITATION.finditer(answer)]
    cited = sorted({n for n in cited_all if 1 <= n <= len(passages)})
    wrong = sorted({n for n in cited_all if not 1 <= n <= len(passages)})
    text = CITATION.sub(" ", answer).strip()
    if not text:
        return Verdict(False, ["the answer is empty"])
    if wrong:
        problems.append(f"it cites {', '.join(f'[{n}]' for n in wrong)}, which is not a source")
    if not cited:
        problems.append("it cites no source")
    if language_of(text) != language_of(question):
        problems.append("it is not in the language of the question")
    sources = [passages[n - 1] for n in cited] or list(passages)
    source_text = "\n".join(f"{p.title}\n{p.heading}\n{p.text}" for p in sources)
    windows = _windows(sources)
    for sentence in sentences(text):
        terms = set(tokenize(sentence))
        if len(terms) >= MIN_KEYWORDS and max((len(terms & w) / len(terms) for w in windows), default=0.0) < SUPPORT_MIN:
            problems.append(f"“{_short(sentence)}” is not in the cited passages")
    flat = _flat(source_text)
    missing_numbers = sorted({n for n in _NUMBER.findall(text) if _flat(n) not in flat})
    if missing_numbers:
        problems.append(f"the number(s) {', '.join(missing_numbers[:5])} are not in the cited passages")
    missing_names = sorted({name for name in _NAME.findall(text) if _flat(name) not in flat})
    if missing_names:
        problems.append(f"the name(s) {', '.join(missing_names[:5])} are not in the cited passages")
    return Verdict(not problems, problems)


def _windows(passages: Sequence[Passage]) -> list[set[str]]:
    """The keywords of each sentence of the passages together with the next one (and the title and heading)."""
    windows = []
    for p in passages:
        context = set(tokenize(f"{p.title} {p.heading}"))
        parts = [set(tokenize(s)) for s in sentences(p.text)] or [set()]
        for k, part in enumerate(parts):
            windows.append(part | context | (parts[k + 1] if k + 1 < len(parts) else set()))
    return windows


def _flat(text: str) -> str:
    return re.sub(r"\s+", "", text).casefold()


def _short(sentence: str, limit: int = 80) -> str:
    return sentence if len(sentence) <= limit else sentence[: limit - 1] + "…"
