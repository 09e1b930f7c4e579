"""What admins read in chat after a knowledge-desk action: pure functions from the desk's typed
results to text, with each platform's markup and message limit passed in."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.answering import error_text
from config.errors import ConfigError, TeambotError
from rag.operations.desk import Added, Document, Removed, UploadError

NOT_ADMIN = "Sorry, only knowledge base admins can do that."
MAX_LISTED = 50  # documents listed at most, however many fit


@dataclass(frozen=True)
class Markup:
    bold: Callable[[str], str]
    escape: Callable[[str], str]  # for text that came from a file name or a document
    refused: str  # the sign of a refusal (nothing was changed)
    warning: str  # the sign of a failure on teambot's side
    limit: int  # characters of one message


def added_text(added: Added, m: Markup) -> str:
    verb = "Replaced" if added.replaced else "Added"
    if added.not_indexed:
        text = (
            f"{m.warning} {verb} {m.bold(m.escape(added.name))} in `{added.collection}`, but it is not searchable yet: "
            f"{m.escape(added.not_indexed)}. The next index run tries again (`teambot status` shows how it went)."
        )
    else:
        text = f"{verb} {m.bold(m.escape(added.name))} in `{added.collection}`: {added.chunks} chunks indexed. I can answer from it now."
    if added.previous:
        text += f" The previous version is kept as `{m.escape(added.previous)}` (not indexed)."
    return text


def removed_text(removed: Removed, m: Markup) -> str:
    doc = removed.document
    text = f"Removed {m.bold(m.escape(doc.path))} from `{doc.collection}` ({doc.chunks} chunks)."
    if removed.kept:
        text += f" The file is kept as `{m.escape(removed.kept)}` (not indexed)."
    return text


def documents_text(collection: str, documents: Sequence[Document], m: Markup) -> str:
    """The collection's documents, as many as fit the message, then how many more there are."""
    if not documents:
        return f"Collection `{collection}` has no documents."
    lines = [m.bold(f"{len(documents)} documents in `{collection}`")]
    size = len(lines[0])
    for k, doc in enumerate(documents):
        line = f"• {m.escape(doc.path)}: {doc.chunks} chunks" + (f" {m.warning} {m.escape(doc.error)}" if doc.state == "failed" else "")
        more = f"… and {len(documents) - k} more"
        if k == MAX_LISTED or size + len(line) + len(more) + 2 > m.limit:
            lines.append(more)
            break
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


def failure_text(exc: TeambotError, m: Markup, subject: str = "") -> str:
    """A refused request (nothing was changed), or teambot's own failure (``subject``, e.g. "notes.md was not added: ", leads it)."""
    if isinstance(exc, (UploadError, ConfigError)):
        return f"{m.refused} {m.escape(error_text(exc))}. Nothing was changed."[: m.limit]
    return f"{m.warning} {m.escape(subject + error_text(exc))}"[: m.limit]
