"""teambot's HTTP server (Starlette on uvicorn), for the routes that front ends contribute:
Slack's Events API at /slack/events, /healthz, /metrics and the admin console at /admin.

Every request body is limited by its path (``BodyLimits``) before any handler reads it: a
Content-Length over the limit is answered 413 at once, and a chunked body is counted as it
arrives and cut off with 413 once it passes the limit. Nothing is read before that check.

A connection the server closes is closed gracefully (``LingeringClose``): a client still sending a
refused body would otherwise get a TCP reset in place of the 413 it was sent.

Connections are bounded (``ConnectionLimits``): at most so many open at once (each is a file
descriptor; more are answered 503 and closed at once), a request head must arrive within a time,
and a body may not stop arriving for longer than another (408). Each is logged once per minute
with a count, not per connection, so a flood cannot rotate the earlier log away.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import resource
import socket
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, NamedTuple

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from config.errors import TeambotError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
LINGER_S = 2.0  # how long a closed connection still takes (and drops) what its client sends
RESERVED_FILES = 256  # descriptors kept for teambot's own files (Chroma, logs, models, its HTTP clients)
ACCEPT_BURST = 16  # asyncio accepts this many connections at once (its backlog argument), before any is counted
LISTEN_BACKLOG = 2048  # the kernel's queue of connections waiting to be accepted (holds no descriptor of ours)
LOG_EVERY_S = 60.0  # a repeated connection problem is logged at most this often


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
        except ClientDisconnect:
            pass  # the client left, or was closed for a body that stopped (408): nobody to answer
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

    def __init__(self, transport: asyncio.Transport, protocol: asyncio.Protocol, on_linger: Callable[[], None] = lambda: None) -> None:
        self._transport, self._protocol, self._on_linger = transport, protocol, on_linger
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
        self._on_linger()

    def close_now(self) -> None:
        """Closes the connection at once, lingering or not (its descriptor is wanted)."""
        self._closing = True
        self._transport.close()


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


class EveryMinute:
    """A warning about something that may happen thousands of times a second (a flood of
    connections): logged the first time, then at most once per ``LOG_EVERY_S`` with how many
    times it happened since."""

    def __init__(self, message: str) -> None:
        self._message = message
        self._last = -LOG_EVERY_S
        self._since = 0

    def note(self, *args: Any) -> None:
        self._since += 1
        now = time.monotonic()
        if now - self._last >= LOG_EVERY_S:
            log.warning(self._message + " (%d times in the last %d s)", *args, self._since, min(now - self._last, LOG_EVERY_S))
            self._last, self._since = now, 0


@dataclass
class ConnectionLimits:
    """What clients may hold of the HTTP server, shared by its listeners: open connections (file
    descriptors), the time to send a request head, the longest pause in a request body.

    At the cap, a connection already answered and closed but still lingering goes first, else the
    one that has waited longest without a request (opened and silent, or kept alive after its
    answer) is closed to make room: a flood of idle connections then pushes
    out its own, and a real request (whose head comes at once) still gets in. Only when every open
    connection is in a request is a new one answered 503."""

    max_connections: int
    header_timeout_s: float
    body_timeout_s: float
    open: int = 0
    idle: dict[TeambotHttp, None] = field(default_factory=dict)  # open connections without a request, oldest first
    closing: dict[TeambotHttp, None] = field(default_factory=dict)  # answered and closed, lingering (LingeringClose)
    refused: EveryMinute = field(default_factory=lambda: EveryMinute(
        "HTTP connection refused (503): %d are open and all in a request, http_max_connections allows %d; "
        "raise TEAMBOT_HTTP_MAX_CONNECTIONS if these are real clients"))
    evicted: EveryMinute = field(default_factory=lambda: EveryMinute(
        "HTTP connection from %s closed to make room: it had sent no request, and http_max_connections (%d) were open"))
    too_slow: EveryMinute = field(default_factory=lambda: EveryMinute(
        "HTTP connection from %s closed (408): its %s did not arrive within %g s (%s)"))

    def fit_open_files(self) -> None:
        """Lowers ``max_connections`` to what the process's open-file limit leaves beside teambot's own files."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        room = max(16, soft - RESERVED_FILES - 4 * ACCEPT_BURST) if soft != resource.RLIM_INFINITY else self.max_connections
        if self.max_connections > room:
            log.warning(
                "http_max_connections = %d does not fit the open-file limit of %d (ulimit -n, systemd's LimitNOFILE) beside "
                "teambot's own %d files and %d being accepted: at most %d connections are taken; raise the limit or lower "
                "TEAMBOT_HTTP_MAX_CONNECTIONS", self.max_connections, soft, RESERVED_FILES, ACCEPT_BURST, room,
            )
            self.max_connections = room

    def make_room(self) -> bool:
        """Whether one more connection may open: under the cap, or once the longest idle one is closed."""
        if self.open < self.max_connections:
            return True
        if self.closing:
            next(iter(self.closing)).close_now()
            return True
        if not self.idle:
            self.refused.note(self.open, self.max_connections)
            return False
        oldest = next(iter(self.idle))
        self.evicted.note(oldest.client_name, self.max_connections)
        oldest.close_now()
        return True


_BUSY_BODY = json.dumps({"error": "teambot has too many open connections: try again in a few seconds"}).encode()
BUSY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%b" % (
    len(_BUSY_BODY), _BUSY_BODY,
)


