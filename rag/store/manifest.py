"""The index manifest: which file is indexed in which collection, with what content hash.

In the state database (rag.store.database: ``index.sqlite`` in the data dir, or PostgreSQL
shared by every replica). A file's row is marked ``pending``
before its chunks in Chroma are touched and ``indexed`` after, so a run that dies half-way
leaves rows that say which documents the next run must redo: no duplicate or orphan chunks.
Each collection has a generation number that changes whenever its chunks change, which is
how searches in other processes know their cache of the collection is out of date; the
change log says which documents each generation changed, so that a cache reads only those
again (``changes_since``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from rag.store.database import Stored, Transaction

State = Literal["pending", "indexed", "failed"]

MIGRATIONS = [
    """
CREATE TABLE IF NOT EXISTS files (
    collection TEXT NOT NULL,
    doc_id     TEXT NOT NULL,
    root       TEXT NOT NULL,   -- the folder the path is relative to
    path       TEXT NOT NULL,   -- relative to root, with '/' separators
    sha256     TEXT NOT NULL,   -- of the content last indexed (or last failed)
    size       INTEGER NOT NULL,
    title      TEXT NOT NULL DEFAULT '',
    chunks     INTEGER NOT NULL DEFAULT 0,
    state      TEXT NOT NULL,   -- pending | indexed | failed
    error      TEXT NOT NULL DEFAULT '',
    indexed_at REAL NOT NULL,
    PRIMARY KEY (collection, doc_id)
);
CREATE INDEX IF NOT EXISTS files_by_root ON files (collection, root);
CREATE TABLE IF NOT EXISTS generations (
    collection TEXT PRIMARY KEY,
    generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    collection TEXT NOT NULL,
    generation INTEGER NOT NULL,
    doc_ids    TEXT,            -- JSON list of the documents whose chunks this generation changed; NULL: any may have
    PRIMARY KEY (collection, generation)
);
""",
    """
