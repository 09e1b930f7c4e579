"""rag.model_floor: a capable model judges the passages the relevance decision refused.

Real retrieval over the sample knowledge base; the model is a scripted OpenAI-compatible server
(a capable model's weights are out of reach here)."""

from __future__ import annotations

from contextlib import aclosing

import pytest
from pydantic import ValidationError

from bot.core import AnswerDone, AnswerEngine, AnswerEvidence
from bot.prompt import NOT_FOUND_ANSWER
from config.settings import RagSettings
from inference.client import Endpoint
from tests.conftest import closed_port, fake_endpoint
from tests.fake_llm import FakeLLM, Reply

# The sample set's paraphrase: its best passage (hybrid 0.24) is below the shipped bar 0.27, above the floor 0.2.
UNANSWERED_PAGE = "How long can a page sit unanswered before someone else is woken up?"
FAITHFUL = ["After 15 minutes without an acknowledgement", " PagerDuty escalates the page", " to the secondary on-call engineer [1]."]
INVENTED = ["Bob from accounting", " is woken up after", " 45 minutes."]
REFUSAL = ["The passages don't say that.", " They cover acknowledging pages within five minutes [1]."]
FLOOR = {"rag.model_floor": "0.2"}


async def events_of(engine: AnswerEngine, question: str) -> tuple[list[object], AnswerDone]:
    async with aclosing(engine.answer(question)) as events:
        seen = [event async for event in events]
    assert isinstance(seen[-1], AnswerDone)
    return seen, seen[-1]


async def test_without_the_floor_the_bar_refuses_the_paraphrase_without_asking_the_model(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    _, done = await events_of(make_engine(fake_endpoint(fake_llm)), UNANSWERED_PAGE)
    assert not done.found and done.answer == NOT_FOUND_ANSWER and fake_llm.requests == []


async def test_a_question_below_the_bar_reaches_the_model_and_its_grounded_answer_is_shown(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    fake_llm.script.append(Reply(tokens=FAITHFUL))
    events, done = await events_of(make_engine(fake_endpoint(fake_llm), FLOOR), UNANSWERED_PAGE)
    assert len(fake_llm.requests) == 1 and "secondary on-call engineer" in fake_llm.requests[0]["messages"][0]["content"]
    assert done.found and done.mode == "generative" and done.answer == "".join(FAITHFUL) and not done.replaced
    assert done.sources[0].path == "oncall-guide.md" and done.sources[0].score < 0.27
    # the passages did not pass the relevance decision: no quotes are previewed as if they answered
    assert not any(isinstance(event, AnswerEvidence) for event in events)


async def test_the_models_refusal_from_those_passages_is_shown_as_a_refusal(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    fake_llm.script.append(Reply(tokens=REFUSAL))
    _, done = await events_of(make_engine(fake_endpoint(fake_llm), FLOOR), UNANSWERED_PAGE)
    assert done.refusal and done.mode == "generative" and done.answer == "".join(REFUSAL)
    assert done.sources_heading.startswith("Searched")


async def test_an_answer_the_guard_rejects_from_those_passages_becomes_i_dont_know_not_quotes(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    fake_llm.script.append(Reply(tokens=INVENTED))
    _, done = await events_of(make_engine(fake_endpoint(fake_llm), FLOOR), UNANSWERED_PAGE)
    assert not done.found and done.mode == "not-found" and done.answer == NOT_FOUND_ANSWER and done.sources == []
    assert done.replaced and done.generated == "".join(INVENTED) and done.guard is not None and not done.guard.ok
    assert "rejected the model's answer from the passages below it" in done.reason and "45" in done.reason


async def test_generative_mode_shows_the_models_answer_with_the_verdict(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    fake_llm.script.append(Reply(tokens=INVENTED))
    _, done = await events_of(make_engine(fake_endpoint(fake_llm), FLOOR, answer_mode="generative"), UNANSWERED_PAGE)
    assert done.found and done.answer == "".join(INVENTED) and done.guard is not None and not done.guard.ok


async def test_in_auto_a_model_that_is_down_means_i_dont_know(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(Endpoint(base_url=f"http://127.0.0.1:{closed_port()}/v1", model="m"), FLOOR)
    _, done = await events_of(engine, UNANSWERED_PAGE)
    assert not done.found and done.answer == NOT_FOUND_ANSWER and "is not reachable" in done.reason and engine.busy == 0


async def test_extractive_mode_has_no_model_to_judge_so_it_does_not_know(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    _, done = await events_of(make_engine(fake_endpoint(fake_llm), FLOOR, answer_mode="extractive"), UNANSWERED_PAGE)
    assert not done.found and done.answer == NOT_FOUND_ANSWER and fake_llm.requests == [] and "extractive" in done.reason


async def test_a_question_below_the_floor_is_not_sent_to_the_model(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    _, done = await events_of(make_engine(fake_endpoint(fake_llm), FLOOR), "What will the weather be like in Paris tomorrow?")
    assert not done.found and fake_llm.requests == []


async def test_a_question_that_passes_the_bar_is_answered_as_before(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    fake_llm.script.append(Reply(tokens=INVENTED))
    events, done = await events_of(make_engine(fake_endpoint(fake_llm), FLOOR), "Who gets paged if the primary on-call does not acknowledge a page?")
    assert isinstance(events[0], AnswerEvidence)  # quotes first, as always
    assert done.mode == "extractive" and done.replaced and "secondary on-call engineer" in done.answer  # quotes, not "I don't know"


def test_a_floor_at_or_above_the_bar_is_refused_naming_both() -> None:
    with pytest.raises(ValidationError, match=r"rag.model_floor \(0.3\) is not below the relevance bar rag.min_score \(0.27\)"):
        RagSettings(model_floor=0.3)
    assert RagSettings(model_floor=0.2).model_floor == 0.2
    assert RagSettings(model_floor=0.3, relevance={"bias": -0.3, "vector": 1.0}).model_floor == 0.3  # a fitted rule: no single bar to compare
