"""The terminal front end: `teambot ask` and the `teambot chat` conversation, answered through
bot.answering into a view that prints the answer as it arrives and then its sources."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from bot.answering import AnswerFlow, AnswerRequest
from bot.core import AnswerDone, AnswerEvidence
from bot.evidence import evidence_preview, shorten
from bot.prompt import Turn, passage_label

PLATFORM = "cli"
EXIT_COMMANDS = {"/exit", "/quit", ":q"}
CHAT_HELP = "Ask a question. /clear forgets the conversation, /exit (or Ctrl-D) leaves."


def sources_renderable(done: AnswerDone) -> Text:
    text = Text()
    if not done.sources:
        return text
    text.append(f"\n{done.sources_heading}\n", style="bold")
    for n, passage in enumerate(done.sources, start=1):
        mark = "*" if n in done.cited else " "
        text.append(f" {mark}[{n}] {passage_label(passage)}  ")
        text.append(f"score {passage.score:.2f}\n", style="dim")
        if done.quote(n):
            text.append(f"      “{shorten(done.quote(n))}”\n", style="italic")
    return text


class TerminalView:
    """An AnswerView on the terminal. The answer grows in a live region (the best quote first, while
    the model writes), which the final answer replaces, so text the guard rejected does not stay on
    screen; where stdout is no terminal only the final answer is printed. ``quiet``: errors only."""

    platform_errors: tuple[type[Exception], ...] = ()

    def __init__(self, out: Console, err: Console, *, quiet: bool = False, prompt: str = "") -> None:
        self._out = out
        self._err = err
        self._quiet = quiet
        self._prompt = prompt  # shown before the answer, e.g. "teambot> "
        self._live: Live | None = None
        self._lead = ""
        self._text = ""

    async def open(self) -> None:
        if not self._quiet and self._out.is_terminal:
            self._live = Live(Text(self._prompt), console=self._out, refresh_per_second=8, vertical_overflow="visible")
            self._live.start()

    def evidence(self, found: AnswerEvidence) -> None:
        self._lead = evidence_preview(found.evidence, found.sources)
        self._show()

    def append(self, text: str) -> None:
        self._text += text
        self._show()

    def _show(self) -> None:
        if self._live is not None:
            shown = Text(self._prompt)
            shown.append(self._lead, style="dim")
            shown.append(self._text)
            self._live.update(shown)

    async def finish(self, done: AnswerDone, answer_id: str | None) -> None:
        if self._quiet:
            return
        final = Text(self._prompt)
        final.append(done.answer.strip())
        final.append("\n")
        final.append_text(sources_renderable(done))
        if self._live is not None:
            self._live.update(final, refresh=True)
            self._live.stop()
        else:
            self._out.print(final)

    async def fail(self, message: str) -> None:
        if self._live is not None:
            self._live.update(Text(self._prompt), refresh=True)
            self._live.stop()
        self._err.print(f"[red]error:[/red] {escape(message)}")


def terminal_request(question: str, collections: Sequence[str], history: Sequence[Turn] = ()) -> AnswerRequest:
    return AnswerRequest(PLATFORM, question, tuple(collections), user="terminal", history=tuple(history))


async def chat(flow: AnswerFlow, collections: Sequence[str], out: Console, err: Console) -> None:
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
        done = await flow.answer(terminal_request(question, collections, history), TerminalView(out, err, prompt="teambot> "), log_answer=False)
        if done is not None and done.found:
            history.append(Turn(question, done.answer))


def stdin_is_terminal() -> bool:
    return sys.stdin.isatty()
