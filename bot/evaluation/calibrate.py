"""`teambot eval --calibrate`: the relevance decision (rag.relevance, rag.search.relevance) that
best separates the questions the knowledge base answers from those it must refuse, fitted on a
question set.

Each question is searched once with no bar, as the core searches it (a follow-up together with
the question before it), and every candidate passage's features are kept; then rules are
replayed on them (a question is refused when no passage passes). A rule is fitted in two steps:
the weights by logistic regression (numpy, Newton's method, a small L2 penalty) on a few sets
of features, from the passage each answerable question should be answered from (the
best-scoring one of an expected file, else the best) against the best REFUSED_NEGATIVES
passages of each question to refuse; then the bias, over every value the passages take, for
the best refusal F1; among equals the one that keeps the most right passages in the top k,
then the middle of the range. The single bar on the hybrid score (rag.min_score's rule) is
fitted the same way, and the best of them is the fitted rule, so a fit never does worse on its
own questions than the single bar. HuixiangDou fits its reject threshold from good and bad
examples the same way.
Fitted for all questions and for each language.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bot.core import search_text
from bot.evaluation.questions import EvalItem
from bot.evaluation.scoring import Refusals, same_path
from bot.rewrite import search_queries
from rag.search.relevance import FEATURES, RelevanceRule
from rag.search.retriever import Retriever

REFUSED_NEGATIVES = 4  # passages of a question to refuse that the fit learns to refuse (its best by hybrid score)
L2 = 1e-2  # the logistic regression's penalty on the weights (not the bias)
TOP_K = 4


@dataclass(frozen=True)
class Found:
    path: str
    score: float  # the hybrid score: the order of the relevant passages
    features: dict[str, float]


@dataclass(frozen=True)
class Searched:
    item: EvalItem
    found: list[Found]  # what the search found with no bar, best first

    def passing(self, rule: RelevanceRule) -> list[Found]:
        return [f for f in self.found if rule.passes(f.features)]

    def best_value(self, rule: RelevanceRule) -> float:
        return max((rule.value(f.features) for f in self.found), default=-1e9)

    def to_json(self) -> dict[str, object]:
        return {"id": self.item.id, "found": [{"path": f.path, "score": f.score, "features": f.features} for f in self.found]}


@dataclass(frozen=True)
class RuleScore:
    rule: RelevanceRule
    refusal: Refusals
    hit_at_k: float | None


@dataclass(frozen=True)
class Fit:
    scope: str  # "all", "en", "zh"
    questions: int
    before: RuleScore  # the configured decision
    after: RuleScore  # the fitted rule
    bar: RuleScore | None = field(default=None)  # the best single bar on the hybrid score

    def to_json(self) -> dict[str, object]:
        def side(s: RuleScore | None) -> dict[str, object] | None:
            if s is None:
                return None
            f1 = s.refusal.f1
            return {"relevance": s.rule.to_setting(), "refusal_f1": None if f1 is None else round(f1, 4),
                    "hit_at_k": None if s.hit_at_k is None else round(s.hit_at_k, 4)}  # fmt: skip

        return {"scope": self.scope, "questions": self.questions, "before": side(self.before), "after": side(self.after), "single_bar": side(self.bar)}


def search_all(
    retriever: Retriever, items: Sequence[EvalItem], progress: Callable[[EvalItem], None] | None = None, rewrite: bool = False
) -> list[Searched]:
    """Every item's candidates with their features; with ``rewrite`` (bot.rewrite_question), also
    searched with its written model_rewrite."""
    out = []
    for item in items:
        query = search_text(item.question, item.history)[0]
        rewrites = search_queries(item.model_rewrite, query) if rewrite else []
        found = retriever.search(query, [item.collection], top_k=5 * TOP_K, min_score=0.0, rewrites=rewrites).passages
        out.append(Searched(item, [Found(p.path, p.score, p.features) for p in found]))
        if progress:
            progress(item)
    return out


def score_rule(searched: Sequence[Searched], rule: RelevanceRule, k: int = TOP_K) -> RuleScore:
    tp = fp = fn = 0
    hits = ranked = 0
    for s in searched:
        passing = s.passing(rule)[:k]
        refused = not passing
        tp += refused and s.item.refuse
        fp += refused and not s.item.refuse
        fn += not refused and s.item.refuse
        if s.item.expect_sources:
            ranked += 1
            hits += any(same_path(f.path, e) for f in passing for e in s.item.expect_sources)
    return RuleScore(rule, Refusals(tp, fp, fn), hits / ranked if ranked else None)


def _expected(s: Searched) -> Found | None:
    right = [f for f in s.found if any(same_path(f.path, e) for e in s.item.expect_sources)]
    return right[0] if right else (s.found[0] if s.found else None)


def logistic(x: np.ndarray, y: np.ndarray, penalty: float = L2, steps: int = 50) -> tuple[np.ndarray, float]:
    """Weights and bias of a logistic regression of ``y`` (0/1) on the rows of ``x``, classes
    weighted equally, by Newton's method."""
    rows, columns = x.shape
    design = np.hstack([x, np.ones((rows, 1))])
    positive = y.sum()
    sample = np.where(y > 0, rows / (2 * max(positive, 1)), rows / (2 * max(rows - positive, 1)))
    theta = np.zeros(columns + 1)
    ridge = np.diag([penalty] * columns + [0.0]) * rows
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(design @ theta, -30, 30)))
        gradient = design.T @ (sample * (p - y)) + ridge @ theta
        hessian = (design * (sample * p * (1 - p))[:, None]).T @ design + ridge + 1e-9 * np.eye(columns + 1)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta[:columns], float(theta[columns])


