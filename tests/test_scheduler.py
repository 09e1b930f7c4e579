"""The re-index scheduler with the real indexer and store: runs at start and on schedule, one at
a time; manual triggers join the queue; the run history; the lease between replicas."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bot.runtime import Runtime, knowledge_runtime
from config.settings import Settings
from rag.operations.index_runs import IndexRuns
from rag.operations.lease import IndexLease
from rag.operations.run_history import CollectionFailed, Run, RunHistory
from rag.operations.scheduler import IndexScheduler
from tests.conftest import make_settings
from tests.proc import async_wait_for
from tests.test_indexer import assert_consistent

SLOW_DOC = "# Slow\n\nA slow document.\n"


@asynccontextmanager
async def scheduler_for(settings: Settings, holder: str = "test:1:a") -> AsyncIterator[tuple[IndexScheduler, Runtime]]:
    with knowledge_runtime(settings) as runtime:
        scheduler = IndexScheduler(settings, IndexRuns(runtime.indexer, runtime.history, holder))
        await scheduler.start()
        try:
            yield scheduler, runtime
        finally:
            await scheduler.stop()


def finished(history: RunHistory) -> list[Run]:
    return [r for r in reversed(history.recent(100)) if r.state != "running"]


async def test_runs_at_start_and_keeps_each_run_in_the_history(settings: Settings) -> None:
    async with scheduler_for(settings) as (scheduler, runtime):
        run = (await async_wait_for(lambda: finished(runtime.history), "the run at start"))[0]
        assert scheduler.leader and scheduler.health()["ok"]
        assert run.trigger == "start" and run.state == "done" and run.holder == "test:1:a"
        assert run.finished_at is not None and run.finished_at >= run.started_at
        assert run.files_done == run.files_total == 7
        (report,) = run.reports
        assert report.collection == "default" and report.added == 7 and report.failed == []
        assert run.totals["chunks"] == report.chunks == report.total_chunks > 7
        assert_consistent(runtime)


async def test_a_missing_folder_is_reported_and_its_chunks_kept(settings: Settings, tmp_path: Path, knowledge: Path) -> None:
    gone = tmp_path / "hr-share"
    settings = make_settings(settings.data_dir, knowledge, rag={"collections": {"hr": str(gone)}})
    async with scheduler_for(settings) as (_, runtime):
        run = (await async_wait_for(lambda: finished(runtime.history), "the run at start"))[0]
    assert run.state == "done"
    by_collection = {r.collection: r for r in run.reports}
    assert by_collection["default"].added == 7
    hr = by_collection["hr"]
    assert isinstance(hr, CollectionFailed) and "hr-share" in hr.error and "does not exist" in hr.error


async def test_triggers_during_a_run_join_one_next_run(settings: Settings, knowledge: Path) -> None:
    """A run is held mid-scan by a file that is a named pipe (reading it blocks until the test writes to it)."""
    pipe = knowledge / "slow.md"
    os.mkfifo(pipe)
    async with scheduler_for(settings) as (scheduler, runtime):
        first = await async_wait_for(lambda: runtime.history.running(), "the run at start to begin")
        console = await scheduler.request("console")
        chat = await scheduler.request("slack")
        assert {r.id for r in runtime.history.waiting()} == {console.id, chat.id}  # not served by the run in progress

        def release() -> None:
            with pipe.open("w") as writer:  # waits for the run to open it
                writer.write(SLOW_DOC)
                # Before the run reads it again, to parse it, the pipe becomes a plain file of the same text.
                (knowledge / ".slow.tmp").write_text(SLOW_DOC)
                os.replace(knowledge / ".slow.tmp", pipe)

        await asyncio.to_thread(release)
        runs = await async_wait_for(lambda: (f := finished(runtime.history)) and len(f) >= 2 and f, "the second run")
        served_by = {runtime.history.get_request(r.id).run_id for r in (console, chat)}  # type: ignore[union-attr]
    assert [r.id for r in runs] == [first.id, runs[1].id] and len(runs) == 2
    second = runs[1]
    assert second.trigger == "console+slack" and served_by == {second.id}
    assert runs[0].reports[0].added == 8 and runs[0].reports[0].failed == []  # the seven samples and the slow one
    assert second.reports[0].unchanged == 8 and second.reports[0].chunks == 0


async def test_the_schedule_runs_again_without_overlap(settings: Settings, knowledge: Path) -> None:
    settings = make_settings(settings.data_dir, knowledge, rag={"reindex_interval": 0.01})  # 0.6 s
    async with scheduler_for(settings) as (scheduler, runtime):
        runs = await async_wait_for(lambda: (f := finished(runtime.history)) and len(f) >= 3 and f, "two scheduled runs", timeout=60)
        assert scheduler.health()["next_run_at"] is not None
    assert runs[0].trigger == "start" and "schedule" in runs[2].trigger
    for earlier, later in zip(runs, runs[1:]):
        assert earlier.finished_at is not None and earlier.finished_at <= later.started_at  # never two at once
    assert all(r.state == "done" and r.totals["chunks"] == 0 for r in runs[1:])  # nothing changed: hash checks only


async def test_only_the_lease_holder_runs_and_a_dead_holders_lease_expires(settings: Settings, knowledge: Path) -> None:
    settings = make_settings(settings.data_dir, knowledge, rag={"lease_ttl_s": 1.5})
    other = IndexLease(settings.data_dir / "index-runs.sqlite", "other-host:99:x", ttl_s=1.5)
    assert other.acquire({"pid": 99})  # another replica holds it ... and then dies (never renews)
    async with scheduler_for(settings) as (scheduler, runtime):
        assert not scheduler.leader
        request = await scheduler.request("cli")
        run = await async_wait_for(lambda: finished(runtime.history), "a run once the dead holder's lease expired", timeout=30)
        assert scheduler.leader
        assert runtime.history.get_request(request.id).run_id == run[0].id  # type: ignore[union-attr]
        assert "cli" in run[0].trigger
        assert other.acquire() is False  # the live holder keeps it
    assert other.acquire() is True  # a clean stop gives it up at once
    other.close()


async def test_stopping_mid_run_is_completed_by_the_next_run(settings: Settings, knowledge: Path) -> None:
    from bench.corpus import write_corpus

    write_corpus(knowledge / "runbooks", 150, sentences_per_file=12)
    with knowledge_runtime(settings) as runtime:
        scheduler = IndexScheduler(settings, IndexRuns(runtime.indexer, runtime.history, "test:1:a"))
        await scheduler.start()
        await async_wait_for(lambda: (r := runtime.history.running()) and r.files_done > 0, "the first batch", timeout=120)
        await scheduler.stop()
        (stopped,) = finished(runtime.history)
        assert stopped.state == "interrupted" and "next run completes it" in stopped.error
        assert runtime.history.waiting()  # its request waits for the next run

        scheduler = IndexScheduler(settings, IndexRuns(runtime.indexer, runtime.history, "test:2:b"))
        await scheduler.start()
        try:
            runs = await async_wait_for(lambda: (f := finished(runtime.history)) and len(f) >= 2 and f, "the next run", timeout=180)
        finally:
            await scheduler.stop()
        assert runs[1].state == "done" and runs[1].reports[0].failed == []
        assert sum(1 for r in runtime.manifest.files("default").values() if r.state == "indexed") == 157
        assert_consistent(runtime)


def test_the_run_lock_is_exclusive_across_threads_and_reentrant_within_one(settings: Settings) -> None:
    with knowledge_runtime(settings) as runtime:
        inside = threading.Event()
        other_got_it = threading.Event()

        def other() -> None:
            with runtime.indexer.exclusive():
                other_got_it.set()

        with runtime.indexer.exclusive():
            with runtime.indexer.exclusive():  # nested in the same thread: no deadlock
                inside.set()
            thread = threading.Thread(target=other)
            thread.start()
            assert not other_got_it.wait(0.3)
        thread.join(10)
        assert inside.is_set() and other_got_it.is_set()


@pytest.mark.parametrize("interval", [-1, 100_000])
def test_a_bad_interval_is_refused(settings: Settings, knowledge: Path, interval: float) -> None:
    from config.errors import ConfigError

    with pytest.raises(ConfigError, match="rag.reindex_interval"):
        make_settings(settings.data_dir, knowledge, rag={"reindex_interval": interval})


def hold_write_lock(path: Path, seconds: float, taken: threading.Event) -> None:
    """Another process's long write (a backup, a slow `teambot index`): the database's write lock, held."""
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        taken.set()
        time.sleep(seconds)  # holding the lock: the point of the test, not a wait for readiness
        db.execute("ROLLBACK")
    finally:
        db.close()


async def test_a_long_write_lock_costs_the_holder_neither_its_lease_nor_its_run(
    settings: Settings, knowledge: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The only replica runs (held mid-scan by a named pipe) while another connection holds index-runs.sqlite's
    write lock for 40 s: longer than a renewal interval (25 s) and SQLite's 30 s busy wait, shorter than the TTL (75 s)."""
    settings = make_settings(settings.data_dir, knowledge, rag={"lease_ttl_s": 75})
    pipe = knowledge / "slow.md"
    os.mkfifo(pipe)
    taken = threading.Event()

    def release() -> None:
        with pipe.open("w") as writer:
            writer.write(SLOW_DOC)
            (knowledge / ".slow.tmp").write_text(SLOW_DOC)
            os.replace(knowledge / ".slow.tmp", pipe)

    async with scheduler_for(settings) as (scheduler, runtime):
        renewed_at = time.monotonic()  # start() took the lease; the next renewal comes 25 s later
        try:
            first = await async_wait_for(lambda: runtime.history.running(), "the run at start to begin")
            await asyncio.sleep(max(renewed_at + 20 - time.monotonic(), 0))  # lock 5 s before that renewal: it meets 35 s of lock
            await asyncio.to_thread(hold_write_lock, runtime.history.db.path, 40, taken)
            kept = scheduler.leader
        finally:
            await asyncio.to_thread(release)  # the run reads on (also when the test fails: stop() waits for the run)
        assert taken.is_set() and kept, "the holder gave its lease up during the lock"
        runs = await async_wait_for(lambda: finished(runtime.history), "the run to end")
        assert scheduler.leader and runtime.history.waiting() == []  # no second "start": it never lost the lease
    assert [(r.id, r.state) for r in runs] == [(first.id, "done")] and runs[0].reports[0].added == 8
    assert not [r for r in caplog.records if "lease" in r.getMessage() and r.levelno >= logging.WARNING and "yet" not in r.getMessage()]


