"""The async core, end to end: real retrieval, and the real llama.cpp model or a scripted fake LLM."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from bot.core import AnswerDelta, AnswerDone, AnswerEngine, AnswerTimeout
from bot.prompt import NOT_FOUND_ANSWER, NOT_FOUND_ANSWER_ZH, Turn
from bot.runtime import knowledge_runtime
from config.settings import BotSettings, Settings
from inference.client import Endpoint, LLMUnavailable
from tests.conftest import client_for, closed_port
from tests.fake_llm import FakeLLM, Reply

ON_CALL_QUESTION = "Who gets paged if the primary on-call does not acknowledge a page?"


@pytest.fixture
async def make_engine(indexed_settings: Settings) -> AsyncIterator[Any]:
    clients = []
    with knowledge_runtime(indexed_settings) as runtime:

        def make(endpoint: Endpoint, **bot: Any) -> AnswerEngine:
            client = client_for(endpoint, max_retries=0)
            clients.append(client)
            return AnswerEngine(runtime.retriever, client, BotSettings(**bot))

        yield make
        for client in clients:
            await client.aclose()


def fake_endpoint(fake: FakeLLM) -> Endpoint:
    return Endpoint(base_url=fake.base_url, model="fake-model")


async def collect(engine: AnswerEngine, question: str, history: list[Turn] | None = None) -> tuple[list[str], AnswerDone]:
    deltas: list[str] = []
    async with aclosing(engine.answer(question, history or [])) as events:
        async for event in events:
            if isinstance(event, AnswerDelta):
                deltas.append(event.text)
            else:
                return deltas, event
    raise AssertionError("no AnswerDone")


async def wait_for(condition, what: str, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Polls ``condition`` until it holds, failing after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_streamed_answer_from_the_real_model_cites_the_right_file(make_engine, llamacpp_endpoint: Endpoint) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(llamacpp_endpoint)
    deltas, done = await collect(engine, ON_CALL_QUESTION)
    assert len(deltas) > 3, "the answer should arrive in pieces"
    assert done.found and done.answer == "".join(deltas) and done.answer.strip()
    assert done.sources[0].path == "oncall-guide.md"
    assert all(n <= len(done.sources) for n in done.cited)
    assert {"queued", "retrieve", "first_token", "total"} <= done.timings_ms.keys()
    assert done.timings_ms["retrieve"] <= done.timings_ms["first_token"] <= done.timings_ms["total"]


async def test_nothing_relevant_means_i_dont_know_without_asking_the_llm(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(fake_endpoint(fake_llm))
    deltas, done = await collect(engine, "What is the boiling point of tungsten?")
    assert done.answer == NOT_FOUND_ANSWER == "".join(deltas)
    assert not done.found and done.sources == [] and done.cited == []
    _, chinese = await collect(engine, "量子色动力学是什么？")
    assert chinese.answer == NOT_FOUND_ANSWER_ZH
    assert fake_llm.requests == []


async def test_prompt_numbers_passages_and_keeps_the_last_turns(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(fake_endpoint(fake_llm), history_turns=2)
    history = [Turn(f"question {k}", f"answer {k}") for k in range(5)]
    _, done = await collect(engine, ON_CALL_QUESTION, history)
    messages = fake_llm.requests[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in messages[1:5]] == ["question 3", "answer 3", "question 4", "answer 4"]
    assert messages[-1]["content"] == ON_CALL_QUESTION
    system = messages[0]["content"]
    for n, passage in enumerate(done.sources, start=1):
        assert f"[{n}] {passage.title} ({passage.path}" in system
    assert done.cited == [1]  # the fake answers "... [1]."
    assert fake_llm.requests[0]["stream"] is True


async def test_a_follow_up_is_searched_with_the_question_before_it(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(fake_endpoint(fake_llm))
    follow_up = "And who comes after that person?"
    _, alone = await collect(engine, follow_up)
    assert not alone.found
    _, done = await collect(engine, follow_up, [Turn(ON_CALL_QUESTION, "The secondary on-call engineer [1].")])
    assert done.found and done.sources[0].path == "oncall-guide.md"


async def test_questions_beyond_max_concurrent_wait_for_a_slot(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(fake_endpoint(fake_llm), max_concurrent=1)
    release = threading.Event()
    fake_llm.script.extend([Reply(hold=release), Reply()])
    first = asyncio.create_task(collect(engine, ON_CALL_QUESTION))
    await wait_for(lambda: fake_llm.streams_open == 1, "the first answer to start streaming")
    second = asyncio.create_task(collect(engine, ON_CALL_QUESTION))
    await asyncio.sleep(0)  # the second task runs up to the semaphore
    await asyncio.sleep(0)
    assert engine.busy == 1 and len(fake_llm.requests) == 1 and not second.done()
    release.set()
    (_, done1), (_, done2) = await asyncio.gather(first, second)
    assert done1.found and done2.found and len(fake_llm.requests) == 2 and engine.busy == 0


async def test_cancelling_a_question_frees_its_slot_and_closes_the_stream(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(fake_endpoint(fake_llm), max_concurrent=1)
    fake_llm.script.append(Reply(never_finish=True))
    first_delta = asyncio.Event()

    async def ask() -> None:
        async with aclosing(engine.answer(ON_CALL_QUESTION)) as events:
            async for event in events:
                first_delta.set()

    task = asyncio.create_task(ask())
    await first_delta.wait()
    assert engine.busy == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.busy == 0
    await wait_for(lambda: fake_llm.streams_open == 0, "the server to see the stream closed")
    _, done = await collect(engine, ON_CALL_QUESTION)  # the slot is free again
    assert done.found


async def test_a_question_past_its_deadline_times_out_cleanly(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(fake_endpoint(fake_llm), answer_timeout_s=2)
    fake_llm.script.append(Reply(never_finish=True))
    with pytest.raises(AnswerTimeout) as caught:
        await collect(engine, ON_CALL_QUESTION)
    assert "bot.answer_timeout_s = 2" in str(caught.value) and "generating the answer" in str(caught.value)
    assert engine.busy == 0


async def test_llm_server_down_is_a_clear_error(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(Endpoint(base_url=f"http://127.0.0.1:{closed_port()}/v1", model="m", down_hint="start it"))
    with pytest.raises(LLMUnavailable) as caught:
        await collect(engine, ON_CALL_QUESTION)
    assert "is not reachable" in str(caught.value) and caught.value.hint == "start it"
    assert engine.busy == 0
