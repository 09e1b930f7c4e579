"""The Discord adapter end to end: the real discord.py client against a local fake Discord (tests/fake_discord.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import discord
import discord.gateway
import discord.http
import pytest

from bot.runtime import knowledge_runtime
from config.errors import ConfigError
from config.settings import Settings
from inference.client import Endpoint
from rag.operations.run_history import RunHistory
from tests.conftest import indexed_copy, make_settings, teambot
from tests.fake_discord import (
    ADMIN_PERMISSIONS,
    APP_ID,
    BOT_ID,
    BOT_TOKEN,
    CHANNEL_ID,
    EPHEMERAL,
    GUILD_ID,
    MEMBER_PERMISSIONS,
    FakeDiscord,
)
from tests.fake_llm import FakeLLM, Reply
from tests.proc import async_wait_for

ON_CALL_QUESTION = "Who gets paged if the primary on-call does not acknowledge a page?"
USER = 310_000_000_000_000_001
ADMIN = 310_000_000_000_000_002
TEAMBOT = str(Path(sys.executable).parent / "teambot")


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    server = await FakeDiscord().start()
    yield server
    await server.stop()
    discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved  # the adapter points discord.py at the fake


def discord_settings(data_dir: Path, knowledge: Path, llm_url: str, fake: FakeDiscord, **extra: Any) -> Settings:
    platform = {"update_interval_s": 0.2, "guild_ids": [GUILD_ID], **extra.pop("discord", {})}
    return make_settings(
        data_dir, knowledge, inference={"backend": "external", "base_url": llm_url}, discord=platform,
        DISCORD_BOT_TOKEN=BOT_TOKEN, DISCORD_API_URL=fake.api_base, DISCORD_GATEWAY_URL=fake.gateway_url, http_port=0, **extra,
    )  # fmt: skip


until = partial(async_wait_for, timeout=300, every=0.02)  # polls until truthy; fails naming what it waited for


def buttons(message: dict[str, Any] | None) -> list[str]:
    return [c["custom_id"] for row in (message or {}).get("components") or [] for c in row["components"]]


def question(text: str) -> list[dict[str, Any]]:
    return [{"type": 3, "name": "question", "value": text}]


def finished(fake: FakeDiscord, token: str) -> dict[str, Any] | None:
    """The last message of an interaction's answer, once it carries the feedback buttons."""
    record = fake.interaction(token)
    last = (record["followups"] or [record["original"]])[-1]
    return last if buttons(last) else None


def bot_messages(fake: FakeDiscord, channel_id: int) -> list[dict[str, Any]]:
    return [m for m in fake.messages[channel_id] if m["author"]["id"] == str(BOT_ID) and m["type"] in (0, 19)]


async def test_ask_is_deferred_edited_as_it_grows_and_ends_with_sources_and_buttons(
    fake_discord: FakeDiscord, indexed_settings: Settings, llamacpp_endpoint: Endpoint, tmp_path: Path
) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    async with teambot(discord_settings(data, knowledge, llamacpp_endpoint.base_url, fake_discord)) as service:
        assert service.platforms == ["Discord"]
        assert [c["name"] for c in fake_discord.commands[GUILD_ID]] == ["ask", "kb"]
        payload = await fake_discord.slash_command("ask", question(ON_CALL_QUESTION), user_id=USER, permissions=MEMBER_PERMISSIONS)
        answer = await until(lambda: finished(fake_discord, payload["token"]), "the answer")

    record = fake_discord.interaction(payload["token"])
    assert [c["type"] for c in record["callbacks"]] == [5]  # deferred, within the fake's 3 s deadline
    edits = fake_discord.called("PATCH", f"/webhooks/{APP_ID}/{payload['token']}/messages/@original")
    growing = [c.json["content"] for c in edits if c.json["content"].endswith("▌")]
    assert growing and all(len(a) <= len(b) for a, b in zip(growing, growing[1:]))
    assert "**Sources**" in answer["content"] and "oncall-guide.md" in answer["content"]
    assert [b.split(":")[2] for b in buttons(answer)] == ["up", "down"]
    assert all(c.json["allowed_mentions"]["parse"] == [] for c in edits)  # an answer never pings anyone


