"""The index lease: which of several `teambot serve` replicas runs the re-index.

One row in ``<data_dir>/index-runs.sqlite``: the holder and when its lease expires. The holder
renews it every third of ``rag.lease_ttl_s``; a replica that finds it expired (its holder died
or hung) takes it over. Replicas must share the data dir (one host, or a shared filesystem
with working POSIX locks) and have clocks in step to within a fraction of the TTL.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.errors import StoreError
from rag.store.sqlite_file import SqliteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at REAL NOT NULL,
    info       TEXT NOT NULL DEFAULT '{}'  -- JSON: pid, host, http address, next scheduled run
);
"""
LEASE_NAME = "index"


def new_holder_id() -> str:
    """Names this process: host, pid and a random part (a pid can be reused after a restart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class LeaseState:
    holder: str
    expires_at: float
    info: dict[str, Any]

    @property
    def alive(self) -> bool:
        return self.expires_at > time.time()


class IndexLease(SqliteFile):
    def __init__(self, path: Path, holder: str, ttl_s: float) -> None:
        super().__init__(path, SCHEMA, "the index lease in")
        self.holder, self.ttl_s = holder, ttl_s

    def acquire(self, info: dict[str, Any] | None = None) -> bool:
        """Takes the lease if it is free or expired, or renews it if held; True if this process holds it now."""
        now = time.time()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute("SELECT holder, expires_at FROM lease WHERE name = ?", (LEASE_NAME,)).fetchone()
                    mine = row is None or row[0] == self.holder or row[1] <= now
                    if mine:
                        self._db.execute(
                            "INSERT OR REPLACE INTO lease VALUES (?, ?, ?, ?)",
                            (LEASE_NAME, self.holder, now + self.ttl_s, json.dumps(info or {})),
                        )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                raise StoreError(f"the index lease in {self.path} cannot be written: {exc}", "another process holds the database; it is retried") from exc
        return mine

    def release(self) -> None:
        """Gives the lease up at once (on a clean stop), so another replica need not wait for it to expire."""
        with self._lock:
            self._db.execute("DELETE FROM lease WHERE name = ? AND holder = ?", (LEASE_NAME, self.holder))

    def current(self) -> LeaseState | None:
        return read_lease(self._db, self._lock)


def current_lease(path: Path) -> LeaseState | None:
    """The lease as another process sees it (for `teambot status` and `teambot index`); None if never taken."""
    if not path.exists():
        return None
    db = sqlite3.connect(path, timeout=30)
    try:
        db.executescript(SCHEMA)
        return read_lease(db, threading.Lock())
    finally:
        db.close()


def read_lease(db: sqlite3.Connection, lock: threading.Lock) -> LeaseState | None:
    with lock:
        row = db.execute("SELECT holder, expires_at, info FROM lease WHERE name = ?", (LEASE_NAME,)).fetchone()
    return LeaseState(row[0], row[1], json.loads(row[2])) if row else None
