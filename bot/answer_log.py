"""Every answer teambot gave on a chat platform, and the 👍 / 👎 votes on it.

In the state database (``answers.sqlite`` in the data dir, or PostgreSQL shared by every
replica, so a vote on one shows in another's console). It is what feedback buttons refer to,
how teambot knows which threads it answered in (to follow up without a new mention), and what
admins read to see recent questions. Questions and answers are stored here on purpose, and
never written to the logs. Answers older than the retention (``bot.answer_retention_days``)
are deleted, with their votes, when the log is opened and with every new answer.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bot.core import AnswerDone
from rag.store.database import Database, Stored

Vote = Literal["up", "down"]
DAY_S = 86_400.0

MIGRATIONS = [
    """
CREATE TABLE IF NOT EXISTS answers (
    id         TEXT PRIMARY KEY,
    platform   TEXT NOT NULL,
    channel    TEXT NOT NULL,
    thread     TEXT NOT NULL,  -- the thread (Slack thread_ts, Discord thread id), '' for none
    "user"     TEXT NOT NULL,
    question   TEXT NOT NULL,
    answer     TEXT NOT NULL,
    sources    TEXT NOT NULL,  -- JSON: [{"n", "path", "title", "score"}]
    found      INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_by_thread ON answers (platform, channel, thread);
CREATE INDEX IF NOT EXISTS answers_by_time ON answers (created_at);
CREATE TABLE IF NOT EXISTS votes (
    answer_id  TEXT NOT NULL REFERENCES answers (id),
    "user"     TEXT NOT NULL,
    vote       TEXT NOT NULL,  -- up | down; a user's latest vote counts
    created_at REAL NOT NULL,
    PRIMARY KEY (answer_id, "user")
);
""",
    """
-- what produced each answer (generative, extractive, not-found) and why (the guard's verdict, the model failing or too slow)
ALTER TABLE answers ADD COLUMN mode TEXT NOT NULL DEFAULT '';
ALTER TABLE answers ADD COLUMN reason TEXT NOT NULL DEFAULT '';
""",
    """
-- the model's search queries the question was searched with beside itself (bot.rewrite_question); JSON: ["...", "..."]
ALTER TABLE answers ADD COLUMN searched TEXT NOT NULL DEFAULT '[]';
""",
]


UP = "COALESCE(SUM(CASE WHEN v.vote = 'up' THEN 1 ELSE 0 END), 0)"
DOWN = "COALESCE(SUM(CASE WHEN v.vote = 'down' THEN 1 ELSE 0 END), 0)"


@dataclass(frozen=True)
class LoggedAnswer:
    id: str
    platform: str
    channel: str
    thread: str
    user: str
    question: str
    answer: str
    sources: list[dict[str, object]]
    found: bool
    created_at: float
    mode: str = ""  # what produced the answer: generative, extractive, not-found
    reason: str = ""  # why that answer (the guard's verdict, the model failing or too slow)
    searched: list[str] = field(default_factory=list)  # the model's search queries beside the question (bot.rewrite_question)
    up: int = 0
    down: int = 0


class AnswerLog(Stored):
    COMPONENT, WHAT, MIGRATIONS = "answer_log", "the answer log", MIGRATIONS
    FILE = "answers.sqlite"

    def __init__(self, db: Database | Path, retention_days: int = 0) -> None:
        """``retention_days``: answers older than this are deleted (0: kept forever, as readers of the log want)."""
        super().__init__(db)
        self._retention_s = retention_days * DAY_S
        self.prune()

    def prune(self, now: float | None = None) -> int:
        """Deletes the answers older than the retention, and their votes; returns how many answers went."""
        if not self._retention_s:
            return 0
        cutoff = (time.time() if now is None else now) - self._retention_s
        with self._write() as db:
            db.execute("DELETE FROM votes WHERE answer_id IN (SELECT id FROM answers WHERE created_at < ?)", (cutoff,))
            return db.execute("DELETE FROM answers WHERE created_at < ?", (cutoff,)).rowcount

    def record(self, platform: str, channel: str, thread: str, user: str, question: str, done: AnswerDone) -> str:
        """Keeps one answer; returns its id (what feedback buttons carry)."""
        answer_id = uuid.uuid4().hex
        sources = [{"n": n, "path": p.path, "title": p.title, "score": p.score} for n, p in enumerate(done.sources, start=1)]
        with self._write() as db:
            db.execute(
                """INSERT INTO answers (id, platform, channel, thread, "user", question, answer, sources, found, created_at, mode, reason, searched)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    answer_id, platform, channel, thread, user, question, done.answer, json.dumps(sources, ensure_ascii=False),
                    int(done.found), time.time(), done.mode, done.reason, json.dumps(done.searched, ensure_ascii=False),
                ),
            )  # fmt: skip
        self.prune()  # the retention holds however long teambot runs; a range scan of the time index, usually empty
        return answer_id

    def vote(self, answer_id: str, user: str, vote: Vote) -> bool:
        """Records a user's vote; False if the answer is unknown."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM answers WHERE id = ?", (answer_id,)).fetchone() is None:
                return False
            db.execute(
                """INSERT INTO votes VALUES (?, ?, ?, ?)
                   ON CONFLICT (answer_id, "user") DO UPDATE SET vote = excluded.vote, created_at = excluded.created_at""",
                (answer_id, user, vote, time.time()),
            )
        return True

    def answered_in(self, platform: str, channel: str, thread: str) -> bool:
        query = "SELECT 1 FROM answers WHERE platform = ? AND channel = ? AND thread = ? LIMIT 1"
        return bool(self._read(query, (platform, channel, thread)))

    def recent(self, limit: int = 50, *, voted_down: bool = False) -> list[LoggedAnswer]:
        """The latest answers, newest first, with their vote counts; ``voted_down``: only those with a 👎."""
        rows = self._read(
            f"""SELECT a.*, {UP} AS up, {DOWN} AS down
               FROM answers a LEFT JOIN votes v ON v.answer_id = a.id
               GROUP BY a.id {f"HAVING {DOWN} > 0" if voted_down else ""} ORDER BY a.created_at DESC LIMIT ?""",
            (limit,),
        )
        return [
            LoggedAnswer(**{**dict(row), "sources": json.loads(row["sources"]), "found": bool(row["found"]), "searched": json.loads(row["searched"])})
            for row in rows
        ]
