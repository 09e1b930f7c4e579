"""Keeps the knowledge fresh under `teambot serve`: a re-index of every collection at start and
every ``rag.reindex_interval`` minutes, and whenever someone asks.

APScheduler fires the schedule (coalescing missed runs, never two at once); every trigger
becomes a request in the run history's queue (rag.run_history), which is how `teambot index`
in another process, the web console and `/kb reindex` join the same queue. Of several replicas
only the holder of the index lease (rag.lease) runs the queue; the others keep trying to take
the lease, and one does within ``rag.lease_ttl_s`` of the holder's death.

A run works in a thread, so questions are answered meanwhile; stopping the service stops a
run between two batches, which the next run completes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import timezone
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from config.errors import TeambotError
from config.settings import Settings
from rag.indexer import IndexCancelled, Indexer
from rag.lease import IndexLease
from rag.run_history import Request, Run, RunHistory, RunProgress

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often the queue is checked for requests from other processes


class IndexScheduler:
    def __init__(
        self,
        settings: Settings,
        indexer: Indexer,
        history: RunHistory,
        holder: str,
        on_run: Callable[[Run], None] | None = None,
    ) -> None:
        self._settings = settings
        self._indexer = indexer
        self.history = history
        self.holder = holder
        self._on_run = on_run
        self._lease = IndexLease(history.path, holder, settings.rag.lease_ttl_s)
        self._aps = AsyncIOScheduler(timezone=timezone.utc)
        self._wake = asyncio.Event()
        self._cancel = threading.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.leader = False
        self.info: dict[str, Any] = {}  # shown to other processes with the lease (pid, host, HTTP address)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        interval = self._settings.rag.reindex_interval
        if interval > 0:
            self._aps.add_job(
                self._scheduled, IntervalTrigger(minutes=interval), id="reindex",
                coalesce=True, max_instances=1, misfire_grace_time=None,
            )  # fmt: skip
        self._aps.start()
        await self._renew()
        self._tasks = [
            asyncio.create_task(self._keep_lease(), name="index-lease"),
            asyncio.create_task(self._work(), name="index-queue"),
        ]

    async def stop(self) -> None:
        """Stops a run in progress between two batches, then gives the lease up."""
        self._stopping = True
        self._cancel.set()
        self._wake.set()
        if self._aps.running:
            self._aps.shutdown(wait=False)
        for task in self._tasks:
            if task.get_name() == "index-lease":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.leader:
            await asyncio.to_thread(self._lease.release)
        self._lease.close()

    # --- asking ---------------------------------------------------------------------------

    async def request(self, trigger: str) -> Request:
        """Queues a re-index of every collection: it joins the next run (a run in progress does not cover it)."""
        request = await asyncio.to_thread(self.history.request, trigger)
        self._wake.set()
        return request

    def health(self) -> dict[str, Any]:
        working = bool(self._tasks) and not any(t.done() for t in self._tasks)
        job = self._aps.get_job("reindex") if self._aps.running else None
        return {
            "ok": working,
            "leader": self.leader,
            "next_run_at": job.next_run_time.timestamp() if job and job.next_run_time else None,
        }

    # --- the work -------------------------------------------------------------------------

    async def _scheduled(self) -> None:
        if self.leader:
            await self.request("schedule")

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(self._settings.rag.lease_ttl_s / 3)
            await self._renew()

    async def _renew(self) -> None:
        job = self._aps.get_job("reindex") if self._aps.running else None
        info = {**self.info, "next_run_at": job.next_run_time.timestamp() if job and job.next_run_time else None}
        try:
            leader = await asyncio.to_thread(self._lease.acquire, info)
        except TeambotError as exc:
            log.warning("could not renew the index lease: %s", exc.message)
            leader = False
        if leader and not self.leader:
            log.info("this process (%s) now runs the index", self.holder)
            await asyncio.to_thread(self.history.request, "start")
            self._wake.set()
        elif self.leader and not leader:
            log.warning("lost the index lease to another replica; stopping the run in progress")
            self._cancel.set()
        self.leader = leader

    async def _work(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._stopping or not self.leader:
                continue
            try:
                if await asyncio.to_thread(self.history.waiting):
                    self._cancel.clear()
                    run = await asyncio.to_thread(self.run_all)
                    if self._on_run is not None:
                        self._on_run(run)
            except TeambotError as exc:  # the run history's database, briefly unavailable
                log.warning("index queue: %s", exc.message)
            except Exception:
                log.exception("an index run failed unexpectedly")

    def run_all(self) -> Run:
        """One run over every collection, serving every waiting request. Blocking: call it in a thread."""
        with self._indexer.exclusive():
            dead = self.history.interrupt_dead(self.holder)
            if dead:
                log.warning("index runs %s were interrupted by a dead process; this run completes them", dead)
            run = self.history.start_run(self.holder, "", claim=True)
            log.info("index run %d started (%s)", run.id, run.trigger)
            progress = RunProgress(self.history, run.id)
            reports: list[dict[str, Any]] = []
            state, error = "done", ""
            try:
                for collection, folder in self._settings.collection_dirs().items():
                    if self._cancel.is_set():
                        raise IndexCancelled("the index run was stopped")
                    progress.collection(collection)
                    try:
                        report = self._indexer.run([folder] if folder.is_dir() else None, collection, progress=progress, cancel=self._cancel)
                    except IndexCancelled:
                        raise
                    except TeambotError as exc:
                        reports.append({"collection": collection, "error": str(exc)})
                    else:
                        reports.append(report.to_json())
            except IndexCancelled:
                state, error = "interrupted", "stopped before the end (teambot was stopping, or another replica took over); the next run completes it"
            except Exception as exc:
                log.exception("index run %d failed", run.id)
                state, error = "failed", f"{type(exc).__name__}: {exc}"
            finally:
                progress.flush()
                self.history.finish(run.id, state, reports, error)  # type: ignore[arg-type]
        finished = self.history.get(run.id)
        assert finished is not None
        log.info("index run %d %s in %.1f s", run.id, state, time.time() - run.started_at)
        return finished


def recorded_run(
    indexer: Indexer,
    history: RunHistory,
    holder: str,
    trigger: str,
    run: Callable[[RunProgress], Any],
) -> tuple[Run, Any]:
    """Runs ``run(progress)`` (one Indexer.run) under the run lock, kept in the run history; returns the run and its result.

    For index runs outside the service's queue (`teambot index` with no service running, or with
    explicit paths); it serves no queued request. An exception is recorded, then raised again."""
    with indexer.exclusive():
        history.interrupt_dead(holder)
        started = history.start_run(holder, trigger, claim=False)
        progress = RunProgress(history, started.id)
        try:
            result = run(progress)
        except BaseException as exc:
            state = "interrupted" if isinstance(exc, (KeyboardInterrupt, IndexCancelled)) else "failed"
            history.finish(started.id, state, [], str(exc) or type(exc).__name__)
            raise
        finally:
            progress.flush()
        history.finish(started.id, "done", [result.to_json()])
    finished = history.get(started.id)
    assert finished is not None
    return finished, result


def follow_request(
    history: RunHistory,
    request_id: int,
    on_progress: Callable[[Run], None],
    holder_alive: Callable[[], bool],
    poll_s: float = 0.25,
) -> Run | None:
    """Waits until the run that serves a queued request ends, reporting its progress; None if the
    queue's holder died before a run took the request (the caller may then index itself). A run
    whose process dies gives its requests back to the queue, so they are followed into the next run."""
    while True:
        request = history.get_request(request_id)
        if request is None:
            return None
        if request.run_id is not None:
            run = history.get(request.run_id)
            if run is not None:
                on_progress(run)
                if run.state != "running":
                    return run
        elif not holder_alive():
            return None
        time.sleep(poll_s)
