"""The Chroma store: one Chroma collection per teambot collection, in ``<data_dir>/chroma``.

Writes go through llama-index's ChromaVectorStore; reads ask Chroma directly. Each collection
records the embedding model its vectors came from, and refuses vectors of another model. When
``rag.embed_model`` changes, the indexer re-embeds a collection into a staging collection
(``NAME.next``) while the live one keeps answering with its own model, then swaps it in
(``swap_in``); a swap cut short is finished or undone by ``recover``.

Chroma waits for as long as another process holds its SQLite database locked, even to read,
and freezes the whole process meanwhile (see rag.store.sqlite_lock). So each call first waits, for
at most ``rag.store_timeout_s``, until no other process's lock is in its way, and otherwise
fails with a StoreError naming that process.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from config.errors import ConfigError, StoreError
from rag.store.sqlite_lock import SqliteLockProbe

if TYPE_CHECKING:
    import chromadb
    from llama_index.core.schema import TextNode

log = logging.getLogger(__name__)

T = TypeVar("T")

CHROMA_PREFIX = "kb-"
EMBED_MODEL_KEY = "embed_model"
COMPLETE_KEY = "complete"  # a staging collection that holds every document
# Ids (or documents) one read asks for: SQLite refuses a statement with more than 32,766
# variables ("too many SQL variables"), and Chroma binds one or more per id.
READ_BATCH = 5000
DOCUMENTS_BATCH = 500
STAGING = ".next"  # suffixes of the collections a re-embedding uses (teambot's own names have no ".")
RETIRED = ".old"


@dataclass(frozen=True)
class StoredChunk:
    id: str
    text: str
    metadata: dict[str, Any]
    similarity: float | None = None  # cosine similarity to the query, when queried
    embedding: Sequence[float] | None = field(default=None, repr=False)


def _unreachable(exc: BaseException) -> bool:
    """A connection failure, as chromadb's HTTP client reports it (httpx errors, or a ValueError at connect)."""
    import httpx

    return isinstance(exc, (httpx.TransportError, ConnectionError)) or (isinstance(exc, ValueError) and "connect" in str(exc).lower())


def store_identity(path: Path, url: str | None) -> str:
    """Names a Chroma store the same way in every process: the server's URL, or host and path of an embedded one."""
    return url or f"embedded on {socket.gethostname()} at {path}"


