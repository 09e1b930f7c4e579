"""Keeps the knowledge fresh under `teambot serve`: a re-index of every collection at start and
every ``rag.reindex_interval`` minutes, and whenever someone asks.

APScheduler fires the schedule (coalescing missed runs, never two at once); every trigger
becomes a request in the run history's queue (rag.operations.run_history), which is how `teambot index`
in another process, the web console and `/kb reindex` join the same queue. Of several replicas
only the holder of the index lease (rag.operations.lease) runs the queue; the others keep trying to take
the lease, and one does within ``rag.lease_ttl_s`` of the holder's death.

A run works in a thread, so questions are answered meanwhile; stopping the service stops a
run between two batches, which the next run completes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import timezone
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from config.errors import TeambotError
from config.settings import Settings
from rag.ingest.indexer import IndexCancelled
from rag.operations.index_runs import IndexRuns
from rag.operations.lease import IndexLease
from rag.operations.run_history import CollectionFailed, CollectionReport, Request, Run, RunProgress

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often the queue is checked for requests from other processes
EXPIRY_MARGIN = 0.1  # the holder gives the lease up this part of the TTL before it would run out unrenewed
RETRY_S = 1.0  # at most this long between tries to write a lease the database refused


class IndexScheduler:
    def __init__(self, settings: Settings, runs: IndexRuns, info: Callable[[], dict[str, Any]] | None = None) -> None:
        """``info()`` says what other processes see with the lease: pid, host, the HTTP address."""
        self._settings = settings
        self._runs = runs
        self.history = runs.history
        self.holder = runs.holder
        self._lease = IndexLease(IndexLease.database(settings.state_url, settings.data_dir), self.holder, settings.rag.lease_ttl_s)
        self._aps = AsyncIOScheduler(timezone=timezone.utc)
        self._wake = asyncio.Event()
        self._cancel = threading.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.leader = False
        self._info = info or dict

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
            try:
                await asyncio.to_thread(self._lease.release)
            except TeambotError as exc:  # it expires on its own within the TTL
                log.warning("could not give the index lease up at stop (%s); another replica takes it when it expires", exc.message)
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
        ttl = self._settings.rag.lease_ttl_s
        renewed = True
        while True:
            await asyncio.sleep(ttl / 3 if renewed else min(ttl / 10, RETRY_S))
            renewed = await self._renew()

    async def _renew(self) -> bool:
        """Takes or renews the lease; False when the holder could not renew it yet (it tries again soon).

        The holder waits for a locked database (another process writing the run history, a backup)
        until its lease is about to run out, and only then gives the role up: a lock shorter than
        the TTL costs no run."""
        job = self._aps.get_job("reindex") if self._aps.running else None
        info = {**self._info(), "next_run_at": job.next_run_time.timestamp() if job and job.next_run_time else None}
        margin = self._settings.rag.lease_ttl_s * EXPIRY_MARGIN
        wait_s = max(self._lease.time_left() - margin, 0.0) if self.leader else self._settings.rag.lease_ttl_s / 3
        try:
            leader = await asyncio.to_thread(self._lease.acquire, info, wait_s)
        except TeambotError as exc:
            if self.leader and self._lease.time_left() > margin:
                log.warning("could not renew the index lease yet (%s); retrying, %.0f s before it runs out", exc.message, self._lease.time_left())
                return False
            if self.leader:
                log.warning("the index lease runs out unrenewed (%s); stopping the run in progress", exc.message)
                self._cancel.set()
            else:
                log.warning("could not take the index lease: %s", exc.message)
            self.leader = False
            return True
        if leader and not self.leader:
            log.info("this process (%s) now runs the index", self.holder)
            await asyncio.to_thread(self.history.request, "start")
            self._wake.set()
        elif self.leader and not leader:
            log.warning("lost the index lease to another replica; stopping the run in progress")
            self._cancel.set()
        self.leader = leader
        return True

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
                if await asyncio.to_thread(self._due):
                    self._cancel.clear()
                    await asyncio.to_thread(self.run_all)
            except TeambotError as exc:  # the run history's database, briefly unavailable
                log.warning("index queue: %s", exc.message)
            except Exception:
                log.exception("an index run failed unexpectedly")

    def _due(self) -> bool:
        """Whether a run is due: requests wait, or another replica added or removed a shared upload
        (which this one then writes into its folder and indexes, if its uploader could not)."""
        if self.history.waiting():
            return True
        uploads = self._runs.uploads
        if uploads is not None and uploads.behind():
            self.history.request("shared-upload")
            return True
        return False

    def run_all(self) -> Run:
        """One run over every collection, serving every waiting request. Blocking: call it in a thread."""
        return self._runs.run("", self._index_every_collection, serve_requests=True)

    def _index_every_collection(self, progress: RunProgress) -> list[CollectionReport]:
        reports: list[CollectionReport] = []
        for collection, folder in self._settings.collection_dirs().items():
            if self._cancel.is_set():
                raise IndexCancelled("the index run was stopped before the end; the next run completes it")
            progress.collection(collection)
            try:
                reports.append(self._runs.indexer.run([folder] if folder.is_dir() else None, collection, progress=progress, cancel=self._cancel))
            except TeambotError as exc:
                reports.append(CollectionFailed(collection, str(exc)))
        return reports
