"""Similarity with each language's mean taken out: what lets a multilingual embedder's scores
cross languages and carry a relevance bar.

multilingual-e5-small places every text of one language near that language's mean vector,
so any two Chinese texts look alike (an off-topic Chinese question about lunch scores above an
English question about the Chinese expense policy) and a question is drawn to chunks of its own
language over the page in the other one that answers it. Removing most of each language's mean
from both sides before the cosine (``CENTERING`` of it: the question's language mean from the
question, the chunk's from the chunk) leaves mostly what the texts are about. The means were
measured on reference sentences of no particular subject written for this (``language_reference/``,
80 a language, as passages and as questions, since e5 embeds the two with different prefixes),
not on a team's documents, so they do not move when the documents change and a small
collection gets the same correction as a large one. The effect on both evaluation sets is in
docs/benchmarks.md ("Each language's mean taken out of e5's cosines").

Only embedders with a means file get this (``MODELS``); the others are compared by plain
cosine similarity. `python -m rag.search.language_means` measures the means again (after a
change of the reference sentences or of the model) and writes the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from rag.ingest.embedder import E5_MODEL_ID, E5_SETTING, E5Embedder

REFERENCE = Path(__file__).with_name("language_reference")
LANGUAGES = ("en", "zh")  # row order of the means: a chunk or question is Chinese or not
MODELS = {E5_MODEL_ID: REFERENCE / f"{E5_SETTING}.npz"}  # model id -> its measured means
CENTERING = 0.8  # share of the language's mean taken out (measured: 0.8 ranked better than 1.0 on lmdeploy's docs)


@dataclass(frozen=True)
class LanguageMeans:
    passage: np.ndarray  # (2, dim): mean passage vector, English then Chinese
    query: np.ndarray  # (2, dim): mean question vector, English then Chinese

    def row_norms(self, vectors: np.ndarray, chinese: np.ndarray) -> np.ndarray:
        """|d - CENTERING * p| of each row d (unit vectors; ``chinese`` per row), p its language's
        passage mean: what ``similarity`` divides by, worked out once per chunk (collection_cache)."""
        a = CENTERING
        to_means = vectors @ self.passage.T  # (rows, 2)
        own = np.where(chinese, to_means[:, 1], to_means[:, 0])
        squared = np.einsum("ij,ij->i", self.passage, self.passage)
        return np.sqrt(np.maximum(1 - 2 * a * own + a * a * np.where(chinese, squared[1], squared[0]), 1e-12)).astype(np.float32)

    def similarity(self, vectors: np.ndarray, chinese: np.ndarray, norms: np.ndarray, query_vector: np.ndarray, query_chinese: bool) -> np.ndarray:
        """Cosine similarity of the question to each row of ``vectors`` (unit rows; ``chinese``
        and ``norms``, of ``row_norms``, per row), each side with CENTERING of its language's
        mean taken out: (d - a p)·q' = d·q' - a p·q', so one product with the rows, as for
        plain cosines."""
        a = CENTERING
        query = query_vector - a * self.query[int(query_chinese)]
        query_norm = max(float(np.linalg.norm(query)), 1e-6)
        if not len(vectors):
            return np.zeros(0, dtype=np.float32)
        to_query = self.passage @ query  # p·q' for each language's p
        numerator = vectors @ query - a * np.where(chinese, to_query[1], to_query[0])
        return (numerator / (norms * query_norm)).astype(np.float32)


@cache
def means_for(model_id: str) -> LanguageMeans | None:
    """The measured means of ``model_id``'s vectors; None for a model without them."""
    path = MODELS.get(model_id)
    if path is None:
        return None
    with np.load(path) as stored:
        return LanguageMeans(passage=stored["passage"].astype(np.float32), query=stored["query"].astype(np.float32))


def reference_sentences(language: str) -> list[str]:
    return [line for line in (REFERENCE / f"{language}.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


def measure() -> LanguageMeans:
    """multilingual-e5-small's means on the reference sentences (a few seconds)."""
    model = E5Embedder()
    passage, query = [], []
    for language in LANGUAGES:
        sentences = reference_sentences(language)
        passage.append(model.many(sentences).mean(axis=0))
        query.append(np.stack([np.asarray(model(s), dtype=np.float32) for s in sentences]).mean(axis=0))
    return LanguageMeans(passage=np.stack(passage), query=np.stack(query))


def main() -> None:
    measured = measure()
    path = MODELS[E5_MODEL_ID]
    np.savez(path, passage=measured.passage, query=measured.query)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