CREATE TABLE IF NOT EXISTS store_binding (   -- with shared state: the one Chroma store these rows describe
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    store TEXT NOT NULL                      -- ChromaStore.identity
);
""",
]
# Generations of each collection the change log keeps; a cache further behind reads the whole collection again.
CHANGE_LOG_GENERATIONS = 2000


FILE_COLUMNS = ("collection", "doc_id", "root", "path", "sha256", "size", "title", "chunks", "state", "error", "indexed_at")


@dataclass(frozen=True)
class FileRecord:
    collection: str
    doc_id: str
    root: str
    path: str
    sha256: str
    size: int
    title: str
    chunks: int
    state: State
    error: str
    indexed_at: float


@dataclass(frozen=True)
class Changes:
    generation: int  # the collection's generation now
    doc_ids: frozenset[str] | None  # the documents whose chunks changed since the one asked about; None: unknown (read all)


class Manifest(Stored):
    COMPONENT, WHAT, MIGRATIONS = "manifest", "the index manifest", MIGRATIONS
    FILE = "index.sqlite"

    def bind_store(self, identity: str) -> str:
        """Records the Chroma store these rows describe, if none is yet; returns the one recorded."""
        with self._write() as db:
            db.execute("INSERT INTO store_binding VALUES (1, ?) ON CONFLICT (id) DO NOTHING", (identity,))
            row = db.execute("SELECT store FROM store_binding WHERE id = 1").fetchone()
        return str(row["store"]) if row else identity

    def files(self, collection: str, root: str | None = None) -> dict[str, FileRecord]:
        """Rows of a collection (under one root, if given), by doc_id."""
        query, args = "SELECT * FROM files WHERE collection = ?", [collection]
        if root is not None:
            query, args = query + " AND root = ?", [collection, root]
        return {row["doc_id"]: FileRecord(**dict(row)) for row in self._read(query, args)}

    def indexed(self) -> list[FileRecord]:
        """Every indexed file of every collection."""
        return [FileRecord(**dict(row)) for row in self._read("SELECT * FROM files WHERE state = 'indexed' ORDER BY collection, path")]
    def collections(self) -> list[str]:
        """Every collection with at least one file."""
        return [row["collection"] for row in self._read("SELECT DISTINCT collection FROM files ORDER BY collection")]

    def get(self, collection: str, doc_id: str) -> FileRecord | None:
        rows = self._read("SELECT * FROM files WHERE collection = ? AND doc_id = ?", (collection, doc_id))
        return FileRecord(**dict(rows[0])) if rows else None

    def mark_pending(self, records: Iterable[FileRecord]) -> None:
        """Before a document's chunks change: if the run dies now, the next run redoes it."""
        with self._write() as db:
            for r in records:
                db.execute(
                    """INSERT INTO files (collection, doc_id, root, path, sha256, size, state, indexed_at)
                       VALUES (?, ?, ?, ?, '', ?, 'pending', ?)
                       ON CONFLICT (collection, doc_id) DO UPDATE SET state = 'pending'""",
                    (r.collection, r.doc_id, r.root, r.path, r.size, time.time()),
                )

    def save(self, records: Iterable[FileRecord]) -> None:
        records = list(records)
        with self._write() as db:
            db.executemany(
                f"""INSERT INTO files ({", ".join(FILE_COLUMNS)}) VALUES ({", ".join("?" * len(FILE_COLUMNS))})
                   ON CONFLICT (collection, doc_id) DO UPDATE SET {", ".join(f"{c} = excluded.{c}" for c in FILE_COLUMNS[2:])}""",
                [[getattr(r, c) for c in FILE_COLUMNS] for r in records],
            )
            changed: dict[str, list[str]] = {}
            for r in records:
                if r.state != "failed":  # a failed file keeps the chunks it had
                    changed.setdefault(r.collection, []).append(r.doc_id)
            self._bump(db, changed)

    def rename_root(self, collection: str, old: str, new: str) -> None:
        """The rows of a scanned folder named ``old`` renamed ``new`` (their documents and chunks unchanged).
        Called at every index run: a read when there is nothing to rename, a write only when there is."""
        if not self._read("SELECT 1 FROM files WHERE collection = ? AND root = ? LIMIT 1", (collection, old)):
            return
        with self._write() as db:
            db.execute("UPDATE files SET root = ? WHERE collection = ? AND root = ?", (new, collection, old))

    def remove(self, collection: str, doc_ids: Iterable[str]) -> None:
        with self._write() as db:
            doc_ids = list(doc_ids)
            db.executemany("DELETE FROM files WHERE collection = ? AND doc_id = ?", [(collection, d) for d in doc_ids])
            self._bump(db, {collection: doc_ids})

    def drop_collection(self, collection: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM files WHERE collection = ?", (collection,))
            self._bump(db, {collection: None})

    def generation(self, collection: str) -> int:
        rows = self._read("SELECT generation FROM generations WHERE collection = ?", (collection,))
        return int(rows[0]["generation"]) if rows else 0

    def changes_since(self, collection: str, generation: int) -> Changes:
        """The collection's generation now, and which documents' chunks changed after ``generation``."""
        now = self.generation(collection)
        if now == generation:
            return Changes(now, frozenset())
        rows = self._read(
            "SELECT doc_ids FROM changes WHERE collection = ? AND generation > ? AND generation <= ?", (collection, generation, now)
        )
        if len(rows) != now - generation or any(row["doc_ids"] is None for row in rows):
            return Changes(now, None)  # the log was pruned, began later, or says "everything"
        return Changes(now, frozenset(doc_id for row in rows for doc_id in json.loads(row["doc_ids"])))

    @staticmethod
    def _bump(db: Transaction, changed: dict[str, list[str] | None]) -> None:
        """A new generation for each collection, logged with the documents it changed (None: any)."""
        for collection, doc_ids in changed.items():
            row = db.execute(
                """INSERT INTO generations VALUES (?, 1)
                   ON CONFLICT (collection) DO UPDATE SET generation = generations.generation + 1 RETURNING generation""",
                (collection,),
            ).fetchone()
            generation = row["generation"] if row else 0
            db.execute(
                "INSERT INTO changes VALUES (?, ?, ?) ON CONFLICT (collection, generation) DO UPDATE SET doc_ids = excluded.doc_ids",
                (collection, generation, None if doc_ids is None else json.dumps(doc_ids)),
            )
            db.execute("DELETE FROM changes WHERE collection = ? AND generation <= ?", (collection, generation - CHANGE_LOG_GENERATIONS))
