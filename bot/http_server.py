"""teambot's HTTP server (Starlette on uvicorn), for the routes that front ends contribute:
Slack's Events API at /slack/events, /healthz, /metrics and the admin console at /admin.

Every request body is limited by its path (``BodyLimits``) before any handler reads it: a
Content-Length over the limit is answered 413 at once, and a chunked body is counted as it
arrives and cut off with 413 once it passes the limit. Nothing is read before that check.

A connection the server closes is closed gracefully (``LingeringClose``): a client still sending a
refused body would otherwise get a TCP reset in place of the 413 it was sent.
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
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from config.errors import TeambotError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
LINGER_S = 2.0  # how long a closed connection still takes (and drops) what its client sends


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


class LingeringClose:
    """A connection's transport whose ``close`` is graceful, as nginx's lingering close: the
    answer is sent and followed by FIN, and what the client still sends is read and dropped
    until it closes too or ``LINGER_S`` pass. Closing a socket that holds unread data makes
    the kernel reset the connection and drop what is not yet sent, so a client uploading an
    oversized body would often get "connection reset" instead of its 413."""

    def __init__(self, transport: asyncio.Transport, protocol: asyncio.Protocol) -> None:
        self._transport, self._protocol = transport, protocol
        self._closing = False
        self.lingers = True  # off while the server shuts down: it closes at once then

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)  # write, get_extra_info, pause_reading... as they are

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def write(self, data: bytes) -> None:
        if not self._closing:
            self._transport.write(data)

    def close(self) -> None:
        if self.is_closing():
            return
        self._closing = True
        transport = self._transport
        if not (self.lingers and transport.can_write_eof()):
            transport.close()
            return
        transport.set_protocol(_Draining(transport, self._protocol))
        transport.write_eof()  # FIN once what is buffered is sent
        transport.resume_reading()


class _Draining(asyncio.Protocol):
    """Drops what a client sends after its connection was closed by the server; closes it when
    the client closes its side or after ``LINGER_S``, and then tells the HTTP protocol."""

    def __init__(self, transport: asyncio.Transport, protocol: asyncio.Protocol) -> None:
        self._transport, self._protocol = transport, protocol
        self._deadline = asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        self._protocol.connection_lost(exc)


class LingeringHttp(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol (httptools or h11, as it picks) with connections closed by ``LingeringClose``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        super().connection_made(LingeringClose(transport, self))

    def shutdown(self) -> None:
        self.transport.lingers = False  # a server shutting down waits for its connections to close
        super().shutdown()


class HttpServer:
    def __init__(self, host: str, port: int, routes: list[BaseRoute], limits: BodyLimits, *, where: str = "TEAMBOT_HTTP_HOST/TEAMBOT_HTTP_PORT") -> None:
        self._host, self._port, self._where = host, port, where
        app = Starlette(routes=routes, middleware=[Middleware(LimitBodies, limits=limits)])
        self._config = uvicorn.Config(app, http=LingeringHttp, log_level="warning", lifespan="off", access_log=False)
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
