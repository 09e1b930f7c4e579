"""bot.rewrite_question: a capable model restates the question as search queries before the search.

Real retrieval over the sample knowledge base; the model is a scripted OpenAI-compatible server
(a capable model's weights are out of reach here). The eval's replay of written search queries
runs through the real `teambot eval` command."""

from __future__ import annotations

import json
from contextlib import aclosing
from pathlib import Path

import pytest
import yaml

from bot.answer_log import AnswerLog
from bot.core import AnswerDone, AnswerEngine, AnswerEvidence
from bot.evaluation.questions import QuestionSetError, load_question_set
from bot.prompt import NOT_FOUND_ANSWER
from bot.rewrite import REWRITE_INSTRUCTIONS, search_queries
from config.settings import Settings
from tests.conftest import fake_endpoint
from tests.fake_llm import FakeLLM, Reply
from tests.test_cli import run, teambot_env

# The sample set's paraphrase: alone, its best passage (hybrid 0.24) is below the shipped bar 0.27.
UNANSWERED_PAGE = "How long can a page sit unanswered before someone else is woken up?"
QUERIES = "en: How long until an unacknowledged page escalates to the secondary on-call engineer?\nzh: 页面多久未确认会升级给第二值班人？"
FAITHFUL = ["After 15 minutes without an acknowledgement", " PagerDuty escalates the page", " to the secondary on-call engineer [1]."]
ACK = "How quickly do I have to acknowledge a page?"
ACK_ANSWER = ["Within 5 minutes [1]."]
REWRITE = {"rewrite_question": True}


async def answer(engine: AnswerEngine, question: str) -> tuple[list[object], AnswerDone]:
    async with aclosing(engine.answer(question)) as events:
        seen = [event async for event in events]
    assert isinstance(seen[-1], AnswerDone)
    return seen, seen[-1]


def test_the_queries_are_the_replys_en_and_zh_lines() -> None:
    assert search_queries(QUERIES, UNANSWERED_PAGE) == [
        "How long until an unacknowledged page escalates to the secondary on-call engineer?", "页面多久未确认会升级给第二值班人？"
    ]  # fmt: skip
    # other spellings of the labels, a list marker, a full-width colon, quotes; chatter around them is ignored
    assert search_queries('Sure!\n- English: "pager escalation"\n中文：寻呼升级\nHope this helps.', "q") == ["pager escalation", "寻呼升级"]
    # a line that only repeats the question adds nothing; duplicates and a third query are dropped
    assert search_queries(f"en: {ACK.upper()}\nzh: 确认时限\nzh: 确认时限\nen: third", ACK) == ["确认时限", "third"]
    assert search_queries("The on-call engineer has 5 minutes.", "q") == []  # an answer, not queries
    assert len(search_queries("en: " + "word " * 200, "q")[0]) <= 300


