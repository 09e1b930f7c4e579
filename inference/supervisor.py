"""Keeps the LLM server teambot owns running under `teambot serve`.

The supervisor watches the server's process (llama.cpp or lmdeploy). When it ends, the
supervisor reaps it, logs how it ended with the last lines of its log, stops what is left of its
process group (lmdeploy's engine workers hold the GPU memory), and starts it again on the same
port, after ``inference.restart_backoff_s``, doubled after each failed restart in a row. Meanwhile
the chat client says "the language model is restarting" instead of asking, and /healthz
reports it. A server that lives but makes no progress while requests wait (``LLMActivity``
says hung: no response or token for ``inference.hang_timeout_s``, and its process group used no
CPU meanwhile) is stopped and restarted the same way. After ``inference.max_restarts`` failed restarts in a row it gives up: ``wait()``
raises LLMGaveUp and `teambot serve` exits non-zero, for its supervisor (systemd, Docker) to
start all of it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Literal, Protocol, runtime_checkable

from config.errors import TeambotError
from config.settings import InferenceSettings
from inference.activity import LLMActivity
from inference.client import Endpoint, LLMUnavailable
from inference.process import Progress, ServerProcess

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.5  # how often the process is checked (and, once ended, reaped)
# CPU seconds per watch interval above which the server counts as computing (a sign of life): a tenth
# of a core. A deadlocked or SIGSTOPped server uses none; llama.cpp reading a prompt uses its threads.
COMPUTING_CPU_S = 0.1 * WATCH_INTERVAL_S
MAX_BACKOFF_S = 60.0
# A restarted server that dies sooner than this counts as a failed restart: a server that starts
# and crashes at its first request must not be restarted forever.
STABLE_AFTER_S = 60.0
RESTARTING = "the language model is restarting; ask again in a moment"


class LLMRestarting(LLMUnavailable):
    """The LLM server stopped and teambot is starting it again."""


class LLMGaveUp(TeambotError):
    """The LLM server kept failing to restart."""


@runtime_checkable
class SupervisedServer(Protocol):
    """A server manager that starts a process of its own (llama.cpp, lmdeploy); start() again restarts it."""

    description: str
    process: ServerProcess

    async def start(self, progress: Progress | None = None) -> Endpoint: ...

    async def stop(self) -> None: ...


class ServerSupervisor:
    def __init__(self, server: SupervisedServer, settings: InferenceSettings, activity: LLMActivity | None = None) -> None:
        self._server = server
        self.activity = activity or LLMActivity(settings.hang_timeout_s)
        self._max_restarts = settings.max_restarts
        self._backoff_s = settings.restart_backoff_s
        self.state: Literal["up", "restarting", "failed"] = "up"
        self.restarts = 0  # successful restarts
        self.failures = 0  # failed restarts in a row
        self.last_exit = ""  # how the server last ended, e.g. "killed by SIGKILL"
        self._ended = "stopped"  # or "hung": what happened to it, for the messages
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts watching the (already started) server."""
        self._task = asyncio.create_task(self._watch(), name=f"supervise {self._server.description}")

    async def wait(self) -> None:
        """Returns when the supervisor is stopped; raises LLMGaveUp when it gave up."""
        assert self._task is not None, "start() first"
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Stops watching (a restart in progress is abandoned, its process stopped); the server itself keeps running."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, LLMGaveUp):
            await self._task

    def unavailable(self) -> TeambotError | None:
        """Why the server cannot answer now (it is restarting), or None while it runs."""
        if self.state == "up" and self._server.process.running:
            return None
        return LLMRestarting(RESTARTING)

    def status(self) -> str | None:
        """For /healthz: None while the server runs, else what is happening to it."""
        if self.unavailable() is None:
            return None
        if self.state == "failed":
            return f"{self._server.description} {self._ended} ({self.last_exit}) and {self.failures} restarts in a row failed; teambot is exiting"
        return f"{self._server.description} {self._ended} ({self.last_exit or 'just now'}); restarting it ({self.failures} failed restarts in a row so far)"

    async def _watch(self) -> None:
        up_since, restarted = time.monotonic(), False
        while True:
            hung = False
            cpu: float | None = None  # the server's CPU seconds at the last look, while requests wait
            while self._server.process.running and not (hung := self.activity.report_hang()):
                await asyncio.sleep(WATCH_INTERVAL_S)
                if not self.activity.in_flight:
                    cpu = None  # an idle server is not watched for CPU: /proc is read only while requests wait
                    continue
                used, cpu = cpu, await asyncio.to_thread(self._server.process.cpu_seconds)  # reads /proc: off the event loop
                if cpu is not None and used is not None and cpu - used >= COMPUTING_CPU_S:
                    self.activity.computing()
            self.state = "restarting"
            lived = time.monotonic() - up_since
            if hung:
                self._ended, self.last_exit = "hung", self.activity.hang_detail()
                log.error(
                    "%s (pid %s) is alive but %s; restarting it (its log: %s)",
                    self._server.description, self._server.process.pid, self.last_exit, self._server.process.log_path,
                )  # fmt: skip
            else:
                reason = await asyncio.to_thread(self._server.process.exit_reason) or "it stopped"  # waits a moment for its last output
                self._ended, self.last_exit = "stopped", reason.split(";", 1)[0]
                log.error("%s (pid %s) stopped after %.0f s: %s", self._server.description, self._server.process.pid, lived, reason)
            if restarted and lived < STABLE_AFTER_S:
                self.failures += 1  # the last restart did not hold
            elif restarted or lived >= STABLE_AFTER_S:
                self.failures = 0
            await self._server.stop()  # reaps it and ends what is left of its process group
            await self._restart()
            self.activity.restarted()
            up_since, restarted = time.monotonic(), True

    async def _restart(self) -> None:
        """Starts the server again, with backoff; raises LLMGaveUp after max_restarts failures in a row."""
        while True:
            if self.failures >= self._max_restarts:
                self.state = "failed"
                message = (
                    f"{self._server.description} {self._ended} ({self.last_exit}) and {self.failures} restarts in a row failed "
                    f"(inference.max_restarts = {self._max_restarts})"
                )
                log.critical("%s; teambot serve exits", message)
                raise LLMGaveUp(message, f"read {self._server.process.log_path} and teambot.log; a supervisor (systemd, Docker) starts teambot again")
            delay = min(self._backoff_s * 2**self.failures, MAX_BACKOFF_S)
            log.warning("restarting %s in %.1f s (attempt %d of %d)", self._server.description, delay, self.failures + 1, self._max_restarts)
            await asyncio.sleep(delay)
            started = time.monotonic()
            try:
                await self._server.start()
            except TeambotError as exc:
                self.failures += 1
                log.error("restart %d of %s failed: %s", self.failures, self._server.description, exc)
                continue
            except Exception:
                self.failures += 1
                log.exception("restart %d of %s failed", self.failures, self._server.description)
                continue
            self.restarts += 1
            self.state = "up"
            log.warning(
                "%s restarted in %.1f s (pid %s; %d restarts since teambot started)",
                self._server.description, time.monotonic() - started, self._server.process.pid, self.restarts,
            )  # fmt: skip
            return
