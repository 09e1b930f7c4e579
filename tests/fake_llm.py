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

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = "fake-model"


@dataclass
class Reply:
    """One scripted reply: an HTTP error, or a stream of tokens (optionally held after the first)."""

    status: int = 200
    tokens: list[str] = field(default_factory=lambda: ["Hello", " from", " the", " fake", " [1]", "."])
    hold: threading.Event | None = None  # set by the test to let the stream finish
    never_finish: bool = False  # stream one token, then nothing until the client gives up


class FakeLLM:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: deque[Reply] = deque()
        self.streams_open = 0
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
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
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not (self._server.started and self._server.servers):
            if time.monotonic() > deadline:
                raise RuntimeError("the fake LLM server did not start within 10 s")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            assert self._thread is not None
            self._thread.join(timeout=10)

    async def _models(self, request: Request) -> Response:
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
                yield _event({"choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}]})
                if k == 0 and reply.never_finish:
                    await asyncio.Event().wait()
                if k == 0 and reply.hold is not None:
                    await asyncio.to_thread(reply.hold.wait)
            yield _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            yield "data: [DONE]\n\n"
        finally:
            with self._lock:
                self.streams_open -= 1


def _event(payload: dict) -> str:
    chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": MODEL, **payload}
    return f"data: {json.dumps(chunk)}\n\n"
