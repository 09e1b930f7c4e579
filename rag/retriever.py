"""Hybrid retrieval: Chroma's vector search fused with BM25 keyword search, and the relevance bar.

Candidates come from both searches. Each gets
    score = vector_weight * cosine similarity + (1 - vector_weight) * keyword score
(see rag.keyword for the keyword score), both on a 0-1 scale, so one threshold
(``rag.min_score``) can say "nothing relevant": a question in Chinese finds Chinese documents
through their words even where the English-centric embedder is weak, and a paraphrase with
no shared words still finds its passage through the vectors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from config.errors import TeambotError
from config.settings import RagSettings
from rag.embedder import load_embedder
from rag.keyword import KeywordIndex, tokenize
from rag.manifest import Manifest
from rag.store import ChromaStore, StoredChunk

# Each search proposes this many candidates per wanted passage (at least CANDIDATES_MIN).
CANDIDATES_PER_RESULT = 5
CANDIDATES_MIN = 20


class NothingIndexed(TeambotError):
    """The collections asked for hold no documents."""


@dataclass(frozen=True)
class Passage:
    collection: str
    path: str  # relative to the folder it was indexed from
    title: str
    heading: str
    page: str
    text: str
    score: float
    vector_score: float
    keyword_score: float
    chunk_id: str


@dataclass
class Retrieval:
    passages: list[Passage]
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class _KeywordCache:
    generation: int
    ids: list[str]
    index: KeywordIndex
    position: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.position = {chunk_id: k for k, chunk_id in enumerate(self.ids)}


class Retriever:
    def __init__(self, settings: RagSettings, store: ChromaStore, manifest: Manifest) -> None:
        self._settings = settings
        self._store = store
        self._manifest = manifest
        self._keyword: dict[str, _KeywordCache] = {}
        self._keyword_lock = threading.Lock()

    def warm_up(self, collections: Sequence[str]) -> None:
        """Loads the embedder, the tokenizer and the collections' keyword indexes now, not at the first question."""
        self._embed("warm up")
        tokenize("warm up")
        for collection in collections:
            if self._manifest.generation(collection):
                self._keyword_index(collection)

    def search(self, query: str, collections: Sequence[str], top_k: int | None = None) -> Retrieval:
        """The passages relevant to ``query``, best first; empty when nothing passes rag.min_score."""
        top_k = top_k or self._settings.top_k
        limit = max(top_k * CANDIDATES_PER_RESULT, CANDIDATES_MIN)
        timings: dict[str, float] = {}
        started = time.perf_counter()

        query_vector = self._embed(query)
        timings["embed"] = _ms_since(started)

        mark = time.perf_counter()
        query_terms = tokenize(query)
        candidates: list[Passage] = []
        searched = 0
        vector_ms = 0.0
        for collection in collections:
            if self._manifest.generation(collection) == 0:
                continue  # never indexed
            searched += 1
            t = time.perf_counter()
            vector_hits = self._store.query(collection, query_vector, limit)
            vector_ms += _ms_since(t)
            candidates.extend(self._fuse(collection, query_vector, query_terms, vector_hits, limit))
        timings["vector"] = round(vector_ms, 2)
        timings["keyword"] = round(_ms_since(mark) - vector_ms, 2)
        if not searched:
            names = ", ".join(collections)
            raise NothingIndexed(
                f"nothing is indexed in collection {names}",
                f"index documents first: `teambot index [PATH ...] --collection {collections[0] if collections else 'default'}`",
            )

        relevant = sorted((p for p in candidates if p.score >= self._settings.min_score), key=lambda p: -p.score)
        timings["total"] = _ms_since(started)
        return Retrieval(relevant[:top_k], timings)

    def _embed(self, text: str) -> list[float]:
        embedder = load_embedder(self._settings.embed_model, self._settings.embed_batch_size)
        return embedder.get_query_embedding(text)

    def _fuse(
        self,
        collection: str,
        query_vector: list[float],
        query_terms: list[str],
        vector_hits: list[StoredChunk],
        limit: int,
    ) -> list[Passage]:
        keyword = self._keyword_index(collection)
        keyword_scores = {keyword.ids[hit.index]: hit.score for hit in keyword.index.search(query_terms, limit)}
        chunks = {hit.id: hit for hit in vector_hits}
        similarity = {hit.id: hit.similarity or 0.0 for hit in vector_hits}

        keyword_only = [chunk_id for chunk_id in keyword_scores if chunk_id not in chunks]
        if keyword_only:
            query = np.asarray(query_vector)
            for hit in self._store.get(collection, keyword_only, embeddings=True):
                chunks[hit.id] = hit
                similarity[hit.id] = float(np.dot(query, np.asarray(hit.embedding)))

        w = self._settings.vector_weight
        passages = []
        for chunk_id, chunk in chunks.items():
            if chunk_id in keyword_scores:
                kw = keyword_scores[chunk_id]
            elif chunk_id in keyword.position:
                kw = keyword.index.coverage(query_terms, keyword.position[chunk_id])
            else:
                kw = 0.0
            vec = max(similarity[chunk_id], 0.0)
            meta = chunk.metadata
            passages.append(
                Passage(
                    collection=collection,
                    path=str(meta.get("source", "")),
                    title=str(meta.get("title", "")),
                    heading=str(meta.get("heading", "")),
                    page=str(meta.get("page", "")),
                    text=chunk.text,
                    score=round(w * vec + (1 - w) * kw, 4),
                    vector_score=round(vec, 4),
                    keyword_score=round(kw, 4),
                    chunk_id=chunk_id,
                )
            )
        return passages

    def _keyword_index(self, collection: str) -> _KeywordCache:
        """The collection's BM25 index, rebuilt from the store when the manifest says it changed."""
        generation = self._manifest.generation(collection)
        with self._keyword_lock:
            cached = self._keyword.get(collection)
            if cached is None or cached.generation != generation:
                stored = self._store.get(collection, texts=False)
                cached = _KeywordCache(
                    generation,
                    [chunk.id for chunk in stored],
                    KeywordIndex([str(chunk.metadata.get("keywords", "")).split() for chunk in stored]),
                )
                self._keyword[collection] = cached
            return cached


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
