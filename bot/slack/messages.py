"""Slack's payloads, read once into typed values the rest of the adapter uses. Pure functions."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bot.answering import AnswerRequest
from bot.prompt import Turn
from bot.slack.render import PLACEHOLDER, strip_mentions
from config.settings import COLLECTION_NAME, DEFAULT_COLLECTION, SlackSettings

PLATFORM = "slack"


@dataclass(frozen=True)
class SlackQuestion:
    """A question asked on Slack: the request for the core, and where on Slack it lives."""

    request: AnswerRequest  # its thread is the reply thread ('' for a top-level reply)
    team: str
    reply_thread: str | None  # the thread to answer in; None: a top-level reply (direct messages)
    history_thread: str | None  # the thread whose messages are the conversation; None: the channel's (DMs)
    question_ts: str  # the message that asked (or the /ask anchor); later ones are not history


def slack_question(
    channel: str, user: str, team: str, text: str, reply_thread: str | None, history_thread: str | None, question_ts: str, collections: list[str]
) -> SlackQuestion:
    request = AnswerRequest(PLATFORM, text, tuple(collections), user=user, channel=channel, thread=reply_thread or "")
    return SlackQuestion(request, team, reply_thread, history_thread, question_ts)


@dataclass(frozen=True)
class SharedFile:
    id: str
    name: str
    size: int | None
    mimetype: str
    url: str


def slack_error(exc: Exception) -> str:
    """The error code of a failed Web API call ("ratelimited", "not_in_channel"), or its HTTP status."""
    response = getattr(exc, "response", None)
    data = getattr(response, "data", None)
    if isinstance(data, dict) and data.get("error"):
        return str(data["error"])
    return f"HTTP {getattr(response, 'status_code', '?')}"


def collections_for(channel: str, is_dm: bool, settings: SlackSettings) -> list[str]:
    if is_dm:
        return list(settings.dm_collections)
    return list(settings.channels.get(channel, [DEFAULT_COLLECTION]))


def mentions(text: str, user_id: str) -> bool:
    return f"<@{user_id}>" in text or f"<@{user_id}|" in text


def is_from_a_bot(event: Mapping[str, Any], bot_user_id: str) -> bool:
    return bool(event.get("bot_id")) or event.get("subtype") == "bot_message" or event.get("user") == bot_user_id


def question_from_message(event: Mapping[str, Any], team: str, settings: SlackSettings) -> SlackQuestion:
    """A mention, a thread follow-up or a direct message, as a question."""
    channel = event["channel"]
    is_dm = event.get("channel_type") == "im"
    thread = event.get("thread_ts")
    return slack_question(
        channel=channel,
        user=event.get("user", ""),
        team=event.get("team") or team,
        text=strip_mentions(event.get("text", "")),
        reply_thread=None if is_dm and not thread else (thread or event["ts"]),
        history_thread=thread,
        question_ts=event["ts"],
        collections=collections_for(channel, is_dm, settings),
    )


def shared_files(event: Mapping[str, Any]) -> list[SharedFile]:
    return [
        SharedFile(
            id=f.get("id", ""),
            name=f.get("name") or f.get("title") or f.get("id", "file"),
            size=f.get("size"),
            mimetype=f.get("mimetype", ""),
            url=f.get("url_private_download") or f.get("url_private") or "",
        )
        for f in event.get("files", [])
    ]


def upload_collection(text: str) -> str:
    """The collection named by the message that came with an upload ("" or "hr"); ValueError if it is no name."""
    name = strip_mentions(text).strip().lower()
    if not name:
        return DEFAULT_COLLECTION
    if not COLLECTION_NAME.match(name):
        raise ValueError(name)
    return name


def turns(messages: Iterable[Mapping[str, Any]], bot_user_id: str, before_ts: str) -> list[Turn]:
    """Earlier question/answer pairs of a conversation: each person's message with the bot's next reply."""
    pairs: list[Turn] = []
    question: str | None = None
    for message in sorted(messages, key=lambda m: float(m.get("ts", "0"))):
        if float(message.get("ts", "0")) >= float(before_ts):
            break
        text = message.get("text", "") or ""
        if is_from_a_bot(message, bot_user_id):
            if question is not None and text and text != PLACEHOLDER and not text.startswith(":warning:"):
                pairs.append(Turn(question, text))
            question = None
        elif not message.get("subtype"):
            question = strip_mentions(text) or None
    return pairs


_KB_REMOVE = re.compile(r"^(?:(?P<collection>[a-z0-9][a-z0-9_-]*):)?(?P<name>.+)$")


def parse_remove_target(argument: str, default_collection: str) -> tuple[str, str]:
    """`/kb remove NAME` or `/kb remove COLLECTION:NAME` -> (collection, name)."""
    match = _KB_REMOVE.match(argument.strip())
    if not match:
        raise ValueError(argument)
    return match.group("collection") or default_collection, match.group("name").strip()
