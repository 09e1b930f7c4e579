"""Asking a capable model to restate a question as search queries (bot.rewrite_question).

A question in other words than the documents ("a small model guesses ahead and the big one
checks") or in the other language than the page that answers it is found badly by the
embedder and the keyword search alone. A capable model knows the usual terms and translates
well: it is asked for the question as one English and one Chinese search query, and retrieval
reads the question and both queries (rag.search.retriever: a passage is as relevant as its
best reading). The model only writes queries here; the answer is still written from the
passages found, and the question itself, not the queries, is what the evidence and the guard
compare the answer with.

Reading stops at the end of the ``zh:`` line (a model that goes on to answer is not waited for).
When the model fails, is too slow (bot.rewrite_timeout_s) or writes something unusable, the
question is searched alone, as without this setting.
"""

from __future__ import annotations

import asyncio
import logging
import re

from config.errors import TeambotError
from inference.client import ChatClient, ChatMessage

log = logging.getLogger(__name__)

REWRITE_INSTRUCTIONS = """You turn a team member's question into search queries for the team's documents, which are written in English and in Chinese.
Reply with exactly two lines and nothing else:
en: the question as one English search query
zh: the same query in Chinese
Keep every name, number, command, option and file name exactly as written. Where the question describes something in everyday words, add the usual technical term for it.
If the text is a question followed by a follow-up to it, write one query that stands on its own.
Do not answer the question."""

MAX_QUERIES = 2
MAX_QUERY_CHARS = 300  # a query longer than this is cut: a model that started answering
_LANGUAGE = {"en": "en", "english": "en", "英文": "en", "zh": "zh", "chinese": "zh", "中文": "zh"}  # a line's label -> its language
_LINE = re.compile(rf"^\s*(?:[-*]\s*)?({'|'.join(_LANGUAGE)})\s*[:：]\s*(.+?)\s*$", re.IGNORECASE)


def rewrite_messages(query: str) -> list[ChatMessage]:
    """What the model is sent: the instructions, and the text that would be searched."""
    return [ChatMessage("system", REWRITE_INSTRUCTIONS), ChatMessage("user", query)]


def search_queries(reply: str, query: str) -> list[str]:
    """The queries in the model's ``reply`` (its ``en:`` and ``zh:`` lines), without those that
    only repeat ``query``; [] when it holds none."""
    found: list[str] = []
    for line in reply.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        text = match.group(2).strip().strip('"“”')[:MAX_QUERY_CHARS].strip()
        if text and text.casefold() != query.strip().casefold() and text not in found:
            found.append(text)
    return found[:MAX_QUERIES]


def _written(reply: str) -> str:
    """The lines of ``reply`` the model has finished (up to its last line break)."""
    return reply[: reply.rfind("\n") + 1]


def _both_lines(reply: str) -> bool:
    """Whether ``reply`` holds a finished ``en:`` line and a finished ``zh:`` line: all that is read."""
    labels = {_LANGUAGE[m.group(1).casefold()] for m in map(_LINE.match, _written(reply).splitlines()) if m}
    return labels >= {"en", "zh"}


async def rewrite_question(llm: ChatClient, query: str, timeout_s: float) -> list[str]:
    """The model's search queries for ``query``; [] when it fails, or writes none within
    ``timeout_s`` (then the question is searched alone). Logged, never raised.

    Reading stops once a finished ``en:`` and ``zh:`` line are in: what a model writes after
    them is not waited for. At the timeout, the lines it finished are used."""
    reply = ""
    stream = llm.stream_chat(rewrite_messages(query))
    try:
        async with asyncio.timeout(timeout_s):
            async for delta in stream:
                reply += delta
                if "\n" in delta and _both_lines(reply):
                    break
    except TimeoutError:
        queries = search_queries(_written(reply), query)
        log.warning(
            "the search queries were not finished within bot.rewrite_timeout_s = %g s: the question is searched %s",
            timeout_s, f"with the {len(queries)} finished" if queries else "alone",
        )  # fmt: skip
        return queries
    except TeambotError as exc:
        log.warning("the model could not write search queries (%s): the question is searched alone", exc.message)
        return []
    finally:
        await stream.aclose()
    queries = search_queries(reply, query)
    if not queries:
        log.warning("the model's reply held no en:/zh: search query: the question is searched alone")
    return queries