FEATURE_SETS = (FEATURES, ("vector", "keyword", "absent"), ("vector", "keyword", "cross", "chinese"))  # the logistic regressions tried


def fit_rule(searched: Sequence[Searched], vector_weight: float = 0.7, k: int = TOP_K) -> RuleScore:
    """The rule of best refusal F1 on ``searched`` (ties: hit@k): of the logistic regressions on
    FEATURE_SETS and the single bar on the hybrid score, each with its best bias."""
    tried = [_logistic_rule(searched, features, k) for features in FEATURE_SETS]
    tried.append(fit_bar(searched, vector_weight, k))
    return max(tried, key=lambda s: (s.refusal.f1 or 0.0, s.hit_at_k or 0.0))


def _logistic_rule(searched: Sequence[Searched], features: Sequence[str], k: int) -> RuleScore:
    rows, labels = [], []
    for s in searched:
        if s.item.refuse:
            for f in s.found[:REFUSED_NEGATIVES]:
                rows.append([f.features.get(n, 0.0) for n in features])
                labels.append(0.0)
        elif (chosen := _expected(s)) is not None:
            rows.append([chosen.features.get(n, 0.0) for n in features])
            labels.append(1.0)
    if not rows or len(set(labels)) < 2:
        weights = {n: 1.0 if n == "vector" else 0.0 for n in features}
    else:
        w, _ = logistic(np.asarray(rows), np.asarray(labels))
        weights = dict(zip(features, (float(v) for v in w), strict=True))
    return fit_bias(searched, weights, k)


def fit_bias(searched: Sequence[Searched], weights: dict[str, float], k: int = TOP_K) -> RuleScore:
    """The bias of best refusal F1 for these weights (ties: hit@k, then the middle): every cut
    between two values the passages take is replayed (as arrays: thousands of cuts in a second)."""
    unbiased = RelevanceRule(weights, 0.0)
    values = [np.asarray([unbiased.value(f.features) for f in s.found]) for s in searched]
    every = np.unique(np.round(np.concatenate([v for v in values if len(v)] or [np.zeros(1)]), 6))
    cuts = np.concatenate([[every[0] - 1e-3], (every[:-1] + every[1:]) / 2, [every[-1] + 1e-3]])
    tp = np.zeros(len(cuts)); fp = np.zeros(len(cuts)); fn = np.zeros(len(cuts))  # fmt: skip
    hits = np.zeros(len(cuts))
    ranked = 0
    for s, v in zip(searched, values, strict=True):
        passing = v[None, :] >= cuts[:, None] if len(v) else np.zeros((len(cuts), 0), dtype=bool)
        refused = ~passing.any(axis=1)
        tp += refused & s.item.refuse
        fp += refused & (not s.item.refuse)
        fn += ~refused & s.item.refuse
        if s.item.expect_sources:
            ranked += 1
            right = np.asarray([any(same_path(f.path, e) for e in s.item.expect_sources) for f in s.found], dtype=bool)
            shown = passing & (np.cumsum(passing, axis=1) <= k)
            hits += (shown & right[None, :]).any(axis=1) if len(v) else 0
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros(len(cuts)), where=denominator > 0)
    hit_at_k = hits / ranked if ranked else np.zeros(len(cuts))
    best = max(zip(np.round(f1, 9), np.round(hit_at_k, 9), strict=True))
    tied = [i for i in range(len(cuts)) if (round(f1[i], 9), round(hit_at_k[i], 9)) == best]
    chosen = tied[len(tied) // 2]
    return score_rule(searched, RelevanceRule(weights, -float(cuts[chosen])), k)


def fit_bar(searched: Sequence[Searched], vector_weight: float, k: int = TOP_K) -> RuleScore:
    """The best single bar on the hybrid score (rag.min_score)."""
    return fit_bias(searched, {"vector": vector_weight, "keyword": 1 - vector_weight}, k)


def fit(searched: Sequence[Searched], current: RelevanceRule, vector_weight: float, scope: str = "all", k: int = TOP_K) -> Fit:
    return Fit(scope, len(searched), score_rule(searched, current, k), fit_rule(searched, vector_weight, k), fit_bar(searched, vector_weight, k))


def fits(searched: Sequence[Searched], current: RelevanceRule, vector_weight: float, k: int = TOP_K) -> list[Fit]:
    """The fit over every question, then per language of the question (where the set has both kinds)."""
    out = [fit(searched, current, vector_weight, k=k)]
    for language in ("en", "zh"):
        part = [s for s in searched if s.item.language == language]
        if any(s.item.refuse for s in part) and any(not s.item.refuse for s in part):
            out.append(fit(part, current, vector_weight, language, k))
    return out
