"""/healthz: is this teambot able to answer and to keep its index fresh?

Checks, each with a deadline: the LLM server, the Chroma store (its collections can be listed),
the state database (SQLite files or PostgreSQL answer a query), and the index scheduler (its
tasks run; the last run's state and age). 200 with ``"status": "ok"`` when all pass, else 503
naming what failed; a re-index in progress or a failed document does not make teambot unhealthy.

The LLM check tells busy from dead and from hung (``checks.llm.state``): ``restarting`` or
``failed`` when the process teambot started ended (the supervisor knows), ``hung`` when requests
wait and it gave no sign of life for ``inference.hang_timeout_s`` (LLMActivity knows), ``busy``
while requests are in flight and progress, ``idle`` when its /models answered. Only a server with
nothing in flight is probed: a probe would queue behind the generation (and llama-cpp-python's
server cuts a streaming answer short for any new request). busy and idle are healthy; the rest,
and a server that refuses connections or answers /models with an error, are not.

/healthz is not signed in, so it says what failed but not where: no paths, URLs or error texts.
Those go to the log (teambot.log) when a check fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bot.runtime import Runtime
from config.errors import TeambotError
from inference.activity import LLMActivity
from inference.client import Endpoint
from rag.operations.scheduler import IndexScheduler

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 5.0


class LLMProbe:
    """GET /models, one at a time, counted as a request in flight. It waits as long as the server
    takes (a hung server keeps it waiting, which is what makes it hung, not one slow answer);
    /healthz waits CHECK_TIMEOUT_S for it and looks again at the next call."""

    def __init__(self, endpoint: Endpoint, activity: LLMActivity) -> None:
        self.endpoint = endpoint
        self.activity = activity
        self._task: asyncio.Task[httpx.Response] | None = None

    @property
    def pending(self) -> bool:
        return self._task is not None and not self._task.done()

    async def answer(self, wait_s: float) -> httpx.Response | None:
        """The server's answer, or None when it has not answered within ``wait_s``; raises httpx.HTTPError."""
        if self._task is None or self._task.done():  # a finished probe's answer is stale: ask again
            self._task = asyncio.create_task(self._get(), name="/healthz LLM probe")
        task = self._task
        done, _ = await asyncio.wait({task}, timeout=wait_s)
        return task.result() if done else None

    async def _get(self) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.endpoint.api_key}"} if self.endpoint.api_key else {}
        with self.activity.track():
            async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=CHECK_TIMEOUT_S), headers=headers) as client:
                response = await client.get(f"{self.endpoint.base_url}/models")
            self.activity.progressed()  # any answer is a sign of life
            return response

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


async def check_llm(runtime: Runtime, probe: LLMProbe | None) -> dict[str, Any]:
    if probe is None:
        return {"ok": False, "state": "absent", "detail": "no LLM server was started"}
    if runtime.supervisor is not None and (down := runtime.supervisor.status()) is not None:
        return {"ok": False, "state": runtime.supervisor.state, "detail": down}
    activity, endpoint = probe.activity, probe.endpoint
    if activity.state() == "hung":
        return hung(runtime, probe)
    if (others := activity.in_flight - probe.pending) > 0:
        return {"ok": True, "state": "busy", "detail": f"{others} requests in flight, the last sign of life {activity.silent_s():.0f} s ago"}
    try:
        response = await probe.answer(CHECK_TIMEOUT_S)
    except httpx.HTTPError as exc:
        log.warning("health: the LLM server at %s does not answer (%s): %s", endpoint.base_url, type(exc).__name__, endpoint.down_hint)
        return {"ok": False, "state": "unreachable", "detail": f"the LLM server does not answer ({type(exc).__name__})"}
    if response is None:
        if activity.state() == "hung":
            return hung(runtime, probe)
        return {"ok": True, "state": "busy", "detail": f"no answer for {activity.silent_s():.0f} s yet (hung after inference.hang_timeout_s)"}
    if response.status_code != 200:
        log.warning("health: the LLM server's %s/models answered HTTP %d", endpoint.base_url, response.status_code)
        return {"ok": False, "state": "failing", "detail": f"the LLM server answered HTTP {response.status_code}"}
    return {"ok": True, "state": "busy" if activity.in_flight else "idle", "detail": "answers"}


def hung(runtime: Runtime, probe: LLMProbe) -> dict[str, Any]:
    activity = probe.activity
    if runtime.supervisor is None and activity.report_hang():  # a server teambot started: its supervisor says it, and restarts it
        log.error(
            "health: the LLM server at %s is reachable but %s; restart it, or raise inference.hang_timeout_s if it is only slow",
            probe.endpoint.base_url, activity.hang_detail(),
        )  # fmt: skip
    return {"ok": False, "state": "hung", "detail": f"the LLM server {activity.hang_detail()}"}


async def check_chroma(runtime: Runtime) -> dict[str, Any]:
    try:
        names = await asyncio.wait_for(asyncio.to_thread(runtime.store.collections), CHECK_TIMEOUT_S)
    except TimeoutError:
        log.warning("health: the Chroma store at %s did not answer within %g s", runtime.store.location, CHECK_TIMEOUT_S)
        return {"ok": False, "detail": f"the store did not answer within {CHECK_TIMEOUT_S:g} s"}
    except Exception as exc:  # a StoreError, or the Chroma client's own
        log.warning("health: the Chroma store at %s failed: %s", runtime.store.location, exc)
        return {"ok": False, "detail": f"the store failed ({type(exc).__name__}): see teambot.log"}
    return {"ok": True, "detail": f"{len(names)} collections"}


async def check_state(runtime: Runtime) -> dict[str, Any]:
    db = runtime.history.db
    try:
        await asyncio.wait_for(asyncio.to_thread(db.read, "SELECT 1 AS ok"), CHECK_TIMEOUT_S)
    except TimeoutError:
        log.warning("health: %s did not answer within %g s", db.where, CHECK_TIMEOUT_S)
        return {"ok": False, "detail": f"the {db.backend} state did not answer within {CHECK_TIMEOUT_S:g} s"}
    except TeambotError as exc:
        log.warning("health: %s", exc)
        return {"ok": False, "detail": f"the {db.backend} state failed: see teambot.log"}
    return {"ok": True, "detail": db.backend}


async def check_scheduler(scheduler: IndexScheduler) -> dict[str, Any]:
    state = scheduler.health()
    try:
        runs = await asyncio.to_thread(scheduler.history.recent, 1)
    except TeambotError:  # the state database: its own check says so
        runs = []
    last = runs[0] if runs else None
    state["last_run"] = {"id": last.id, "state": last.state, "age_s": round(time.time() - last.started_at, 1)} if last else None
    state["detail"] = "running" if state["ok"] else "the scheduler's tasks stopped: see teambot.log"
    return state


def health_route(runtime: Runtime, scheduler: IndexScheduler, probe: LLMProbe | None) -> Route:
    async def healthz(request: Request) -> JSONResponse:
        llm, chroma, state, index = await asyncio.gather(check_llm(runtime, probe), check_chroma(runtime), check_state(runtime), check_scheduler(scheduler))
        checks = {"llm": llm, "chroma": chroma, "state": state, "scheduler": index}
        ok = all(c["ok"] for c in checks.values())
        return JSONResponse({"status": "ok" if ok else "fail", "checks": checks}, status_code=200 if ok else 503)

    return Route("/healthz", healthz, methods=["GET"])
