"""The index lease: which of several `teambot serve` replicas runs the re-index.

One row in the state database (``<data_dir>/index-runs.sqlite``, or PostgreSQL shared by
every replica): the holder and when its lease expires. The holder renews it every third of
``rag.lease_ttl_s``; another replica takes it over when the holder stopped renewing it (it died
or hung).

Which clock decides:
- PostgreSQL: the database's. ``expires_at`` is written and compared with the server's clock
  in the same statement, so replicas on hosts whose clocks disagree still agree on expiry.
  A leased row rather than an advisory lock: an advisory lock lives as long as its holder's
  connection, so a holder that hangs with its connection open would keep it forever, and a
  connection pooler in between breaks it; the row also says who holds it (`teambot status`).
- SQLite (one host, or a shared filesystem): each process's own monotonic clock. Another
  replica takes over after it has seen the row unchanged for a whole TTL; nobody compares a
  time written by one host's clock with another's. ``expires_at`` is kept for people.

Either way the holder counts its lease from the moment it started the renewal that wrote it,
so it gives up no later than anyone could take over.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.store.database import Database, SqliteDatabase, Stored

MIGRATIONS = [
    """
CREATE TABLE IF NOT EXISTS lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at REAL NOT NULL,
    info       TEXT NOT NULL DEFAULT '{}'  -- JSON: pid, host, http address, next scheduled run
);
""",
]
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
    alive: bool  # not expired, by the database's clock (PostgreSQL) or this host's (SQLite): for `teambot status`, not for taking the lease


class IndexLease(Stored):
    COMPONENT, WHAT, MIGRATIONS = "lease", "the index lease", MIGRATIONS
    FILE = "index-runs.sqlite"

    def __init__(self, db: Database | Path, holder: str, ttl_s: float) -> None:
        super().__init__(db)
        self.holder, self.ttl_s = holder, ttl_s
        self._held_until: float | None = None  # monotonic: when this process's lease runs out unless renewed
        self._seen: tuple[str, float] | None = None  # another holder's row (holder, expires_at) as last read (SQLite)
        self._seen_since = 0.0  # monotonic: when that row was first read as it is

    def time_left(self) -> float:
        """Seconds this process still holds the lease without renewing it (0 when it does not hold it)."""
        return 0.0 if self._held_until is None else max(self._held_until - time.monotonic(), 0.0)

    def acquire(self, info: dict[str, Any] | None = None, wait_s: float = DEFAULT_WAIT_S) -> bool:
        """Takes the lease if it is free or its holder stopped renewing it, or renews it if held; True if
        this process holds it now. Waits at most ``wait_s`` for the database's write lock (StoreError after)."""
        started = time.monotonic()
        info_json = json.dumps(info or {})
        if isinstance(self.db, SqliteDatabase):
            self.db.set_busy_timeout(wait_s)
        with self.db.write() as tx:
            if self.db.backend == "postgresql":
                row = tx.execute(
                    f"""INSERT INTO lease VALUES (?, ?, {self.db.now} + ?, ?)
                        ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at, info = excluded.info
                        WHERE lease.holder = excluded.holder OR lease.expires_at < {self.db.now}
                        RETURNING holder""",
                    (LEASE_NAME, self.holder, self.ttl_s, info_json),
                ).fetchone()
                mine = row is not None
            else:
                row = tx.execute("SELECT holder, expires_at FROM lease WHERE name = ?", (LEASE_NAME,)).fetchone()
                mine = row is None or row["holder"] == self.holder or self._stale((row["holder"], row["expires_at"]))
                if mine:
                    tx.execute(
                        """INSERT INTO lease VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE
                           SET holder = excluded.holder, expires_at = excluded.expires_at, info = excluded.info""",
                        (LEASE_NAME, self.holder, time.time() + self.ttl_s, info_json),
                    )
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
        with self.db.write() as tx:
            tx.execute("DELETE FROM lease WHERE name = ? AND holder = ?", (LEASE_NAME, self.holder))
        self._held_until = None

    def current(self) -> LeaseState | None:
        return read_lease(self.db)


def read_lease(db: Database) -> LeaseState | None:
    """The lease as any process sees it (for `teambot status` and `teambot index`); None if never taken."""
    db.ensure(IndexLease.COMPONENT, MIGRATIONS)
    rows = db.read(f"SELECT holder, expires_at, info, expires_at > {db.now} AS alive FROM lease WHERE name = ?", (LEASE_NAME,))
    if not rows:
        return None
    row = rows[0]
    return LeaseState(row["holder"], row["expires_at"], json.loads(row["info"]), bool(row["alive"]))
