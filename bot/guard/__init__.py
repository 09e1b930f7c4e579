"""The grounding guard: does the model's answer say only what its cited passages say?

Each check is a small module that reads the answer (bot.guard.answer) and returns the problems
it finds, each with the span it failed on and why, in the words the user-facing reason and
`teambot eval` both print:

- citations: it cites a passage, and only passages that exist (a refusal may cite none);
- language: it is written in the question's language;
- support: every sentence is said by a window of a cited passage, in its words, in the other
  language's (CC-CEDICT), or by meaning (the embedder, each language's mean taken out); across
  languages also by a window holding every word both languages write alike (amounts, SEV1, names);
- numbers: every number is in the cited passages as the same quantity (600 yuan = 600 元);
- names: every name is there, or its translation (Shanghai = 上海);
- bindings: every number stands in the passage clause of the words it is bound to in the
  sentence (not the escalation time given as the acknowledgement time);
- tables: a number taken from a markdown table stands in the row the sentence names (its model,
  its "batch 1"), not in another row;
- assignments: a setting written ``name=value`` (or ``--name value``) is set to that value in the
  passages, not named there with the value given to something else.

A refusal ("the documents don't say ...") needs no support of its own and is kept as a refusal;
whatever else it says is checked like any sentence.

The guard is a filter for the wrong answers models write (invented numbers, names and
sentences, values put to the wrong thing, the wrong language, no citations), not a proof: word
overlap and sentence similarity cannot see every contradiction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.guard import assignments, bindings, citations, language, names, numbers, support, tables
from bot.guard.answer import Answer, Meaning, Problem, read_answer, without
from bot.guard.refusal import says_it_does_not_know
from bot.prompt import cited_numbers, language_of
from rag.search.retriever import Passage

CHECKS = (citations, language, support, numbers, names, bindings, tables, assignments)
LEFT_OUT = "(Left out: {n} sentence(s) the sources do not support.)"
LEFT_OUT_ZH = "（已略去 {n} 句来源中没有依据的内容。）"


@dataclass(frozen=True)
class Verdict:
    failures: tuple[Problem, ...] = ()
    refusal: bool = False  # the answer says the documents do not answer the question
    kept: str | None = None  # shown instead of the answer as written: it without the sentences that failed

    @property
    def ok(self) -> bool:
        """Whether the answer may be shown: as written, or (``kept``) without the sentences that failed."""
        return not self.failures or self.kept is not None

    @property
    def problems(self) -> list[str]:
        """Why not, in words a reader understands."""
        return [str(p) for p in self.failures]

    @property
    def reason(self) -> str:
        if self.kept is not None and self.refusal:
            return f"it says the documents do not answer the question; left out: {'; '.join(self.problems)}"
        if self.kept is not None:
            return f"shown without what the cited passages do not support: {'; '.join(self.problems)}"
        if self.failures:
            return "; ".join(self.problems)
        if self.refusal:
            return "it says the documents do not answer the question, and claims nothing they do not say"
        return "every sentence, number and name is in the cited passages"


def check_answer(answer: str, question: str, passages: Sequence[Passage], meaning: Meaning | None = None) -> Verdict:
    """The guard's verdict on ``answer`` to ``question``, whose [n] cite ``passages`` (numbered from 1).
    With ``meaning`` (sentence vectors), a sentence can also be supported by meaning."""
    read = read_answer(answer, question, passages, meaning)
    if not read.claims:
        return Verdict((Problem("support", "the answer is empty"),))
    failures = tuple(p for check in CHECKS for p in check.check(read))
    kept = _refusal_kept(read, failures) if read.refusal else _trimmed(read, failures)
    return Verdict(failures, read.refusal, kept)


def _trimmed(read: Answer, failures: tuple[Problem, ...]) -> str | None:
    """Less than all or nothing: an answer whose only fault is a sentence its passages do not
    support (no wrong number, name, binding or citation anywhere) is shown without it, with a note,
    when what stays is most of the answer and begins as the answer began."""
    if not failures or any(p.check != "support" or p.claim is None for p in failures):
        return None
    dropped = {p.claim for p in failures}
    judged = [c for c in read.claims if len(c.words) >= support.MIN_WORDS]
    kept = [c for c in judged if c.index not in dropped]
    if not judged or len(kept) <= len(judged) - len(kept) or judged[0].index in dropped:
        return None  # most of it, or its first claim, is what failed: quotes say more than what is left
    chinese = language_of(read.question) == "zh"
    text = without(read, dropped)
    if not cited_numbers(text, len(read.passages)):  # the answer cited once, at the end of what is left out: the rest keeps it
        marks = "".join(f"[{n}]" for n in cited_numbers(read.text, len(read.passages)))
        text = f"{text.rstrip()}{'' if chinese else ' '}{marks}"
    return f"{text}\n\n{(LEFT_OUT_ZH if chinese else LEFT_OUT).format(n=len(dropped))}"


def _refusal_kept(read: Answer, failures: tuple[Problem, ...]) -> str | None:
    """A refusal stays a refusal: when only sentences besides its refusal failed, it is shown without them."""
    if not failures or any(p.claim is None for p in failures):
        return None
    dropped = {p.claim for p in failures if p.claim is not None}
    if any(c.index in dropped and c.refusal for c in read.claims):
        return None  # what failed is in the refusal's own sentence (after its "but")
    kept = without(read, dropped)
    return kept if says_it_does_not_know(kept) else None


def warm_up() -> None:
    """Loads what the checks read (CC-CEDICT, jieba's tagger) now, not at the first answer (about 2 s)."""
    check_answer("上海 Shanghai 600 元 [1].", "warm up", [Passage("", "", "", "", "", "上海 600 元。", 0.0, 0.0, 0.0, "")])
