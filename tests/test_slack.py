"""The Slack adapter end to end: the real slack-bolt app against a local fake Slack (tests/fake_slack.py)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.answer_log import AnswerLog
from bot.evaluation.replay import ReplayModel
from bot.runtime import knowledge_runtime
from bot.slack.render import PLACEHOLDER
from config.settings import Settings
from inference.client import Endpoint
from rag.operations.run_history import RunHistory
from tests.conftest import indexed_copy, make_settings, teambot
from tests.fake_llm import FakeLLM, Reply
from tests.fake_slack import APP_TOKEN, BOT_TOKEN, BOT_USER, FakeSlack
from tests.proc import async_wait_for

SIGNING_SECRET = "test-signing-secret"
TEAMBOT = str(Path(sys.executable).parent / "teambot")
ON_CALL_QUESTION = "Who gets paged if the primary on-call does not acknowledge a page?"
CHANNEL = "C0GENERAL"


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    slack = await FakeSlack(admins=("UADMIN",)).start()
    yield slack
    await slack.stop()


def slack_settings(data_dir: Path, knowledge: Path, llm_url: str, fake: FakeSlack, *, socket_mode: bool = True, **extra: Any) -> Settings:
    secrets = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_API_URL": fake.api_url}
    secrets.update({"SLACK_APP_TOKEN": APP_TOKEN} if socket_mode else {"SLACK_SIGNING_SECRET": SIGNING_SECRET})
    slack = {"update_interval_s": 0.2, **extra.pop("slack", {})}
    return make_settings(data_dir, knowledge, inference={"backend": "external", "base_url": llm_url}, slack=slack, http_port=0, **secrets, **extra)


until = partial(async_wait_for, timeout=300, every=0.02)  # polls until truthy; fails naming what it waited for


def final_answers(fake: FakeSlack, channel: str, thread: str | None) -> list[dict[str, Any]]:
    """The bot's finished answers (with feedback buttons) in a thread, or top level when thread is None."""
    found = []
    for message in fake.messages[channel]:
        in_place = message.get("thread_ts") == thread if thread else not message.get("thread_ts")
        if in_place and message.get("user") == BOT_USER and any(b.get("type") == "actions" for b in message.get("blocks") or []):
            found.append(message)
    return found


def block_text(message: dict[str, Any]) -> str:
    return "\n".join(b["text"]["text"] for b in message.get("blocks") or [] if b.get("type") == "section")


async def mention(fake: FakeSlack, text: str, *, channel: str = CHANNEL, user: str = "U1", thread_ts: str | None = None) -> dict[str, Any]:
    """A message that mentions teambot: Slack sends app_mention and the channel's message event."""
    event = fake.user_message(channel, user, f"<@{BOT_USER}> {text}", thread_ts=thread_ts)
    await fake.send_event({**event, "type": "app_mention"})
    await fake.send_event(event)
    return event


async def test_mention_gets_a_growing_threaded_answer_with_sources_and_buttons(
    fake_slack: FakeSlack, indexed_settings: Settings, llamacpp_endpoint: Endpoint, tmp_path: Path
) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    async with teambot(slack_settings(data, knowledge, llamacpp_endpoint.base_url, fake_slack)) as service:
        assert service.platforms == ["Slack"]
        event = await mention(fake_slack, ON_CALL_QUESTION)
        [answer] = await until(lambda: final_answers(fake_slack, CHANNEL, event["ts"]), "the answer")

    posts = fake_slack.called("chat.postMessage")
    assert posts[0].params["text"] == PLACEHOLDER and posts[0].params["thread_ts"] == event["ts"]
    assert len(posts) == 1, "one answer, although Slack sent app_mention and message for the mention"
    updates = [c.params for c in fake_slack.called("chat.update")]
    progress = [u["text"] for u in updates if u["text"].endswith("▍")]
    assert progress, "the answer should grow before it is final"
    assert all(len(a) <= len(b) for a, b in zip(progress, progress[1:]))
    assert answer["ts"] == posts[0].params.get("ts", answer["ts"]) and answer["text"].strip()
    assert "oncall-guide.md" in block_text(answer) and "*Sources*" in block_text(answer)
    buttons = next(b for b in answer["blocks"] if b["type"] == "actions")["elements"]
    assert [b["text"]["text"] for b in buttons] == ["👍 Helpful", "👎 Not helpful"]
    assert len(fake_slack.acked) == 2  # both envelopes acknowledged


