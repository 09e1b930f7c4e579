"""teambot's HTTP server (Starlette on uvicorn), for the routes that front ends contribute:
Slack's Events API at /slack/events, /healthz, /metrics and the admin console at /admin."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from config.errors import TeambotError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0


class HttpServer:
    def __init__(self, host: str, port: int, routes: list[BaseRoute]) -> None:
        self._host, self._port = host, port
        self._config = uvicorn.Config(Starlette(routes=routes), log_level="warning", lifespan="off", access_log=False)
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
                "another program may use that port: set TEAMBOT_HTTP_PORT to a free one (or TEAMBOT_HTTP_HOST)",
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
