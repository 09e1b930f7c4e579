"""The re-index queue and the history of index runs, in the state database
(``<data_dir>/index-runs.sqlite``, or PostgreSQL shared by every replica).

Every way of asking for a re-index (the schedule, `teambot index` while the service runs, the
web console, `/kb reindex` in chat) adds a *request*. The replica that runs the index claims
all waiting requests when it starts a run, so requests that arrive during a run wait for the
next one, and many of them become one run. Each run keeps its trigger, start, end, progress,
per-collection counts and failures; a run whose process died stays ``running`` until the next
run marks it ``interrupted`` (and serves its requests).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from config.errors import StoreError
from rag.ingest.indexer import IndexReport
from rag.store.database import Row, Stored

log = logging.getLogger(__name__)

RunState = Literal["running", "done", "failed", "interrupted"]

MIGRATIONS = [
    """
CREATE TABLE IF NOT EXISTS runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger      TEXT NOT NULL,   -- what asked for it: start, schedule, cli, console, slack, discord
    holder       TEXT NOT NULL,   -- the process that ran it (host:pid:random)
    state        TEXT NOT NULL,   -- running | done | failed | interrupted
    started_at   REAL NOT NULL,
    finished_at  REAL,
    files_total  INTEGER NOT NULL DEFAULT 0,  -- files to parse and embed, known collection by collection
    files_done   INTEGER NOT NULL DEFAULT 0,
    current      TEXT NOT NULL DEFAULT '',    -- the collection being indexed
    reports      TEXT NOT NULL DEFAULT '[]',  -- JSON: one IndexReport per collection
    error        TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS requests (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger      TEXT NOT NULL,
    requested_at REAL NOT NULL,
    run_id       INTEGER REFERENCES runs (id)  -- NULL: waiting for a run
);
CREATE INDEX IF NOT EXISTS requests_waiting ON requests (run_id);
""",
]

KEEP_RUNS = 500  # older runs are pruned


@dataclass(frozen=True)
class CollectionFailed:
    """A collection a run could not index at all (its folder is missing, the store is down)."""

    collection: str
    error: str

    def to_json(self) -> dict[str, object]:
        return {"collection": self.collection, "error": self.error}


CollectionReport = IndexReport | CollectionFailed


def report_from_json(data: dict[str, Any]) -> CollectionReport:
    return CollectionFailed(**data) if "error" in data else IndexReport(**data)


@dataclass(frozen=True)
class Run:
    id: int
    trigger: str
    holder: str
    state: RunState
    started_at: float
    finished_at: float | None
    files_total: int
    files_done: int
    current: str
    reports: list[CollectionReport]
    error: str

    @property
    def indexed(self) -> list[IndexReport]:
        return [r for r in self.reports if isinstance(r, IndexReport)]

    @property
    def failed_collections(self) -> list[CollectionFailed]:
        return [r for r in self.reports if isinstance(r, CollectionFailed)]

    def report_for(self, collection: str) -> CollectionReport | None:
        return next((r for r in self.reports if r.collection == collection), None)

    @property
    def totals(self) -> dict[str, int]:
        """Counts over every collection of the run (``failed``: files)."""
        reports = self.indexed
        sums = {k: sum(getattr(r, k) for r in reports) for k in ("added", "updated", "deleted", "unchanged", "chunks", "total_chunks")}
        sums["failed"] = sum(len(r.failed) for r in reports)
        return sums

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "reports": [r.to_json() for r in self.reports], "totals": self.totals}


@dataclass(frozen=True)
class Request:
    id: int
    trigger: str
    requested_at: float
    run_id: int | None


@dataclass
class RunProgress:
    """Throttled progress writes for one run (an IndexProgress over every collection of the run)."""

    history: RunHistory
    run_id: int
    every_s: float = 0.5
    total: int = 0
    done: int = 0
    current: str = ""
    _written: float = field(default=0.0, repr=False)

    def collection(self, name: str) -> None:
        self.current = name
        self.flush()

    def planned(self, files: int) -> None:
        self.total += files
        self.flush()

    def advance(self, path: str) -> None:
        self.done += 1
        if time.monotonic() - self._written >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Records the progress; best effort: a database locked for long skips this write, never the run."""
        self._written = time.monotonic()
        try:
            self.history.progress(self.run_id, self.total, self.done, self.current)
        except StoreError as exc:
            log.warning("run %d: progress not recorded (%s); the run goes on", self.run_id, exc.message)


