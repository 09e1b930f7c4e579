"""rag.model_floor: a capable model judges the passages the relevance decision refused.

Real retrieval over the sample knowledge base; the model is a scripted OpenAI-compatible server
(a capable model's weights are out of reach here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import ExitStack, aclosing
from typing import Any

import pytest
from pydantic import ValidationError

from bot.core import AnswerDone, AnswerEngine, AnswerEvidence
from bot.prompt import NOT_FOUND_ANSWER
from bot.runtime import knowledge_runtime
from config.settings import BotSettings, RagSettings, Settings, with_values
from inference.client import Endpoint
from tests.conftest import client_for, closed_port
from tests.fake_llm import FakeLLM, Reply

# The sample set's paraphrase: its best passage (hybrid 0.24) is below the shipped bar 0.27, above the floor 0.2.
UNANSWERED_PAGE = "How long can a page sit unanswered before someone else is woken up?"
FAITHFUL = ["After 15 minutes without an acknowledgement", " PagerDuty escalates the page", " to the secondary on-call engineer [1]."]
INVENTED = ["Bob from accounting", " is woken up after", " 45 minutes."]
REFUSAL = ["The passages don't say that.", " They cover acknowledging pages within five minutes [1]."]
FLOOR = "0.2"


@pytest.fixture
async def engine_for(indexed_settings: Settings) -> AsyncIterator[Any]:
    """An engine over the indexed sample knowledge base, with rag.model_floor as asked."""
    clients = []
    with ExitStack() as runtimes:

        def make(endpoint: Endpoint, floor: str | None = FLOOR, **bot: Any) -> AnswerEngine:
            settings = with_values(indexed_settings, {"rag.model_floor": floor} if floor is not None else {})
            runtime = runtimes.enter_context(knowledge_runtime(settings))
            client = client_for(endpoint, max_retries=0)
            clients.append(client)
            return AnswerEngine(runtime.retriever, client, BotSettings(**bot))

        yield make
        for client in clients:
            await client.aclose()


def endpoint(fake: FakeLLM) -> Endpoint:
    return Endpoint(base_url=fake.base_url, model="fake-model")


async def events_of(engine: AnswerEngine, question: str) -> tuple[list[object], AnswerDone]:
    async with aclosing(engine.answer(question)) as events:
        seen = [event async for event in events]
    assert isinstance(seen[-1], AnswerDone)
    return seen, seen[-1]


async def test_without_the_floor_the_bar_refuses_the_paraphrase_without_asking_the_model(engine_for, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    _, done = await events_of(engine_for(endpoint(fake_llm), floor=None), UNANSWERED_PAGE)
    assert not done.found and done.answer == NOT_FOUND_ANSWER and fake_llm.requests == []


async def test_a_question_below_the_bar_reaches_the_model_and_its_grounded_answer_is_shown(engine_for, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    fake_llm.script.append(Reply(tokens=FAITHFUL))
    events, done = await events_of(engine_for(endpoint(fake_llm)), UNANSWERED_PAGE)
    assert len(fake_llm.requests) == 1 and "secondary on-call engineer" in fake_llm.requests[0]["messages"][0]["content"]
    assert done.found and done.mode == "generative" and done.answer == "".join(FAITHFUL) and not done.replaced
    assert done.sources[0].path == "oncall-guide.md" and done.sources[0].score < 0.27
    # the passages did not pass the relevance decision: no quotes are previewed as if they answered
    assert not any(isinstance(event, AnswerEvidence) for event in events)


async def test_the_models_refusal_from_those_passages_is_shown_as_a_refusal(engine_for, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    fake_llm.script.append(Reply(tokens=REFUSAL))
    _, done = await events_of(engine_for(endpoint(fake_llm)), UNANSWERED_PAGE)
    assert done.refusal and done.mode == "generative" and done.answer == "".join(REFUSAL)
    assert done.sources_heading.startswith("Searched")


async def test_an_answer_the_guard_rejects_from_those_passages_becomes_i_dont_know_not_quotes(engine_for, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    fake_llm.script.append(Reply(tokens=INVENTED))
    _, done = await events_of(engine_for(endpoint(fake_llm)), UNANSWERED_PAGE)
    assert not done.found and done.mode == "not-found" and done.answer == NOT_FOUND_ANSWER and done.sources == []
    assert done.replaced and done.generated == "".join(INVENTED) and done.guard is not None and not done.guard.ok
    assert "rejected the model's answer from the passages below it" in done.reason and "45" in done.reason


async def test_generative_mode_shows_the_models_answer_with_the_verdict(engine_for, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    fake_llm.script.append(Reply(tokens=INVENTED))
    _, done = await events_of(engine_for(endpoint(fake_llm), answer_mode="generative"), UNANSWERED_PAGE)
    assert done.found and done.answer == "".join(INVENTED) and done.guard is not None and not done.guard.ok


async def test_in_auto_a_model_that_is_down_means_i_dont_know(engine_for) -> None:  # type: ignore[no-untyped-def]
    engine = engine_for(Endpoint(base_url=f"http://127.0.0.1:{closed_port()}/v1", model="m"))
    _, done = await events_of(engine, UNANSWERED_PAGE)
    assert not done.found and done.answer == NOT_FOUND_ANSWER and "is not reachable" in done.reason and engine.busy == 0


async def test_extractive_mode_has_no_model_to_judge_so_it_does_not_know(engine_for, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    _, done = await events_of(engine_for(endpoint(fake_llm), answer_mode="extractive"), UNANSWERED_PAGE)
    assert not done.found and done.answer == NOT_FOUND_ANSWER and fake_llm.requests == [] and "extractive" in done.reason


async def test_a_question_below_the_floor_is_not_sent_to_the_model(engine_for, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    _, done = await events_of(engine_for(endpoint(fake_llm)), "What will the weather be like in Paris tomorrow?")
    assert not done.found and fake_llm.requests == []


async def test_a_question_that_passes_the_bar_is_answered_as_before(engine_for, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    fake_llm.script.append(Reply(tokens=INVENTED))
    events, done = await events_of(engine_for(endpoint(fake_llm)), "Who gets paged if the primary on-call does not acknowledge a page?")
    assert isinstance(events[0], AnswerEvidence)  # quotes first, as always
    assert done.mode == "extractive" and done.replaced and "secondary on-call engineer" in done.answer  # quotes, not "I don't know"


def test_a_floor_at_or_above_the_bar_is_refused_naming_both() -> None:
    with pytest.raises(ValidationError, match=r"rag.model_floor \(0.3\) is not below the relevance bar rag.min_score \(0.27\)"):
        RagSettings(model_floor=0.3)
    assert RagSettings(model_floor=0.2).model_floor == 0.2
    assert RagSettings(model_floor=0.3, relevance={"bias": -0.3, "vector": 1.0}).model_floor == 0.3  # a fitted rule: no single bar to compare
