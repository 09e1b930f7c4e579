"""`teambot eval --calibrate`: the relevance bar (rag.min_score) that best separates the
questions the knowledge base answers from those it must refuse, fitted on a question set.

Each question is searched once with no bar, as the core searches it (a follow-up together
with the question before it); then every candidate bar is replayed on those scores (a passage
passes when its score reaches the bar). The
bar with the best refusal F1 wins; among equals the one that keeps the most right passages
in the top k, then the middle of the range. HuixiangDou fits its reject threshold from good
and bad examples the same way. Fitted for all questions and for each language.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.core import ground
from bot.evaluation.questions import EvalItem
from bot.evaluation.scoring import Refusals, same_path
from rag.search.retriever import Retriever

Scored = list[tuple[str, float]]  # (path, score), best first


@dataclass(frozen=True)
class Searched:
    item: EvalItem
    scored: Scored  # what the search found with no bar

    def passing(self, bar: float) -> Scored:
        return [(p, s) for p, s in self.scored if s >= bar]


@dataclass(frozen=True)
class BarScore:
    bar: float
    refusal: Refusals
    hit_at_k: float | None


@dataclass(frozen=True)
class Fit:
    scope: str  # "all", "en", "zh"
    questions: int
    before: BarScore  # at the configured bar
    after: BarScore  # at the fitted bar

    def to_json(self) -> dict[str, object]:
        def side(s: BarScore) -> dict[str, object]:
            f1 = s.refusal.f1
            return {"min_score": round(s.bar, 4), "refusal_f1": None if f1 is None else round(f1, 4),
                    "hit_at_k": None if s.hit_at_k is None else round(s.hit_at_k, 4)}  # fmt: skip

        return {"scope": self.scope, "questions": self.questions, "before": side(self.before), "after": side(self.after)}


def search_all(retriever: Retriever, items: Sequence[EvalItem], progress: Callable[[EvalItem], None] | None = None) -> list[Searched]:
    out = []
    for item in items:
        query = ground(retriever, item.question, item.history, [item.collection]).query
        found = retriever.search(query, [item.collection], min_score=0.0).passages
        out.append(Searched(item, [(p.path, p.score) for p in found]))
        if progress:
            progress(item)
    return out


def score_bar(searched: Sequence[Searched], bar: float) -> BarScore:
    tp = fp = fn = 0
    hits = ranked = 0
    for s in searched:
        passing = s.passing(bar)
        refused = not passing
        tp += refused and s.item.refuse
        fp += refused and not s.item.refuse
        fn += not refused and s.item.refuse
        if s.item.expect_sources:
            ranked += 1
            hits += any(same_path(p, e) for p, _ in passing for e in s.item.expect_sources)
    return BarScore(bar, Refusals(tp, fp, fn), hits / ranked if ranked else None)


def fit(searched: Sequence[Searched], current: float, scope: str = "all") -> Fit:
    scores = sorted({round(score, 4) for s in searched for _, score in s.scored} | {0.0, 1.0})
    candidates = [round((a + b) / 2, 4) for a, b in zip(scores, scores[1:], strict=False)] or [current]
    scored = [score_bar(searched, bar) for bar in candidates]

    def key(s: BarScore) -> tuple[float, float]:
        return (s.refusal.f1 or 0.0, s.hit_at_k or 0.0)

    best = max(key(s) for s in scored)
    tied = [s for s in scored if key(s) == best]
    return Fit(scope, len(searched), score_bar(searched, current), tied[len(tied) // 2])


def fits(searched: Sequence[Searched], current: float) -> list[Fit]:
    """The fit over every question, then per language of the question (where the set has both kinds)."""
    out = [fit(searched, current)]
    for language in ("en", "zh"):
        part = [s for s in searched if s.item.language == language]
        if any(s.item.refuse for s in part) and any(not s.item.refuse for s in part):
            out.append(fit(part, current, language))
    return out
