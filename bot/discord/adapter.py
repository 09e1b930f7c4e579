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
from collections.abc import Awaitable, Callable
from typing import Any

import discord
import yarl
from discord import app_commands

from bot.answer_log import AnswerLog
from bot.answering import AnswerFlow, AnswerRequest
from bot.desk_replies import NOT_ADMIN, Markup, added_text, documents_text, failure_text, removed_text
from bot.discord import messages as msg
from bot.discord.feedback import FeedbackButton
from bot.discord.guilds import GuildPolicy
from bot.discord.messages import PLATFORM
from bot.discord.render import MESSAGE_LIMIT, defused, thread_name
from bot.discord.streaming import ChannelDestination, Destination, DiscordAnswer, InteractionDestination
from bot.platform_state import SeenOnce, claim_once
from bot.prompt import Turn
from config.errors import ConfigError, TeambotError
from config.settings import DEFAULT_COLLECTION, Settings
from rag.operations.desk import KnowledgeDesk

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
HISTORY_MESSAGES = 50
SEEN_MESSAGE_TTL_S = 3600  # how long a message id is remembered to answer it once
MARKUP = Markup(bold=lambda text: f"**{text}**", escape=defused, refused="⛔", warning="⚠️", limit=MESSAGE_LIMIT)
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


class _GatedTree(app_commands.CommandTree[Any]):
    """The slash commands, run only where ``admit`` lets them (bot.discord.guilds)."""

    def __init__(self, client: discord.Client, admit: Callable[[discord.Interaction], Awaitable[bool]]) -> None:
        super().__init__(client)
        self._admit = admit

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        return await self._admit(interaction)


class _Client(discord.Client):
    def __init__(self, adapter: DiscordAdapter, answers: AnswerLog, intents: discord.Intents) -> None:
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none())
        self.adapter = adapter
        self.answers = answers  # where FeedbackButton records votes
        self.tree = _GatedTree(self, adapter.admit_command)
        self.tree.on_error = adapter.on_command_error  # type: ignore[assignment]

    async def setup_hook(self) -> None:
        self.add_dynamic_items(FeedbackButton)
        await self.adapter.sync_commands()

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(message)

    async def on_guild_available(self, guild: discord.Guild) -> None:  # a server the bot is in, at start
        await self.adapter.guilds.check_membership(guild)

    async def on_guild_join(self, guild: discord.Guild) -> None:  # someone added the bot to a server
        await self.adapter.guilds.check_membership(guild)


