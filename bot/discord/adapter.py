"""The Discord front end: discord.py 2.x, slash commands (/ask, /kb) and mentions.

Interactions are deferred first (Discord wants an answer within 3 s), then answered through
the core. Payloads become typed values once (bot.discord.messages); rendering is pure
(bot.discord.render). One error boundary per interaction or message. discord.py handles the
gateway (heartbeats, resume after a disconnect) and REST rate limits; user text and tokens
are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from contextlib import aclosing
from typing import Any

import discord
import yarl
from discord import app_commands

from bot.answer_log import AnswerLog
from bot.core import AnswerDelta, AnswerEngine
from bot.discord import messages as msg
from bot.discord.render import thread_name
from bot.discord.streaming import ChannelDestination, DiscordAnswer, Destination, InteractionDestination
from bot.prompt import Turn
from config.errors import ConfigError, TeambotError
from config.settings import DEFAULT_COLLECTION, Settings
from bot.status import request_reindex
from rag.library import KnowledgeLibrary, UploadError
from rag.scheduler import IndexScheduler

log = logging.getLogger(__name__)

PLATFORM = "discord"
READY_TIMEOUT_S = 60.0
HISTORY_MESSAGES = 50
SEEN_MESSAGES_MAX = 10_000
REFUSAL = "Sorry, only knowledge base admins can do that."
# What the bot needs in a server: read and answer, in channels and threads (docs: Permissions).
BOT_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    create_public_threads=True,
    read_message_history=True,
)
OAUTH_SCOPES = ("bot", "applications.commands")


def invite_url(application_id: int) -> str:
    return discord.utils.oauth_url(application_id, permissions=BOT_PERMISSIONS, scopes=OAUTH_SCOPES)


async def application_id(settings: Settings) -> int:
    """The bot's application ID, asked of Discord with DISCORD_BOT_TOKEN."""
    if settings.discord_bot_token is None:
        raise ConfigError("no application ID: give --client-id, or set DISCORD_BOT_TOKEN so teambot can ask Discord")
    point_discord_py_at(settings.discord_api_url, settings.discord_gateway_url)
    client = discord.Client(intents=discord.Intents.none())
    try:
        await client.login(settings.discord_bot_token.get_secret_value())
        return (await client.application_info()).id
    except discord.LoginFailure:
        raise ConfigError("Discord refused DISCORD_BOT_TOKEN", "copy the bot's token again (Developer Portal > Bot > Reset Token)") from None
    finally:
        await client.close()


def point_discord_py_at(api_url: str, gateway_url: str) -> None:
    """discord.py keeps its REST base and gateway in class attributes: the one place to change them."""
    discord.http.Route.BASE = api_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


class FeedbackButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"teambot:feedback:(?P<vote>up|down):(?P<answer>[0-9a-f]{32})"):
    """👍 / 👎 under an answer; works after restarts, since the answer id is in the button's custom_id."""

    def __init__(self, vote: str, answer_id: str) -> None:
        label, emoji = ("Helpful", "👍") if vote == "up" else ("Not helpful", "👎")
        super().__init__(discord.ui.Button(label=label, emoji=emoji, style=discord.ButtonStyle.secondary, custom_id=f"teambot:feedback:{vote}:{answer_id}"))
        self.vote, self.answer_id = vote, answer_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button[Any], match: re.Match[str]) -> FeedbackButton:
        return cls(match["vote"], match["answer"])

    async def callback(self, interaction: discord.Interaction) -> None:
        answers: AnswerLog = interaction.client.answers  # type: ignore[attr-defined]
        recorded = await asyncio.to_thread(answers.vote, self.answer_id, str(interaction.user.id), self.vote)  # type: ignore[arg-type]
        text = "Thanks for the feedback!" if recorded else "That answer is no longer on record, but thanks."
        await interaction.response.send_message(text, ephemeral=True)


