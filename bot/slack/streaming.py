"""One answer's message in Slack: a placeholder at once, then the answer growing, then the final blocks.

Two ways to grow it:
- Slack's chat streaming API (chat.startStream / appendStream / stopStream), where the
  workspace has it: the stream starts with the first text and replaces the placeholder;
- chat.update of the placeholder, at most one edit per ``interval_s`` (chat.update is Tier 3).
The client's retry handler waits out 429s as Retry-After says; bot.progress keeps that from
holding up the answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.answering import GrowingMessage
from bot.core import AnswerDone
from bot.progress import ProgressPump
from bot.slack.messages import slack_error
from bot.slack.render import (
    PLACEHOLDER,
    TRUNCATED,
    answer_blocks,
    error_text,
    footer_blocks,
    notification_text,
    progress_text,
    stream_markdown,
)

log = logging.getLogger(__name__)

# chat.startStream's markdown is bounded like a markdown block: 12,000 characters.
STREAM_TEXT_LIMIT = 12000


@dataclass
class StreamSupport:
    """Whether the workspace has the chat streaming API: unknown until the first try."""

    enabled: bool
    known_missing: bool = False


@dataclass
class AnswerMessage(GrowingMessage):
    """One answer's message in Slack: an AnswerView (bot.answering)."""

    platform_errors: ClassVar[tuple[type[Exception], ...]] = (SlackApiError,)
    client: AsyncWebClient
    channel: str
    thread_ts: str | None  # None: a top-level message (direct messages)
    interval_s: float
    streams: StreamSupport
    recipient_user: str = ""
    recipient_team: str = ""
    ts: str = ""  # the placeholder's, then (with chat.update) the answer's
    _streamed: str = ""  # what the stream shows so far (escaped, as sent)
    _stream_ts: str = ""
    _pump: ProgressPump = field(init=False)

    def __post_init__(self) -> None:
        self._pump = ProgressPump(self._show_progress, self.interval_s, skippable=(SlackApiError,))

    async def open(self) -> None:
        """Posts the placeholder."""
        response = await self.client.chat_postMessage(channel=self.channel, thread_ts=self.thread_ts, text=PLACEHOLDER)
        self.ts = response["ts"]

    async def finish(self, done: AnswerDone, answer_id: str | None) -> None:
        """Replaces whatever is shown with the whole answer, its sources and the feedback buttons."""
        await self._pump.stop()
        if self._stream_ts:
            whole = stream_markdown(done.answer + "\n")  # the end of the answer: nothing there is unfinished any more
            if whole.startswith(self._streamed):  # the stream shows the start of this very answer: finish it
                tail = whole[len(self._streamed) : STREAM_TEXT_LIMIT].rstrip("\n")
                if len(whole.rstrip("\n")) > STREAM_TEXT_LIMIT:
                    tail += TRUNCATED
                await self.client.chat_stopStream(
                    channel=self.channel, ts=self._stream_ts, markdown_text=tail or None, blocks=footer_blocks(done, answer_id)
                )
                return
            # The stream shows something else (the evidence preview, or text the guard rejected): end it, then replace it whole.
            await self.client.chat_stopStream(channel=self.channel, ts=self._stream_ts)
            self.ts = self._stream_ts
        await self.client.chat_update(channel=self.channel, ts=self.ts, text=notification_text(done), blocks=answer_blocks(done, answer_id))

    async def fail(self, message: str) -> None:
        """Shows an error instead of the answer (best effort: Slack itself may be what failed)."""
        await self._pump.stop()
        try:
            if self._stream_ts:
                await self.client.chat_stopStream(channel=self.channel, ts=self._stream_ts, markdown_text="\n\n" + error_text(message))
            elif self.ts:
                await self.client.chat_update(channel=self.channel, ts=self.ts, text=error_text(message), blocks=[])
        except SlackApiError as exc:
            log.warning("could not show an error in Slack: %s", slack_error(exc))

    async def _show_progress(self, text: str) -> None:
        if self.thread_ts and self.streams.enabled and not self.streams.known_missing and not self._stream_ts:
            if await self._start_stream(text):
                return
        if self._stream_ts:
            shown = stream_markdown(text)[:STREAM_TEXT_LIMIT]
            if shown.startswith(self._streamed) and len(shown) > len(self._streamed):
                await self.client.chat_appendStream(channel=self.channel, ts=self._stream_ts, markdown_text=shown[len(self._streamed) :])
                self._streamed = shown
            return
        await self.client.chat_update(channel=self.channel, ts=self.ts, text=progress_text(text), blocks=[])

    async def _start_stream(self, text: str) -> bool:
        text = stream_markdown(text)[:STREAM_TEXT_LIMIT]
        if not text:
            return False  # all of it may still become a link: wait for more
        options: dict[str, Any] = {"recipient_user_id": self.recipient_user, "recipient_team_id": self.recipient_team}
        try:
            response = await self.client.chat_startStream(channel=self.channel, thread_ts=self.thread_ts, markdown_text=text, **options)
        except SlackApiError as exc:
            self.streams.known_missing = True
            log.info("Slack's streaming API is not available here (%s); editing messages instead", slack_error(exc))
            return False
        self._stream_ts, self._streamed = response["ts"], text
        try:
            await self.client.chat_delete(channel=self.channel, ts=self.ts)
        except SlackApiError as exc:
            log.warning("could not remove the placeholder: %s", slack_error(exc))
        return True