async def test_a_thread_follow_up_is_answered_with_the_thread_as_history(
    fake_slack: FakeSlack, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path
) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    fake_llm.script.extend([Reply(tokens=["The secondary", " on-call [1]."]), Reply(tokens=["The engineering", " manager [1]."])])
    async with teambot(slack_settings(data, knowledge, fake_llm.base_url, fake_slack)):
        first = await mention(fake_slack, ON_CALL_QUESTION)
        await until(lambda: final_answers(fake_slack, CHANNEL, first["ts"]), "the first answer")
        follow_up = fake_slack.user_message(CHANNEL, "U1", "And if nobody acknowledges for 30 minutes?", thread_ts=first["ts"])
        await fake_slack.send_event(follow_up)
        await until(lambda: len(final_answers(fake_slack, CHANNEL, first["ts"])) == 2, "the follow-up's answer")
        unrelated = fake_slack.user_message(CHANNEL, "U2", "lunch?", thread_ts="1699999999.000100")  # a thread teambot is not in
        await fake_slack.send_event(unrelated)

    history = fake_llm.requests[1]["messages"]
    assert [m["role"] for m in history[1:]] == ["user", "assistant", "user"]
    assert history[1]["content"] == ON_CALL_QUESTION
    assert history[2]["content"] == "The secondary on-call [1]."
    assert history[3]["content"] == "And if nobody acknowledges for 30 minutes?"
    assert len(fake_llm.requests) == 2


async def test_a_direct_message_is_answered_directly_with_the_dm_as_history(
    fake_slack: FakeSlack, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path
) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    async with teambot(slack_settings(data, knowledge, fake_llm.base_url, fake_slack)):
        await fake_slack.send_event(fake_slack.user_message("D0DM", "U1", "How many approvals does a pull request need?"))
        await until(lambda: final_answers(fake_slack, "D0DM", None), "the first answer")
        await fake_slack.send_event(fake_slack.user_message("D0DM", "U1", "Who must one of the reviewers be?"))
        await until(lambda: len(final_answers(fake_slack, "D0DM", None)) == 2, "the second answer")

    assert all(not c.params.get("thread_ts") for c in fake_slack.called("chat.postMessage"))
    second = fake_llm.requests[1]["messages"]
    assert [m["content"] for m in second[1:3]] == ["How many approvals does a pull request need?", "Hello from the fake [1]."]


async def test_ask_is_acknowledged_at_once_and_answered_in_the_channel(
    fake_slack: FakeSlack, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path
) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    async with teambot(slack_settings(data, knowledge, fake_llm.base_url, fake_slack)):
        envelope = await fake_slack.send_command("/ask", "When does the release train leave?", user="U7", channel=CHANNEL)
        await until(lambda: envelope in fake_slack.acked, "the ack")
        anchor = await until(lambda: next((m for m in fake_slack.messages[CHANNEL] if "asked:" in m["text"]), None), "the question")
        [answer] = await until(lambda: final_answers(fake_slack, CHANNEL, anchor["ts"]), "the answer")
        empty = await fake_slack.send_command("/ask", "  ", user="U7", channel=CHANNEL)
        await until(lambda: empty in fake_slack.acked, "the ack of an empty /ask")

    assert anchor["text"] == "<@U7> asked: When does the release train leave?"
    assert "release-process.rst" in block_text(answer)
    assert len(fake_llm.requests) == 1


