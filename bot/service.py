"""What `teambot serve` runs beside the LLM: the chat platforms that are configured, the index
scheduler, and the HTTP server (webhooks, /healthz, /metrics, the admin console). A platform's
module is imported only when it is configured."""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

from bot.answer_log import AnswerLog
from bot.console import console_routes
from bot.health import health_route
from bot.http_server import HttpServer
from bot.metrics import Metrics
from bot.runtime import Runtime
from rag.lease import new_holder_id
from rag.scheduler import IndexScheduler

if TYPE_CHECKING:
    from bot.discord.adapter import DiscordAdapter
    from bot.slack.adapter import SlackAdapter

log = logging.getLogger(__name__)


class Service:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.answers = AnswerLog(runtime.settings.data_dir / "answers.sqlite")
        self.slack: SlackAdapter | None = None
        self.discord: DiscordAdapter | None = None
        self.http: HttpServer | None = None
        self.console_off: str | None = None  # why the admin console is not served, if it is not
        self.metrics = Metrics(runtime.manifest)
        self.scheduler = IndexScheduler(runtime.settings, runtime.indexer, runtime.history, new_holder_id(), on_run=self.metrics.observe_run)
        self.scheduler.info = {"pid": os.getpid(), "host": socket.gethostname()}

    @property
    def platforms(self) -> list[str]:
        return [name for name, adapter in (("Slack", self.slack), ("Discord", self.discord)) if adapter is not None]

    async def start(self) -> None:
        settings = self._runtime.settings
        routes = [health_route(self._runtime, self.scheduler), self.metrics.route()]
        try:
            engine, library = self._runtime.require_engine(), self._runtime.library
            engine.metrics = self.metrics
            library.on_upload = self.metrics.observe_upload
            await self.scheduler.start()
            console, self.console_off = console_routes(self._runtime, self.scheduler, self.answers)
            routes += console
            if self.console_off:
                log.warning(self.console_off)
            if settings.slack_bot_token is not None:
                from bot.slack.adapter import SlackAdapter

                self.slack = SlackAdapter(settings, engine, library, self.answers, scheduler=self.scheduler)
                await self.slack.start()
                routes += self.slack.routes()
            if settings.discord_bot_token is not None:
                from bot.discord.adapter import DiscordAdapter

                self.discord = DiscordAdapter(settings, engine, library, self.answers, scheduler=self.scheduler)
                await self.discord.start()
            self.http = HttpServer(settings.http_host, settings.http_port, routes)
            await self.http.start()
            self.scheduler.info["http"] = self.http.url
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.stop()
        if self.slack is not None:
            await self.slack.stop()
        if self.discord is not None:
            await self.discord.stop()
        await self.scheduler.stop()
        self.answers.close()