async def test_a_paraphrase_the_bar_refuses_is_found_through_the_models_queries(make_engine, fake_llm: FakeLLM, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # alone, the question is refused without the model being asked
    _, alone = await answer(make_engine(fake_endpoint(fake_llm)), UNANSWERED_PAGE)
    assert not alone.found and fake_llm.requests == []

    fake_llm.script.extend([Reply(tokens=[QUERIES[:30], QUERIES[30:]]), Reply(tokens=FAITHFUL)])
    events, done = await answer(make_engine(fake_endpoint(fake_llm), **REWRITE), UNANSWERED_PAGE)
    rewrite, answered = fake_llm.requests
    assert rewrite["messages"] == [{"role": "system", "content": REWRITE_INSTRUCTIONS}, {"role": "user", "content": UNANSWERED_PAGE}]
    assert "secondary on-call engineer" in answered["messages"][0]["content"]
    assert answered["messages"][-1]["content"].endswith(UNANSWERED_PAGE)  # the model answers the question, not the queries
    assert done.found and done.mode == "generative" and done.answer == "".join(FAITHFUL)
    assert done.sources[0].path == "oncall-guide.md" and "rewrite" in done.timings_ms
    assert any(isinstance(event, AnswerEvidence) for event in events)  # it passed the relevance decision: quotes are previewed
    # what was searched is kept with the answer: in its JSON and in the answer log admins read
    queries = search_queries(QUERIES, UNANSWERED_PAGE)
    assert done.searched == queries and done.to_json()["searched"] == queries
    log = AnswerLog(tmp_path / "answers.sqlite")
    try:
        log.record("slack", "C1", "", "U1", UNANSWERED_PAGE, done)
        log.record("slack", "C1", "", "U1", UNANSWERED_PAGE, alone)
        assert [a.searched for a in log.recent(2)] == [[], queries]
    finally:
        log.close()


async def test_a_model_that_fails_or_writes_no_queries_leaves_the_question_searched_alone(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    fake_llm.script.extend([Reply(status=500), Reply(tokens=ACK_ANSWER), Reply(tokens=["Within 5 minutes."]), Reply(tokens=ACK_ANSWER)])
    engine = make_engine(fake_endpoint(fake_llm), **REWRITE)
    _, failed = await answer(engine, ACK)
    _, chatty = await answer(engine, ACK)
    for done in (failed, chatty):
        assert done.found and done.answer == "".join(ACK_ANSWER) and done.sources[0].path == "oncall-guide.md" and done.searched == []
    assert len(fake_llm.requests) == 4 and engine.busy == 0

    fake_llm.script.extend([Reply(status=500), Reply(tokens=["Anything."])])
    _, refused = await answer(engine, UNANSWERED_PAGE)  # searched alone it is refused, as without the setting
    assert not refused.found and refused.answer == NOT_FOUND_ANSWER and len(fake_llm.requests) == 5


async def test_a_model_slower_than_rewrite_timeout_s_is_not_waited_for(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    fake_llm.script.extend([Reply(tokens=["en: pager"], never_finish=True), Reply(tokens=ACK_ANSWER)])
    engine = make_engine(fake_endpoint(fake_llm), rewrite_question=True, rewrite_timeout_s=0.5)
    _, done = await answer(engine, ACK)
    assert done.found and done.answer == "".join(ACK_ANSWER) and len(fake_llm.requests) == 2 and done.searched == []

    # a line it finished before the timeout is used; the one it was still writing is not
    fake_llm.script.extend([Reply(tokens=["en: pager acknowledgement deadline\nzh: 寻呼"], never_finish=True), Reply(tokens=ACK_ANSWER)])
    _, done = await answer(engine, ACK)
    assert done.found and done.searched == ["pager acknowledgement deadline"]


async def test_reading_stops_at_the_end_of_the_zh_line(make_engine, fake_llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    # The model writes both lines, then keeps the stream open (as one that goes on to answer): the
    # search does not wait for it. Were the stream read to its end, the 10-minute timeout would
    # pass and the question would be searched alone.
    fake_llm.script.extend([Reply(tokens=[QUERIES + "\nThe answer is"], never_finish=True), Reply(tokens=FAITHFUL)])
    engine = make_engine(fake_endpoint(fake_llm), rewrite_question=True, rewrite_timeout_s=600)
    _, done = await answer(engine, UNANSWERED_PAGE)
    assert done.searched == QUERIES.replace("en: ", "").replace("zh: ", "").split("\n")
    assert done.found and done.answer == "".join(FAITHFUL) and len(fake_llm.requests) == 2


SET = {
    "name": "rewrites",
    "items": [
        {"id": "unanswered", "kind": "paraphrase", "question": UNANSWERED_PAGE, "expect_sources": ["oncall-guide.md"], "expect_facts": ["15 minutes"],
         "model_rewrite": QUERIES, "model_answers": [{"text": "After 15 minutes the secondary on-call engineer is paged [oncall-guide.md].", "correct": True}]},
        {"id": "ack", "kind": "direct", "question": ACK, "expect_sources": ["oncall-guide.md"], "expect_facts": ["5 minutes"],
         "model_answers": [{"text": "Within 5 minutes [oncall-guide.md].", "correct": True}]},  # no written queries: searched alone
    ],
}  # fmt: skip


def test_eval_replays_the_written_queries_in_both_modes(indexed_settings: Settings, tmp_path: Path) -> None:
    questions = tmp_path / "rewrites.yaml"
    questions.write_text(yaml.safe_dump(SET, allow_unicode=True), encoding="utf-8")
    results = {}
    for name, extra in (("off", {}), ("on", {"TEAMBOT_BOT__REWRITE_QUESTION": "true"})):
        env = teambot_env(indexed_settings, **extra)
        for mode in ("--retrieval-only", "--model-answers"):
            result = run(["eval", str(questions), mode, "--json"], env, timeout=600)
            assert result.returncode == 0, result.stderr[-2000:]
            results[name, mode] = {item["id"]: item for item in json.loads(result.stdout)["items"]}
    for mode in ("--retrieval-only", "--model-answers"):
        assert results["off", mode]["unanswered"]["refused"] and not results["on", mode]["unanswered"]["refused"]
        assert results["on", mode]["unanswered"]["sources"][0] == "oncall-guide.md"
        assert not results["on", mode]["ack"]["refused"]
    assert "15 minutes" in results["on", "--model-answers"]["unanswered"]["answer"]


def test_a_written_rewrite_that_is_not_a_text_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"items": [{"id": "a", "question": "q?", "refuse": True, "model_rewrite": ["en: x"]}]}), encoding="utf-8")
    with pytest.raises(QuestionSetError, match="item 'a': model_rewrite must be a text"):
        load_question_set(path)
