"""One SQLite file in the data dir (the index manifest, the run history, the index lease).

One connection per file and process, shared by its threads under a lock; WAL, so readers in
other processes are not blocked; errors name the file and what to do.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from config.errors import StoreError


class SqliteFile:
    def __init__(self, path: Path, schema: str, what: str) -> None:
        self.path = path
        self._what = what  # how errors name the file, e.g. "the index manifest"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(schema)
        except sqlite3.Error as exc:
            raise StoreError(f"{what} {path} cannot be opened: {exc}", "check the data dir's permissions and disk space") from exc

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the database's write lock up front."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"{self._what} {self.path} cannot be written: {exc}", "another process holds it; try again") from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _read(self, query: str, args: Iterable[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(query, tuple(args)).fetchall()
            except sqlite3.OperationalError as exc:
                raise StoreError(f"{self._what} {self.path} cannot be read: {exc}", "another process holds it; try again") from exc
