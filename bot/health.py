"""/healthz: is this teambot able to answer and to keep its index fresh?

Checks, each with a deadline: the LLM server (its OpenAI-compatible /models answers), the
Chroma store (its collections can be listed), the state database (SQLite files or PostgreSQL
answer a query), and the index scheduler (its tasks run; the last run's state and age). 200 with ``"status": "ok"`` when all pass, else 503 naming what failed;
a re-index in progress or a failed document does not make teambot unhealthy.

/healthz is not signed in, so it says what failed but not where: no paths, URLs or error texts.
Those go to the log (teambot.log) when a check fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bot.runtime import Runtime
from config.errors import TeambotError
from rag.operations.scheduler import IndexScheduler

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 5.0


async def check_llm(runtime: Runtime) -> dict[str, Any]:
    endpoint = runtime.endpoint
    if endpoint is None:
        return {"ok": False, "detail": "no LLM server was started"}
    if runtime.supervisor is not None and (down := runtime.supervisor.status()) is not None:
        return {"ok": False, "detail": down}
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    try:
        async with httpx.AsyncClient(timeout=CHECK_TIMEOUT_S) as client:
            response = await client.get(f"{endpoint.base_url}/models", headers=headers)
    except httpx.HTTPError as exc:
        log.warning("health: the LLM server at %s does not answer (%s): %s", endpoint.base_url, type(exc).__name__, endpoint.down_hint)
        return {"ok": False, "detail": f"the LLM server does not answer ({type(exc).__name__})"}
    if response.status_code != 200:
        log.warning("health: the LLM server's %s/models answered HTTP %d", endpoint.base_url, response.status_code)
        return {"ok": False, "detail": f"the LLM server answered HTTP {response.status_code}"}
    return {"ok": True, "detail": "answers"}


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


def health_route(runtime: Runtime, scheduler: IndexScheduler) -> Route:
    async def healthz(request: Request) -> JSONResponse:
        llm, chroma, state, index = await asyncio.gather(check_llm(runtime), check_chroma(runtime), check_state(runtime), check_scheduler(scheduler))
        checks = {"llm": llm, "chroma": chroma, "state": state, "scheduler": index}
        ok = all(c["ok"] for c in checks.values())
        return JSONResponse({"status": "ok" if ok else "fail", "checks": checks}, status_code=200 if ok else 503)

    return Route("/healthz", healthz, methods=["GET"])