async def test_a_mention_gets_a_reply_and_a_thread_follow_up_uses_the_thread(
    fake_discord: FakeDiscord, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path
) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    fake_llm.script.extend([Reply(tokens=["The secondary", " [1]."]), Reply(tokens=["The manager", " [1]."]), Reply(tokens=["Paged [1]."])])
    settings = discord_settings(data, knowledge, fake_llm.base_url, fake_discord, discord={"reply_in_thread": True})
    async with teambot(settings):
        asked = await fake_discord.user_message(ON_CALL_QUESTION, user_id=USER, mention_bot=True)
        thread_id = int(asked["id"])  # a thread made from a message has the message's id
        await until(lambda: any(buttons(m) for m in bot_messages(fake_discord, thread_id)), "the answer in its thread")
        await fake_discord.user_message("And after 30 minutes?", user_id=USER, channel_id=thread_id)
        await until(lambda: sum(bool(buttons(m)) for m in bot_messages(fake_discord, thread_id)) == 2, "the follow-up's answer")
        await fake_discord.user_message("unrelated chatter in the channel", user_id=USER)

    history = fake_llm.requests[1]["messages"]
    assert [m["content"] for m in history[1:]] == [ON_CALL_QUESTION, "The secondary [1].", "And after 30 minutes?"]
    assert len(fake_llm.requests) == 2


async def test_a_mention_is_answered_as_a_reply_by_default_and_dms_are_answered_where_allowed(
    fake_discord: FakeDiscord, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path
) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    async with teambot(discord_settings(data, knowledge, fake_llm.base_url, fake_discord, discord={"allow_dms": True})):
        asked = await fake_discord.user_message("How many approvals does a pull request need?", user_id=USER, mention_bot=True)
        [reply] = await until(lambda: [m for m in bot_messages(fake_discord, CHANNEL_ID) if buttons(m)], "the reply")
        dm = await fake_discord.user_message("When does the release train leave?", user_id=USER, dm=True)
        dm_channel = int(dm["channel_id"])
        [answer] = await until(lambda: [m for m in bot_messages(fake_discord, dm_channel) if buttons(m)], "the DM answer")
    assert reply["message_reference"]["message_id"] == asked["id"] and reply["mentions"] == []
    assert "code-review.docx" in reply["content"] and "release-process.rst" in answer["content"]


