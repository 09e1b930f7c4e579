"""The async core, end to end: real retrieval, and the real llama.cpp model or a scripted fake LLM."""

from __future__ import annotations

import asyncio
import threading
from contextlib import aclosing

import pytest

from bot.core import AnswerDelta, AnswerDone, AnswerEngine, AnswerEvidence, AnswerTimeout
from bot.prompt import NOT_FOUND_ANSWER, NOT_FOUND_ANSWER_ZH, Turn
from inference.client import Endpoint, LLMUnavailable
from tests.conftest import closed_port, fake_endpoint
from tests.fake_llm import FakeLLM, Reply

ON_CALL_QUESTION = "Who gets paged if the primary on-call does not acknowledge a page?"


async def collect(engine: AnswerEngine, question: str, history: list[Turn] | None = None) -> tuple[list[str], AnswerDone]:
    deltas: list[str] = []
    async with aclosing(engine.answer(question, history or [])) as events:
        async for event in events:
            if isinstance(event, AnswerDelta):
                deltas.append(event.text)
            elif isinstance(event, AnswerDone):
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
    engine = make_engine(llamacpp_endpoint, answer_mode="generative")
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
    engine = make_engine(fake_endpoint(fake_llm), history_turns=2, answer_mode="generative")
    history = [Turn(f"question {k}", f"answer {k}") for k in range(5)]
    follow_up = "And who gets paged if the primary on-call does not acknowledge a page?"
    _, done = await collect(engine, follow_up, history)
    messages = fake_llm.requests[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in messages[1:5]] == ["question 3", "answer 3", "question 4", "answer 4"]
    assert messages[-1]["content"] == follow_up
    system = messages[0]["content"]
    for n, passage in enumerate(done.sources, start=1):
        assert f"[{n}] {passage.title} ({passage.path}" in system
    assert done.cited == [1]  # the fake answers "... [1]."
    assert fake_llm.requests[0]["stream"] is True


