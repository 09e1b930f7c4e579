"""What teambot's Discord messages look like: pure functions from an answer to message contents."""

from __future__ import annotations

import re

import discord

from bot.core import SEARCHED_HEADING, SOURCES_HEADING, AnswerDone
from bot.evidence import shorten
from bot.links import settled, show_targets
from bot.prompt import passage_label
from bot.splitting import split_text

# Discord's limit (discord.com/developers/docs/resources/message#create-message): 2,000 characters of content.
MESSAGE_LIMIT = 2000
PLACEHOLDER = "*Searching the knowledge base…*"
TYPING_MARK = " ▌"
THREAD_NAME_LIMIT = 100  # characters in a thread's name


def defused(text: str) -> str:
    """Text teambot did not write (an answer, a document's title or words) made safe to show: links with
    their target in sight (``label (<url>)``: the <> keep Discord from hiding it in a preview), and
    @everyone, @here, user and role mentions broken by a zero-width space. (Every message also goes
    out with allowed_mentions none: the second lock on the same door.)"""
    return discord.utils.escape_mentions(show_targets(text, lambda url: f"<{url}>"))


def sources_text(done: AnswerDone) -> str:
    lines = [f"**{done.sources_heading}**"]
    for n, passage in enumerate(done.sources, start=1):
        mark = " ✓" if n in done.cited else ""
        lines.append(f"[{n}] {defused(passage_label(passage))} · {passage.score:.2f}{mark}")
        if done.quote(n):
            lines.append(f"> {defused(shorten(done.quote(n)))}")
    return "\n".join(lines)


def answer_pages(done: AnswerDone) -> list[str]:
    """The finished answer and its sources, as messages of at most 2,000 characters each."""
    text = defused(done.answer.strip()) or "(no answer)"
    if done.sources:
        text += "\n\n" + sources_text(done)
    return split_text(text, MESSAGE_LIMIT)


def progress_pages(partial: str) -> list[str]:
    """A growing answer as the messages show it between edits."""
    return split_text(defused(settled(partial)) + TYPING_MARK, MESSAGE_LIMIT) or [TYPING_MARK.strip()]  # a link shows once whole


def answer_only(content: str) -> str:
    """A message of teambot's without its sources: what the conversation history keeps."""
    return re.split(rf"\n\n\*\*(?:{re.escape(SOURCES_HEADING)}|{re.escape(SEARCHED_HEADING)})\*\*", content, maxsplit=1)[0].strip()


def error_text(message: str) -> str:
    return f"⚠️ Sorry, I could not answer: {defused(message)}"[:MESSAGE_LIMIT]


def thread_name(question: str) -> str:
    name = " ".join(question.split()) or "teambot"
    return name if len(name) <= THREAD_NAME_LIMIT else name[: THREAD_NAME_LIMIT - 1] + "…"
