"""The index lease: which of several `teambot serve` replicas runs the re-index.

One row in ``<data_dir>/index-runs.sqlite``: the holder and when its lease expires. The holder
renews it every third of ``rag.lease_ttl_s``; a replica that sees the row unchanged for a whole
TTL (its holder died or hung) takes it over. Replicas must share the data dir (one host, or a
shared filesystem with working POSIX locks).

One clock decides: each process's own monotonic clock. The holder counts its lease from the
moment it started the renewal that wrote it (so it gives up no later than anyone could take
over); another replica counts from the moment it first saw the row as it is now. Nobody
compares a time written by one host's clock with another's. ``expires_at`` (the holder's wall
clock) is kept for people: `teambot status` shows it.
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
DEFAULT_WAIT_S = 30.0  # for the database's write lock, unless the caller says otherwise


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
        """By the holder's wall clock against this one's: for `teambot status` and one-shot commands, not for taking the lease."""
        return self.expires_at > time.time()


class IndexLease(SqliteFile):
    def __init__(self, path: Path, holder: str, ttl_s: float) -> None:
        super().__init__(path, SCHEMA, "the index lease in")
        self.holder, self.ttl_s = holder, ttl_s
        self._held_until: float | None = None  # monotonic: when this process's lease runs out unless renewed
        self._seen: tuple[str, float] | None = None  # another holder's row (holder, expires_at) as last read
        self._seen_since = 0.0  # monotonic: when that row was first read as it is

    def time_left(self) -> float:
        """Seconds this process still holds the lease without renewing it (0 when it does not hold it)."""
        return 0.0 if self._held_until is None else max(self._held_until - time.monotonic(), 0.0)

    def acquire(self, info: dict[str, Any] | None = None, wait_s: float = DEFAULT_WAIT_S) -> bool:
        """Takes the lease if it is free or its holder stopped renewing it, or renews it if held; True if
        this process holds it now. Waits at most ``wait_s`` for the database's write lock (StoreError after)."""
        started = time.monotonic()
        with self._lock:
            try:
                self._db.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute("SELECT holder, expires_at FROM lease WHERE name = ?", (LEASE_NAME,)).fetchone()
                    mine = row is None or row[0] == self.holder or self._stale((row[0], row[1]))
                    if mine:
                        self._db.execute(
                            "INSERT OR REPLACE INTO lease VALUES (?, ?, ?, ?)",
                            (LEASE_NAME, self.holder, time.time() + self.ttl_s, json.dumps(info or {})),
                        )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                raise StoreError(f"the index lease in {self.path} cannot be written: {exc}", "another process holds the database; it is retried") from exc
        self._held_until = started + self.ttl_s if mine else None
        return mine

    def _stale(self, row: tuple[str, float]) -> bool:
        """Whether another holder's row has stayed as it is for a whole TTL, by this process's clock."""
        now = time.monotonic()
        if row != self._seen:
            self._seen, self._seen_since = row, now
            return False
        return now - self._seen_since >= self.ttl_s

    def release(self) -> None:
        """Gives the lease up at once (on a clean stop), so another replica need not wait for it to expire."""
        with self._lock:
            self._db.execute("DELETE FROM lease WHERE name = ? AND holder = ?", (LEASE_NAME, self.holder))
        self._held_until = None

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