class ChromaStore:
    def __init__(self, path: Path, embed_model: str, timeout_s: float = 30.0, url: str | None = None) -> None:
        self.path = path
        self.url = url  # a Chroma server (rag.chroma_url) instead of the embedded store at path
        self.embed_model = embed_model
        self.timeout_s = timeout_s
        self._client: chromadb.ClientAPI | None = None
        self._collections: dict[str, chromadb.Collection] = {}
        self._lock_probe = SqliteLockProbe(path / "chroma.sqlite3")

    @property
    def identity(self) -> str:
        """Which store this is, the same for every process that uses it: the server's URL, or host and path."""
        return store_identity(self.path, self.url)

    @property
    def location(self) -> str:
        """Where the store is, for messages."""
        return f"the Chroma server at {self.url}" if self.url else f"the Chroma store at {self.path}"

    def _unlocked(self, action: str, writing: bool) -> None:
        """Returns once no other process's lock stands in the way; a StoreError after rag.store_timeout_s."""
        if self.url:
            return  # a server serialises its clients itself
        pid = self._lock_probe.wait(writing, self.timeout_s)
        if pid is not None:
            raise StoreError(
                f"the Chroma store at {self.path} is locked by process {pid} (waited rag.store_timeout_s = {self.timeout_s:g} s to {action})",
                f"another teambot writing, a sqlite3 shell or a backup holds it: let process {pid} finish, then try again",
            )

    def _chroma(self) -> chromadb.ClientAPI:
        if self._client is None:
            os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
            import chromadb

            with self._guard("open"):
                if self.url:
                    url = urlsplit(self.url)
                    self._client = chromadb.HttpClient(
                        host=url.hostname or "127.0.0.1", port=url.port or (443 if url.scheme == "https" else 8000),
                        ssl=url.scheme == "https", settings=chromadb.Settings(anonymized_telemetry=False),
                    )  # fmt: skip
                else:
                    self.path.mkdir(parents=True, exist_ok=True)
                    self._client = chromadb.PersistentClient(path=str(self.path), settings=chromadb.Settings(anonymized_telemetry=False))
        return self._client

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turns Chroma's failures into a StoreError that says where and what to do."""
        from chromadb.errors import ChromaError

        try:
            yield
        except Exception as exc:
            if self.url and not isinstance(exc, ChromaError) and _unreachable(exc):
                raise StoreError(
                    f"cannot reach the Chroma server at {self.url} to {action} ({type(exc).__name__})",
                    "start it (`chroma run --path DIR --host 127.0.0.1 --port PORT`) or fix rag.chroma_url",
                ) from exc
            if not isinstance(exc, (ChromaError, sqlite3.Error, OSError)):
                raise
            text = str(exc)
            if self.url:
                raise StoreError(f"the Chroma server at {self.url} failed to {action}: {text}", "see the Chroma server's log") from exc
            if "locked" in text.lower():
                raise StoreError(
                    f"the Chroma store at {self.path} is locked ({action})",
                    "another process is writing to it; try again in a moment",
                ) from exc
            raise StoreError(f"the Chroma store at {self.path} failed to {action}: {text}", "check the data dir's disk space and permissions") from exc

    def collection(self, name: str, create: bool = False) -> chromadb.Collection | None:
        """The Chroma collection of teambot collection ``name``; None if it does not exist and ``create`` is false."""
        self._unlocked(f"open collection {name!r}", writing=create)
        return self._collection(name, create)

    def _collection(self, name: str, create: bool) -> chromadb.Collection | None:
        if name in self._collections:
            return self._collections[name]
        from chromadb.errors import NotFoundError

        client = self._chroma()
        chroma_name = CHROMA_PREFIX + name
        with self._guard(f"open collection {name!r}"):
            if create:
                collection = client.get_or_create_collection(
                    chroma_name,
                    configuration={"hnsw": {"space": "cosine"}},
                    metadata={EMBED_MODEL_KEY: self.embed_model},
                    embedding_function=None,
                )
            else:
                try:
                    collection = client.get_collection(chroma_name, embedding_function=None)
                except NotFoundError:
                    return None
        self._collections[name] = collection
        return collection

    def model_of(self, name: str) -> str | None:
        """The embedding model the collection's vectors came from; None if it does not exist."""
        collection = self.collection(name)
        return None if collection is None else str((collection.metadata or {}).get(EMBED_MODEL_KEY) or self.embed_model)

    def start_staging(self, name: str) -> str:
        """An empty staging collection for re-embedding ``name`` with rag.embed_model (a leftover one is dropped); its name."""
        staging = name + STAGING
        self.drop(staging)
        self.collection(staging, create=True)
        return staging

    def swap_in(self, name: str) -> None:
        """Makes the complete staging collection the live ``name``; the old one is dropped."""
        staging = self.collection(name + STAGING)
        assert staging is not None, "no staging collection"
        with self._guard(f"finish re-embedding collection {name!r}"):
            staging.modify(metadata={EMBED_MODEL_KEY: self.embed_model, COMPLETE_KEY: True})
        self._rename(name, name + RETIRED)
        self._rename(name + STAGING, name)
        self.drop(name + RETIRED)

    def recover(self, name: str) -> None:
        """Finishes a swap that a crash cut short (or undoes it, when the staging collection was not complete)."""
        if self.collection(name) is not None or self.collection(name + RETIRED) is None:
            return
        staging = self.collection(name + STAGING)
        if staging is not None and (staging.metadata or {}).get(COMPLETE_KEY):
            log.warning("finishing the re-embedding of collection %s that was cut short", name)
            self._rename(name + STAGING, name)
            self.drop(name + RETIRED)
        else:
            log.warning("undoing the re-embedding of collection %s that was cut short", name)
            self._rename(name + RETIRED, name)

    def _rename(self, old: str, new: str) -> None:
        collection = self.collection(old)
        if collection is None:
            return
        self._unlocked(f"rename collection {old!r}", writing=True)
        with self._guard(f"rename collection {old!r} to {new!r}"):
            collection.modify(name=CHROMA_PREFIX + new)
        self._collections.pop(old, None)
        self._collections.pop(new, None)

    def collections(self) -> list[str]:
        self._unlocked("list collections", writing=False)
        with self._guard("list collections"):
            names = [c.name for c in self._chroma().list_collections()]
        return sorted(n[len(CHROMA_PREFIX):] for n in names if n.startswith(CHROMA_PREFIX) and "." not in n)

    def _on(
        self, name: str, action: str, work: Callable[[chromadb.Collection], T], *, missing: T, writing: bool = False, create: bool = False
    ) -> T:
        """Runs ``work`` on a collection (``missing`` if it does not exist). A handle that went stale,
        because another process dropped and re-made the collection, is renewed once."""
        from chromadb.errors import NotFoundError

        self._unlocked(f"{action} collection {name!r}", writing or create)
        for attempt in (1, 2):
            collection = self._collection(name, create)
            if collection is None:
                return missing
            try:
                with self._guard(f"{action} collection {name!r}"):
                    return work(collection)
            except StoreError as exc:
                if attempt == 2 or not isinstance(exc.__cause__, NotFoundError):
                    raise
                self._collections.pop(name, None)
        raise AssertionError("unreachable")

    def add(self, name: str, nodes: Sequence[TextNode]) -> None:
        from llama_index.vector_stores.chroma import ChromaVectorStore

        recorded = self.model_of(name)
        if recorded is not None and recorded != self.embed_model:
            raise ConfigError(
                f"collection {name!r} was embedded with {recorded}, not with rag.embed_model = {self.embed_model}",
                f"run `teambot index --collection {name}`: it re-embeds the collection first",
            )
        self._on(name, "write to", lambda c: ChromaVectorStore(chroma_collection=c).add(list(nodes)), missing=None, writing=True, create=True)

    def delete_documents(self, name: str, doc_ids: Sequence[str]) -> None:
        """Removes every chunk of these documents (the chunks whose document_id is one of them)."""
        if doc_ids:
            self._on(name, "delete from", lambda c: c.delete(where={"document_id": {"$in": list(doc_ids)}}), missing=None, writing=True)

    def drop(self, name: str) -> None:
        self._on(name, "drop", lambda c: self._chroma().delete_collection(c.name), missing=None, writing=True)
        self._collections.pop(name, None)

    def count(self, name: str) -> int:
        return self._on(name, "count", lambda c: c.count(), missing=0)

    def query(self, name: str, embedding: Sequence[float], limit: int) -> list[StoredChunk]:
        """The ``limit`` chunks nearest to ``embedding``, with their cosine similarity."""

        def nearest(collection: chromadb.Collection) -> list[StoredChunk]:
            result = collection.query(query_embeddings=[list(embedding)], n_results=limit, include=["documents", "metadatas", "distances"])
            rows = zip(result["ids"][0], result["documents"][0], result["metadatas"][0], result["distances"][0])
            return [StoredChunk(id=i, text=text or "", metadata=dict(meta or {}), similarity=1.0 - distance) for i, text, meta, distance in rows]

        return self._on(name, "search", nearest, missing=[])

    def ids(self, name: str) -> list[str]:
        """Every chunk id of the collection (one read that fetches nothing else)."""
        return self._on(name, "read", lambda c: list(c.get(include=[])["ids"]), missing=[])

    def get(self, name: str, ids: Sequence[str] | None = None, *, texts: bool = True, embeddings: bool = False) -> list[StoredChunk]:
        """Chunks by id (all of the collection when ``ids`` is None), with their metadata; read READ_BATCH ids at a time."""
        if ids is None:
            ids = self.ids(name)
        return [chunk for k in range(0, len(ids), READ_BATCH) for chunk in self._read(name, texts, embeddings, ids=list(ids[k : k + READ_BATCH]))]

    def of_documents(self, name: str, doc_ids: Sequence[str], *, texts: bool = True, embeddings: bool = False) -> list[StoredChunk]:
        """Every chunk of these documents (the chunks whose document_id is one of them)."""
        doc_ids = list(doc_ids)
        return [
            chunk
            for k in range(0, len(doc_ids), DOCUMENTS_BATCH)
            for chunk in self._read(name, texts, embeddings, where={"document_id": {"$in": doc_ids[k : k + DOCUMENTS_BATCH]}})
        ]

    def _read(self, name: str, texts: bool, embeddings: bool, **which: Any) -> list[StoredChunk]:
        include = ["metadatas"] + (["documents"] if texts else []) + (["embeddings"] if embeddings else [])

        def read(collection: chromadb.Collection) -> list[StoredChunk]:
            result = collection.get(**which, include=include)
            documents = result.get("documents") if texts else None
            vectors = result.get("embeddings") if embeddings else None
            return [
                StoredChunk(
                    id=chunk_id,
                    text=(documents[k] or "") if documents is not None else "",
                    metadata=dict(result["metadatas"][k] or {}),
                    embedding=vectors[k] if vectors is not None else None,
                )
                for k, chunk_id in enumerate(result["ids"])
            ]

        return self._on(name, "read", read, missing=[])