async def test_a_live_holder_is_not_overtaken_whatever_its_clock_says(settings: Settings, knowledge: Path) -> None:
    """Another replica keeps renewing, but its clock is an hour behind: its expires_at always looks past.
    Only a row left unchanged for a TTL (by this process's clock) is taken over."""
    settings = make_settings(settings.data_dir, knowledge, rag={"lease_ttl_s": 1.5})
    path = settings.data_dir / "index-runs.sqlite"
    other = IndexLease(path, "other-host:99:x", ttl_s=1.5)
    assert other.acquire()
    alive = threading.Event()
    alive.set()

    def renew_an_hour_behind() -> None:
        with sqlite3.connect(path, timeout=30) as db:
            while alive.is_set():
                db.execute("UPDATE lease SET expires_at = ? WHERE holder = ?", (time.time() - 3600 + 1.5, "other-host:99:x"))
                db.commit()
                time.sleep(0.3)  # the other replica's renewal interval (a fifth of the TTL)

    renewing = asyncio.create_task(asyncio.to_thread(renew_an_hour_behind))
    try:
        async with scheduler_for(settings) as (scheduler, runtime):
            await asyncio.sleep(3 * 1.5)  # three TTLs of a live holder: nothing may change hands
            assert not scheduler.leader and finished(runtime.history) == []
            alive.clear()  # the other replica dies
            await renewing
            await async_wait_for(lambda: scheduler.leader, "the takeover once the row stopped changing", timeout=60)
    finally:
        alive.clear()
        other.close()
