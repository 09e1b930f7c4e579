"""The one answer flow every front end uses: a typed request in, a view out.

Each platform parses its event into an ``AnswerRequest`` and shows the answer through an
``AnswerView`` (Slack's message, Discord's messages, the console's NDJSON stream, the
terminal). ``AnswerFlow.answer`` runs the core and is the only place that records answers in
the answer log, counts them in the metrics, and turns errors into what the user reads.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bot.core import AnswerDelta, AnswerDone, AnswerEngine, AnswerEvidence
from bot.evidence import evidence_preview
from bot.progress import ProgressPump
from bot.prompt import Turn
from config.errors import TeambotError
from config.settings import DEFAULT_COLLECTION

if TYPE_CHECKING:
    from bot.answer_log import AnswerLog
    from bot.metrics import Metrics

log = logging.getLogger(__name__)

EMPTY_QUESTION = "ask me a question about the team's documents"
UNEXPECTED = "something went wrong on my side (it is in teambot's log)"


@dataclass(frozen=True)
class AnswerRequest:
    """A question as every platform hands it to the core: who asked, where, what, from which collections."""

    platform: str  # slack, discord, console, cli
    text: str  # without mentions
    collections: tuple[str, ...] = (DEFAULT_COLLECTION,)
    user: str = ""
    channel: str = ""
    thread: str = ""  # the conversation's thread ('' for none): how follow-ups are recognised later
    history: tuple[Turn, ...] = ()  # earlier turns of the conversation, oldest first


class AnswerView(Protocol):
    """Where one answer is shown. ``platform_errors`` are the platform client's own errors
    (the platform refused a call), reported to the user as such."""

    platform_errors: tuple[type[Exception], ...]

    async def open(self) -> None:
        """Shows at once that the question is being answered."""

    def evidence(self, found: AnswerEvidence) -> None:
        """The sources and their best quotes, as soon as they are found (before the model writes)."""

    def append(self, text: str) -> None:
        """More of the answer, as the model writes it."""

    async def finish(self, done: AnswerDone, answer_id: str | None) -> None:
        """The whole answer, its sources, and (with an answer id) the feedback buttons."""

    async def fail(self, message: str) -> None:
        """Shows ``message`` instead of the answer."""


class GrowingMessage:
    """For views whose message grows through a ProgressPump (Slack, Discord): the evidence
    preview is shown first, then the answer as it is written."""

    _pump: ProgressPump

    def evidence(self, found: AnswerEvidence) -> None:
        self._pump.append(evidence_preview(found.evidence, found.sources))

    def append(self, text: str) -> None:
        self._pump.append(text)


def error_text(error: BaseException) -> str:
    """What a user reads about an error: a TeambotError's message and hint; nothing internal otherwise."""
    if isinstance(error, TeambotError):
        return f"{error.message} ({error.hint})" if error.hint else error.message
    return UNEXPECTED


class AnswerFlow:
    def __init__(self, engine: AnswerEngine, answers: AnswerLog | None = None, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self._answers = answers
        self._metrics = metrics

    async def answer(self, request: AnswerRequest, view: AnswerView, *, log_answer: bool = True) -> AnswerDone | None:
        """Answers ``request`` into ``view``; returns the answer, or None when it failed (the view says why).

        With ``log_answer`` (and an answer log) the answer is recorded and its id given to the
        view for feedback buttons."""
        try:
            await view.open()
            if not request.text.strip():
                await view.fail(EMPTY_QUESTION)
                return None
            async with aclosing(self.engine.answer(request.text, request.history, request.collections)) as events:
                async for event in events:
                    if isinstance(event, AnswerEvidence):
                        view.evidence(event)
                        continue
                    if isinstance(event, AnswerDelta):
                        view.append(event.text)
                        continue
                    if self._metrics is not None:
                        self._metrics.observe_answer(request.platform, event)
                    answer_id = None
                    if log_answer and self._answers is not None:
                        try:
                            answer_id = await asyncio.to_thread(
                                self._answers.record, request.platform, request.channel, request.thread, request.user, request.text, event
                            )
                        except TeambotError as exc:  # the state database is down: the answer is still shown, without vote buttons
                            log.warning("a %s answer was not recorded in the answer log: %s", request.platform, exc.message)
                    await view.finish(event, answer_id)
                    return event
        except Exception as exc:
            await self._failed(request, view, exc)
        return None

    async def _failed(self, request: AnswerRequest, view: AnswerView, exc: Exception) -> None:
        if self._metrics is not None:
            self._metrics.observe_error(request.platform, exc)
        if isinstance(exc, TeambotError):
            log.warning("a %s question failed: %s", request.platform, exc.message)
            text = error_text(exc)
        elif isinstance(exc, view.platform_errors):
            log.error("%s refused a call while answering: %s", request.platform, exc)
            text = f"{request.platform.capitalize()} refused one of my messages; try again in a moment"
        else:
            log.exception("unexpected error while answering a %s question", request.platform)
            text = UNEXPECTED
        try:
            await view.fail(text)
        except Exception:
            log.exception("could not show an error on %s", request.platform)