class DiscordAdapter:
    def __init__(self, settings: Settings, flow: AnswerFlow, desk: KnowledgeDesk, answers: AnswerLog, seen: SeenOnce) -> None:
        """``seen``: the message ids already answered, shared by every replica (bot.platform_state)."""
        if settings.discord_bot_token is None:
            raise ConfigError("Discord needs DISCORD_BOT_TOKEN", "set it in the environment")
        self._settings = settings
        self._flow = flow
        self._desk = desk
        self._answers = answers
        self.guilds = GuildPolicy(settings.discord)  # refuses to start without discord.guild_ids
        intents = discord.Intents.default()
        intents.message_content = settings.discord.follow_ups  # privileged: only for thread follow-ups without a mention
        self.client = _Client(self, answers, intents)
        self._register_commands(self.client.tree)
        self._seen = seen
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
        """Registers /ask and /kb in each server of discord.guild_ids (they show at once there, and nowhere else)."""
        tree = self.client.tree
        try:
            for guild_id in self._settings.discord.guild_ids:
                guild = discord.Object(id=guild_id)
                tree.copy_global_to(guild=guild)
                await tree.sync(guild=guild)
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
            name = collection.strip().lower()
            await self._admin_only(interaction, lambda: self._desk_text(lambda: documents_text(name, self._desk.documents(name), MARKUP)))

        @kb.command(name="remove", description="Remove a document from the knowledge base")
        async def remove(interaction: discord.Interaction, name: str, collection: str = DEFAULT_COLLECTION) -> None:
            where, what = collection.strip().lower(), name.strip()
            await self._admin_only(interaction, lambda: self._desk_text(lambda: removed_text(self._desk.remove(where, what, f"{PLATFORM}:remove"), MARKUP)))

        @kb.command(name="reindex", description="Re-index every collection now (only changed files are embedded)")
        async def reindex(interaction: discord.Interaction) -> None:
            await self._admin_only(interaction, lambda: self._desk_text(lambda: self._desk.request_reindex(PLATFORM).text()))

        tree.add_command(kb)

    async def admit_command(self, interaction: discord.Interaction) -> bool:
        """Lets a slash command run where teambot serves, once across replicas; elsewhere the user gets a short refusal only they see."""
        if not await claim_once(self._seen, f"discord-interaction:{interaction.id}", SEEN_MESSAGE_TTL_S):
            return False  # another replica's connection got it and answers it
        if self.guilds.admits(interaction.guild_id):
            return True
        name = (interaction.data or {}).get("name", "?")
        self.guilds.log_refused(f"/{name} command", interaction.guild, interaction.guild_id, interaction.user.id)
        await interaction.response.send_message(self.guilds.refusal(interaction.guild_id), ephemeral=True)
        return False

    async def on_ask(self, interaction: discord.Interaction, question: str) -> None:
        await interaction.response.defer(thinking=True)
        where = msg.Where.of_channel(interaction.channel, interaction.guild_id)
        await self._answer(InteractionDestination(interaction), self._request(where, interaction.user, question))

    async def on_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        log.error("a Discord command failed", exc_info=error)
        text = "Sorry, something went wrong on my side (it is in teambot's log)."
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)

    async def _admin_only(self, interaction: discord.Interaction, action: Callable[[], Awaitable[str]]) -> None:
        if not self._is_admin(interaction):
            await interaction.response.send_message(NOT_ADMIN, ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            text = await action()
        except TeambotError as exc:
            text = failure_text(exc, MARKUP)
        await interaction.followup.send(text[:MESSAGE_LIMIT], ephemeral=True)

    @staticmethod
    async def _desk_text(action: Callable[[], str]) -> str:
        """A knowledge-desk call (blocking) and its reply, off the event loop."""
        return await asyncio.to_thread(action)

    def _is_admin(self, interaction: discord.Interaction) -> bool:
        """An admin of the knowledge base: a listed user, or Manage Server or an admin role, in a server teambot serves."""
        user = interaction.user
        config = self._settings.discord
        if not self.guilds.admits(interaction.guild_id):
            return False  # admit_command refused it already; no rights count elsewhere
        if user.id in config.admin_users:
            return True
        if isinstance(user, discord.Member) and interaction.guild_id in self.guilds.allowed:
            return user.guild_permissions.manage_guild or any(role.id in config.admin_roles for role in user.roles)
        return False

    async def _upload(self, file: discord.Attachment, collection: str) -> str:
        await asyncio.to_thread(self._desk.check, file.filename, file.size)
        data = await file.read()
        return added_text(await asyncio.to_thread(self._desk.add, collection, file.filename, data, f"{PLATFORM}:upload"), MARKUP)

    # --- messages -------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        me = self.client.user
        if me is None or message.author.bot or message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return  # other bots, teambot itself, joins and pins
        # A gateway replay after a resume, or a message another replica's connection got too.
        if not await claim_once(self._seen, f"discord-message:{message.id}", SEEN_MESSAGE_TTL_S):
            return
        guild_id = message.guild.id if message.guild else None
        if not self.guilds.admits(guild_id):
            if guild_id is None or me in message.mentions:  # addressed to teambot; other chatter there is no business of ours
                self.guilds.log_refused("message", message.guild, guild_id, message.author.id)
                if guild_id is None:
                    await message.channel.send(self.guilds.refusal(None))
            return
        channel = message.channel
        where = msg.Where.of_channel(channel, message.guild.id if message.guild else None)
        author, text = message.author, message.content
        if where.is_dm:
            await self._answer(ChannelDestination(channel), self._request(where, author, text, await self._history(channel, message)))
        elif me in message.mentions:
            if isinstance(channel, discord.Thread):
                await self._answer(ChannelDestination(channel), self._request(where, author, text, await self._history(channel, message)))
            elif self._settings.discord.reply_in_thread:
                thread = await message.create_thread(name=thread_name(msg.strip_mentions(text)))
                await self._answer(ChannelDestination(thread), self._request(msg.Where.of_channel(thread, where.guild_id), author, text))
            else:
                await self._answer(ChannelDestination(channel, reply_to=message), self._request(where, author, text))
        elif isinstance(channel, discord.Thread) and self._settings.discord.follow_ups:
            if await asyncio.to_thread(self._answers.answered_in, PLATFORM, str(channel.id), str(channel.id)):
                await self._answer(ChannelDestination(channel), self._request(where, author, text, await self._history(channel, message)))

    def _request(self, where: msg.Where, user: discord.abc.User, text: str, history: list[Turn] | None = None) -> AnswerRequest:
        return msg.answer_request(where, str(user.id), text, self._settings.discord, history or [])

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

    async def _answer(self, destination: Destination, request: AnswerRequest) -> None:
        await self._flow.answer(request, DiscordAnswer(destination, self._settings.discord.update_interval_s))