class TeambotHttp(HttpToolsProtocol):  # type: ignore[misc]
    """uvicorn's HTTP protocol (httptools) under ``ConnectionLimits``, its connections closed by ``LingeringClose``."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._taken = False  # uvicorn holds it (else it was refused at once)
        self._counted = False  # it counts among the open connections
        self._deadline: asyncio.TimerHandle | None = None

    @property
    def client_name(self) -> str:
        return "%s:%d" % self.client if self.client else "a client"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        assert isinstance(transport, asyncio.Transport)
        if not self._limits.make_room():
            transport.write(BUSY)
            transport.close()  # at once, not lingering: the descriptor is what is short
            return
        self._taken = self._counted = True
        self._limits.open += 1
        super().connection_made(LingeringClose(transport, self, self._lingering))
        self._wait_for_request()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._taken:
            return
        self._taken = False
        self._uncount()
        self._forget_deadline()
        super().connection_lost(exc)

    def close_now(self) -> None:
        """Closes this connection without lingering, and stops counting it at once (its descriptor goes now)."""
        self._uncount()
        self._forget_deadline()
        self.transport.close_now()

    def _lingering(self) -> None:
        self._forget_deadline()
        self._limits.idle.pop(self, None)
        if self._counted:
            self._limits.closing[self] = None

    def _uncount(self) -> None:
        self._limits.idle.pop(self, None)
        self._limits.closing.pop(self, None)
        if self._counted:
            self._counted = False
            self._limits.open -= 1

    def shutdown(self) -> None:
        self.transport.lingers = False  # a server shutting down waits for its connections to close
        super().shutdown()

    def _wait_for_request(self) -> None:
        if self._counted:
            self._limits.idle.pop(self, None)
            self._limits.idle[self] = None  # the newest idle one
        self._expect("request head")

    # The parser's callbacks: a head is timed from the connection, its answer or its first byte; a body by its pauses.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._expect("request head")

    def on_headers_complete(self) -> None:
        self._limits.idle.pop(self, None)
        super().on_headers_complete()
        self._expect("request body")

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._expect("request body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._forget_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._wait_for_request()  # kept alive: idle again (uvicorn's keep-alive timeout closes it too)

    def _expect(self, what: str) -> None:
        self._forget_deadline()
        seconds = self._limits.header_timeout_s if what == "request head" else self._limits.body_timeout_s
        self._deadline = self.loop.call_later(seconds, self._too_slow, what, seconds)

    def _forget_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, what: str, seconds: float) -> None:
        self._deadline = None
        if what == "request body" and self.flow.read_paused:
            self._expect(what)  # teambot is not reading it yet: not the client's delay
            return
        setting = "http_header_timeout_s" if what == "request head" else "http_body_timeout_s"
        self._limits.too_slow.note(self.client_name, what, seconds, setting)
        cycle = self.cycle
        answer_owed = cycle is None or (cycle.response_complete if what == "request head" else not cycle.response_started)
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the handler reading the body is told the client is gone
            cycle.message_event.set()
        if answer_owed:
            body = json.dumps({"error": f"the {what} did not arrive within {seconds:g} s"}).encode()
            head = f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {len(body)}\r\n\r\n"
            self.transport.write(head.encode() + body)
        self.transport.close()


def _log_accept_errors_once_a_minute(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio reports every failed accept (out of file descriptors: EMFILE) with a traceback,
    up to once a second per listener; teambot logs it once a minute with a count instead."""
    if getattr(loop, "_teambot_accept_errors", None) is not None:
        return
    errors = EveryMinute("HTTP connections cannot be accepted: %s; raise the open-file limit (ulimit -n, systemd's LimitNOFILE) or lower TEAMBOT_HTTP_MAX_CONNECTIONS")
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == "socket.accept() out of system resource":
            errors.note(context.get("exception"))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    loop._teambot_accept_errors = errors  # type: ignore[attr-defined]


class HttpServer:
    def __init__(
        self, host: str, port: int, routes: list[BaseRoute], limits: BodyLimits, connections: ConnectionLimits,
        *, where: str = "TEAMBOT_HTTP_HOST/TEAMBOT_HTTP_PORT",
    ) -> None:
        self._host, self._port, self._where = host, port, where
        app = Starlette(routes=routes, middleware=[Middleware(LimitBodies, limits=limits)])
        protocol = functools.partial(TeambotHttp, limits=connections)
        # proxy_headers off: uvicorn would take X-Forwarded-For/-Proto from any local client; the console reads
        # them only from console.trusted_proxies (bot/console_guard.py).
        self._config = uvicorn.Config(app, http=protocol, proxy_headers=False, backlog=ACCEPT_BURST, log_level="warning", lifespan="off", access_log=False)  # type: ignore[arg-type]
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
        _log_accept_errors_once_a_minute(asyncio.get_running_loop())
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="http-server")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if time.monotonic() > deadline:
                raise TeambotError(f"teambot's HTTP server did not start within {START_TIMEOUT_S:g} s")
            await asyncio.sleep(0.02)
        # asyncio took ACCEPT_BURST as the listen backlog too: a burst of 100 connections then overflowed the
        # kernel's queue and clients were reset. The kernel's queue is set again, larger; asyncio keeps its burst.
        self._socket.listen(LISTEN_BACKLOG)
        log.info("HTTP server listening on %s:%d", self._host, self.port)

    async def stop(self) -> None:
        if self._task is not None:
            self._server.should_exit = True
            await self._task