def feedback_view(answer_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(FeedbackButton("up", answer_id))
    view.add_item(FeedbackButton("down", answer_id))
    return view


class _Client(discord.Client):
    def __init__(self, adapter: DiscordAdapter, intents: discord.Intents) -> None:
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none())
        self.adapter = adapter
        self.answers = adapter.answers
        self.tree = app_commands.CommandTree(self)
        self.tree.on_error = adapter.on_command_error  # type: ignore[assignment]

    async def setup_hook(self) -> None:
        self.add_dynamic_items(FeedbackButton)
        await self.adapter.sync_commands()

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(message)


class DiscordAdapter:
    def __init__(
        self, settings: Settings, engine: AnswerEngine, library: KnowledgeLibrary, answers: AnswerLog, scheduler: IndexScheduler | None = None
    ) -> None:
        if settings.discord_bot_token is None:
            raise ConfigError("Discord needs DISCORD_BOT_TOKEN", "set it in the environment")
        self._settings = settings
        self._engine = engine
        self._library = library
        self.answers = answers
        self._scheduler = scheduler
        intents = discord.Intents.default()
        intents.message_content = settings.discord.follow_ups  # privileged: only for thread follow-ups without a mention
        self.client = _Client(self, intents)
        self._register_commands(self.client.tree)
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._connection: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        point_discord_py_at(self._settings.discord_api_url, self._settings.discord_gateway_url)
        token = self._settings.discord_bot_token.get_secret_value()  # type: ignore[union-attr]
        try:
            await self.client.login(token)
        except discord.LoginFailure:
            raise ConfigError("Discord refused DISCORD_BOT_TOKEN", "copy the bot's token again (Developer Portal > Bot > Reset Token)") from None
        except (discord.HTTPException, OSError) as exc:
            raise TeambotError(f"cannot reach Discord at {self._settings.discord_api_url} ({type(exc).__name__})", "check the network, or DISCORD_API_URL") from None
        self._connection = asyncio.create_task(self.client.connect(reconnect=True), name="discord-gateway")
        ready = asyncio.create_task(self.client.wait_until_ready())
        done, _ = await asyncio.wait({ready, self._connection}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            await self._connection_failed(done)
        log.info("Discord connected as %s", self.client.user.id if self.client.user else "?")

    async def _connection_failed(self, done: set[asyncio.Task[Any]]) -> None:
        error = self._connection.exception() if self._connection in done else None  # type: ignore[union-attr]
        await self.stop()
        if isinstance(error, discord.PrivilegedIntentsRequired):
            raise ConfigError(
                "Discord refused the Message Content intent teambot asks for (for thread follow-ups)",
                "enable it in the Developer Portal (Bot > Privileged Gateway Intents), or set discord.follow_ups = false",
            )
        raise TeambotError(f"Discord's gateway did not get ready within {READY_TIMEOUT_S:g} s ({type(error).__name__ if error else 'no answer'})")

    async def stop(self) -> None:
        await self.client.close()
        if self._connection is not None:
            await asyncio.gather(self._connection, return_exceptions=True)

    async def sync_commands(self) -> None:
        """Registers /ask and /kb: per configured guild at once, else globally."""
        tree = self.client.tree
        try:
            if self._settings.discord.guild_ids:
                for guild_id in self._settings.discord.guild_ids:
                    guild = discord.Object(id=guild_id)
                    tree.copy_global_to(guild=guild)
                    await tree.sync(guild=guild)
            else:
                await tree.sync()
        except discord.HTTPException as exc:
            log.warning("could not sync the slash commands (HTTP %s): invite the bot with the applications.commands scope", exc.status)

    # --- slash commands -------------------------------------------------------------------

    def _register_commands(self, tree: app_commands.CommandTree[Any]) -> None:
        @tree.command(name="ask", description="Ask teambot about the team's documents")
        @app_commands.describe(question="Your question")
        async def ask(interaction: discord.Interaction, question: str) -> None:
            await self.on_ask(interaction, question)

        kb = app_commands.Group(name="kb", description="Manage the knowledge base (admins)")

        @kb.command(name="upload", description="Add a document to the knowledge base")
        @app_commands.describe(file="A .md, .txt, .rst, .html, .pdf or .docx file", collection="Which collection (default: default)")
        async def upload(interaction: discord.Interaction, file: discord.Attachment, collection: str = DEFAULT_COLLECTION) -> None:
            await self._admin_only(interaction, lambda: self._upload(file, collection.strip().lower()))

        @kb.command(name="list", description="List a collection's documents")
        async def list_documents(interaction: discord.Interaction, collection: str = DEFAULT_COLLECTION) -> None:
            await self._admin_only(interaction, lambda: self._list(collection.strip().lower()))

        @kb.command(name="remove", description="Remove a document from the knowledge base")
        async def remove(interaction: discord.Interaction, name: str, collection: str = DEFAULT_COLLECTION) -> None:
            await self._admin_only(interaction, lambda: self._remove(collection.strip().lower(), name.strip()))

        @kb.command(name="reindex", description="Re-index every collection now (only changed files are embedded)")
        async def reindex(interaction: discord.Interaction) -> None:
            await self._admin_only(interaction, self._reindex)

        tree.add_command(kb)

    async def on_ask(self, interaction: discord.Interaction, question: str) -> None:
        await interaction.response.defer(thinking=True)
        channel = interaction.channel
        where = msg.Where.of_channel(channel, interaction.guild_id)
        text = question.strip()
        await self._answer(InteractionDestination(interaction), where, str(interaction.user.id), text, history=[])

    async def on_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        log.error("a Discord command failed", exc_info=error)
        text = "Sorry, something went wrong on my side (it is in teambot's log)."
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)

    async def _admin_only(self, interaction: discord.Interaction, action: Any) -> None:
        if not self._is_admin(interaction):
            await interaction.response.send_message(REFUSAL, ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            text = await action()
        except (UploadError, ConfigError) as exc:
            text = f"⛔ {exc.message}" + (f" ({exc.hint})" if exc.hint else "") + ". Nothing was changed."
        except TeambotError as exc:
            text = f"⚠️ {exc.message}"
        await interaction.followup.send(text[:2000], ephemeral=True)

    def _is_admin(self, interaction: discord.Interaction) -> bool:
        user = interaction.user
        config = self._settings.discord
        if user.id in config.admin_users:
            return True
        if isinstance(user, discord.Member):
            return user.guild_permissions.manage_guild or any(role.id in config.admin_roles for role in user.roles)
        return False

    async def _upload(self, file: discord.Attachment, collection: str) -> str:
        self._library.check(file.filename, file.size)
        data = await file.read()
        added = await asyncio.to_thread(self._library.add, collection, file.filename, data)
        verb = "Replaced" if added.replaced else "Added"
        return f"{verb} **{added.name}** in `{added.collection}`: {added.chunks} chunks indexed. I can answer from it now."

    async def _list(self, collection: str) -> str:
        documents = await asyncio.to_thread(self._library.documents, collection)
        if not documents:
            return f"Collection `{collection}` has no documents."
        lines = [f"**{len(documents)} documents in `{collection}`**"]
        lines += [f"• {d.path}: {d.chunks} chunks" + (f" ⚠️ {d.error}" if d.state == "failed" else "") for d in documents[:40]]
        if len(documents) > 40:
            lines.append(f"… and {len(documents) - 40} more")
        return "\n".join(lines)

    async def _reindex(self) -> str:
        if self._scheduler is None:
            return "Re-indexing runs only under `teambot serve`."
        return await request_reindex(self._scheduler, PLATFORM)

    async def _remove(self, collection: str, name: str) -> str:
        removed = await asyncio.to_thread(self._library.remove, collection, name)
        return f"Removed **{removed.path}** from `{collection}` ({removed.chunks} chunks)."

    # --- messages -------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        me = self.client.user
        if me is None or message.author.bot or message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return  # other bots, teambot itself, joins and pins
        if not self._first_delivery(message.id):
            return
        channel = message.channel
        where = msg.Where.of_channel(channel, message.guild.id if message.guild else None)
        text = msg.strip_mentions(message.content)
        if where.is_dm:
            await self._answer(ChannelDestination(channel), where, str(message.author.id), text, await self._history(channel, message))
        elif me in message.mentions:
            if isinstance(channel, discord.Thread):
                await self._answer(ChannelDestination(channel), where, str(message.author.id), text, await self._history(channel, message))
            elif self._settings.discord.reply_in_thread:
                thread = await message.create_thread(name=thread_name(text))
                await self._answer(ChannelDestination(thread), msg.Where.of_channel(thread, where.guild_id), str(message.author.id), text, [])
            else:
                await self._answer(ChannelDestination(channel, reply_to=message), where, str(message.author.id), text, [])
        elif isinstance(channel, discord.Thread) and self._settings.discord.follow_ups:
            if await asyncio.to_thread(self.answers.answered_in, PLATFORM, str(channel.id), str(channel.id)):
                await self._answer(ChannelDestination(channel), where, str(message.author.id), text, await self._history(channel, message))

    async def _history(self, channel: discord.abc.Messageable, before: discord.Message) -> list[Turn]:
        try:
            messages = [m async for m in channel.history(limit=HISTORY_MESSAGES, before=before)]
        except discord.HTTPException as exc:
            log.warning("no conversation history (HTTP %s); answering without it", exc.status)
            return []
        bot_id = self.client.user.id if self.client.user else 0
        said = []
        for m in messages:
            if m.type == discord.MessageType.thread_starter_message:
                starter = await self._starter(m)  # the question a thread was opened from lives in the parent channel
                if starter is not None:
                    said.append(msg.Said(starter.author.id == bot_id, starter.content, starter.created_at.timestamp()))
            elif m.type in (discord.MessageType.default, discord.MessageType.reply):
                said.append(msg.Said(m.author.id == bot_id, m.content, m.created_at.timestamp()))
        turns = msg.turns(said)
        return turns[-self._settings.bot.history_turns :] if self._settings.bot.history_turns else []

    @staticmethod
    async def _starter(message: discord.Message) -> discord.Message | None:
        reference = message.reference
        if reference is None:
            return None
        if isinstance(reference.resolved, discord.Message):
            return reference.resolved
        thread = message.channel
        parent = thread.parent if isinstance(thread, discord.Thread) else None
        if reference.message_id is None or not isinstance(parent, discord.TextChannel):
            return None
        try:
            return await parent.fetch_message(reference.message_id)
        except discord.HTTPException:
            return None

    # --- answering ------------------------------------------------------------------------

    async def _answer(self, destination: Destination, where: msg.Where, user: str, question: str, history: list[Turn]) -> None:
        if not question:
            question = ""
        answer = DiscordAnswer(destination, self._settings.discord.update_interval_s)
        try:
            await answer.open()
            if not question:
                await answer.fail("ask me a question about the team's documents")
                return
            collections = where.collections(self._settings.discord)
            async with aclosing(self._engine.answer(question, history, collections, platform=PLATFORM)) as events:
                async for event in events:
                    if isinstance(event, AnswerDelta):
                        answer.append(event.text)
                    else:
                        answer_id = await asyncio.to_thread(self.answers.record, PLATFORM, where.channel, where.thread, user, question, event)
                        await answer.finish(event, feedback_view(answer_id))
        except TeambotError as exc:
            log.warning("a Discord question failed: %s", exc.message)
            await answer.fail(exc.message)
        except discord.HTTPException as exc:
            log.error("Discord refused a call while answering (HTTP %s)", exc.status)
            await answer.fail("Discord refused one of my messages; try again in a moment")
        except Exception:
            log.exception("unexpected error while answering a Discord question")
            await answer.fail("something went wrong on my side (it is in teambot's log)")

    def _first_delivery(self, message_id: int) -> bool:
        """False for a message seen before (a gateway replay after a resume): answered once."""
        if message_id in self._seen:
            return False
        self._seen[message_id] = None
        if len(self._seen) > SEEN_MESSAGES_MAX:
            self._seen.popitem(last=False)
        return True
