"""The LLM server managers behind one interface, and the choice between them.

A manager's ``start()`` makes a server ready (starting one where teambot owns it) and returns
its Endpoint; ``stop()`` undoes what ``start()`` did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import httpx

from config.errors import TeambotError
from config.settings import Settings
from inference.client import Endpoint

Progress = Callable[[str], None]

READY_POLL_INTERVAL_S = 0.2


class LLMServer(Protocol):
    description: str

    async def start(self, progress: Progress | None = None) -> Endpoint: ...

    async def stop(self) -> None: ...


class ExternalServer:
    """A server someone else runs (an lmdeploy api_server, lmdeploy's proxy, any OpenAI-compatible API)."""

    def __init__(self, base_url: str, model: str | None, api_key: str | None) -> None:
        self.description = f"external server at {base_url}"
        self._endpoint = Endpoint(
            base_url=base_url,
            model=model,
            api_key=api_key,
            down_hint=f"start the server at {base_url} (e.g. `lmdeploy serve api_server ...`) or fix inference.base_url",
        )

    async def start(self, progress: Progress | None = None) -> Endpoint:
        return self._endpoint

    async def stop(self) -> None:
        return None


def make_server(settings: Settings) -> LLMServer:
    from inference.lmdeploy import LMDeployServer, resolve_backend

    inference = settings.inference
    api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    backend = resolve_backend(inference)
    if backend == "external":
        assert inference.base_url is not None  # enforced by InferenceSettings
        return ExternalServer(inference.base_url, inference.model, api_key)
    if backend == "lmdeploy":
        return LMDeployServer(inference, log_dir=settings.logs_dir, api_key=api_key)
    from inference.llamacpp import LlamaCppServer

    return LlamaCppServer(inference, log_dir=settings.logs_dir)


async def wait_until_ready(
    url: str,
    *,
    timeout_s: float,
    what: str,
    still_starting: Callable[[], str | None],
    progress: Progress | None = None,
    headers: dict[str, str] | None = None,
    timeout_hint: str = "raise inference.start_timeout_s if the model is large, or read the server log",
) -> float:
    """Polls ``url`` until it answers 200 or the deadline passes; returns the seconds it took.

    ``still_starting`` returns None while the server process lives, or why it stopped.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    last_report = started
    async with httpx.AsyncClient(timeout=2.0, headers=headers) as http:
        while True:
            failure = still_starting()
            if failure is not None:
                raise TeambotError(f"{what} stopped while starting: {failure}")
            try:
                if (await http.get(url)).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            now = time.monotonic()
            if now > deadline:
                raise TeambotError(f"{what} was not ready after {timeout_s:.0f} s", timeout_hint)
            if progress and now - last_report >= 5:
                progress(f"still waiting for {what} ({now - started:.0f} s)")
                last_report = now
            await asyncio.sleep(READY_POLL_INTERVAL_S)
