"""The real discord.py client against the fake Discord (tests/fake_discord.py): smoke tests of the fake itself."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import discord
import discord.gateway
import discord.http
import pytest
import yarl
from discord import app_commands

from tests.fake_discord import APP_ID, BOT_ID, BOT_TOKEN, CHANNEL_ID, EPHEMERAL, GUILD_ID, LOADING, MEMBER_PERMISSIONS, FakeDiscord
from tests.proc import async_wait_for

USER = 310_000_000_000_000_001
T = TypeVar("T")
P = ParamSpec("P")


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = await FakeDiscord().start()
    yield server
    await server.stop()


@pytest.fixture
def pointed_at_fake(fake: FakeDiscord) -> Iterator[None]:
    """discord.py keeps where Discord is in two class attributes: set for the test, then restored."""
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    yield
    discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


@dataclass
class Bot:
    client: discord.Client
    tree: app_commands.CommandTree[discord.Client]
    inbox: asyncio.Queue[discord.Message] = field(default_factory=asyncio.Queue)  # messages from people


@pytest.fixture
async def bot(fake: FakeDiscord, pointed_at_fake: None) -> AsyncIterator[Bot]:
    intents = discord.Intents.none()
    intents.guilds = intents.guild_messages = intents.dm_messages = intents.message_content = True
    # READY fires guild_ready_timeout (default 2 s) after the last GUILD_CREATE; shortened to keep tests fast.
    client = discord.Client(intents=intents, guild_ready_timeout=0.1)
    bot = Bot(client, app_commands.CommandTree(client))

    @client.event
    async def on_message(message: discord.Message) -> None:
        if message.author.id != BOT_ID:  # the bot's own messages come back over the gateway too
            await bot.inbox.put(message)

    await client.login(BOT_TOKEN)
    connection = asyncio.create_task(client.connect())
    await asyncio.wait_for(client.wait_until_ready(), 10)
    yield bot
    await client.close()
    await asyncio.wait_for(connection, 10)


def outcome() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


async def settles(awaitable: Awaitable[T], timeout_s: float = 10) -> T:
    return await asyncio.wait_for(awaitable, timeout_s)


def reporting(future: asyncio.Future[Any]) -> Callable[[Callable[P, Coroutine[Any, Any, Any]]], Callable[P, Coroutine[Any, Any, None]]]:
    """Wraps a command callback so that its result or exception settles ``future`` (the tree would only log it)."""

    def wrap(callback: Callable[P, Coroutine[Any, Any, Any]]) -> Callable[P, Coroutine[Any, Any, None]]:
        @functools.wraps(callback)  # keeps the signature: the command tree reads the parameters from it
        async def run(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                future.set_result(await callback(*args, **kwargs))
            except Exception as exc:  # noqa: BLE001 (handed to the test through the future)
                future.set_exception(exc)

        return run

    return wrap


until = functools.partial(async_wait_for, timeout=10, every=0.01)  # polls until truthy; fails naming what it waited for


async def test_ready_gives_the_bot_user_and_the_guild(fake: FakeDiscord, bot: Bot) -> None:
    client = bot.client
    assert fake.ready.is_set() and fake.identifies == 1
    assert client.user is not None and client.user.id == BOT_ID and client.user.bot
    assert client.application_id == APP_ID
    guild = client.get_guild(GUILD_ID)
    assert guild is not None and not guild.unavailable and guild.me is not None
    channel = client.get_channel(CHANNEL_ID)
    assert isinstance(channel, discord.TextChannel) and channel.guild == guild
    assert channel.permissions_for(guild.me).send_messages
    assert fake.intents == client.intents.value
    assert [c.path for c in fake.calls] == ["/users/@me", "/oauth2/applications/@me"]


async def test_a_slash_command_defers_edits_and_follows_up(fake: FakeDiscord, bot: Bot) -> None:
    done = outcome()

    @bot.tree.command(name="ask", description="Ask a question")
    @reporting(done)
    async def ask(interaction: discord.Interaction, question: str) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.edit_original_response(content="Looking…")
        await interaction.edit_original_response(content=f"You asked: {question}")
        await interaction.followup.send("Sources: oncall-guide.md")

    synced = await bot.tree.sync()
    assert [c.name for c in synced] == ["ask"] and fake.commands[None][0]["id"] == str(synced[0].id)

    payload = await fake.slash_command(
        "ask", [{"type": 3, "name": "question", "value": "Who is on call?"}], user_id=USER, permissions=MEMBER_PERMISSIONS
    )
    await settles(done)

    record = fake.interaction(payload["token"])
    assert [c["type"] for c in record["callbacks"]] == [5]
    original = record["original"]
    assert original["content"] == "You asked: Who is on call?" and not original["flags"] & LOADING
    assert original["interaction_token"] == payload["token"]
    assert [m["content"] for m in record["followups"]] == ["Sources: oncall-guide.md"]
    assert [m["content"] for m in fake.messages[CHANNEL_ID]] == ["You asked: Who is on call?", "Sources: oncall-guide.md"]
    webhook = f"/webhooks/{APP_ID}/{payload['token']}"
    assert len(fake.called("PATCH", f"{webhook}/messages/@original")) == 2
    assert [c.query.get("wait") for c in fake.called("POST", webhook)] == ["1"]


async def test_a_button_click_reaches_the_view_and_gets_an_ephemeral_answer(fake: FakeDiscord, bot: Bot) -> None:
    clicked = outcome()

    class Feedback(discord.ui.View):
        @discord.ui.button(label="Helpful", custom_id="feedback:up")
        async def up(self, interaction: discord.Interaction, button: discord.ui.Button[Feedback]) -> None:
            await interaction.response.send_message("Thanks for the feedback!", ephemeral=True)
            clicked.set_result(interaction.user.id)

    channel = bot.client.get_channel(CHANNEL_ID)
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("An answer", view=Feedback(timeout=None))
    message = fake.find(CHANNEL_ID, sent.id)
    assert message is not None and message["components"][0]["components"][0]["custom_id"] == "feedback:up"

    payload = await fake.click("feedback:up", user_id=USER, message=message, permissions=MEMBER_PERMISSIONS)
    assert await settles(clicked) == USER
    record = fake.interaction(payload["token"])
    assert [c["type"] for c in record["callbacks"]] == [4]
    assert record["original"]["content"] == "Thanks for the feedback!" and record["original"]["flags"] & EPHEMERAL
    history = [m.content async for m in channel.history(limit=10)]
    assert history == ["An answer"]  # ephemeral messages are not in the channel's history


async def test_a_429_is_waited_out_and_the_edit_lands(fake: FakeDiscord, bot: Bot) -> None:
    done = outcome()
    retry_after = 0.5

    @bot.tree.command(name="slow", description="Edits once")
    @reporting(done)
    async def slow(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.edit_original_response(content="Finally")

    fake.rate_limit("PATCH", r"/messages/@original$", times=1, retry_after=retry_after)
    payload = await fake.slash_command("slow", [], user_id=USER, permissions=MEMBER_PERMISSIONS)
    await settles(done)

    patches = fake.called("PATCH", f"/webhooks/{APP_ID}/{payload['token']}/messages/@original")
    assert [c.status for c in patches] == [429, 200]
    assert patches[1].at - patches[0].at >= retry_after * 0.9
    assert fake.interaction(payload["token"])["original"]["content"] == "Finally"


async def test_a_dropped_connection_is_resumed_and_commands_still_work(fake: FakeDiscord, bot: Bot) -> None:
    done = outcome()

    @bot.tree.command(name="ping", description="Pong")
    @reporting(done)
    async def ping(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("pong")

    channel = bot.client.get_channel(CHANNEL_ID)
    assert isinstance(channel, discord.TextChannel)
    await fake.drop_connection()
    # A message sent while the client reconnects: its MESSAGE_CREATE is replayed on RESUME if it was missed.
    said = await channel.send("said while reconnecting")
    await asyncio.wait_for(fake.resumed.wait(), 10)
    assert (fake.identifies, fake.resumes) == (1, 1)
    await until(lambda: any(m.id == said.id for m in bot.client.cached_messages), "the bot's own message over the gateway")

    payload = await fake.slash_command("ping", [], user_id=USER, permissions=MEMBER_PERMISSIONS)
    await settles(done)
    record = fake.interaction(payload["token"])
    assert [c["type"] for c in record["callbacks"]] == [4] and record["original"]["content"] == "pong"


async def test_messages_mentions_dms_replies_and_threads(fake: FakeDiscord, bot: Bot) -> None:
    client = bot.client
    posted = await fake.user_message("what is the on-call policy?", user_id=USER, mention_bot=True)
    message = await settles(bot.inbox.get())
    assert message.content == f"<@{BOT_ID}> what is the on-call policy?" and str(message.id) == posted["id"]
    assert client.user is not None and client.user.mentioned_in(message)
    assert isinstance(message.channel, discord.TextChannel) and message.guild is not None and message.guild.id == GUILD_ID
    assert isinstance(message.author, discord.Member) and message.author.id == USER

    reply = await message.reply("Here is the policy", mention_author=False)
    stored = fake.find(CHANNEL_ID, reply.id)
    assert stored is not None and stored["type"] == 19 and stored["message_reference"]["message_id"] == posted["id"]
    assert stored["mentions"] == []  # mention_author=False
    assert [m.content async for m in message.channel.history(limit=5)] == ["Here is the policy", posted["content"]]

    thread = await message.create_thread(name="on-call policy")
    assert thread.id == message.id and thread.parent_id == CHANNEL_ID
    await thread.send("Details in the thread")
    assert [m["type"] for m in fake.messages[thread.id]] == [21, 0]  # Discord's thread starter message first
    assert fake.messages[thread.id][-1]["content"] == "Details in the thread"
    await until(lambda: client.get_channel(thread.id), "THREAD_CREATE to reach discord.py")

    in_thread = await fake.user_message("and on weekends?", user_id=USER, channel_id=thread.id)
    message = await settles(bot.inbox.get())
    assert str(message.id) == in_thread["id"] and isinstance(message.channel, discord.Thread)

    dm = await fake.user_message("hello in private", user_id=USER, dm=True)
    message = await settles(bot.inbox.get())
    assert isinstance(message.channel, discord.DMChannel) and message.guild is None and message.content == "hello in private"
    await message.channel.send("Hi!")
    assert [m["content"] for m in fake.messages[int(dm["channel_id"])]] == ["hello in private", "Hi!"]


async def test_an_attachment_option_can_be_read(fake: FakeDiscord, bot: Bot) -> None:
    done = outcome()
    docs = app_commands.Group(name="kb", description="Knowledge base")

    @docs.command(name="upload", description="Add a document")
    @reporting(done)
    async def upload(interaction: discord.Interaction, file: discord.Attachment) -> bytes:
        await interaction.response.defer(ephemeral=True, thinking=True)
        data = await file.read()
        await interaction.followup.send(f"Added {file.filename} ({file.size} bytes)", ephemeral=True)
        return data

    bot.tree.add_command(docs)
    attachment = fake.add_attachment("notes.md", b"# Notes\nPage the secondary.\n", "text/markdown")
    options = [{"type": 1, "name": "upload", "options": [{"type": 11, "name": "file", "value": attachment["id"]}]}]
    payload = await fake.slash_command(
        "kb", options, user_id=USER, permissions=MEMBER_PERMISSIONS, resolved={"attachments": {attachment["id"]: attachment}}
    )
    assert await settles(done) == b"# Notes\nPage the secondary.\n"
    assert len(fake.downloads) == 1

    record = fake.interaction(payload["token"])
    # The follow-up after a deferral replaces the "thinking…" message, which stays ephemeral.
    assert record["original"] is record["followups"][0]
    assert record["original"]["content"] == "Added notes.md (28 bytes)" and record["original"]["flags"] == EPHEMERAL


async def test_discords_rules_are_enforced(fake: FakeDiscord, bot: Bot) -> None:
    channel = bot.client.get_channel(CHANNEL_ID)
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(discord.HTTPException) as too_long:
        await channel.send("x" * 2001)
    assert (too_long.value.status, too_long.value.code) == (400, 50035)

    done = outcome()

    @bot.tree.command(name="rude", description="Follows up without answering first")
    @reporting(done)
    async def rude(interaction: discord.Interaction) -> None:
        await interaction.followup.send("too early")

    await fake.slash_command("rude", [], user_id=USER, permissions=MEMBER_PERMISSIONS)
    with pytest.raises(discord.NotFound) as early:
        await settles(done)
    assert early.value.code == 10015  # Unknown Webhook: the token works only once the interaction is answered

    late = outcome()

    @bot.tree.command(name="late", description="Answers after the deadline")
    @reporting(late)
    async def too_late(interaction: discord.Interaction) -> None:
        await interaction.response.defer()

    fake.interaction_deadline_s = -1.0  # every answer is late (Discord allows 3 s)
    await fake.slash_command("late", [], user_id=USER, permissions=MEMBER_PERMISSIONS)
    with pytest.raises(discord.NotFound) as unknown:
        await settles(late)
    assert unknown.value.code == 10062  # Unknown interaction
