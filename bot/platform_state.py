"""What the chat platforms and the console need every replica to agree on, in the state database
(``<data_dir>/platform.sqlite``, or PostgreSQL shared by every replica):

- ``SeenOnce``: keys already handled (Slack's event ids, signed requests), each for a time to
  live, so that a retry delivered to another replica is not answered again;
- ``ConsoleSessions``: signed-in console sessions, so a load balancer may send a browser's next
  request to any replica. Only a MAC of each session id is stored, keyed by a key derived from
  the admin token (``session_key``): a session is valid only where teambot runs with the token
  it was signed in with, so changing the token ends every session on every replica, and the
  stored rows neither reveal the token nor let anyone who reads them make a session.

Times are the database's clock (``Database.now``), one clock for every replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from pathlib import Path

from config.errors import TeambotError
from rag.store.database import Database, Stored

log = logging.getLogger(__name__)

MIGRATIONS = [
    """
CREATE TABLE IF NOT EXISTS seen_once (
    seen_key   TEXT PRIMARY KEY,   -- e.g. "slack-event:Ev123"
    expires_at REAL NOT NULL       -- the database's clock: after this the key may be handled again
);
CREATE INDEX IF NOT EXISTS seen_once_by_expiry ON seen_once (expires_at);
CREATE TABLE IF NOT EXISTS console_sessions (
    id_sha256  TEXT PRIMARY KEY,   -- HMAC-SHA256 of the session id the browser's cookie holds, keyed by session_key(admin token)
    expires_at REAL NOT NULL
);
""",
]
PRUNE_EVERY = 200  # expired rows are deleted on every this many claims


class PlatformState(Stored):
    COMPONENT, WHAT, MIGRATIONS = "platform_state", "the platforms' shared state", MIGRATIONS
    FILE = "platform.sqlite"

    def __init__(self, db: Database | Path) -> None:
        super().__init__(db)
        self.seen = SeenOnce(self.db)
        self.sessions = ConsoleSessions(self.db)


class SeenOnce:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._claims = 0

    def claim(self, key: str, ttl_s: float) -> bool:
        """True the first time ``key`` is claimed within ``ttl_s`` (by any replica); False after."""
        now = self._db.now
        with self._db.write() as tx:
            self._claims += 1
            if self._claims % PRUNE_EVERY == 0:
                tx.execute(f"DELETE FROM seen_once WHERE expires_at < {now}")
            row = tx.execute(
                f"""INSERT INTO seen_once VALUES (?, {now} + ?)
                    ON CONFLICT (seen_key) DO UPDATE SET expires_at = excluded.expires_at WHERE seen_once.expires_at < {now}
                    RETURNING seen_key""",
                (key, ttl_s),
            ).fetchone()
        return row is not None

    def forget(self, key: str) -> None:
        """Lets ``key`` be claimed again (it was not handled after all)."""
        with self._db.write() as tx:
            tx.execute("DELETE FROM seen_once WHERE seen_key = ?", (key,))


async def claim_once(seen: SeenOnce, key: str, ttl_s: float) -> bool:
    """``seen.claim`` from async code; when the state database cannot say, the event is handled
    (answered twice at worst, rather than never)."""
    try:
        return await asyncio.to_thread(seen.claim, key, ttl_s)
    except TeambotError as exc:
        log.warning("could not check whether %s was handled before (%s); handling it", key.split(":")[0], exc.message)
        return True


def session_key(admin_token: bytes) -> bytes:
    """The key console sessions are bound to: derived from the admin token (which is never stored),
    the same on every replica started with that token, another with any other."""
    return hmac.new(admin_token, b"teambot console sessions v1", hashlib.sha256).digest()


class ConsoleSessions:
    """Console sessions, each bound to the ``key`` (``session_key`` of the admin token) it was started with."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def start(self, key: bytes, ttl_s: float) -> str:
        """A new session id, valid for ``ttl_s`` on every replica that has ``key``; expired sessions are deleted."""
        session = secrets.token_urlsafe(32)
        with self._db.write() as tx:
            tx.execute(f"DELETE FROM console_sessions WHERE expires_at < {self._db.now}")
            tx.execute(f"INSERT INTO console_sessions VALUES (?, {self._db.now} + ?)", (_mac(key, session), ttl_s))
        return session

    def valid(self, key: bytes, session: str) -> bool:
        """Whether ``session`` was started with ``key`` and has not expired or ended."""
        if not session:
            return False
        rows = self._db.read(f"SELECT 1 FROM console_sessions WHERE id_sha256 = ? AND expires_at > {self._db.now}", (_mac(key, session),))
        return bool(rows)

    def end(self, key: bytes, session: str) -> None:
        with self._db.write() as tx:
            tx.execute("DELETE FROM console_sessions WHERE id_sha256 = ?", (_mac(key, session),))


def _mac(key: bytes, session: str) -> str:
    return hmac.new(key, session.encode(), hashlib.sha256).hexdigest()