def sign(body: bytes, timestamp: int, secret: str = SIGNING_SECRET) -> dict[str, str]:
    basestring = f"v0:{timestamp}:".encode() + body
    signature = "v0=" + hmac.new(secret.encode(), basestring, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": signature, "Content-Type": "application/json"}


async def test_events_api_checks_signatures_and_answers_a_retried_event_once(
    fake_slack: FakeSlack, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path
) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    async with teambot(slack_settings(data, knowledge, fake_llm.base_url, fake_slack, socket_mode=False)) as service:
        assert service.http is not None
        url = f"http://127.0.0.1:{service.http.port}/slack/events"
        event = fake_slack.user_message(CHANNEL, "U1", f"<@{BOT_USER}> {ON_CALL_QUESTION}")
        body = json.dumps(fake_slack.event_body({**event, "type": "app_mention"}, event_id="Ev0RETRIED")).encode()
        now = int(time.time())
        async with httpx.AsyncClient() as http:
            forged = await http.post(url, content=body, headers=sign(body, now, secret="not-the-secret"))
            stale = await http.post(url, content=body, headers=sign(body, now - 600))
            unsigned = await http.post(url, content=body, headers={"Content-Type": "application/json"})
            assert (forged.status_code, stale.status_code, unsigned.status_code) == (401, 401, 401)
            assert fake_slack.called("chat.postMessage") == []

            first = await http.post(url, content=body, headers=sign(body, now))
            retry = await http.post(url, content=body, headers={**sign(body, now), "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
            assert (first.status_code, retry.status_code) == (200, 200)
            await until(lambda: final_answers(fake_slack, CHANNEL, event["ts"]), "the answer")

            challenge = json.dumps({"type": "url_verification", "challenge": "abc123", "token": "legacy"}).encode()
            verified = await http.post(url, content=challenge, headers=sign(challenge, now))
            assert verified.json() == {"challenge": "abc123"}
    assert len(fake_slack.called("chat.postMessage")) == 1 and len(fake_llm.requests) == 1


async def test_a_rate_limited_edit_is_waited_out_and_the_answer_completes(
    fake_slack: FakeSlack, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path
) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    fake_slack.rate_limited["chat.update"] = 2
    fake_slack.retry_after_s = 1
    async with teambot(slack_settings(data, knowledge, fake_llm.base_url, fake_slack)):
        event = await mention(fake_slack, ON_CALL_QUESTION)
        [answer] = await until(lambda: final_answers(fake_slack, CHANNEL, event["ts"]), "the answer")

    updates = fake_slack.called("chat.update")
    assert len(updates) >= 3  # two refused with 429, then the ones that went through
    assert updates[1].at - updates[0].at >= 0.9 and updates[2].at - updates[1].at >= 0.9  # Retry-After: 1 obeyed
    assert "Hello from the fake [1]." in block_text(answer)


async def test_the_streaming_api_is_used_where_the_workspace_has_it(fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path) -> None:
    fake = await FakeSlack(streaming=True).start()
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    try:
        async with teambot(slack_settings(data, knowledge, fake_llm.base_url, fake)):
            event = await mention(fake, ON_CALL_QUESTION)
            [answer] = await until(lambda: final_answers(fake, CHANNEL, event["ts"]), "the streamed answer")
    finally:
        await fake.stop()
    assert fake.called("chat.startStream") and fake.called("chat.stopStream")
    assert answer["text"] == "Hello from the fake [1]." and not answer["streaming"]
    assert "oncall-guide.md" in block_text(answer)
    assert all(m["text"] != PLACEHOLDER for m in fake.messages[CHANNEL])  # the placeholder made way


async def test_feedback_clicks_are_stored(fake_slack: FakeSlack, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    async with teambot(slack_settings(data, knowledge, fake_llm.base_url, fake_slack)) as service:
        event = await mention(fake_slack, ON_CALL_QUESTION)
        [answer] = await until(lambda: final_answers(fake_slack, CHANNEL, event["ts"]), "the answer")
        answer_id = next(b for b in answer["blocks"] if b["type"] == "actions")["elements"][0]["value"]
        await fake_slack.click("feedback_up", answer_id, user="U3", channel=CHANNEL, message_ts=answer["ts"])
        await fake_slack.click("feedback_down", answer_id, user="U4", channel=CHANNEL, message_ts=answer["ts"])
        await until(lambda: len(fake_slack.responses) == 2, "the thanks")
        [logged] = service.answers.recent()

    assert (logged.question, logged.answer, logged.user, logged.channel) == (ON_CALL_QUESTION, "Hello from the fake [1].", "U1", CHANNEL)
    assert (logged.up, logged.down) == (1, 1)
    assert logged.sources[0]["path"] == "oncall-guide.md"
    assert fake_slack.responses[0]["text"] == "Thanks for the feedback!" and fake_slack.responses[0]["response_type"] == "ephemeral"


async def test_bots_edits_and_own_messages_are_ignored(fake_slack: FakeSlack, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    async with teambot(slack_settings(data, knowledge, fake_llm.base_url, fake_slack)):
        dm = "D0DM"
        base = fake_slack.user_message(dm, "U1", ON_CALL_QUESTION)
        await fake_slack.send_event({**base, "bot_id": "BOTHER", "user": "UOTHERBOT"})
        await fake_slack.send_event({**base, "user": BOT_USER})
        await fake_slack.send_event({**base, "subtype": "message_changed"})
        await fake_slack.send_event({**base, "subtype": "message_deleted"})
        await fake_slack.send_event(fake_slack.user_message(dm, "U1", "What does the FAQ say about payroll?"))
        await until(lambda: final_answers(fake_slack, dm, None), "the one real answer")
    assert len(fake_slack.called("chat.postMessage")) == 1 and len(fake_llm.requests) == 1


async def test_channels_are_scoped_to_their_collections(fake_slack: FakeSlack, fake_llm: FakeLLM, settings: Settings, tmp_path: Path) -> None:
    hr = tmp_path / "hr"
    hr.mkdir()
    (hr / "leave.md").write_text("# Parental leave\n\nParents get sixteen weeks of paid parental leave.\n")
    with knowledge_runtime(settings) as runtime:
        runtime.indexer.run()
        runtime.indexer.run([hr], collection="hr")
    scoped = slack_settings(settings.data_dir, settings.rag.knowledge_dir, fake_llm.base_url, fake_slack, slack={"channels": {"C0HR": ["hr"]}})
    question = "How many weeks of parental leave do parents get?"
    async with teambot(scoped):
        in_hr = await mention(fake_slack, question, channel="C0HR")
        in_general = await mention(fake_slack, question, channel=CHANNEL)
        [hr_answer] = await until(lambda: final_answers(fake_slack, "C0HR", in_hr["ts"]), "the HR answer")
        [general] = await until(lambda: final_answers(fake_slack, CHANNEL, in_general["ts"]), "the general answer")
    assert "leave.md" in block_text(hr_answer)
    assert "don't know" in block_text(general) and "leave.md" not in block_text(general)


# --- admin uploads and /kb --------------------------------------------------------------


@pytest.fixture
async def kb_teambot(fake_slack: FakeSlack, fake_llm: FakeLLM, settings: Settings) -> AsyncIterator[Settings]:
    with knowledge_runtime(settings) as runtime:
        runtime.indexer.run()
    configured = slack_settings(settings.data_dir, settings.rag.knowledge_dir, fake_llm.base_url, fake_slack, rag={"max_file_mb": 0.05})
    async with teambot(configured):
        yield configured


def replies(fake: FakeSlack, channel: str) -> list[str]:
    return [m["text"] for m in fake.messages[channel] if m.get("user") == BOT_USER]


def knowledge_snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


async def test_an_admins_upload_is_indexed_and_answers_questions(fake_slack: FakeSlack, kb_teambot: Settings) -> None:
    doc = b"# Bike storage\n\nBicycles go in the basement bike room, behind the blue door. The code is 4711.\n"
    file = fake_slack.share_file("bike-storage.md", doc, "text/markdown")
    await fake_slack.send_event(fake_slack.user_message("D0ADMIN", "UADMIN", "", files=[file]))
    [reply] = await until(lambda: replies(fake_slack, "D0ADMIN"), "the upload reply")
    assert reply.startswith("Added *bike-storage.md* in `default`:") and "chunks indexed" in reply
    assert (kb_teambot.rag.knowledge_dir / "bike-storage.md").read_bytes() == doc

    event = await mention(fake_slack, "Where do bicycles go, and what is the code of the bike room?")
    [answer] = await until(lambda: final_answers(fake_slack, CHANNEL, event["ts"]), "the answer")
    assert "bike-storage.md" in block_text(answer).split("*Sources*")[1]


async def test_uploads_into_a_named_collection_and_kb_commands(fake_slack: FakeSlack, kb_teambot: Settings) -> None:
    file = fake_slack.share_file("leave.md", b"# Leave\n\nSixteen weeks of parental leave.\n", "text/markdown")
    await fake_slack.send_event(fake_slack.user_message("D0ADMIN", "UADMIN", "hr", files=[file]))
    await until(lambda: replies(fake_slack, "D0ADMIN"), "the upload reply")
    assert (kb_teambot.uploads_dir / "hr" / "leave.md").is_file()

    await fake_slack.send_command("/kb", "list hr", user="UADMIN", channel=CHANNEL)
    await fake_slack.send_command("/kb", "remove faq.txt", user="U1", channel=CHANNEL)  # not an admin
    await until(lambda: len(fake_slack.responses) == 2, "two /kb replies")
    listing, refusal = sorted((r["text"] for r in fake_slack.responses), key=lambda text: text.startswith("Sorry"))  # in either order
    assert "leave.md: 1 chunks" in listing
    assert refusal == "Sorry, only knowledge base admins can do that."
    assert (kb_teambot.rag.knowledge_dir / "faq.txt").is_file()

    await fake_slack.send_command("/kb", "remove faq.txt", user="UADMIN", channel=CHANNEL)
    await until(lambda: len(fake_slack.responses) == 3, "the remove reply")
    assert fake_slack.responses[2]["text"].startswith("Removed *faq.txt* from `default`")
    assert not (kb_teambot.rag.knowledge_dir / "faq.txt").exists()
    with knowledge_runtime(kb_teambot) as runtime:
        assert "faq.txt" not in {c.metadata["source"] for c in runtime.store.get("default", texts=False)}


async def test_kb_reindex_queues_a_run_for_admins_only(fake_slack: FakeSlack, kb_teambot: Settings) -> None:
    history = RunHistory(kb_teambot.data_dir / "index-runs.sqlite")
    try:
        await until(lambda: any(r.state == "done" for r in history.recent()), "the run at start")
        (kb_teambot.rag.knowledge_dir / "faq.txt").write_text("Parking is free on weekends.\n")
        await fake_slack.send_command("/kb", "reindex", user="U1", channel=CHANNEL)  # not an admin
        await fake_slack.send_command("/kb", "reindex", user="UADMIN", channel=CHANNEL)
        await until(lambda: len(fake_slack.responses) == 2, "two /kb reindex replies")
        assert fake_slack.responses[0]["text"] == "Sorry, only knowledge base admins can do that."
        assert fake_slack.responses[1]["text"].startswith(("Re-index started (request", "Re-index queued (request"))
        run = await until(lambda: next((r for r in history.recent() if "slack" in r.trigger and r.state == "done"), None), "the requested run")
        assert run.indexed[0].updated == 1 and run.indexed[0].unchanged == 6
    finally:
        history.close()


async def test_a_non_admin_upload_is_refused_and_nothing_changes(fake_slack: FakeSlack, kb_teambot: Settings) -> None:
    before = knowledge_snapshot(kb_teambot.rag.knowledge_dir)
    file = fake_slack.share_file("notes.md", b"# Notes\n\nsecret plans\n", "text/markdown")
    await fake_slack.send_event(fake_slack.user_message("D0USER", "U1", "", files=[file]))
    [reply] = await until(lambda: replies(fake_slack, "D0USER"), "the refusal")
    assert reply.startswith("Sorry, only knowledge base admins can add documents")
    assert knowledge_snapshot(kb_teambot.rag.knowledge_dir) == before


@pytest.mark.parametrize(
    ("name", "data", "mimetype", "expected"),
    [
        ("huge.md", b"# Huge\n\n" + b"word " * 20000, "text/markdown", "huge.md is 0.1 MB, over the limit of 0.05 MB"),
        ("broken.pdf", b"%PDF-1.7 this is not a pdf", "application/pdf", "broken.pdf: not a readable PDF"),
        ("photo.png", b"\x89PNG\r\n\x1a\n", "image/png", "photo.png: teambot cannot read '.png'"),
    ],
)
async def test_bad_uploads_get_a_clear_reply_and_change_nothing(
    fake_slack: FakeSlack, kb_teambot: Settings, name: str, data: bytes, mimetype: str, expected: str
) -> None:
    before = knowledge_snapshot(kb_teambot.rag.knowledge_dir)
    await fake_slack.send_event(fake_slack.user_message("D0ADMIN", "UADMIN", "", files=[fake_slack.share_file(name, data, mimetype)]))
    [reply] = await until(lambda: replies(fake_slack, "D0ADMIN"), "the refusal")
    assert reply.startswith(f":no_entry: {expected}") and reply.endswith("Nothing was changed.")
    assert knowledge_snapshot(kb_teambot.rag.knowledge_dir) == before


async def test_the_bot_token_goes_only_to_slack_and_a_sign_in_page_is_an_error(fake_slack: FakeSlack, kb_teambot: Settings) -> None:
    elsewhere = fake_slack.share_file("a.md", b"# A\n\ntext\n", "text/markdown", url="https://files.example.com/a.md")
    sign_in = fake_slack.share_file("b.md", b"# B\n\ntext\n", "text/markdown", url=f"{fake_slack.base}/files/FNOSUCHFILE")
    await fake_slack.send_event(fake_slack.user_message("D0ADMIN", "UADMIN", "", files=[elsewhere, sign_in]))
    first, second = await until(lambda: (r := replies(fake_slack, "D0ADMIN")) and len(r) == 2 and r, "both replies")
    assert "refusing to send the bot token to files.example.com" in first
    assert "Slack sent a sign-in page instead of the file" in second


# --- `teambot serve` with Slack, as a real process ---------------------------------------


def serve_env(settings: Settings, fake: FakeSlack, llm_url: str, bot_token: str = BOT_TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEAMBOT_", "SLACK_", "DISCORD_"))}
    return env | {
        "TEAMBOT_DATA_DIR": str(settings.data_dir),
        "TEAMBOT_RAG__KNOWLEDGE_DIR": str(settings.rag.knowledge_dir),
        "TEAMBOT_INFERENCE__BACKEND": "external",
        "TEAMBOT_INFERENCE__BASE_URL": llm_url,
        "TEAMBOT_HTTP_PORT": "0",
        "SLACK_BOT_TOKEN": bot_token,
        "SLACK_APP_TOKEN": APP_TOKEN,
        "SLACK_API_URL": fake.api_url,
    }


async def test_teambot_serve_answers_on_slack_until_sigterm(
    fake_slack: FakeSlack, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path
) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    settings = make_settings(data, knowledge)
    process = await asyncio.create_subprocess_exec(
        TEAMBOT, "serve", env=serve_env(settings, fake_slack, fake_llm.base_url),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await asyncio.wait_for(fake_slack.connected.wait(), 120)
        event = await mention(fake_slack, ON_CALL_QUESTION)
        await until(lambda: final_answers(fake_slack, CHANNEL, event["ts"]), "the answer")
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 0
    assert "Answering on Slack" in stderr.decode()
    assert BOT_TOKEN not in stderr.decode() and APP_TOKEN not in (data / "logs" / "teambot.log").read_text()


async def test_teambot_serve_with_a_refused_token_says_so(fake_slack: FakeSlack, fake_llm: FakeLLM, settings: Settings) -> None:
    process = await asyncio.create_subprocess_exec(
        TEAMBOT, "serve", env=serve_env(settings, fake_slack, fake_llm.base_url, bot_token="xoxb-revoked"),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 2
    assert "Slack refused SLACK_BOT_TOKEN (invalid_auth)" in stderr.decode() and "Traceback" not in stderr.decode()


@pytest.mark.parametrize("streaming", [False, True], ids=["chat.update", "chat streaming API"])
async def test_an_answer_the_guard_rejects_ends_as_the_extractive_answer(
    fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path, streaming: bool
) -> None:
    fake_slack = await FakeSlack(streaming=streaming).start()
    try:
        data, knowledge = indexed_copy(indexed_settings, tmp_path)
        invented = ["Bob from", " accounting is", " paged after", " 45 minutes", " and he", " fixes everything."]
        release = threading.Event()
        fake_llm.script.append(Reply(tokens=invented, hold=release))

        def shown() -> bool:
            calls = fake_slack.called("chat.startStream") + fake_slack.called("chat.appendStream") + fake_slack.called("chat.update")
            return any("Bob" in (c.params.get("markdown_text") or c.params.get("text") or "") for c in calls)

        async with teambot(slack_settings(data, knowledge, fake_llm.base_url, fake_slack)):
            event = await mention(fake_slack, ON_CALL_QUESTION)
            await until(shown, "the model's first words in the message")  # the model's text is shown while it is written...
            release.set()
            [answer] = await until(lambda: final_answers(fake_slack, CHANNEL, event["ts"]), "the answer")
    finally:
        release.set()
        await fake_slack.stop()
    text = block_text(answer)
    assert "Bob" not in text and "45" not in answer["text"]  # ...and is gone from the message that stays
    assert answer["text"].startswith("Here is what the documents say:") and "secondary on-call engineer" in answer["text"]
    assert "On-call guide [1]:" in text and "> " in text.split("*Sources*")[1]  # each source with its quote
    log = AnswerLog(data / "answers.sqlite")
    try:
        [logged] = log.recent(5)
    finally:
        log.close()
    assert logged.answer == answer["text"]  # the log keeps what the user was left with


HOSTILE_TOKENS = ["See [click](http://ev", "il.example) <!chan", "nel> <http://x|y> @every", "one: a < b & c [1]."]
SAFE_TEXT = "See click (http://evil.example) &lt;!channel&gt; &lt;http://x|y&gt; @everyone: a &lt; b &amp; c [1]."


@pytest.mark.parametrize("streaming", [False, True], ids=["chat.update", "chat streaming API"])
async def test_a_hostile_answer_is_escaped_and_its_links_show_their_targets(
    fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path, streaming: bool
) -> None:
    fake_slack = await FakeSlack(streaming=streaming).start()
    release = threading.Event()
    fake_llm.script.append(Reply(tokens=HOSTILE_TOKENS, hold=release))  # held after "See [click](http://ev"
    try:
        data, knowledge = indexed_copy(indexed_settings, tmp_path)
        settings = slack_settings(data, knowledge, fake_llm.base_url, fake_slack, bot={"answer_mode": "generative"})
        async with teambot(settings):
            event = await mention(fake_slack, ON_CALL_QUESTION)
            calls = lambda: fake_slack.called("chat.startStream") + fake_slack.called("chat.appendStream") + fake_slack.called("chat.update")
            await until(lambda: any("See" in (c.params.get("markdown_text") or c.params.get("text") or "") for c in calls()), "the first words")
            release.set()
            [answer] = await until(lambda: final_answers(fake_slack, CHANNEL, event["ts"]), "the answer")
    finally:
        release.set()
        await fake_slack.stop()
    sent = [c.params.get("markdown_text") or c.params.get("text") or "" for name in ("chat.startStream", "chat.appendStream", "chat.stopStream", "chat.update")
            for c in fake_slack.called(name)]  # fmt: skip
    assert not [s for s in sent if "<!" in s or "<http" in s or "[click" in s or "y>" in s]  # never a ping or a masked link, not even for a moment
    assert (answer["text"] if streaming else answer["blocks"][0]["text"]["text"]) == SAFE_TEXT


@pytest.mark.parametrize("streaming", [False, True], ids=["chat.update", "chat streaming API"])
async def test_a_capable_models_answer_and_its_refusal_reach_slack_as_written(indexed_settings: Settings, tmp_path: Path, streaming: bool) -> None:
    """The replay model (bot.evaluation.replay) writes as a capable model does: its accepted answer
    stays the message, and its honest "the documents don't say" stays a refusal, without quotes."""
    fake = await FakeSlack(streaming=streaming).start()
    answer = "Within 5 minutes, even if you can't start work on it yet [oncall-guide.md]."
    stipend = "What is the on-call stipend amount in euros?"
    refusal = "The documents don't give the stipend amount; the on-call guide only says engineers receive a stipend for each week on call [oncall-guide.md]."
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    try:
        with ReplayModel() as replay:
            replay.answer("How quickly do I have to acknowledge a page?", answer)
            replay.answer(stipend, refusal)
            async with teambot(slack_settings(data, knowledge, replay.base_url, fake)):
                asked = await mention(fake, "How quickly do I have to acknowledge a page?")
                [accepted] = await until(lambda: final_answers(fake, CHANNEL, asked["ts"]), "the accepted answer")
                refused_event = await mention(fake, stipend)
                [refused] = await until(lambda: final_answers(fake, CHANNEL, refused_event["ts"]), "the refusal")
    finally:
        await fake.stop()
    assert re.fullmatch(r"Within 5 minutes, even if you can't start work on it yet (\[\d\])+\.", accepted["text"])  # the model's text, numbered
    assert "*Sources*" in block_text(accepted) and "> " in block_text(accepted)  # its sources, each with its quote
    assert refused["text"].startswith("The documents don't give the stipend amount") and "Here is what the documents say" not in refused["text"]
    sources = block_text(refused).split("*Searched (they do not answer this)*")[1]
    assert "oncall-guide.md" in sources and "> " not in sources  # listed as searched, without quotes of passages that do not answer
    log = AnswerLog(data / "answers.sqlite")
    try:
        logged = {a.question: a for a in log.recent(5)}
    finally:
        log.close()
    assert logged[stipend].mode == "generative" and "the documents do not answer the question" in logged[stipend].reason
