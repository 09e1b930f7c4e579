"""teambot's HTTP server (Starlette on uvicorn), for the routes that front ends contribute:
Slack's Events API at /slack/events, /healthz, /metrics and the admin console at /admin.

Every request body is limited by its path (``BodyLimits``) before any handler reads it: a
Content-Length over the limit is answered 413 at once, and a chunked body is counted as it
arrives and cut off with 413 once it passes the limit. Nothing is read before that check.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config.errors import TeambotError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0


class Limit(NamedTuple):
    """The largest request body in bytes, and what to do about a larger one (the setting to raise)."""

    bytes: int
    hint: str


@dataclass(frozen=True)
class BodyLimits:
    """Request body limits by path: the longest matching prefix in ``by_prefix``, else ``default``."""

    default: Limit
    by_prefix: dict[str, Limit] = field(default_factory=dict)

    def for_path(self, path: str) -> Limit:
        matches = [prefix for prefix in self.by_prefix if path == prefix or path.startswith(prefix.rstrip("/") + "/")]
        return self.by_prefix[max(matches, key=len)] if matches else self.default


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a body passes its limit; LimitBodies answers it with 413."""


class LimitBodies:
    """A pure ASGI middleware that answers 413 for a request body over its path's limit, before
    the handler holds it: by Content-Length at once, by counting for chunked bodies. The 413 closes
    the connection, so the rest of the body is never read."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self._app, self._limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        limit = self._limits.for_path(scope["path"])
        length = _content_length(scope)
        if length is not None and length > limit.bytes:
            await _too_large(send, limit)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.bytes:
                    raise BodyTooLarge
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if started:
                raise
            await _too_large(send, limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # uvicorn's parser refuses it before it gets here
    return None


async def _too_large(send: Send, limit: Limit) -> None:
    body = json.dumps({"error": f"the request body is over this endpoint's limit of {limit.bytes:,} bytes: {limit.hint}"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HttpServer:
    def __init__(self, host: str, port: int, routes: list[BaseRoute], limits: BodyLimits, *, where: str = "TEAMBOT_HTTP_HOST/TEAMBOT_HTTP_PORT") -> None:
        self._host, self._port, self._where = host, port, where
        app = Starlette(routes=routes, middleware=[Middleware(LimitBodies, limits=limits)])
        self._config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(self._config)
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the real one when 0 was asked for)."""
        assert self._socket is not None, "not started"
        return self._socket.getsockname()[1]

    @property
    def listening(self) -> bool:
        return self._socket is not None

    @property
    def url(self) -> str:
        """The server's base URL (http://host:port)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        # Bound here rather than by uvicorn, which exits the process when it cannot bind.
        self._socket = socket.socket(socket.AF_INET6 if ":" in self._host else socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((self._host, self._port))
        except OSError as exc:
            self._socket.close()
            raise TeambotError(
                f"teambot's HTTP server cannot listen on {self._host}:{self._port}: {exc.strerror}",
                f"another program may use that port: set {self._where} to a free one",
            ) from None
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="http-server")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if time.monotonic() > deadline:
                raise TeambotError(f"teambot's HTTP server did not start within {START_TIMEOUT_S:g} s")
            await asyncio.sleep(0.02)
        log.info("HTTP server listening on %s:%d", self._host, self.port)

    async def stop(self) -> None:
        if self._task is not None:
            self._server.should_exit = True
            await self._task
