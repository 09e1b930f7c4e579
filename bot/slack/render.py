"""What teambot's Slack messages look like: pure functions from an answer to text and blocks."""

from __future__ import annotations

import re
from typing import Any

from bot.core import AnswerDone
from bot.evidence import shorten
from bot.links import settled, show_targets
from bot.prompt import passage_label
from bot.splitting import split_text

# Slack's limits (docs.slack.dev, "Block Kit" and "chat.postMessage"):
SECTION_TEXT_LIMIT = 3000  # characters in a section block's text
MESSAGE_TEXT_LIMIT = 40000  # characters of a message's top-level text before Slack truncates it
MESSAGE_BLOCKS_LIMIT = 50  # blocks in one message
# Our own bounds within those: answer sections leave room for the sources and the buttons.
ANSWER_SECTIONS_MAX = 12
PROGRESS_TEXT_MAX = 3500  # a growing answer shows its last part beyond this

PLACEHOLDER = "_Searching the knowledge base…_"
TRUNCATED = "\n_…(the answer was longer; ask for the part you need)_"
TYPING_MARK = " ▍"
FEEDBACK_ACTION_UP = "feedback_up"
FEEDBACK_ACTION_DOWN = "feedback_down"

_MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")


def strip_mentions(text: str) -> str:
    return " ".join(_MENTION.sub(" ", text).split())


def escape(text: str) -> str:
    """Slack's mrkdwn escapes: &, < and > (docs.slack.dev, "Formatting text")."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plain_targets(markdown: str) -> str:
    """Links as ``label (url)``: Slack links the bare URL and shows it, so no label hides where a link goes."""
    return show_targets(markdown, lambda url: url)


def to_mrkdwn(markdown: str) -> str:
    """The Markdown an LLM writes, as Slack mrkdwn: bold and headings; links show their targets; &, <, > escaped
    (so a document's ``<!channel>`` or ``<http://x|y>`` is text, not a ping or a masked link)."""
    text = escape(plain_targets(markdown))
    text = re.sub(r"^#{1,6}\s+(.+)$", r"*\1*", text, flags=re.MULTILINE)
    return re.sub(r"\*\*(.+?)\*\*", r"*\1*", text)


def stream_markdown(partial: str) -> str:
    """What the chat streaming API gets of a growing answer (its markdown_text): links with their targets,
    &, <, > escaped, an unfinished ``[…`` at the end held back. The result only ever grows as the answer
    does, so the stream can append to it."""
    return escape(plain_targets(settled(partial)))


def progress_text(partial: str) -> str:
    """A growing answer as the message shows it between edits."""
    if len(partial) > PROGRESS_TEXT_MAX:
        partial = "…" + partial[-PROGRESS_TEXT_MAX:]
    return to_mrkdwn(settled(partial)) + TYPING_MARK  # a link shows once whole


def answer_blocks(done: AnswerDone, answer_id: str | None) -> list[dict[str, Any]]:
    """The finished answer: its text, its numbered sources, and 👍 / 👎 buttons carrying ``answer_id``."""
    sections = split_text(to_mrkdwn(done.answer.strip() or "(no answer)"), SECTION_TEXT_LIMIT)
    if len(sections) > ANSWER_SECTIONS_MAX:
        sections = sections[:ANSWER_SECTIONS_MAX]
        sections[-1] = sections[-1][: SECTION_TEXT_LIMIT - len(TRUNCATED)] + TRUNCATED
    return ([_section(text) for text in sections] + footer_blocks(done, answer_id))[:MESSAGE_BLOCKS_LIMIT]


def footer_blocks(done: AnswerDone, answer_id: str | None) -> list[dict[str, Any]]:
    """What follows the answer's text: the sources, and the feedback buttons."""
    blocks = [_section(sources_text(done))] if done.sources else []
    if answer_id:
        buttons = [_button("👍 Helpful", FEEDBACK_ACTION_UP, answer_id), _button("👎 Not helpful", FEEDBACK_ACTION_DOWN, answer_id)]
        blocks.append({"type": "actions", "block_id": "feedback", "elements": buttons})
    return blocks


def sources_text(done: AnswerDone) -> str:
    lines = [f"*{done.sources_heading}*"]
    for n, passage in enumerate(done.sources, start=1):
        mark = " ✓" if n in done.cited else ""
        lines.append(f"[{n}] {escape(passage_label(passage))} · {passage.score:.2f}{mark}")
        if done.quote(n):
            lines.append(f"> {escape(shorten(done.quote(n)))}")
    text = "\n".join(lines)
    return text if len(text) <= SECTION_TEXT_LIMIT else text[: SECTION_TEXT_LIMIT - 1] + "…"


def notification_text(done: AnswerDone) -> str:
    """The message's plain text: what notifications and the thread history show (escaped: Slack parses it too)."""
    return escape(plain_targets(done.answer))[:MESSAGE_TEXT_LIMIT] or "(no answer)"


def error_text(message: str) -> str:
    return f":warning: Sorry, I could not answer: {escape(message)}"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _button(label: str, action_id: str, value: str) -> dict[str, Any]:
    return {"type": "button", "text": {"type": "plain_text", "text": label, "emoji": True}, "action_id": action_id, "value": value}
