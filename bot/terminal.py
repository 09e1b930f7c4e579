"""The terminal front end: `teambot ask` and the `teambot chat` conversation, answered through
bot.answering into a view that prints the answer as it arrives and then its sources."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from bot.answering import AnswerFlow, AnswerRequest
from bot.core import AnswerDone
from bot.prompt import Turn, passage_label

PLATFORM = "cli"
EXIT_COMMANDS = {"/exit", "/quit", ":q"}
CHAT_HELP = "Ask a question. /clear forgets the conversation, /exit (or Ctrl-D) leaves."


def render_sources(console: Console, done: AnswerDone) -> None:
    if not done.sources:
        return
    console.print("\n[bold]Sources[/bold]")
    for n, passage in enumerate(done.sources, start=1):
        mark = "*" if n in done.cited else " "
        console.print(f" {mark}[{n}] {escape(passage_label(passage))}  [dim]score {passage.score:.2f}[/dim]", highlight=False)


class TerminalView:
    """An AnswerView on the terminal: the answer streamed to ``out`` (unless ``quiet``), errors to ``err``."""

    platform_errors: tuple[type[Exception], ...] = ()

    def __init__(self, out: Console, err: Console, *, quiet: bool = False) -> None:
        self._out = out
        self._err = err
        self._quiet = quiet

    async def open(self) -> None:
        return None

    def append(self, text: str) -> None:
        if not self._quiet:
            self._out.file.write(text)
            self._out.file.flush()

    async def finish(self, done: AnswerDone, answer_id: str | None) -> None:
        if not self._quiet:
            self._out.print()
            render_sources(self._out, done)

    async def fail(self, message: str) -> None:
        if not self._quiet:
            self._out.print()
        self._err.print(f"[red]error:[/red] {escape(message)}")


def terminal_request(question: str, collections: Sequence[str], history: Sequence[Turn] = ()) -> AnswerRequest:
    return AnswerRequest(PLATFORM, question, tuple(collections), user="terminal", history=tuple(history))


async def chat(flow: AnswerFlow, collections: Sequence[str], out: Console, err: Console) -> None:
    """A conversation in the terminal until /exit or end of input."""
    history: list[Turn] = []
    err.print(f"[dim]{CHAT_HELP}[/dim]")
    view = TerminalView(out, err)
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
        done = await flow.answer(terminal_request(question, collections, history), view, log_answer=False)
        if done is not None and done.found:
            history.append(Turn(question, done.answer))


def stdin_is_terminal() -> bool:
    return sys.stdin.isatty()
