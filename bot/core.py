"""The async core: question -> retrieval -> evidence -> prompt -> streamed answer -> grounding guard -> answer with sources.

Every front end asks through bot.answering, which runs ``AnswerEngine.answer`` and renders
the events it yields into the front end's view: the evidence (each source's best quote) as
soon as retrieval is done, text deltas as the model writes, then one ``AnswerDone`` with the
answer to show, its numbered sources and which mode produced it. ``bot.answer_mode`` decides
what reaches the user: in "auto" an answer the guard rejects is replaced by one quoted from
the evidence. Passages below the relevance decision (rag.model_floor) are the model's to judge:
no quotes are previewed, and an answer from them that the guard rejects (or none) means
"I don't know", not quotes. A bounded number of questions are answered at once; each has a deadline; a
consumer that stops listening (or is cancelled) frees its slot at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from bot.conversation import follow_up_query, is_follow_up
from bot.evidence import Evidence, extractive_answer, pick_evidence
from bot.guard import Verdict, check_answer
from bot.prompt import Turn, build_messages, cited_numbers, not_found_answer
from bot.rewrite import rewrite_question
from config.errors import TeambotError
from config.settings import DEFAULT_COLLECTION, BotSettings
from inference.client import ChatClient
from rag.search.retriever import Passage, Retrieval, Retriever

log = logging.getLogger(__name__)


class AnswerTimeout(TeambotError):
    """A question was not answered within bot.answer_timeout_s."""


@dataclass(frozen=True)
class AnswerEvidence:
    """Right after retrieval, before the model writes: the sources and the quote from each that best answers."""

    sources: list[Passage]  # numbered from 1 in this order, as the answer cites them
    evidence: list[Evidence]  # best first; Evidence.n is the source's number


@dataclass(frozen=True)
class AnswerDelta:
    text: str


AnswerMode = Literal["generative", "extractive", "not-found"]
NOTHING_PASSED = "no passage passed the relevance decision (rag.relevance or rag.min_score)"
SOURCES_HEADING = "Sources"
SEARCHED_HEADING = "Searched (they do not answer this)"


@dataclass(frozen=True)
class AnswerDone:
    answer: str
    sources: list[Passage]  # the context passages, numbered from 1 in this order
    cited: list[int]  # the numbers the answer cites
    found: bool  # False: nothing relevant was found and the bot said it does not know
    timings_ms: dict[str, float] = field(default_factory=dict)
    evidence: list[Evidence] = field(default_factory=list)  # the best quote of each source, best first
    mode: AnswerMode = "generative"  # what produced the answer
    reason: str = ""  # why this answer: the guard's verdict, or the setting that chose the mode
    guard: Verdict | None = None  # the guard's verdict on the model's text (None when the model was not asked)
    replaced: bool = False  # the model's streamed text was rejected and replaced by this answer
    generated: str = ""  # what the model wrote ("" when it was not asked); the answer itself unless replaced
    refusal: bool = False  # the model's answer, shown, says the documents do not answer the question
    searched: list[str] = field(default_factory=list)  # the model's search queries, searched beside the question (bot.rewrite_question)

    def quote(self, n: int) -> str:
        """The evidence quote of source ``n`` ("" if none, and for a refusal: those passages do not answer)."""
        if self.refusal:
            return ""
        return next((e.quote for e in self.evidence if e.n == n), "")

    @property
    def sources_heading(self) -> str:
        """What the list of sources is called: for a refusal, they were searched and do not answer."""
        return SEARCHED_HEADING if self.refusal else SOURCES_HEADING

    def to_json(self) -> dict[str, object]:
        return {
            "answer": self.answer,
            "sources": [{"n": n, **p.to_json(), "quote": self.quote(n)} for n, p in enumerate(self.sources, start=1)],
            "cited": self.cited,
            "found": self.found,
            "mode": self.mode,
            "reason": self.reason,
            "guard": None if self.guard is None else {"ok": self.guard.ok, "problems": self.guard.problems},
            "replaced": self.replaced,
            "generated": self.generated,
            "refusal": self.refusal,
            "searched": self.searched,
            "timings_ms": self.timings_ms,
        }


AnswerEvent = AnswerEvidence | AnswerDelta | AnswerDone


@dataclass(frozen=True)
class Grounding:
    """What a question is answered from."""

    retrieval: Retrieval
    history: list[Turn]  # the earlier turns the prompt gets: only when the question follows up on them
    query: str  # what was searched: the question, or the question before it and the question


def search_text(question: str, history: Sequence[Turn]) -> tuple[str, list[Turn]]:
    """What a question is searched with, and the earlier turns that count: only for a follow-up,
    which is searched with the question before it."""
    if is_follow_up(question, history):
        return follow_up_query(question, history), list(history)
    return question, []


def ground(retriever: Retriever, question: str, history: Sequence[Turn], collections: Sequence[str], rewrites: Sequence[str] = ()) -> Grounding:
    """The passages a question is answered from, and whether the conversation counts; with
    ``rewrites``, the model's search queries for it (bot.rewrite) searched too. Blocking."""
    query, used = search_text(question, history)
    return Grounding(retriever.search(query, collections, rewrites=rewrites), used, query)


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
        """Streams the answer to ``question``: an AnswerEvidence once the sources are found (none
        when nothing is), AnswerDelta as the model writes, and last an AnswerDone, whose answer is
        the one to show (in "auto" mode it may replace what was streamed).

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
                    rewrites: list[str] = []
                    if self._settings.rewrite_question:
                        rewrites = await rewrite_question(self._llm, search_text(question, history)[0], self._settings.rewrite_timeout_s)
                        timings["rewrite"] = elapsed_ms()
                    grounding = await asyncio.to_thread(ground, self._retriever, question, history, collections, rewrites)
                    timings["retrieve"] = elapsed_ms()
                    passages = grounding.retrieval.passages
                    evidence = await asyncio.to_thread(self._evidence, question, grounding) if passages else []
            except TimeoutError:
                raise self._timeout("searching the knowledge base") from None

            if not passages:
                text = not_found_answer(question)
                timings["first_token"] = timings["total"] = elapsed_ms()
                yield AnswerDelta(text)
                yield AnswerDone(text, [], [], found=False, timings_ms=timings, mode="not-found", reason=NOTHING_PASSED, searched=rewrites)
                return
            # Passages below the relevance decision (rag.model_floor) are the model's to judge:
            # their quotes are not shown as if they answered, and without the model's accepted
            # answer the bot does not know.
            judged = grounding.retrieval.below_decision
            if not judged:
                yield AnswerEvidence(passages, evidence)
            timings["evidence"] = elapsed_ms()

            mode = self._settings.answer_mode
            if judged and mode == "extractive":
                reason = f"{NOTHING_PASSED}, and bot.answer_mode = extractive asks no model to judge the passages below it"
                yield self._not_known(question, timings, elapsed_ms(), reason, searched=rewrites)
                return
            if mode == "extractive":
                text = extractive_answer(question, evidence, passages)
                timings["first_token"] = timings["total"] = elapsed_ms()
                yield AnswerDone(
                    text, passages, cited_numbers(text, len(passages)), True, timings, evidence, "extractive", "bot.answer_mode = extractive",
                    searched=rewrites,
                )  # fmt: skip
                return

            # In auto, the evidence is already on screen: a model that fails or takes longer than
            # a reader waits gives way to the quotes; in generative mode its failure is the answer.
            patience = loop.time() + self._settings.generation_timeout_s if mode == "auto" else deadline
            parts: list[str] = []
            failure = ""  # why the model's answer is not there ("" when it is)
            stream = self._llm.stream_chat(build_messages(question, passages, grounding.history))
            try:
                while True:
                    try:
                        async with asyncio.timeout_at(min(deadline, patience)):
                            delta = await anext(stream, None)
                    except TimeoutError:
                        if mode != "auto":
                            raise self._timeout("generating the answer") from None
                        failure = self._too_slow(patience <= deadline)
                        break
                    except TeambotError as exc:
                        if mode != "auto":
                            raise
                        failure = f"the model failed: {exc.message}"
                        break
                    if delta is None:
                        break
                    if not parts:
                        timings["first_token"] = elapsed_ms()
                    parts.append(delta)
                    yield AnswerDelta(delta)
            finally:
                await stream.aclose()
            generated = "".join(parts)
            timings.setdefault("first_token", elapsed_ms())
            if failure and judged:
                log.warning("a model answer failed on passages below the relevance decision: %s", failure)
                yield self._not_known(
                    question, timings, elapsed_ms(), f"{NOTHING_PASSED}, and {failure}", replaced=bool(parts), generated=generated, searched=rewrites
                )
                return
            if failure:
                log.warning("a model answer was replaced by quotes: %s", failure)
                text = extractive_answer(question, evidence, passages)
                timings["total"] = elapsed_ms()
                yield AnswerDone(
                    text, passages, cited_numbers(text, len(passages)), True, timings, evidence, "extractive",
                    f"the model's answer was replaced: {failure}", replaced=bool(parts), generated=generated, searched=rewrites,
                )  # fmt: skip
                return
            checked = loop.time()
            verdict = await asyncio.to_thread(check_answer, generated, question, passages, self._retriever.meaning)
            timings["guard"] = round((loop.time() - checked) * 1000, 1)
            timings["total"] = elapsed_ms()
            if verdict.ok or mode == "generative":
                shown = verdict.kept if verdict.kept is not None and mode == "auto" else generated
                reason = f"the grounding guard {'accepted' if verdict.ok else 'rejected'} it: {verdict.reason}"
                yield AnswerDone(
                    shown, passages, cited_numbers(shown, len(passages)), True, timings, evidence, "generative", reason, verdict,
                    replaced=shown != generated, generated=generated, refusal=verdict.refusal, searched=rewrites,
                )  # fmt: skip
                return
            if judged:
                reason = f"{NOTHING_PASSED}, and the grounding guard rejected the model's answer from the passages below it: {verdict.reason}"
                yield self._not_known(question, timings, timings["total"], reason, guard=verdict, replaced=True, generated=generated, searched=rewrites)
                return
            text = extractive_answer(question, evidence, passages)
            reason = f"the model's answer was replaced: {verdict.reason}"
            yield AnswerDone(
                text, passages, cited_numbers(text, len(passages)), True, timings, evidence, "extractive", reason, verdict, replaced=True, generated=generated,
                searched=rewrites,
            )  # fmt: skip
        finally:
            self._busy -= 1
            self._slots.release()

    def _evidence(self, question: str, grounding: Grounding) -> list[Evidence]:
        """The quotes for the question (a follow-up: with the question before it, preferring what was not said yet)."""
        last = grounding.history[-1] if grounding.history else None
        return pick_evidence(
            question, grounding.retrieval.passages, self._retriever.similarity,
            previous=last.question if last else "", already_said=last.answer if last else "",
        )  # fmt: skip

    @staticmethod
    def _not_known(question: str, timings: dict[str, float], now_ms: float, reason: str, **done: object) -> AnswerDone:
        """"I don't know" after the model had its chance on passages below the relevance decision."""
        timings.setdefault("first_token", now_ms)
        timings["total"] = now_ms
        return AnswerDone(not_found_answer(question), [], [], False, timings, mode="not-found", reason=reason, **done)  # type: ignore[arg-type]

    def _too_slow(self, patience: bool) -> str:
        if patience:
            return f"the model had not finished within bot.generation_timeout_s = {self._settings.generation_timeout_s:g} s"
        return f"the model had not finished within bot.answer_timeout_s = {self._settings.answer_timeout_s:g} s"

    def _timeout(self, stage: str) -> AnswerTimeout:
        return AnswerTimeout(
            f"no answer within bot.answer_timeout_s = {self._settings.answer_timeout_s:g} s (timed out {stage})",
            "the LLM server may be overloaded: ask again later, or raise bot.answer_timeout_s",
        )