async def test_a_follow_up_is_searched_with_the_question_before_it(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(fake_endpoint(fake_llm))
    follow_up = "And who comes after that person?"
    _, alone = await collect(engine, follow_up)
    assert not alone.found or alone.sources[0].path != "oncall-guide.md"  # alone, it is not about on-call
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
                if isinstance(event, AnswerDelta):
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
    engine = make_engine(fake_endpoint(fake_llm), answer_timeout_s=2, answer_mode="generative")
    fake_llm.script.append(Reply(never_finish=True))
    with pytest.raises(AnswerTimeout) as caught:
        await collect(engine, ON_CALL_QUESTION)
    assert "bot.answer_timeout_s = 2" in str(caught.value) and "generating the answer" in str(caught.value)
    assert engine.busy == 0


async def test_llm_server_down_is_a_clear_error(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(Endpoint(base_url=f"http://127.0.0.1:{closed_port()}/v1", model="m", down_hint="start it"), answer_mode="generative")
    with pytest.raises(LLMUnavailable) as caught:
        await collect(engine, ON_CALL_QUESTION)
    assert "is not reachable" in str(caught.value) and caught.value.hint == "start it"
    assert engine.busy == 0


async def test_in_auto_a_model_that_is_down_gives_way_to_the_quotes(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(Endpoint(base_url=f"http://127.0.0.1:{closed_port()}/v1", model="m", down_hint="start it"))
    deltas, done = await collect(engine, ON_CALL_QUESTION)
    assert deltas == [] and done.mode == "extractive" and "secondary on-call engineer" in done.answer and done.cited
    assert done.reason.startswith("the model's answer was replaced: the model failed: the LLM server at") and "is not reachable" in done.reason
    assert not done.replaced and done.guard is None and engine.busy == 0  # nothing was streamed, nothing is taken back


async def test_in_auto_a_model_that_writes_past_the_generation_timeout_gives_way_to_the_quotes(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(fake_endpoint(fake_llm), generation_timeout_s=1)
    fake_llm.script.append(Reply(tokens=["Bob from accounting", " is paged"], never_finish=True))  # one piece, then nothing
    deltas, done = await collect(engine, ON_CALL_QUESTION)
    assert deltas == ["Bob from accounting"] and done.replaced and done.generated == "Bob from accounting"
    assert done.mode == "extractive" and "Bob" not in done.answer and "secondary on-call engineer" in done.answer
    assert done.reason == "the model's answer was replaced: the model had not finished within bot.generation_timeout_s = 1 s"
    await wait_for(lambda: fake_llm.streams_open == 0, "the abandoned stream to be closed")
    assert engine.busy == 0


async def test_in_auto_a_cut_stream_gives_way_to_the_quotes(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    # A faithful beginning the server dropped mid-sentence must not be shown as the whole answer.
    fake_llm.script.append(Reply(tokens=FAITHFUL[:2], unfinished=True))
    deltas, done = await collect(make_engine(fake_endpoint(fake_llm)), ON_CALL_QUESTION)
    assert "".join(deltas) == "".join(FAITHFUL[:2]) and done.replaced and done.mode == "extractive"
    assert "ended the answer before it was finished" in done.reason and "secondary on-call engineer" in done.answer


# --- what reaches the user: evidence, the guard, the answer modes, the conversation ----------

FAITHFUL = ["If the primary does not acknowledge within 15 minutes,", " PagerDuty escalates the page", " to the secondary on-call engineer [1]."]
INVENTED = ["Bob from accounting", " is paged after", " 45 minutes."]


async def events_of(engine: AnswerEngine, question: str, history: list[Turn] | None = None) -> list[object]:
    async with aclosing(engine.answer(question, history or [])) as events:
        return [event async for event in events]


async def test_evidence_comes_before_the_first_token(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    fake_llm.script.append(Reply(tokens=FAITHFUL))
    events = await events_of(make_engine(fake_endpoint(fake_llm)), ON_CALL_QUESTION)
    assert isinstance(events[0], AnswerEvidence) and isinstance(events[1], AnswerDelta) and isinstance(events[-1], AnswerDone)
    evidence = events[0]
    assert evidence.sources[0].path == "oncall-guide.md" and "secondary on-call engineer" in evidence.evidence[0].quote
    assert {e.n for e in evidence.evidence} == set(range(1, len(evidence.sources) + 1))  # a quote for every source


async def test_auto_mode_keeps_an_answer_the_guard_accepts(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    fake_llm.script.append(Reply(tokens=FAITHFUL))
    deltas, done = await collect(make_engine(fake_endpoint(fake_llm)), ON_CALL_QUESTION)
    assert done.mode == "generative" and not done.replaced and done.guard is not None and done.guard.ok
    assert done.answer == "".join(deltas) and done.cited == [1] and "accepted" in done.reason


async def test_auto_mode_replaces_an_answer_the_guard_rejects(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    fake_llm.script.append(Reply(tokens=INVENTED))
    deltas, done = await collect(make_engine(fake_endpoint(fake_llm)), ON_CALL_QUESTION)
    assert "".join(deltas) == "".join(INVENTED)  # streamed as it was written...
    assert done.mode == "extractive" and done.replaced and done.guard is not None and not done.guard.ok  # ...then replaced
    assert done.answer.startswith("Here is what the documents say:") and "secondary on-call engineer" in done.answer and "Bob" not in done.answer
    assert "45" in done.reason and "cites no source" in done.reason and done.cited


async def test_generative_mode_keeps_the_models_answer_with_the_verdict(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    fake_llm.script.append(Reply(tokens=INVENTED))
    _, done = await collect(make_engine(fake_endpoint(fake_llm), answer_mode="generative"), ON_CALL_QUESTION)
    assert done.answer == "".join(INVENTED) and done.mode == "generative" and not done.replaced
    assert done.guard is not None and not done.guard.ok and "rejected" in done.reason


async def test_extractive_mode_never_asks_the_model(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    _, done = await collect(make_engine(fake_endpoint(fake_llm), answer_mode="extractive"), "出差住宿每晚可以报销多少钱？")
    assert fake_llm.requests == [] and done.mode == "extractive" and done.guard is None
    assert done.answer.startswith("知识库文档中的相关内容：") and "600 元" in done.answer and done.cited


async def test_a_topic_switch_starts_clean_and_a_follow_up_keeps_the_conversation(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(fake_endpoint(fake_llm), answer_mode="generative")
    on_call = [Turn(ON_CALL_QUESTION, "The secondary on-call engineer [1].")]
    _, hotel = await collect(engine, "出差住宿每晚可以报销多少钱？", on_call)
    assert [m["role"] for m in fake_llm.requests[-1]["messages"]] == ["system", "user"]  # no on-call turn in the prompt
    assert hotel.sources[0].path == "expense-policy-zh.md"
    _, weather = await collect(engine, "What will the weather be like in Paris tomorrow?", on_call)
    assert not weather.found and len(fake_llm.requests) == 1  # not answered from the on-call passages
    await collect(engine, "And if they don't acknowledge either?", on_call)
    assert [m["role"] for m in fake_llm.requests[-1]["messages"]] == ["system", "user", "assistant", "user"]
