"""What `teambot serve` runs beside the LLM: the chat platforms that are configured, the index
scheduler, and the HTTP server (webhooks, /healthz, /metrics, the admin console). A platform's
module is imported only when it is configured. The parts come built from bot.runtime
(``open_runtime(..., serving=True)``); this starts and stops them."""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from bot.console import console_body_limits, console_routes
from bot.health import LLMProbe, health_route
from bot.http_server import BodyLimits, ConnectionLimits, HttpServer, Limit
from bot.runtime import Runtime
from rag.operations.scheduler import IndexScheduler

if TYPE_CHECKING:
    from bot.discord.adapter import DiscordAdapter
    from bot.slack.adapter import SlackAdapter

log = logging.getLogger(__name__)


class Service:
    def __init__(self, runtime: Runtime) -> None:
        assert runtime.flow is not None and runtime.answers is not None and runtime.metrics is not None and runtime.platform is not None, (
            "open the runtime with_llm and serving"
        )
        self._runtime = runtime
        self.flow, self.answers, self.metrics, self.platform = runtime.flow, runtime.answers, runtime.metrics, runtime.platform
        self.slack: SlackAdapter | None = None
        self.discord: DiscordAdapter | None = None
        self.http: HttpServer | None = None
        self.console_http: HttpServer | None = None  # the console's own listener, when console.port is set
        self.console_off: str | None = None  # why the admin console is not served, if it is not
        self.scheduler = IndexScheduler(runtime.settings, runtime.runs, info=self._lease_info)
        self.llm_probe = LLMProbe(runtime.endpoint, runtime.activity) if runtime.endpoint and runtime.activity else None

    def _lease_info(self) -> dict[str, Any]:
        """What other processes see of this one with the index lease."""
        return {"pid": os.getpid(), "host": socket.gethostname(), **({"http": self.http.url} if self.http and self.http.listening else {})}

    @property
    def console_url(self) -> str | None:
        """Where the admin console is served, when it is."""
        server = self.console_http or self.http
        return f"{server.url}/admin" if server is not None and server.listening and self._runtime.settings.console.enabled else None

    @property
    def platforms(self) -> list[str]:
        return [name for name, adapter in (("Slack", self.slack), ("Discord", self.discord)) if adapter is not None]

    async def start(self) -> None:
        runtime = self._runtime
        settings = runtime.settings
        routes = [health_route(runtime, self.scheduler, self.llm_probe), self.metrics.route()]
        try:
            await self.scheduler.start()
            console, self.console_off = console_routes(settings, self.flow, runtime.desk, self.scheduler, self.answers, self.platform.sessions)
            limits = BodyLimits(Limit(settings.http_max_body_kb * 1024, "raise http_max_body_kb (TEAMBOT_HTTP_MAX_BODY_KB)"), console_body_limits(settings))
            connections = ConnectionLimits(settings.http_max_connections, settings.http_header_timeout_s, settings.http_body_timeout_s)
            connections.fit_open_files()
            if settings.console.port is None:
                routes += console
            elif console:
                self.console_http = HttpServer(
                    settings.console.host, settings.console.port, console, limits, connections, where="console.host/console.port (TEAMBOT_CONSOLE__PORT)"
                )
                await self.console_http.start()
            if self.console_off:
                log.warning(self.console_off)
            if settings.slack_bot_token is not None:
                from bot.slack.adapter import SlackAdapter

                self.slack = SlackAdapter(settings, self.flow, runtime.desk, self.answers, self.platform.seen)
                await self.slack.start()
                routes += self.slack.routes()
            if settings.discord_bot_token is not None:
                from bot.discord.adapter import DiscordAdapter

                self.discord = DiscordAdapter(settings, self.flow, runtime.desk, self.answers, self.platform.seen)
                await self.discord.start()
            self.http = HttpServer(settings.http_host, settings.http_port, routes, limits, connections)
            await self.http.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.stop()
        if self.console_http is not None:
            await self.console_http.stop()
        if self.slack is not None:
            await self.slack.stop()
        if self.discord is not None:
            await self.discord.stop()
        await self.scheduler.stop()
        if self.llm_probe is not None:
            await self.llm_probe.aclose()
