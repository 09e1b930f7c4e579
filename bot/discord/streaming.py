"""One answer on Discord: shown at once, edited as it grows, continued in more messages past 2,000 characters.

Where it goes is a Destination: the response to a slash command (the deferred original, then
follow-ups; an interaction's token lives 15 minutes, after which new pages go to the channel
instead), or a message in a channel, thread or DM (a reply to the question where it asks for
one). Edits run through bot.progress at most once per interval; discord.py itself waits out
429s, so teambot never retries on its own.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Protocol

import discord

from bot.answering import GrowingMessage
from bot.core import AnswerDone
from bot.discord.feedback import feedback_view
from bot.discord.render import PLACEHOLDER, answer_pages, error_text, progress_pages
from bot.progress import ProgressPump

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()  # an answer never pings anyone (think "@everyone" in a document)
# An interaction token is valid for 15 minutes; stop using it a minute before.
INTERACTION_TOKEN_LIFE = dt.timedelta(minutes=14)
ORIGINAL = "@original"


def _or_missing(view: discord.ui.View | None) -> Any:
    """discord.py's "leave the components as they are" for None."""
    return discord.utils.MISSING if view is None else view


class Destination(Protocol):
    async def first(self) -> Any:
        """The first message, showing the placeholder; returns its handle."""

    async def send(self, content: str, view: discord.ui.View | None) -> Any:
        """Another message after the previous ones; returns its handle."""

    async def edit(self, handle: Any, content: str, view: discord.ui.View | None) -> Any:
        """Changes a message; returns its handle (a new one where it had to be sent again)."""


class ChannelDestination:
    """Messages in a channel, thread or DM; the first replies to ``reply_to`` when given."""

    def __init__(self, channel: discord.abc.Messageable, reply_to: discord.Message | None = None) -> None:
        self.channel = channel
        self._reply_to = reply_to

    async def first(self) -> discord.Message:
        if self._reply_to is not None:
            return await self._reply_to.reply(PLACEHOLDER, mention_author=False, allowed_mentions=NO_MENTIONS)
        return await self.channel.send(PLACEHOLDER, allowed_mentions=NO_MENTIONS)

    async def send(self, content: str, view: discord.ui.View | None) -> discord.Message:
        return await self.channel.send(content, view=_or_missing(view), allowed_mentions=NO_MENTIONS)

    async def edit(self, handle: discord.Message, content: str, view: discord.ui.View | None) -> discord.Message:
        return await handle.edit(content=content, view=_or_missing(view), allowed_mentions=NO_MENTIONS)


class InteractionDestination:
    """The response to a slash command (deferred before), then follow-ups; the channel once the token is old."""

    def __init__(self, interaction: discord.Interaction) -> None:
        self._interaction = interaction
        assert interaction.channel is not None
        self._channel = ChannelDestination(interaction.channel)  # type: ignore[arg-type]

    def _expired(self) -> bool:
        return discord.utils.utcnow() - self._interaction.created_at > INTERACTION_TOKEN_LIFE

    async def first(self) -> str:
        return ORIGINAL  # the deferral ("teambot is thinking…") shows until the first edit

    async def send(self, content: str, view: discord.ui.View | None) -> Any:
        if self._expired():
            return await self._channel.send(content, view)
        followup = self._interaction.followup
        return await followup.send(content, view=_or_missing(view), wait=True, allowed_mentions=NO_MENTIONS)

    async def edit(self, handle: Any, content: str, view: discord.ui.View | None) -> Any:
        if isinstance(handle, discord.Message) and not isinstance(handle, discord.WebhookMessage):
            return await self._channel.edit(handle, content, view)
        if self._expired():
            log.info("the interaction token is about to expire; continuing in the channel")
            return await self._channel.send(content, view)
        if handle == ORIGINAL:
            await self._interaction.edit_original_response(content=content, view=_or_missing(view), allowed_mentions=NO_MENTIONS)
            return ORIGINAL
        return await handle.edit(content=content, view=_or_missing(view), allowed_mentions=NO_MENTIONS)


class DiscordAnswer(GrowingMessage):
    """One answer on Discord: an AnswerView (bot.answering)."""

    platform_errors = (discord.HTTPException,)

    def __init__(self, destination: Destination, interval_s: float) -> None:
        self._destination = destination
        self._pages: list[tuple[Any, str]] = []  # (handle, content shown)
        self._pump = ProgressPump(self._show, interval_s, skippable=(discord.HTTPException,))

    async def open(self) -> None:
        self._pages = [(await self._destination.first(), PLACEHOLDER)]

    async def finish(self, done: AnswerDone, answer_id: str | None) -> None:
        await self._pump.stop()
        await self._render(answer_pages(done), feedback_view(answer_id) if answer_id else None)

    async def fail(self, message: str) -> None:
        await self._pump.stop()
        try:
            await self._render([error_text(message)], None)
        except discord.HTTPException as exc:
            log.warning("could not show an error on Discord: HTTP %s", exc.status)

    async def _show(self, text: str) -> None:
        await self._render(progress_pages(text), None)

    async def _render(self, pages: list[str], view: discord.ui.View | None) -> None:
        """Makes the messages show ``pages``, the view under the last one: edits what changed, sends what is new."""
        for k, content in enumerate(pages):
            last_view = view if k == len(pages) - 1 else None
            if k < len(self._pages):
                handle, shown = self._pages[k]
                if shown != content or last_view is not None:
                    self._pages[k] = (await self._destination.edit(handle, content, last_view), content)
            else:
                self._pages.append((await self._destination.send(content, last_view), content))
