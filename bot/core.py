"""The async core: question -> retrieval -> prompt -> streamed answer -> sources.

Every front end asks through bot.answering, which runs ``AnswerEngine.answer`` and renders
the events it yields into the front end's view: text deltas as they are generated, then one ``AnswerDone`` with the
numbered sources. A bounded number of questions are answered at once; each has a deadline;
a consumer that stops listening (or is cancelled) frees its slot at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from bot.prompt import Turn, build_messages, cited_numbers, not_found_answer
from config.errors import TeambotError
from config.settings import DEFAULT_COLLECTION, BotSettings
from inference.client import ChatClient
from rag.search.retriever import Passage, Retrieval, Retriever

log = logging.getLogger(__name__)


class AnswerTimeout(TeambotError):
    """A question was not answered within bot.answer_timeout_s."""


@dataclass(frozen=True)
class AnswerDelta:
    text: str


@dataclass(frozen=True)
class AnswerDone:
    answer: str
    sources: list[Passage]  # the context passages, numbered from 1 in this order
    cited: list[int]  # the numbers the answer cites
    found: bool  # False: nothing relevant was found and the bot said it does not know
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "answer": self.answer,
            "sources": [{"n": n, **p.to_json()} for n, p in enumerate(self.sources, start=1)],
            "cited": self.cited,
            "found": self.found,
            "timings_ms": self.timings_ms,
        }


AnswerEvent = AnswerDelta | AnswerDone


def retrieve(retriever: Retriever, question: str, history: Sequence[Turn], collections: Sequence[str]) -> Retrieval:
    """The passages a question is answered from, the conversation considered. Blocking."""
    retrieval = retriever.search(question, collections)
    if not retrieval.passages and history:
        # A follow-up ("and on weekends?") may only make sense with the question before it.
        retrieval = retriever.search(f"{history[-1].question}\n{question}", collections)
    return retrieval


class AnswerEngine:
    def __init__(self, retriever: Retriever, llm: ChatClient, settings: BotSettings) -> None:
        self._retriever = retriever
        self._llm = llm
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self._busy = 0

    @property
    def busy(self) -> int:
        """Questions being answered right now."""
        return self._busy

    async def answer(
        self, question: str, history: Sequence[Turn] = (), collections: Sequence[str] = (DEFAULT_COLLECTION,)
    ) -> AsyncIterator[AnswerEvent]:
        """Streams the answer to ``question``; the last event is an AnswerDone.

        Raises AnswerTimeout, and the errors of retrieval and of the LLM client (TeambotError).
        Use it with ``contextlib.aclosing`` when you may stop before the end. Front ends ask
        through bot.answering, which records and counts the answer and turns errors into text.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._settings.answer_timeout_s
        history = list(history)[-self._settings.history_turns :] if self._settings.history_turns else []

        def elapsed_ms() -> float:
            return round((loop.time() - started) * 1000, 1)

        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise self._timeout("waiting for a free slot") from None
        self._busy += 1
        try:
            timings = {"queued": elapsed_ms()}
            try:
                async with asyncio.timeout_at(deadline):
                    retrieval = await asyncio.to_thread(retrieve, self._retriever, question, history, collections)
            except TimeoutError:
                raise self._timeout("searching the knowledge base") from None
            timings["retrieve"] = elapsed_ms()

            if not retrieval.passages:
                text = not_found_answer(question)
                timings["first_token"] = timings["total"] = elapsed_ms()
                yield AnswerDelta(text)
                yield AnswerDone(text, [], [], found=False, timings_ms=timings)
                return

            messages = build_messages(question, retrieval.passages, history)
            parts: list[str] = []
            stream = self._llm.stream_chat(messages)
            try:
                while True:
                    try:
                        async with asyncio.timeout_at(deadline):
                            delta = await anext(stream, None)
                    except TimeoutError:
                        raise self._timeout("generating the answer") from None
                    if delta is None:
                        break
                    if not parts:
                        timings["first_token"] = elapsed_ms()
                    parts.append(delta)
                    yield AnswerDelta(delta)
            finally:
                await stream.aclose()
            text = "".join(parts)
            timings.setdefault("first_token", elapsed_ms())
            timings["total"] = elapsed_ms()
            yield AnswerDone(text, retrieval.passages, cited_numbers(text, len(retrieval.passages)), found=True, timings_ms=timings)
        finally:
            self._busy -= 1
            self._slots.release()

    def _timeout(self, stage: str) -> AnswerTimeout:
        return AnswerTimeout(
            f"no answer within bot.answer_timeout_s = {self._settings.answer_timeout_s:g} s (timed out {stage})",
            "the LLM server may be overloaded: ask again later, or raise bot.answer_timeout_s",
        )
