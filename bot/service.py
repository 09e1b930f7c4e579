"""What `teambot serve` runs beside the LLM: the chat platforms that are configured, and the
HTTP server their webhooks need."""

from __future__ import annotations

import logging

from bot.answer_log import AnswerLog
from bot.http_server import HttpServer
from bot.runtime import Runtime

log = logging.getLogger(__name__)


class Service:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.answers = AnswerLog(runtime.settings.data_dir / "answers.sqlite")
        self.slack = None
        self.http: HttpServer | None = None

    @property
    def platforms(self) -> list[str]:
        return ["Slack"] if self.slack is not None else []

    async def start(self) -> None:
        settings = self._runtime.settings
        routes = []
        try:
            if settings.slack_bot_token is not None:
                from bot.slack.adapter import SlackAdapter

                self.slack = SlackAdapter(settings, self._runtime.require_engine(), self._runtime.library, self.answers)
                await self.slack.start()
                routes += self.slack.routes()
            if routes:
                self.http = HttpServer(settings.http_host, settings.http_port, routes)
                await self.http.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.stop()
        if self.slack is not None:
            await self.slack.stop()
        self.answers.close()
