"""Discord's objects, read once into the plain values the adapter uses. Pure functions."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import discord

from bot.answering import AnswerRequest
from bot.discord.render import PLACEHOLDER, TYPING_MARK, answer_only
from bot.prompt import Turn
from config.settings import DEFAULT_COLLECTION, DiscordSettings

PLATFORM = "discord"
_MENTION = re.compile(r"<@!?\d+>|<@&\d+>")


def strip_mentions(text: str) -> str:
    return " ".join(_MENTION.sub(" ", text).split())


@dataclass(frozen=True)
class Where:
    """Where a question was asked: what the answer log and the channel scoping need."""

    channel: str
    thread: str  # the thread's id when in a thread, else ""
    parent: str  # a thread's parent channel, else ""
    guild_id: int | None
    is_dm: bool

    @classmethod
    def of_channel(cls, channel: object, guild_id: int | None) -> Where:
        if isinstance(channel, discord.Thread):
            return cls(str(channel.id), str(channel.id), str(channel.parent_id), guild_id, False)
        is_dm = isinstance(channel, discord.DMChannel) or guild_id is None
        return cls(str(getattr(channel, "id", "")), "", "", guild_id, is_dm)

    def collections(self, settings: DiscordSettings) -> list[str]:
        if self.is_dm:
            return list(settings.dm_collections)
        for key in (self.channel, self.parent, str(self.guild_id or "")):
            if key and key in settings.channels:
                return list(settings.channels[key])
        return [DEFAULT_COLLECTION]


def answer_request(where: Where, user: str, text: str, settings: DiscordSettings, history: Iterable[Turn] = ()) -> AnswerRequest:
    """A slash command's question or a message's text (mentions dropped), as the core's request."""
    return AnswerRequest(
        PLATFORM, strip_mentions(text), tuple(where.collections(settings)), user=user, channel=where.channel, thread=where.thread, history=tuple(history)
    )


@dataclass(frozen=True)
class Said:
    by_bot: bool
    content: str
    at: float


def turns(messages: Iterable[Said]) -> list[Turn]:
    """Earlier question/answer pairs: each person's message with the bot's reply (its pages joined, sources left out)."""
    pairs: list[Turn] = []
    question: str | None = None
    answer: list[str] = []

    def close() -> None:
        nonlocal question, answer
        if question is not None and answer:
            pairs.append(Turn(question, "\n".join(answer)))
        question, answer = None, []

    for said in sorted(messages, key=lambda m: m.at):
        if said.by_bot:
            text = answer_only(said.content)
            if question is not None and text and text != PLACEHOLDER and not text.endswith(TYPING_MARK) and not text.startswith("⚠️"):
                answer.append(text)
        else:
            close()
            question = strip_mentions(said.content) or None
    close()
    return pairs