async def test_long_answers_continue_in_more_messages(fake_discord: FakeDiscord, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    fake_llm.script.append(Reply(tokens=["The secondary on-call engineer is paged after fifteen minutes [1]. "] * 90))
    async with teambot(discord_settings(data, knowledge, fake_llm.base_url, fake_discord)):
        payload = await fake_discord.slash_command("ask", question(ON_CALL_QUESTION), user_id=USER, permissions=MEMBER_PERMISSIONS)
        await until(lambda: finished(fake_discord, payload["token"]), "the long answer")
    record = fake_discord.interaction(payload["token"])
    pages = [record["original"]["content"]] + [m["content"] for m in record["followups"]]
    assert len(pages) >= 3 and all(len(p) <= 2000 for p in pages)
    assert all(p.count("[") == p.count("]") for p in pages)  # no citation cut in two
    assert pages[-1].split("**Sources**")[1].strip().startswith("[1] On-call guide")


async def test_a_429_is_waited_out_and_the_answer_completes(fake_discord: FakeDiscord, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    fake_discord.rate_limit("PATCH", r"/messages/@original$", times=2, retry_after=0.5)
    async with teambot(discord_settings(data, knowledge, fake_llm.base_url, fake_discord)):
        payload = await fake_discord.slash_command("ask", question(ON_CALL_QUESTION), user_id=USER, permissions=MEMBER_PERMISSIONS)
        answer = await until(lambda: finished(fake_discord, payload["token"]), "the answer")
    patches = fake_discord.called("PATCH", f"/webhooks/{APP_ID}/{payload['token']}/messages/@original")
    assert [c.status for c in patches[:3]] == [429, 429, 200]
    assert patches[1].at - patches[0].at >= 0.45 and patches[2].at - patches[1].at >= 0.45
    assert "Hello from the fake [1]." in answer["content"]


async def test_a_dropped_gateway_is_resumed_and_answers_go_on(fake_discord: FakeDiscord, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    async with teambot(discord_settings(data, knowledge, fake_llm.base_url, fake_discord)):
        first = await fake_discord.slash_command("ask", question(ON_CALL_QUESTION), user_id=USER, permissions=MEMBER_PERMISSIONS)
        await until(lambda: finished(fake_discord, first["token"]), "the first answer")
        await fake_discord.drop_connection()
        await asyncio.wait_for(fake_discord.resumed.wait(), 30)
        second = await fake_discord.slash_command("ask", question("When does the release train leave?"), user_id=USER, permissions=MEMBER_PERMISSIONS)
        answer = await until(lambda: finished(fake_discord, second["token"]), "the answer after the resume")
    assert (fake_discord.identifies, fake_discord.resumes) == (1, 1)
    assert "release-process.rst" in answer["content"]


async def test_feedback_buttons_are_stored(fake_discord: FakeDiscord, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    async with teambot(discord_settings(data, knowledge, fake_llm.base_url, fake_discord)) as service:
        payload = await fake_discord.slash_command("ask", question(ON_CALL_QUESTION), user_id=USER, permissions=MEMBER_PERMISSIONS)
        answer = await until(lambda: finished(fake_discord, payload["token"]), "the answer")
        up, down = buttons(answer)
        clicks = [await fake_discord.click(up, user_id=USER, message=answer, permissions=MEMBER_PERMISSIONS),
                  await fake_discord.click(down, user_id=ADMIN, message=answer, permissions=MEMBER_PERMISSIONS)]  # fmt: skip
        await until(lambda: all(fake_discord.interaction(c["token"])["original"] for c in clicks), "the thanks")
        [logged] = service.answers.recent()
    thanks = fake_discord.interaction(clicks[0]["token"])["original"]
    assert thanks["content"] == "Thanks for the feedback!" and thanks["flags"] & EPHEMERAL
    assert (logged.platform, logged.question, logged.up, logged.down) == ("discord", ON_CALL_QUESTION, 1, 1)


async def test_the_channel_takes_over_when_the_interaction_token_is_old(
    fake_discord: FakeDiscord, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bot.discord.streaming

    monkeypatch.setattr(bot.discord.streaming, "INTERACTION_TOKEN_LIFE", dt.timedelta(0))  # every token counts as about to expire
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    async with teambot(discord_settings(data, knowledge, fake_llm.base_url, fake_discord)):
        await fake_discord.slash_command("ask", question(ON_CALL_QUESTION), user_id=USER, permissions=MEMBER_PERMISSIONS)
        [answer] = await until(lambda: [m for m in bot_messages(fake_discord, CHANNEL_ID) if buttons(m)], "the answer in the channel")
    assert "oncall-guide.md" in answer["content"]


# --- /kb -------------------------------------------------------------------------------


@pytest.fixture
async def kb_teambot(fake_discord: FakeDiscord, fake_llm: FakeLLM, settings: Settings) -> AsyncIterator[Settings]:
    with knowledge_runtime(settings) as runtime:
        runtime.indexer.run()
    configured = discord_settings(settings.data_dir, settings.rag.knowledge_dir, fake_llm.base_url, fake_discord, rag={"max_file_mb": 0.05})
    async with teambot(configured):
        yield configured


async def kb(fake: FakeDiscord, sub: str, options: list[dict[str, Any]], *, user: int, permissions: int, resolved: dict | None = None) -> str:
    """Runs /kb SUB and returns the (ephemeral) reply's text."""
    payload = await fake.slash_command("kb", [{"type": 1, "name": sub, "options": options}], user_id=user, permissions=permissions, resolved=resolved)
    reply = await until(lambda: (r := fake.interaction(payload["token"])["original"]) and not r["flags"] & 128 and r, f"/kb {sub}'s reply")
    assert reply["flags"] & EPHEMERAL
    return reply["content"]


async def test_kb_reindex_queues_a_run(fake_discord: FakeDiscord, kb_teambot: Settings) -> None:
    history = RunHistory(kb_teambot.data_dir / "index-runs.sqlite")
    try:
        await until(lambda: any(r.state == "done" for r in history.recent()), "the run at start")
        (kb_teambot.rag.knowledge_dir / "faq.txt").unlink()
        assert await kb(fake_discord, "reindex", [], user=USER, permissions=MEMBER_PERMISSIONS) == "Sorry, only knowledge base admins can do that."
        reply = await kb(fake_discord, "reindex", [], user=ADMIN, permissions=ADMIN_PERMISSIONS)
        assert reply.startswith(("Re-index started (request", "Re-index queued (request"))
        run = await until(lambda: next((r for r in history.recent() if "discord" in r.trigger and r.state == "done"), None), "the requested run")
        assert run.indexed[0].deleted == 1
    finally:
        history.close()


def upload(fake: FakeDiscord, name: str, data: bytes, content_type: str, collection: str | None = None) -> tuple[list[dict[str, Any]], dict]:
    attachment = fake.add_attachment(name, data, content_type)
    options = [{"type": 11, "name": "file", "value": attachment["id"]}]
    if collection:
        options.append({"type": 3, "name": "collection", "value": collection})
    return options, {"attachments": {attachment["id"]: attachment}}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


async def test_an_admin_upload_is_indexed_and_then_answers(fake_discord: FakeDiscord, kb_teambot: Settings) -> None:
    doc = b"# Bike storage\n\nBicycles go in the basement bike room, behind the blue door.\n"
    options, resolved = upload(fake_discord, "bike-storage.md", doc, "text/markdown")
    reply = await kb(fake_discord, "upload", options, user=ADMIN, permissions=ADMIN_PERMISSIONS, resolved=resolved)
    assert reply.startswith("Added **bike-storage.md** in `default`:") and "chunks indexed" in reply
    payload = await fake_discord.slash_command("ask", question("Where do bicycles go?"), user_id=USER, permissions=MEMBER_PERMISSIONS)
    answer = await until(lambda: finished(fake_discord, payload["token"]), "the answer")
    assert "bike-storage.md" in answer["content"].split("**Sources**")[1]


async def test_non_admins_are_refused_ephemerally_and_nothing_changes(fake_discord: FakeDiscord, kb_teambot: Settings) -> None:
    before = snapshot(kb_teambot.rag.knowledge_dir)
    options, resolved = upload(fake_discord, "notes.md", b"# Notes\n\nplans\n", "text/markdown")
    assert await kb(fake_discord, "upload", options, user=USER, permissions=MEMBER_PERMISSIONS, resolved=resolved) == "Sorry, only knowledge base admins can do that."
    assert await kb(fake_discord, "remove", [{"type": 3, "name": "name", "value": "faq.txt"}], user=USER, permissions=MEMBER_PERMISSIONS) == (
        "Sorry, only knowledge base admins can do that."
    )
    assert snapshot(kb_teambot.rag.knowledge_dir) == before and fake_discord.downloads == []


@pytest.mark.parametrize(
    ("name", "data", "content_type", "expected"),
    [
        ("huge.md", b"# Huge\n\n" + b"word " * 20000, "text/markdown", "⛔ huge.md is 0.1 MB, over the limit of 0.05 MB"),
        ("broken.pdf", b"%PDF-1.7 not a pdf", "application/pdf", "⛔ broken.pdf: not a readable PDF"),
        ("photo.png", b"\x89PNG\r\n\x1a\n", "image/png", "⛔ photo.png: teambot cannot read '.png'"),
    ],
)
async def test_bad_uploads_get_a_clear_reply(fake_discord: FakeDiscord, kb_teambot: Settings, name: str, data: bytes, content_type: str, expected: str) -> None:
    before = snapshot(kb_teambot.rag.knowledge_dir)
    options, resolved = upload(fake_discord, name, data, content_type)
    reply = await kb(fake_discord, "upload", options, user=ADMIN, permissions=ADMIN_PERMISSIONS, resolved=resolved)
    assert reply.startswith(expected) and reply.endswith("Nothing was changed.")
    assert snapshot(kb_teambot.rag.knowledge_dir) == before


async def test_kb_list_and_remove(fake_discord: FakeDiscord, kb_teambot: Settings) -> None:
    listing = await kb(fake_discord, "list", [], user=ADMIN, permissions=ADMIN_PERMISSIONS)
    assert listing.startswith("**7 documents in `default`**") and "faq.txt:" in listing
    removed = await kb(fake_discord, "remove", [{"type": 3, "name": "name", "value": "faq.txt"}], user=ADMIN, permissions=ADMIN_PERMISSIONS)
    assert removed.startswith("Removed **faq.txt** from `default`")
    assert not (kb_teambot.rag.knowledge_dir / "faq.txt").exists()
    missing = await kb(fake_discord, "remove", [{"type": 3, "name": "name", "value": "nope.md"}], user=ADMIN, permissions=ADMIN_PERMISSIONS)
    assert missing.startswith("⛔ collection 'default' has no document 'nope.md'")


async def test_invite_url_asks_discord_for_the_application(fake_discord: FakeDiscord, settings: Settings) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEAMBOT_", "DISCORD_"))} | {
        "TEAMBOT_DATA_DIR": str(settings.data_dir), "DISCORD_BOT_TOKEN": BOT_TOKEN, "DISCORD_API_URL": fake_discord.api_base,
    }  # fmt: skip
    process = await asyncio.create_subprocess_exec(TEAMBOT, "discord", "invite-url", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().strip() == f"https://discord.com/oauth2/authorize?client_id={APP_ID}&scope=bot+applications.commands&permissions=309237713920"



async def test_an_answer_the_guard_rejects_ends_as_the_extractive_answer(
    fake_discord: FakeDiscord, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path
) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    release = threading.Event()
    fake_llm.script.append(Reply(tokens=["Bob from", " accounting is", " paged after", " 45 minutes."], hold=release))
    try:
        async with teambot(discord_settings(data, knowledge, fake_llm.base_url, fake_discord)):
            payload = await fake_discord.slash_command("ask", question(ON_CALL_QUESTION), user_id=USER, permissions=MEMBER_PERMISSIONS)
            edits = lambda: fake_discord.called("PATCH", f"/webhooks/{APP_ID}/{payload['token']}/messages/@original")  # noqa: E731
            await until(lambda: any("Bob" in c.json["content"] for c in edits()), "the model's first words in the answer")
            release.set()
            answer = await until(lambda: finished(fake_discord, payload["token"]), "the answer")
    finally:
        release.set()
    assert "Bob" not in answer["content"] and "45" not in answer["content"]
    assert answer["content"].startswith("Here is what the documents say:") and "On-call guide [1]: “" in answer["content"]
    sources = answer["content"].split("**Sources**")[1]
    assert "oncall-guide.md" in sources and "\n> " in sources  # each source with its quote


async def test_a_hostile_answer_shows_its_link_targets_and_pings_no_one(
    fake_discord: FakeDiscord, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path
) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    release = threading.Event()
    tokens = ["See [click](http://ev", "il.example) <!channel> <http://x|y> @every", "one @here <@310000000000000001>: a < b & c [1]."]
    fake_llm.script.append(Reply(tokens=tokens, hold=release))
    try:
        async with teambot(discord_settings(data, knowledge, fake_llm.base_url, fake_discord, bot={"answer_mode": "generative"})):
            payload = await fake_discord.slash_command("ask", question(ON_CALL_QUESTION), user_id=USER, permissions=MEMBER_PERMISSIONS)
            edits = lambda: fake_discord.called("PATCH", f"/webhooks/{APP_ID}/{payload['token']}/messages/@original")
            await until(lambda: any("See" in c.json["content"] for c in edits()), "the first words")
            release.set()
            answer = await until(lambda: finished(fake_discord, payload["token"]), "the answer")
    finally:
        release.set()
    text = answer["content"].split("\n\n**Sources**")[0]
    assert text == "See click (<http://evil.example>) <!channel> <http://x|y> @\u200beveryone @\u200bhere <@\u200b310000000000000001>: a < b & c [1]."
    assert not any("[click](" in c.json["content"] or "@everyone" in c.json["content"] for c in edits())
    assert (answer["mention_everyone"], answer["mentions"], answer["mention_roles"]) == (False, [], [])


# --- servers teambot does not serve ---------------------------------------------------


STRANGER_GUILD = 320_000_000_000_000_001
STRANGER = 320_000_000_000_000_002  # owns that server: Manage Server and every other permission there
STRANGER_NAME = "Stranger's server"
SECRET_QUESTION = "What is in the salary spreadsheet?"


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Discord: refused")]


async def test_a_strangers_server_is_refused_and_its_owner_is_no_admin(
    fake_discord: FakeDiscord, fake_llm: FakeLLM, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with knowledge_runtime(settings) as runtime:
        runtime.indexer.run()
    before = snapshot(settings.rag.knowledge_dir)
    lobby = await fake_discord.add_guild(STRANGER_GUILD, STRANGER_NAME, owner_id=STRANGER)
    configured = discord_settings(settings.data_dir, settings.rag.knowledge_dir, fake_llm.base_url, fake_discord, discord={"leave_other_guilds": False})
    async with teambot(configured):
        refused = []
        options, resolved = upload(fake_discord, "takeover.md", b"# Takeover\n\nAll your base.\n", "text/markdown")
        for name, opts, extra in [("kb", [{"type": 1, "name": "upload", "options": options}], resolved),
                                  ("kb", [{"type": 1, "name": "list", "options": []}], None),
                                  ("ask", question(SECRET_QUESTION), None)]:  # fmt: skip
            payload = await fake_discord.slash_command(name, opts, user_id=STRANGER, permissions=ADMIN_PERMISSIONS, channel_id=lobby, resolved=extra)
            refused.append(await until(lambda token=payload["token"]: fake_discord.interaction(token)["original"], f"/{name}'s refusal"))
        await fake_discord.user_message(SECRET_QUESTION, user_id=STRANGER, channel_id=lobby, mention_bot=True)
        await until(lambda: len(refusals(caplog)) == 4, "four refusals in the log")
        listing = await kb(fake_discord, "list", [], user=ADMIN, permissions=ADMIN_PERMISSIONS)  # the team's server is served as before
    assert [(r["content"], bool(r["flags"] & EPHEMERAL)) for r in refused] == [("Sorry, teambot does not serve this server.", True)] * 3
    assert bot_messages(fake_discord, lobby) == [] and fake_llm.requests == [] and fake_discord.downloads == []
    assert snapshot(settings.rag.knowledge_dir) == before and listing.startswith("**7 documents in `default`**")
    lines = refusals(caplog)
    assert all(f"server {STRANGER_GUILD} ({STRANGER_NAME!r}) from user {STRANGER}: not in discord.guild_ids" in line for line in lines)
    assert [line.split(" in server")[0] for line in lines] == ["Discord: refused a /kb command", "Discord: refused a /kb command",
                                                                "Discord: refused a /ask command", "Discord: refused a message"]  # fmt: skip
    assert not any("salary" in r.getMessage() or "Takeover" in r.getMessage() for r in caplog.records)  # where, never what


async def test_the_bot_leaves_servers_that_are_not_allowed(
    fake_discord: FakeDiscord, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    await fake_discord.add_guild(STRANGER_GUILD, STRANGER_NAME, owner_id=STRANGER)  # added while teambot was down
    async with teambot(discord_settings(data, knowledge, fake_llm.base_url, fake_discord)):
        await until(lambda: fake_discord.left_guilds == [STRANGER_GUILD], "leaving the server it found at start")
        await fake_discord.add_guild(STRANGER_GUILD + 1, "Another one", owner_id=STRANGER)  # someone adds it now
        await until(lambda: fake_discord.left_guilds == [STRANGER_GUILD, STRANGER_GUILD + 1], "leaving the server it was added to")
        payload = await fake_discord.slash_command("ask", question(ON_CALL_QUESTION), user_id=USER, permissions=MEMBER_PERMISSIONS)
        await until(lambda: finished(fake_discord, payload["token"]), "an answer in the team's server")
    leaving = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Discord: leaving server")]
    assert leaving == [f"Discord: leaving server {STRANGER_GUILD} ({STRANGER_NAME!r}): not in discord.guild_ids (discord.leave_other_guilds is on)",
                       f"Discord: leaving server {STRANGER_GUILD + 1} ('Another one'): not in discord.guild_ids (discord.leave_other_guilds is on)"]  # fmt: skip
    assert fake_discord.commands.get(None) is None and STRANGER_GUILD not in fake_discord.commands  # commands live only in the team's server


async def test_direct_messages_get_a_short_refusal_unless_allowed(
    fake_discord: FakeDiscord, fake_llm: FakeLLM, indexed_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    async with teambot(discord_settings(data, knowledge, fake_llm.base_url, fake_discord)):
        dm = await fake_discord.user_message(SECRET_QUESTION, user_id=USER, dm=True)
        [reply] = await until(lambda: bot_messages(fake_discord, int(dm["channel_id"])), "the refusal")
    assert reply["content"] == "Sorry, I answer only in my team's Discord server: direct messages are off."
    assert fake_llm.requests == []
    assert refusals(caplog) == [f"Discord: refused a message in a direct message from user {USER}: discord.allow_dms is off"]


async def test_discord_without_guild_ids_is_a_clear_config_error(fake_discord: FakeDiscord, fake_llm: FakeLLM, settings: Settings) -> None:
    configured = discord_settings(settings.data_dir, settings.rag.knowledge_dir, fake_llm.base_url, fake_discord, discord={"guild_ids": []})
    with pytest.raises(ConfigError, match=r"discord\.guild_ids is empty") as error:
        async with teambot(configured):
            pass
    assert "Copy Server ID" in str(error.value.hint) and fake_discord.identifies == 0
