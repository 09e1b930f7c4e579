"""The relevance decision: whether a passage answers the question, from more than one number.

Each candidate passage has FEATURES: its cosine similarity (``vector``, language means taken
out), the IDF-weighted share of the question's words it holds, translations counted
(``keyword``), whether it is in the other language than the question (``cross``) and whether
the question is Chinese (``chinese``), and the products ``cross_vector`` and ``cross_keyword``
(a page in the other language scores lower by meaning and matches only through translations,
so its bar may differ), and the IDF-weighted share of the question's words that no chunk of
the collection holds in any form (``absent``: a question about what the documents never
mention). A rule is a weight per feature and a bias; a passage is relevant when
    bias + sum(weight * feature) >= 0
and none relevant means "I don't know". The single bar of earlier versions (rag.min_score) is
the rule  vector_weight * vector + (1 - vector_weight) * keyword - min_score.
`teambot eval --calibrate` fits a rule on a team's questions (bot.evaluation.calibrate) and
prints it for rag.relevance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from config.settings import RELEVANCE_FEATURES

FEATURES = RELEVANCE_FEATURES


def features(vector: float, keyword: float, cross: bool, chinese: bool, absent: float) -> dict[str, float]:
    c = float(cross)
    return {"vector": vector, "keyword": keyword, "cross": c, "chinese": float(chinese), "cross_vector": c * vector,
            "cross_keyword": c * keyword, "absent": absent}  # fmt: skip


@dataclass(frozen=True)
class RelevanceRule:
    weights: Mapping[str, float]  # feature -> weight (missing: 0)
    bias: float

    @classmethod
    def bar(cls, min_score: float, vector_weight: float) -> RelevanceRule:
        """The single bar on the hybrid score."""
        return cls({"vector": vector_weight, "keyword": 1 - vector_weight}, -min_score)

    @classmethod
    def from_setting(cls, values: Mapping[str, float]) -> RelevanceRule:
        """From rag.relevance ({"bias": ..., "vector": ..., ...}; checked by the settings)."""
        return cls({k: float(v) for k, v in values.items() if k != "bias"}, float(values.get("bias", 0.0)))

    def to_setting(self) -> dict[str, float]:
        return {"bias": round(self.bias, 4), **{k: round(self.weights[k], 4) for k in FEATURES if self.weights.get(k)}}

    def value(self, found: Mapping[str, float]) -> float:
        """Above 0: relevant."""
        return self.bias + sum(w * found.get(k, 0.0) for k, w in self.weights.items())

    def passes(self, found: Mapping[str, float]) -> bool:
        return self.value(found) >= 0
