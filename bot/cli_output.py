"""What every `teambot` command shares: stdout for results, stderr for progress and errors, and the
guard that ends a command with a message (never a traceback) when something the user can fix goes wrong."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from config.errors import ConfigError, TeambotError

T = TypeVar("T")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def guarded(work: Callable[[], T]) -> T:
    """Runs a command's work; a TeambotError ends the command with its message, not a traceback."""
    try:
        return work()
    except TeambotError as exc:
        print_error(exc)
        raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()


def print_error(exc: TeambotError) -> None:
    err.print(f"[red]error:[/red] {escape(exc.message)}")
    if exc.hint:
        err.print(f"  [dim]hint:[/dim] {escape(exc.hint)}")


def progress_line(message: str) -> None:
    err.print(f"[dim]{escape(message)}[/dim]")


class ProgressBar:
    """A progress bar on stderr (``label``, bar, done/total, time, what it is at), gone when it ends."""

    def __init__(self, label: str) -> None:
        self._progress = Progress(
            TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.description}"),
            console=err, transient=True,
        )  # fmt: skip

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()
