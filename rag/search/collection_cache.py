"""What a search needs of one collection, held in memory: every chunk's vector, language and words.

A cache is read from the Chroma store once (its chunk ids in one read, then READ_BATCH chunks
at a time: one read of everything fails past SQLite's variable limit), and afterwards follows
the manifest's change log: only the chunks of the documents a generation changed are read
again; their old rows are removed and their current chunks appended. A cache whose collection
was dropped, re-embedded with another model, or changed mostly, or that fell behind the log,
is read again whole.

Searches in other threads keep using the cache they started with while an update is made:
an update returns a new cache that shares the append-only buffers (vectors, languages, ids)
and replaces, never changes in place, whatever a search reads. Removed rows stay in the
buffers, marked dead, until they are COMPACT_SHARE of the rows; then the live rows are copied
into new buffers, in memory.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rag.search.keyword import KeywordIndex, mostly_chinese
from rag.search.language_means import means_for
from rag.store.chroma import READ_BATCH, ChromaStore, StoredChunk
from rag.store.manifest import Changes

COMPACT_SHARE = 0.25  # removed rows, as a share of all rows, that make an update compact the buffers
REREAD_SHARE = 0.5  # an update that changes more than this share of the documents reads the collection whole
HEADROOM = 1 / 8  # free rows a buffer is given when it is (re)allocated, as a share of its rows


@dataclass
class CollectionCache:
    generation: int
    model: str  # the embedding model the vectors came from (questions are embedded with it too)
    keyword: KeywordIndex
    ids: list[str] = field(default_factory=list)  # per row: its chunk id (append-only, shared with older caches: mind ``rows``)
    rows: int = 0  # rows of this cache (removed ones included)
    alive: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # per row: not removed
    live: int = 0  # rows alive
    fetched: int = 0  # chunks read from the store by this cache and the ones it was updated from
    _vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))  # rows, then free ones
    _chinese: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    _norms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # per row: centred norm (LanguageMeans.row_norms)
    _documents: dict[str, list[int]] = field(default_factory=dict)  # document id -> its rows (only updates use it)

    @property
    def vectors(self) -> np.ndarray:
        """One normalised row per chunk (a removed one's too: mind ``alive``)."""
        return self._vectors[: self.rows]

    @property
    def chinese(self) -> np.ndarray:
        """Per row: the chunk is mostly Chinese."""
        return self._chinese[: self.rows]

    def similarity(self, query_vector: np.ndarray, query_chinese: bool) -> np.ndarray:
        """The question's cosine similarity to each row: with each language's mean taken out
        where the model has measured ones (rag.search.language_means), else plain."""
        means = means_for(self.model)
        if means is None:
            return self.vectors @ query_vector if self.rows else np.zeros(0, dtype=np.float32)
        return means.similarity(self.vectors, self.chinese, self._norms[: self.rows], query_vector, query_chinese)

    @classmethod
    def read(cls, store: ChromaStore, collection: str, generation: int) -> CollectionCache:
        """The whole collection, read from the store in batches."""
        ids = store.ids(collection)
        cache = cls(generation, store.model_of(collection) or store.embed_model, KeywordIndex())
        for start in range(0, len(ids), READ_BATCH):
            cache._append(store.get(collection, ids[start : start + READ_BATCH], texts=False, embeddings=True))
        return cache

    def updated(self, store: ChromaStore, collection: str, changes: Changes) -> CollectionCache | None:
        """This cache with the changes made since its generation; None when the collection must be read whole."""
        if changes.doc_ids is None or len(changes.doc_ids) > REREAD_SHARE * len(self._documents):
            return None
        chunks = store.of_documents(collection, sorted(changes.doc_ids), texts=False, embeddings=True)
        if (store.model_of(collection) or store.embed_model) != self.model or any(c.embedding is None or len(c.embedding) != self._vectors.shape[1] for c in chunks):
            return None  # re-embedded, with vectors of another model
        gone = [row for doc_id in changes.doc_ids for row in self._documents.pop(doc_id, [])]
        new = copy.copy(self)
        new.generation = changes.generation
        new.alive = self.alive.copy()
        new.alive[gone] = False
        new.live -= len(gone)
        new.keyword = copy.copy(self.keyword)
        new.keyword.remove(gone)
        new._append(chunks)
        if new.rows - new.live > COMPACT_SHARE * new.rows:
            new._compact()
        return new

    def _append(self, chunks: Sequence[StoredChunk]) -> None:
        if not chunks:
            return
        vectors = np.asarray([c.embedding for c in chunks], dtype=np.float32).reshape(len(chunks), -1)
        keywords = [str(c.metadata.get("keywords", "")).split() for c in chunks]
        first, end = self.rows, self.rows + len(chunks)
        if end > len(self._vectors) or vectors.shape[1] != self._vectors.shape[1]:
            self._grow(end, vectors.shape[1])
        self._vectors[first:end] = vectors
        self._chinese[first:end] = [mostly_chinese(k) for k in keywords]
        means = means_for(self.model)
        self._norms[first:end] = 1.0 if means is None else means.row_norms(vectors, self._chinese[first:end])
        self.alive = np.concatenate([self.alive, np.ones(len(chunks), dtype=bool)])
        self.live += len(chunks)
        del self.ids[first:]  # what an update that failed half-way left
        self.ids.extend(c.id for c in chunks)
        self.rows = end
        for row, chunk in enumerate(chunks, first):
            self._documents.setdefault(str(chunk.metadata.get("document_id", chunk.id)), []).append(row)
        self.keyword.add(keywords)
        self.fetched += len(chunks)

    def _grow(self, rows: int, width: int) -> None:
        """New buffers with room for ``rows`` rows and some more (older caches keep the old ones)."""
        capacity = rows + max(1024, int(rows * HEADROOM))
        assert not self.rows or width == self._vectors.shape[1], "vectors of another width"
        vectors = np.zeros((capacity, width), dtype=np.float32)
        chinese = np.zeros(capacity, dtype=bool)
        norms = np.ones(capacity, dtype=np.float32)
        if self.rows:
            vectors[: self.rows] = self._vectors[: self.rows]
            chinese[: self.rows] = self._chinese[: self.rows]
            norms[: self.rows] = self._norms[: self.rows]
        self._vectors, self._chinese, self._norms = vectors, chinese, norms

    def _compact(self) -> None:
        """Only the live rows, renumbered in their order, in new buffers."""
        keep = np.flatnonzero(self.alive)
        renumber = np.full(self.rows, -1, dtype=np.int64)
        renumber[keep] = np.arange(len(keep))
        capacity = len(keep) + max(1024, int(len(keep) * HEADROOM))
        vectors = np.zeros((capacity, self._vectors.shape[1]), dtype=np.float32)
        chinese = np.zeros(capacity, dtype=bool)
        norms = np.ones(capacity, dtype=np.float32)
        vectors[: len(keep)], chinese[: len(keep)], norms[: len(keep)] = self._vectors[keep], self._chinese[keep], self._norms[keep]
        self._vectors, self._chinese, self._norms = vectors, chinese, norms
        self.ids = [self.ids[k] for k in keep]
        self.rows = len(keep)
        self.alive = np.ones(len(keep), dtype=bool)
        self._documents = {doc_id: [int(renumber[r]) for r in rows] for doc_id, rows in self._documents.items()}
        self.keyword.keep(keep)