class RunHistory(Stored):
    COMPONENT, WHAT, MIGRATIONS = "run_history", "the run history", MIGRATIONS
    FILE = "index-runs.sqlite"

    # --- the queue ------------------------------------------------------------------------

    def request(self, trigger: str) -> Request:
        """Asks for a re-index of every collection; it joins the next run that starts."""
        now = time.time()
        with self._write() as db:
            row = db.execute("INSERT INTO requests (trigger, requested_at) VALUES (?, ?) RETURNING id", (trigger, now)).fetchone()
        return Request(int(row["id"]) if row else 0, trigger, now, None)

    def waiting(self) -> list[Request]:
        return [Request(**dict(r)) for r in self._read("SELECT * FROM requests WHERE run_id IS NULL ORDER BY id")]

    def get_request(self, request_id: int) -> Request | None:
        rows = self._read("SELECT * FROM requests WHERE id = ?", (request_id,))
        return Request(**dict(rows[0])) if rows else None

    # --- runs -----------------------------------------------------------------------------

    def start_run(self, holder: str, trigger: str, *, claim: bool = True) -> Run:
        """Starts a run; with ``claim`` it serves every waiting request (their triggers join ``trigger``)."""
        now = time.time()
        with self._write() as db:
            triggers = [trigger]
            if claim:
                triggers += [r["trigger"] for r in db.execute("SELECT trigger FROM requests WHERE run_id IS NULL ORDER BY id")]
            row = db.execute(
                "INSERT INTO runs (trigger, holder, state, started_at) VALUES (?, ?, 'running', ?) RETURNING id",
                ("+".join(dict.fromkeys(t for t in triggers if t)), holder, now),
            ).fetchone()
            run_id = int(row["id"]) if row else 0
            if claim:
                db.execute("UPDATE requests SET run_id = ? WHERE run_id IS NULL", (run_id,))
            db.execute("DELETE FROM runs WHERE id <= ? AND state != 'running'", (run_id - KEEP_RUNS,))
            db.execute("DELETE FROM requests WHERE run_id IS NOT NULL AND run_id <= ?", (run_id - KEEP_RUNS,))
        run = self.get(run_id)
        assert run is not None
        return run

    def progress(self, run_id: int, files_total: int, files_done: int, current: str) -> None:
        with self._write() as db:
            db.execute("UPDATE runs SET files_total = ?, files_done = ?, current = ? WHERE id = ?", (files_total, files_done, current, run_id))

    def finish(self, run_id: int, state: RunState, reports: list[CollectionReport], error: str = "") -> None:
        """Records how a run ended; the requests of an interrupted run wait for the next one."""
        with self._write() as db:
            db.execute(
                "UPDATE runs SET state = ?, finished_at = ?, reports = ?, error = ?, current = '' WHERE id = ? AND state = 'running'",
                (state, time.time(), json.dumps([r.to_json() for r in reports], ensure_ascii=False), error, run_id),
            )
            if state == "interrupted":
                db.execute("UPDATE requests SET run_id = NULL WHERE run_id = ?", (run_id,))

    def interrupt_dead(self, holder: str) -> list[int]:
        """Marks the runs other processes left ``running`` as interrupted; their requests wait again.

        Call it only while holding the index run lock: then no other run can be alive."""
        now = time.time()
        with self._write() as db:
            ids = [r["id"] for r in db.execute("SELECT id FROM runs WHERE state = 'running' AND holder != ?", (holder,))]
            for run_id in ids:
                db.execute(
                    "UPDATE runs SET state = 'interrupted', finished_at = ?, error = ? WHERE id = ?",
                    (now, "its process stopped during the run (killed or crashed); the next run completed it", run_id),
                )
                db.execute("UPDATE requests SET run_id = NULL WHERE run_id = ?", (run_id,))
        return ids

    def get(self, run_id: int) -> Run | None:
        rows = self._read("SELECT * FROM runs WHERE id = ?", (run_id,))
        return _run(rows[0]) if rows else None

    def recent(self, limit: int = 20) -> list[Run]:
        return [_run(r) for r in self._read("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (limit,))]

    def running(self) -> Run | None:
        rows = self._read("SELECT * FROM runs WHERE state = 'running' ORDER BY id DESC LIMIT 1")
        return _run(rows[0]) if rows else None


def _run(row: Row) -> Run:
    return Run(**{**dict(row), "reports": [report_from_json(r) for r in json.loads(row["reports"])]})
