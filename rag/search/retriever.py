"""Hybrid retrieval: vector search fused with BM25 keyword search, and the relevance bar.

Per collection, a cache built from the Chroma store holds every chunk's vector, its language
and the BM25 index; when the manifest's generation for the collection changes (also when
another process indexed), it reads the chunks of the documents that changed (see
rag.search.collection_cache). A question is compared with every chunk vector (one matrix
product, with the model the collection was embedded with); candidates come from the best of
those and from BM25. Each candidate gets
    score = vector_weight * cosine similarity + (1 - vector_weight) * keyword score
(see rag.search.keyword for the keyword score), both on a 0-1 scale. The keyword side reads
the question's words with their translations into the other language (rag.translate_query,
rag.search.expansion), so a Chinese question matches an English page word by word and the
other way round. The relevance decision (rag.search.relevance: a rule on the cosine, the
keyword score, the languages and the question's words the collection lacks, rag.relevance;
or the single bar rag.min_score on the hybrid score) drops passages, and none left means
"I don't know" (with rag.model_floor, a capable model judges instead: when the best
candidate's hybrid score reaches the floor, the best ones are returned marked ``below_decision``). The passages are the best of
the rest by hybrid score. For a multilingual embedder the
cosine is taken with each language's mean vector mostly removed (rag.search.language_means):
such a model rates any two texts of one language as closer than a question and its answer in
the other, which would draw an English question to English chunks over the Chinese page that
answers it and let off-topic Chinese questions pass the bar (measured in docs/benchmarks.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from config.errors import TeambotError
from config.settings import RagSettings
from rag.ingest.embedder import embed_model_id, setting_for, token_counter
from rag.search.bilingual import dictionary
from rag.search.collection_cache import CollectionCache
from rag.search.expansion import expand, other_language_text
from rag.search.keyword import QueryWord, mostly_chinese, plain_words, tokenize
from rag.search.neighbours import widened
from rag.search.query_encoder import load_query_encoder
from rag.search.relevance import RelevanceRule, features
from rag.search.sentence_vectors import SentenceVectors
from rag.store.chroma import ChromaStore
from rag.store.manifest import Manifest

# Each search proposes this many candidates per wanted passage (at least CANDIDATES_MIN).
CANDIDATES_PER_RESULT = 5
CANDIDATES_MIN = 20
SIMILARITY_TEXT_CHARS = 240  # of a sentence compared by meaning (a long code block: its start)
RECENT_QUESTIONS = 64  # question vectors kept


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
    features: dict[str, float] = field(default_factory=dict, compare=False)  # what the relevance decision read (rag.search.relevance)

    def to_json(self) -> dict[str, object]:
        """What `--json` outputs and the console show of a passage."""
        fields = ("path", "title", "heading", "page", "collection", "score", "vector_score", "keyword_score", "text")
        return {name: getattr(self, name) for name in fields}


@dataclass
class Retrieval:
    passages: list[Passage]
    timings_ms: dict[str, float] = field(default_factory=dict)
    below_decision: bool = False  # no passage passed the relevance decision: these are above rag.model_floor, for the model to judge


@dataclass
class _Candidate:
    collection: str
    chunk_id: str
    vector_score: float
    keyword_score: float
    score: float  # the hybrid score: the order of the relevant ones
    features: dict[str, float]


class Retriever:
    def __init__(self, settings: RagSettings, store: ChromaStore, manifest: Manifest, models_dir: Path) -> None:
        self._settings = settings
        self._store = store
        self._manifest = manifest
        self._models_dir = models_dir
        self._caches: dict[str, CollectionCache] = {}
        self._cache_lock = threading.Lock()
        self._recent: dict[tuple[str, str], np.ndarray] = {}
        self._sentences: SentenceVectors | None = None
        self._count_tokens: Callable[[str], int] | None = None

    def warm_up(self, collections: Sequence[str]) -> None:
        """Loads the embedder, the tokenizer and the collections' caches now, not at the first question."""
        self._embed("warm up")
        tokenize("warm up")
        if self._settings.translate_query or self._settings.translated_vector:
            dictionary().glossed_by("warm")
        for collection in collections:
            if self._manifest.generation(collection):
                self._cache(collection)

    def search(
        self, query: str, collections: Sequence[str], top_k: int | None = None, min_score: float | None = None, rewrites: Sequence[str] = ()
    ) -> Retrieval:
        """The passages relevant to ``query``, best first; empty when none passes the relevance
        decision (rag.relevance, or the single bar rag.min_score; ``min_score`` given: that bar,
        0 for every candidate). With rag.model_floor (and no ``min_score``), when none passes but
        the best candidate's hybrid score reaches the floor, the best ``top_k`` candidates,
        marked ``below_decision`` for the model to judge. ``rewrites``: the question in other
        words (a capable model's search queries, bot.rewrite); each chunk is then as relevant
        as its best reading: relevant when one reading passes, ranked by the best that does."""
        top_k = top_k or self._settings.top_k
        rule = self.rule if min_score is None else RelevanceRule.bar(min_score, self._settings.weight)
        limit = max(top_k * CANDIDATES_PER_RESULT, CANDIDATES_MIN)
        searchable = [c for c in collections if self._manifest.generation(c)]
        if not searchable:
            raise NothingIndexed(
                f"nothing is indexed in collection {', '.join(collections)}",
                f"index documents first: `teambot index [PATH ...] --collection {collections[0] if collections else 'default'}`",
            )
        timings = {"embed": 0.0, "vector": 0.0, "keyword": 0.0}
        started = time.perf_counter()
        caches = {collection: self._cache(collection) for collection in searchable}
        passing: dict[tuple[str, str], _Candidate] = {}  # per chunk: its best reading that passes the decision
        best: dict[tuple[str, str], _Candidate] = {}  # per chunk: its best reading
        readings = list(dict.fromkeys([query, *rewrites]))
        mark = time.perf_counter()
        # Each collection is searched with its own model's vectors (during a re-embedding, the old one's).
        vectors = {model: self._embed_all(readings, model) for model in {c.model for c in caches.values()}}
        timings["embed"] += (time.perf_counter() - mark) * 1000
        for k, text in enumerate(readings):
            for c in self._candidates(text, {model: rows[k] for model, rows in vectors.items()}, caches, limit, timings):
                key = (c.collection, c.chunk_id)
                if rule.passes(c.features) and (key not in passing or c.score > passing[key].score):
                    passing[key] = c
                if key not in best or c.score > best[key].score:
                    best[key] = c

        per_file = self._settings.passages_per_file
        relevant = _best(sorted(passing.values(), key=lambda c: -c.score), top_k, per_file)
        floor = self._settings.model_floor
        below = not relevant and floor is not None and min_score is None
        if below:  # rag.model_floor: when the best candidate reaches it, the model judges the best top_k
            ranked = _best(sorted(best.values(), key=lambda c: -c.score), top_k, per_file)
            relevant = ranked if ranked and ranked[0].score >= floor else []
        passages = self._passages(relevant)
        timings = {name: round(ms, 2) for name, ms in timings.items()}
        timings["total"] = _ms_since(started)
        return Retrieval(passages, timings, below_decision=below and bool(passages))

    def _candidates(
        self, query: str, query_vectors: dict[str, np.ndarray], caches: dict[str, CollectionCache], limit: int, timings: dict[str, float]
    ) -> list[_Candidate]:
        """The candidates for one reading of the question (``query_vectors``: its vector by each
        collection's model) from every collection, each scored and its relevance features found;
        ``timings`` (embed, vector, keyword ms) are added to."""
        mark = time.perf_counter()
        query_terms = tokenize(query)
        query_chinese = mostly_chinese(query_terms)
        translated = {}
        if self._settings.translated_vector:
            for collection, cache in caches.items():
                text = other_language_text(query_terms, dictionary(), cache.keyword.knows)
                if text and text != " ".join(query_terms):
                    translated[collection] = self._embed(text, cache.model)
        timings["embed"] += (time.perf_counter() - mark) * 1000

        candidates: list[_Candidate] = []
        for collection, cache in caches.items():
            query_vector = query_vectors[cache.model]
            mark = time.perf_counter()
            similarity = cache.similarity(query_vector, query_chinese)
            if collection in translated:  # the question in the other language's words, for the chunks in that language
                other = cache.chinese != query_chinese
                similarity = np.where(other, np.maximum(similarity, cache.similarity(translated[collection], not query_chinese)), similarity)
            timings["vector"] += (time.perf_counter() - mark) * 1000
            mark = time.perf_counter()
            words = self._query_words(query_terms, cache)
            candidates.extend(self._fuse(collection, cache, similarity, words, query_chinese, limit))
            timings["keyword"] += (time.perf_counter() - mark) * 1000
        return candidates

    @property
    def rule(self) -> RelevanceRule:
        """The relevance decision the settings ask for: rag.relevance, or the single bar rag.min_score."""
        rag = self._settings
        return RelevanceRule.from_setting(rag.relevance) if rag.relevance else RelevanceRule.bar(rag.bar, rag.weight)

    def _query_words(self, query_terms: list[str], cache: CollectionCache) -> list[QueryWord]:
        """The question's words for the keyword search: with their translations (rag.translate_query)."""
        if not self._settings.translate_query:
            return plain_words(query_terms)
        return expand(query_terms, dictionary(), cache.keyword.knows)

    def _embed(self, text: str, model_id: str | None = None) -> np.ndarray:
        """The question's vector (the last few are kept: the evidence asks again for the one just searched)."""
        return self._embed_all([text], model_id)[0]

    def _embed_all(self, texts: Sequence[str], model_id: str | None = None) -> np.ndarray:
        """The questions' vectors (rows), those not kept from before encoded in one call."""
        rag = self._settings
        setting = rag.embed_model if model_id is None else setting_for(model_id)
        with self._cache_lock:
            known = {text: self._recent[(setting, text)] for text in texts if (setting, text) in self._recent}
        missing = [text for text in texts if text not in known]
        if missing:
            encoded = load_query_encoder(setting, rag.embed_batch_size, self._models_dir).queries(missing)
            with self._cache_lock:
                for text, row in zip(missing, encoded, strict=True):
                    known[text] = self._recent[(setting, text)] = np.asarray(row, dtype=np.float32)
                while len(self._recent) > RECENT_QUESTIONS:
                    self._recent.pop(next(iter(self._recent)))
        return np.stack([known[text] for text in texts])

    def similarity(self, query: str, texts: Sequence[str]) -> list[float]:
        """Cosine similarity of ``query`` to each of ``texts`` (short ones: sentences, cut at
        SIMILARITY_TEXT_CHARS), by rag.embed_model's query encoder."""
        if not texts:
            return []
        vectors = self.sentences.rows([text[:SIMILARITY_TEXT_CHARS] for text in texts])
        return (vectors @ self._embed(query)).tolist()

    @property
    def sentences(self) -> SentenceVectors:
        """Vectors of short texts by rag.embed_model, each embedded once (evidence and the grounding guard share them)."""
        if self._sentences is None:
            rag = self._settings
            encoder = load_query_encoder(rag.embed_model, rag.embed_batch_size, self._models_dir)
            self._sentences = SentenceVectors(encoder.many, embed_model_id(rag.embed_model))
        return self._sentences

    def meaning(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of short texts, each language's mean taken out: what the grounding guard compares sentences by."""
        return self.sentences.centred([text[:SIMILARITY_TEXT_CHARS] for text in texts])

    def _fuse(
        self, collection: str, cache: CollectionCache, similarity: np.ndarray, query_terms: list[QueryWord], query_chinese: bool, limit: int
    ) -> list[_Candidate]:
        keyword_hits = {hit.index: hit.score for hit in cache.keyword.search(query_terms, limit)}
        count = min(limit, cache.live)
        indexes = set(keyword_hits)
        if count:
            values = np.where(cache.alive, similarity, -np.inf) if cache.live < cache.rows else similarity  # removed rows are no candidates
            indexes.update(int(i) for i in np.argpartition(-values, count - 1)[:count])
        absent = cache.keyword.absent_share(query_terms)
        others = [index for index in indexes if index not in keyword_hits]
        keyword_hits.update(zip(others, cache.keyword.coverage(query_terms, others)))
        w = self._settings.weight
        candidates = []
        for index in indexes:
            vec = max(float(similarity[index]), 0.0)
            kw = keyword_hits[index]
            score = w * vec + (1 - w) * kw
            found = features(vec, kw, bool(cache.chinese[index]) != query_chinese, query_chinese, absent)
            candidates.append(_Candidate(collection, cache.ids[index], vec, kw, score, found))
        return candidates

    def _passages(self, chosen: list[_Candidate]) -> list[Passage]:
        """The chosen candidates as passages, their text fetched from the store and widened with
        their neighbouring chunks (rag.neighbours, rag.search.neighbours)."""
        wanted: dict[str, list[str]] = {}
        for c in chosen:
            wanted.setdefault(c.collection, []).append(c.chunk_id)
        fetched = {(name, chunk.id): chunk for name, ids in wanted.items() for chunk in self._store.get(name, ids)}
        # a chunk not fetched was deleted by an index run since the cache was built
        found = [(c, fetched[(c.collection, c.chunk_id)]) for c in chosen if (c.collection, c.chunk_id) in fetched]
        rag = self._settings
        shown = widened([(c.collection, chunk) for c, chunk in found], self._store, rag.neighbours, rag.context_tokens, self._tokens)
        passages = []
        for part in shown:
            c, chunk = found[part.hit]
            meta = chunk.metadata
            passages.append(
                Passage(
                    collection=c.collection,
                    path=str(meta.get("source", "")),
                    title=str(meta.get("title", "")),
                    heading=str(meta.get("heading", "")),
                    page=str(meta.get("page", "")),
                    text=part.text,
                    score=round(c.score, 4),
                    vector_score=round(c.vector_score, 4),
                    keyword_score=round(c.keyword_score, 4),
                    chunk_id=c.chunk_id,
                    features={k: round(v, 4) for k, v in c.features.items()},
                )
            )
        return passages

    def _tokens(self, text: str) -> int:
        """The text's length in rag.embed_model's tokens (what rag.chunk_size and rag.context_tokens count)."""
        if self._count_tokens is None:
            self._count_tokens = token_counter(self._settings.embed_model)
        return self._count_tokens(text)

    def cached(self, collection: str) -> CollectionCache | None:
        """The collection's cache as the last search left it (None before the first)."""
        with self._cache_lock:
            return self._caches.get(collection)

    def _cache(self, collection: str) -> CollectionCache:
        """The collection's vectors and BM25 index, brought up to date with what changed when the manifest says it did."""
        with self._cache_lock:
            cache = self._caches.get(collection)
            if cache is None:
                generation = self._manifest.generation(collection)  # read first: a change made while reading is applied next time
                cache = CollectionCache.read(self._store, collection, generation)
            elif (changes := self._manifest.changes_since(collection, cache.generation)).generation != cache.generation:
                updated = cache.updated(self._store, collection, changes)
                if updated is None:
                    updated = CollectionCache.read(self._store, collection, changes.generation)
                    updated.fetched += cache.fetched
                cache = updated
            self._caches[collection] = cache
            return cache


def _best(ranked: list[_Candidate], top_k: int, per_file: int) -> list[_Candidate]:
    """The first ``top_k`` of ``ranked``, at most ``per_file`` from one file (0: no limit)."""
    if not per_file:
        return ranked[:top_k]
    taken: dict[tuple[str, str], int] = {}
    chosen = []
    for c in ranked:
        file = (c.collection, c.chunk_id.rpartition(":")[0])  # a chunk's id is "<document id>:<position>"
        if taken.get(file, 0) < per_file:
            taken[file] = taken.get(file, 0) + 1
            chosen.append(c)
            if len(chosen) == top_k:
                break
    return chosen


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
