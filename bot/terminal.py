"""The terminal front end: streamed answers with their sources, and the `teambot chat` conversation."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from contextlib import aclosing

from rich.console import Console
from rich.markup import escape

from bot.core import AnswerDelta, AnswerDone, AnswerEngine
from bot.prompt import Turn, passage_label
from config.errors import TeambotError

EXIT_COMMANDS = {"/exit", "/quit", ":q"}
CHAT_HELP = "Ask a question. /clear forgets the conversation, /exit (or Ctrl-D) leaves."


def render_sources(console: Console, done: AnswerDone) -> None:
    if not done.sources:
        return
    console.print("\n[bold]Sources[/bold]")
    for n, passage in enumerate(done.sources, start=1):
        mark = "*" if n in done.cited else " "
        console.print(f" {mark}[{n}] {escape(passage_label(passage))}  [dim]score {passage.score:.2f}[/dim]", highlight=False)


async def stream_answer(
    engine: AnswerEngine,
    question: str,
    history: Sequence[Turn],
    collections: Sequence[str],
    out: Console,
) -> AnswerDone:
    """Prints the answer as it arrives, then its sources; returns the final event."""
    done: AnswerDone | None = None
    async with aclosing(engine.answer(question, history, collections)) as events:
        async for event in events:
            if isinstance(event, AnswerDelta):
                out.file.write(event.text)
                out.file.flush()
            else:
                done = event
    assert done is not None
    out.print()
    render_sources(out, done)
    return done


async def chat(engine: AnswerEngine, collections: Sequence[str], out: Console, err: Console) -> None:
    """A conversation in the terminal until /exit or end of input."""
    history: list[Turn] = []
    err.print(f"[dim]{CHAT_HELP}[/dim]")
    while True:
        try:
            question = (await asyncio.to_thread(input, "\nyou> ")).strip()
        except EOFError:
            out.print()
            return
        if not question:
            continue
        if question in EXIT_COMMANDS:
            return
        if question == "/clear":
            history.clear()
            err.print("[dim]conversation cleared[/dim]")
            continue
        out.file.write("teambot> ")
        try:
            done = await stream_answer(engine, question, history, collections, out)
        except TeambotError as exc:
            err.print(f"\n[red]error:[/red] {escape(str(exc))}")
            continue
        if done.found:
            history.append(Turn(question, done.answer))


def stdin_is_terminal() -> bool:
    return sys.stdin.isatty()
