"""One answer's message in Slack: a placeholder at once, then the answer growing, then the final blocks.

Two ways to grow it:
- Slack's chat streaming API (chat.startStream / appendStream / stopStream), where the
  workspace has it: the stream starts with the first text and replaces the placeholder;
- chat.update of the placeholder, at most one edit per ``interval_s`` (chat.update is Tier 3).

Edits run on their own task, so a slow edit (a 429 waited out by the client's retry handler,
which obeys Retry-After) never holds up the answer; the latest text is sent when it is done.
The final edit waits for the one in flight, so nothing older can overwrite it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.core import AnswerDone
from bot.slack.messages import slack_error
from bot.slack.render import PLACEHOLDER, TRUNCATED, answer_blocks, error_text, footer_blocks, notification_text, progress_text

log = logging.getLogger(__name__)

# chat.startStream's markdown is bounded like a markdown block: 12,000 characters.
STREAM_TEXT_LIMIT = 12000


@dataclass
class StreamSupport:
    """Whether the workspace has the chat streaming API: unknown until the first try."""

    enabled: bool
    known_missing: bool = False


@dataclass
class AnswerMessage:
    client: AsyncWebClient
    channel: str
    thread_ts: str | None  # None: a top-level message (direct messages)
    interval_s: float
    streams: StreamSupport
    recipient_user: str = ""
    recipient_team: str = ""
    ts: str = ""  # the placeholder's, then (with chat.update) the answer's
    _text: str = ""
    _sent: int = 0  # characters of _text already streamed
    _stream_ts: str = ""
    _dirty: asyncio.Event = field(default_factory=asyncio.Event)
    _closing: bool = False
    _pump: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Posts the placeholder."""
        response = await self.client.chat_postMessage(channel=self.channel, thread_ts=self.thread_ts, text=PLACEHOLDER)
        self.ts = response["ts"]

    def append(self, delta: str) -> None:
        self._text += delta
        self._dirty.set()
        if self._pump is None:
            self._pump = asyncio.create_task(self._run_pump(), name=f"slack-edits-{self.ts}")

    async def finish(self, done: AnswerDone, answer_id: str | None) -> None:
        """Replaces whatever is shown with the whole answer, its sources and the feedback buttons."""
        self._text = done.answer
        await self._stop_pump()
        if self._stream_ts:
            tail = self._text[self._sent : STREAM_TEXT_LIMIT]
            if len(self._text) > STREAM_TEXT_LIMIT:
                tail += TRUNCATED
            await self.client.chat_stopStream(
                channel=self.channel, ts=self._stream_ts, markdown_text=tail or None, blocks=footer_blocks(done, answer_id)
            )
            return
        await self.client.chat_update(channel=self.channel, ts=self.ts, text=notification_text(done), blocks=answer_blocks(done, answer_id))

    async def fail(self, message: str) -> None:
        """Shows an error instead of the answer (best effort: Slack itself may be what failed)."""
        await self._stop_pump()
        try:
            if self._stream_ts:
                await self.client.chat_stopStream(channel=self.channel, ts=self._stream_ts, markdown_text="\n\n" + error_text(message))
            elif self.ts:
                await self.client.chat_update(channel=self.channel, ts=self.ts, text=error_text(message), blocks=[])
        except SlackApiError as exc:
            log.warning("could not show an error in Slack: %s", slack_error(exc))

    async def _stop_pump(self) -> None:
        self._closing = True
        self._dirty.set()
        if self._pump is not None:
            await self._pump

    async def _run_pump(self) -> None:
        while True:
            await self._dirty.wait()
            if self._closing:
                return
            self._dirty.clear()
            try:
                await self._show_progress()
            except SlackApiError as exc:  # an edit that failed is skipped; the final one is what counts
                log.warning("a progress edit failed: %s", slack_error(exc))
            if self._closing:
                return
            await asyncio.sleep(self.interval_s)

    async def _show_progress(self) -> None:
        if self.thread_ts and self.streams.enabled and not self.streams.known_missing and not self._stream_ts:
            if await self._start_stream():
                return
        if self._stream_ts:
            delta = self._text[self._sent : STREAM_TEXT_LIMIT]
            if delta:
                await self.client.chat_appendStream(channel=self.channel, ts=self._stream_ts, markdown_text=delta)
                self._sent += len(delta)
            return
        await self.client.chat_update(channel=self.channel, ts=self.ts, text=progress_text(self._text), blocks=[])

    async def _start_stream(self) -> bool:
        text = self._text[:STREAM_TEXT_LIMIT]
        options: dict[str, Any] = {"recipient_user_id": self.recipient_user, "recipient_team_id": self.recipient_team}
        try:
            response = await self.client.chat_startStream(channel=self.channel, thread_ts=self.thread_ts, markdown_text=text, **options)
        except SlackApiError as exc:
            self.streams.known_missing = True
            log.info("Slack's streaming API is not available here (%s); editing messages instead", slack_error(exc))
            return False
        self._stream_ts, self._sent = response["ts"], len(text)
        try:
            await self.client.chat_delete(channel=self.channel, ts=self.ts)
        except SlackApiError as exc:
            log.warning("could not remove the placeholder: %s", slack_error(exc))
        return True

