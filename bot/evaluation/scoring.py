"""How `teambot eval` scores answers: pure functions from what happened to each question to the
numbers of the report.

- Retrieval (items with expect_sources): the rank of the first passage from an expected file;
  hit@1, hit@k (k = the passages the bot retrieves, rag.top_k) and MRR (1/rank, 0 for a miss).
- Refusal (every item; positive = refused): precision, recall and F1. A question is refused
  when nothing passed the relevance bar, or the answer says the documents do not answer it
  (bot.guard.refusal: its first sentence refuses).
- Facts (items with expect_facts): the final answer contains them (``facts: all`` every one,
  ``any`` one), compared case-, width- and space-insensitively with citation marks removed.
- Citations: of the passages an answer cites, the share that contain an expected fact
  (citation precision); and the share of answers that cite at least one passage.
- Language: the share of answers written in the question's language.
- Guard: the share of the model's answers the grounding guard accepted, and how many it
  rejected were shown all the same (only ``bot.answer_mode = "generative"`` shows them).
- Latency: p50 / p90 of retrieval, the first visible text, and the whole answer.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.evaluation.questions import EvalItem
from bot.guard.refusal import says_it_does_not_know
from bot.prompt import language_of

_CITATION = re.compile(r"\[\d{1,3}\]")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """For fact matching: NFKC (full-width -> half-width), case-folded, citation marks and all white space removed."""
    return _SPACE.sub("", _CITATION.sub(" ", unicodedata.normalize("NFKC", text)).casefold())


def contains(text: str, fact: str) -> bool:
    return normalise(fact) in normalise(text)


def has_facts(text: str, facts: Sequence[str], mode: str) -> bool:
    found = [contains(text, f) for f in facts]
    return all(found) if mode == "all" else any(found)


def same_path(found: str, expected: str) -> bool:
    def norm(p: str) -> str:
        return p.replace("\\", "/").removeprefix("./").strip("/")

    return norm(found) == norm(expected)


@dataclass
class ItemResult:
    """What happened to one question."""

    item: EvalItem
    paths: list[str] = field(default_factory=list)  # the retrieved passages' files, best first
    texts: list[str] = field(default_factory=list)  # and their text
    top_score: float = 0.0  # the best passage's score before the relevance bar (for calibration)
    refused: bool = False
    answer: str | None = None  # None: retrieval only
    cited: list[int] = field(default_factory=list)
    mode: str = ""  # which answer mode produced the answer (generative, extractive, ...), when the core says
    guard_ok: bool | None = None  # the grounding guard's verdict, when the core has one
    problems: list[str] = field(default_factory=list)  # why the guard rejected the model's text
    generated: str = ""  # what the model wrote (the answer itself in generative mode; replaced in auto mode when rejected)
    timings_ms: dict[str, float] = field(default_factory=dict)  # retrieve, first_text, total
    deltas: int = 0  # streamed pieces (about one token each on llama.cpp and lmdeploy)
    error: str = ""

    @property
    def rank(self) -> int | None:
        """1-based position of the first passage from an expected file; None if none was retrieved."""
        for n, path in enumerate(self.paths, start=1):
            if any(same_path(path, e) for e in self.item.expect_sources):
                return n
        return None

    @property
    def fact_ok(self) -> bool | None:
        if not self.item.expect_facts or self.answer is None:
            return None
        return not self.refused and has_facts(self.answer, self.item.expect_facts, self.item.facts)

    @property
    def model_fact_ok(self) -> bool | None:
        """Whether the model's own text had the facts (what `generative` mode would have shown); a question the
        model was never asked (nothing relevant found, or extractive mode) counts as a miss."""
        if not self.item.expect_facts or self.answer is None:
            return None
        return bool(self.generated) and not says_it_does_not_know(self.generated) and has_facts(self.generated, self.item.expect_facts, self.item.facts)

    @property
    def cited_with_fact(self) -> tuple[int, int]:
        """(cited passages that contain an expected fact, cited passages)."""
        if not self.item.expect_facts or self.answer is None or self.refused:
            return 0, 0
        cited = [n for n in self.cited if 1 <= n <= len(self.texts)]
        good = sum(any(contains(self.texts[n - 1], f) for f in self.item.expect_facts) for n in cited)
        return good, len(cited)

    @property
    def language_ok(self) -> bool | None:
        if self.answer is None or self.refused or not self.answer.strip():
            return None
        return language_of(self.answer) == self.item.language

    def to_json(self) -> dict[str, Any]:
        good, cited = self.cited_with_fact
        return {
            "id": self.item.id, "kind": self.item.kind, "language": self.item.language, "question": self.item.question,
            "refuse_expected": self.item.refuse, "refused": self.refused, "rank": self.rank, "sources": self.paths,
            "top_score": round(self.top_score, 4), "answer": self.answer, "cited": self.cited, "fact_ok": self.fact_ok,
            "cited_with_fact": good, "cited_passages": cited, "language_ok": self.language_ok, "mode": self.mode,
            "guard_ok": self.guard_ok, "generated": self.generated, "model_fact_ok": self.model_fact_ok,
            "timings_ms": self.timings_ms, "error": self.error,
        }  # fmt: skip


@dataclass(frozen=True)
class Refusals:
    true_positive: int
    false_positive: int
    false_negative: int

    @property
    def precision(self) -> float | None:
        predicted = self.true_positive + self.false_positive
        return self.true_positive / predicted if predicted else None

    @property
    def recall(self) -> float | None:
        actual = self.true_positive + self.false_negative
        return self.true_positive / actual if actual else None

    @property
    def f1(self) -> float | None:
        """2TP / (2TP + FP + FN): 0 when nothing is refused right, undefined when there is nothing to refuse or refused."""
        denominator = 2 * self.true_positive + self.false_positive + self.false_negative
        return 2 * self.true_positive / denominator if denominator else None


def refusals(results: Iterable[ItemResult], refused: Callable[[ItemResult], bool] = lambda r: r.refused) -> Refusals:
    tp = fp = fn = 0
    for r in results:
        predicted = refused(r)
        tp += predicted and r.item.refuse
        fp += predicted and not r.item.refuse
        fn += not predicted and r.item.refuse
    return Refusals(tp, fp, fn)


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))], 1)


def _share(flags: Iterable[bool | None]) -> float | None:
    known = [f for f in flags if f is not None]
    return sum(known) / len(known) if known else None


@dataclass(frozen=True)
class Summary:
    questions: int
    with_sources: int
    hit_at_1: float | None
    hit_at_k: float | None
    mrr: float | None
    refusal: Refusals
    fact_accuracy: float | None
    citation_precision: float | None
    cited_share: float | None
    guard_accepted: float | None
    language_match: float | None
    latency_ms: dict[str, dict[str, float | None]]
    errors: int
    k: int
    rejected_shown: int = 0  # answers the guard rejected that were shown all the same (generative mode)
    model_fact_accuracy: float | None = None  # the facts in the model's own text: what `generative` mode would give

    def metric(self, name: str) -> float | None:
        """A number by the name the report and the --min-* floors use."""
        values = {
            "hit_at_1": self.hit_at_1, "hit_at_k": self.hit_at_k, "mrr": self.mrr, "refusal_precision": self.refusal.precision,
            "refusal_recall": self.refusal.recall, "refusal_f1": self.refusal.f1, "fact_accuracy": self.fact_accuracy,
            "citation_precision": self.citation_precision, "cited_share": self.cited_share, "guard_accepted": self.guard_accepted,
            "language_match": self.language_match, "model_fact_accuracy": self.model_fact_accuracy,
        }  # fmt: skip
        return values[name]

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {
            "questions": self.questions, "with_sources": self.with_sources, "k": self.k,
            "hit_at_1": r(self.hit_at_1), "hit_at_k": r(self.hit_at_k), "mrr": r(self.mrr),
            "refusal": {"precision": r(self.refusal.precision), "recall": r(self.refusal.recall), "f1": r(self.refusal.f1),
                        "true_positive": self.refusal.true_positive, "false_positive": self.refusal.false_positive,
                        "false_negative": self.refusal.false_negative},
            "fact_accuracy": r(self.fact_accuracy), "citation_precision": r(self.citation_precision), "cited_share": r(self.cited_share),
            "guard_accepted": r(self.guard_accepted), "language_match": r(self.language_match),
            "latency_ms": self.latency_ms, "errors": self.errors, "rejected_shown": self.rejected_shown,
            "model_fact_accuracy": r(self.model_fact_accuracy),
        }  # fmt: skip


def summarize(results: Sequence[ItemResult], k: int) -> Summary:
    ranked = [r for r in results if r.item.expect_sources]
    ranks = [r.rank for r in ranked]
    factual = [r.fact_ok for r in results]
    cited = [r.cited_with_fact for r in results]
    cited_total = sum(c for _, c in cited)
    answered = [r for r in results if r.answer is not None and not r.refused and not r.item.refuse]
    latency = {
        key: {"p50": percentile(values, 50), "p90": percentile(values, 90)}
        for key in ("retrieve", "first_text", "total")
        if (values := [r.timings_ms[key] for r in results if key in r.timings_ms])
    }
    return Summary(
        questions=len(results),
        with_sources=len(ranked),
        hit_at_1=_share(rank == 1 for rank in ranks) if ranked else None,
        hit_at_k=_share(rank is not None and rank <= k for rank in ranks) if ranked else None,
        mrr=sum(1 / rank for rank in ranks if rank) / len(ranks) if ranked else None,
        refusal=refusals(results),
        fact_accuracy=_share(factual),
        citation_precision=sum(g for g, _ in cited) / cited_total if cited_total else None,
        cited_share=_share(bool(r.cited) for r in answered) if answered else None,
        guard_accepted=_share(r.guard_ok for r in results),
        language_match=_share(r.language_ok for r in results),
        model_fact_accuracy=_share(r.model_fact_ok for r in results),
        latency_ms=latency,
        errors=sum(bool(r.error) for r in results),
        k=k,
        rejected_shown=sum(r.mode == "generative" and r.guard_ok is False for r in results),
    )


def groups(results: Sequence[ItemResult], key: Callable[[ItemResult], str]) -> dict[str, list[ItemResult]]:
    out: dict[str, list[ItemResult]] = {}
    for r in results:
        out.setdefault(key(r), []).append(r)
    return dict(sorted(out.items()))
