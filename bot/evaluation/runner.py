"""Runs a question set through teambot: retrieval only (no LLM), or whole answers through the
same answer flow every platform uses, one question at a time so latencies are clean."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from bot.answering import AnswerFlow, AnswerRequest
from bot.core import AnswerDone, AnswerEvidence, ground, search_text
from bot.evaluation.questions import EvalItem
from bot.evaluation.scoring import ItemResult, says_it_does_not_know
from bot.rewrite import search_queries
from config.errors import TeambotError
from rag.search.retriever import Retriever

PLATFORM = "eval"
Progress = Callable[[EvalItem], None]  # told after each question


def retrieval_result(retriever: Retriever, item: EvalItem, rewrite: bool = False) -> ItemResult:
    """What the bot would answer from: the passages passing the relevance bar, the conversation
    considered as the core does (bot.core.ground); with ``rewrite`` (bot.rewrite_question), also
    searched with the item's written model_rewrite, read as the model's reply is. Blocking."""
    result = ItemResult(item)
    started = time.perf_counter()
    try:
        rewrites = search_queries(item.model_rewrite, search_text(item.question, item.history)[0]) if rewrite else []
        grounding = ground(retriever, item.question, item.history, [item.collection], rewrites)
        retrieval = grounding.retrieval
        result.timings_ms["retrieve"] = round((time.perf_counter() - started) * 1000, 1)
        unfiltered = retriever.search(grounding.query, [item.collection], min_score=0.0, rewrites=rewrites)
    except TeambotError as exc:
        result.error = exc.message
        return result
    result.paths = [p.path for p in retrieval.passages]
    result.texts = [p.text for p in retrieval.passages]
    result.top_score = unfiltered.passages[0].score if unfiltered.passages else 0.0
    result.refused = not retrieval.passages
    return result


def run_retrieval(retriever: Retriever, items: Sequence[EvalItem], progress: Progress | None = None, rewrite: bool = False) -> list[ItemResult]:
    results = []
    for item in items:
        results.append(retrieval_result(retriever, item, rewrite))
        if progress:
            progress(item)
    return results


class _CollectingView:
    """An AnswerView that keeps the answer and when its parts became visible."""

    platform_errors: tuple[type[Exception], ...] = ()

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first_text_ms: float | None = None
        self.deltas = 0
        self.done: AnswerDone | None = None
        self.failure = ""

    def _mark(self) -> None:
        if self.first_text_ms is None:
            self.first_text_ms = round((time.perf_counter() - self.started) * 1000, 1)

    async def open(self) -> None:
        return None

    def evidence(self, found: AnswerEvidence) -> None:
        self._mark()  # the quotes are the first text a user sees

    def append(self, text: str) -> None:
        self._mark()
        self.deltas += 1

    async def finish(self, done: AnswerDone, answer_id: str | None) -> None:
        self._mark()
        self.done = done

    async def fail(self, message: str) -> None:
        self.failure = message


async def answer_result(flow: AnswerFlow, item: EvalItem) -> ItemResult:
    view = _CollectingView()
    request = AnswerRequest(PLATFORM, item.question, (item.collection,), user="eval", history=item.history)
    await flow.answer(request, view, log_answer=False)
    total = round((time.perf_counter() - view.started) * 1000, 1)
    result = ItemResult(item, deltas=view.deltas)
    done = view.done
    if done is None:
        result.error = view.failure or "no answer"
        return result
    result.paths = [p.path for p in done.sources]
    result.texts = [p.text for p in done.sources]
    result.top_score = done.sources[0].score if done.sources else 0.0
    result.answer = done.answer
    result.cited = list(done.cited)
    result.refused = not done.found or says_it_does_not_know(done.answer)
    result.mode = done.mode
    result.generated = done.generated
    result.guard_ok = None if done.guard is None else done.guard.ok
    result.problems = list(done.guard.problems) if done.guard is not None else []
    result.timings_ms = {"retrieve": done.timings_ms.get("retrieve", 0.0), "first_text": view.first_text_ms or total, "total": total}
    if "guard" in done.timings_ms:
        result.timings_ms["guard"] = done.timings_ms["guard"]
    return result


async def run_answers(flow: AnswerFlow, items: Sequence[EvalItem], progress: Progress | None = None) -> list[ItemResult]:
    results = []
    for item in items:
        results.append(await answer_result(flow, item))
        if progress:
            progress(item)
    return results
