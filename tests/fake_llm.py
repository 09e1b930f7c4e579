"""A local OpenAI-compatible chat server for tests that need to see or shape what the LLM does.

It speaks the real wire protocol (``/v1/models``, ``/v1/chat/completions`` with server-sent
events), records every request, and plays a script: fail with a status, stream tokens, or
hold a stream open until the test releases it. The real llama.cpp server is used wherever
the test is about answers; this one is for retries, timeouts, concurrency and prompts.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bot.evaluation.replay import serve_in_thread, stop_server

MODEL = "fake-model"


@dataclass
class Reply:
    """One scripted reply: an HTTP error, or a stream of tokens (optionally held after the first)."""

    status: int = 200
    tokens: list[str] = field(default_factory=lambda: ["Hello", " from", " the", " fake", " [1]", "."])
    hold: threading.Event | None = None  # set by the test to let the stream finish
    never_finish: bool = False  # stream one token, then nothing until the client gives up
    token_delay_s: float = 0.0  # before each token: a model generating at that pace
    unfinished: bool = False  # end with [DONE] but no finish_reason, as a server that drops the stream


class FakeLLM:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: deque[Reply] = deque()
        self.streams_open = 0
        self.models_asked = 0
        # Like llama-cpp-python's server: one request at a time (its /v1/models waits for the model's
        # lock, which a streaming answer holds).
        self.one_at_a_time = False
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeLLM:
        app = Starlette(
            routes=[
                Route("/v1/models", self._models),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
            ]
        )
        self._server, self._thread, self.port = serve_in_thread(app, "fake LLM server")
        return self

    def stop(self) -> None:
        if self._server is not None:
            stop_server(self._server, self._thread)

    async def _models(self, request: Request) -> Response:
        with self._lock:
            self.models_asked += 1
        while self.one_at_a_time and self.streams_open:
            await asyncio.sleep(0.01)
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "tests"}]})

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self.requests.append(body)
            reply = self.script.popleft() if self.script else Reply()
        if reply.status != 200:
            return JSONResponse({"error": {"message": f"scripted failure {reply.status}"}}, status_code=reply.status)
        return StreamingResponse(self._events(reply), media_type="text/event-stream")

    async def _events(self, reply: Reply):  # type: ignore[no-untyped-def]
        with self._lock:
            self.streams_open += 1
        try:
            for k, token in enumerate(reply.tokens):
                if reply.token_delay_s:
                    await asyncio.sleep(reply.token_delay_s)
                yield _event({"choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}]})
                if k == 0 and reply.never_finish:
                    await asyncio.Event().wait()
                if k == 0 and reply.hold is not None:
                    await asyncio.to_thread(reply.hold.wait)
            if not reply.unfinished:
                yield _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            yield "data: [DONE]\n\n"
        finally:
            with self._lock:
                self.streams_open -= 1


def _event(payload: dict) -> str:
    chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": MODEL, **payload}
    return f"data: {json.dumps(chunk)}\n\n"
