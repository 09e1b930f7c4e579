"""Every index run goes through here, whoever starts it: the schedule, a re-index request,
`teambot index`, an upload or a removal.

A run holds the index run lock (one run at a time per data dir, or across replicas with shared
state), first writes the shared uploads into this replica's folders (with shared state), is recorded in the run
history (trigger, progress, one report per collection, how it ended), and is told to the
observer (the metrics). A run that another process left ``running`` when it died is marked
interrupted first, so its requests are served again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from rag.ingest.indexer import IndexCancelled, Indexer
from rag.operations.run_history import CollectionReport, Run, RunHistory, RunProgress
from rag.operations.shared_uploads import UploadSync

log = logging.getLogger(__name__)

RunWork = Callable[[RunProgress], list[CollectionReport]]


class IndexRuns:
    def __init__(
        self, indexer: Indexer, history: RunHistory, holder: str, on_run: Callable[[Run], None] | None = None, uploads: UploadSync | None = None
    ) -> None:
        """``uploads``: with shared state, the shared uploads this replica writes into its folders before each run."""
        self.indexer = indexer
        self.history = history
        self.holder = holder  # this process, as the run history and the index lease name it
        self._on_run = on_run
        self.uploads = uploads

    def run(self, trigger: str, work: RunWork, *, serve_requests: bool = False) -> Run:
        """Runs ``work(progress)`` as one recorded run; with ``serve_requests`` it serves every
        waiting re-index request. Blocking: call it in a thread from async code.

        A run stopped by IndexCancelled ends ``interrupted`` and is returned; any other exception
        is recorded (``failed``, or ``interrupted`` for Ctrl-C) and raised again."""
        with self.indexer.exclusive():
            dead = self.history.interrupt_dead(self.holder)
            if dead:
                log.warning("index runs %s were interrupted by a dead process; this run completes them", dead)
            started = self.history.start_run(self.holder, trigger, claim=serve_requests)
            log.info("index run %d started (%s)", started.id, started.trigger)
            progress = RunProgress(self.history, started.id)
            reports: list[CollectionReport] = []
            failure: BaseException | None = None
            try:
                if self.uploads is not None:
                    self.uploads.sync()
                reports = work(progress)
                state, error = "done", ""
            except IndexCancelled as exc:
                state, error = "interrupted", f"{exc} (teambot was stopping, or another replica took over)"
            except KeyboardInterrupt as exc:
                state, error, failure = "interrupted", "stopped with Ctrl-C", exc
            except Exception as exc:
                state, error, failure = "failed", str(exc) or type(exc).__name__, exc
            finally:
                progress.flush()
            self.history.finish(started.id, state, reports, error)  # type: ignore[arg-type]
        finished = self.history.get(started.id)
        assert finished is not None
        log.info("index run %d %s in %.1f s", finished.id, finished.state, time.time() - finished.started_at)
        if self._on_run is not None:
            self._on_run(finished)
        if failure is not None:
            raise failure
        return finished
