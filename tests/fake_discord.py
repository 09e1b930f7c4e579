"""A local Discord for tests: the REST API, the Gateway and the attachment CDN, on 127.0.0.1.

The real discord.py 2.x client runs against it end to end once pointed at it::

    discord.http.Route.BASE = fake.api_base                     # http://127.0.0.1:PORT/api/v10
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)

What it fakes, modelled on discord.py's source and Discord's documented payloads:

* Gateway (``/gateway``, plain-text JSON frames): HELLO, heartbeat ACKs, IDENTIFY answered with
  READY then GUILD_CREATE for each guild (one, plus those ``add_guild`` adds), RESUME answered with the missed dispatches (those with a
  sequence number above the client's) and RESUMED, an unknown session with INVALID_SESSION, and
  privileged intents not in ``privileged_intents`` ("enabled in the portal") with close code 4014.
  Dispatches honour the intents sent in IDENTIFY: no MESSAGE_CREATE without GUILD_MESSAGES /
  DIRECT_MESSAGES, and without MESSAGE_CONTENT a guild message reaches the bot with empty
  content unless it mentions the bot (as Discord does). The bot's own messages come back as
  MESSAGE_CREATE / MESSAGE_UPDATE / MESSAGE_DELETE, as on Discord; ephemeral ones never do.
* REST (``/api/v10``): login (``/users/@me``, ``/oauth2/applications/@me``), command sync,
  leaving a server (GUILD_DELETE follows), channel messages (send, reply, edit, delete, history newest first, reactions, typing), threads
  from a message (with THREAD_CREATE, and a THREAD_STARTER_MESSAGE, type 21, as the thread's
  first message), DMs, and interactions: the callback (``with_response``), the original
  response and follow-ups on ``/webhooks/{application}/{token}``. Bot routes need
  ``Authorization: Bot discord-test-token``; webhook routes need none. Discord's limits that an
  adapter must respect are enforced: 2,000 characters of content, no empty message, one
  callback per interaction within 3 s (``interaction_deadline_s``), tokens valid 15 minutes
  (``token_lifetime_s``), no follow-up before the callback; the first follow-up after a deferral
  replaces the "thinking…" message, as on Discord. People's permissions come from roles (an
  "Admins" role holds ADMIN_PERMISSIONS), since discord.py computes ``guild_permissions`` so.
* The attachment CDN: ``add_attachment`` and uploaded files are served under ``/attachments/``
  and ``/ephemeral-attachments/`` with signed-looking query strings (downloads are listed in
  ``downloads``, not in ``calls``).

Every REST request is recorded in ``calls``; messages users would see are kept per channel in
``messages``. ``rate_limit`` makes the next matching requests answer 429 the way Discord does.
Tests drive users through ``slash_command``, ``click`` and ``user_message``, and break the
connection with ``drop_connection``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import BodyPartReader, WSMsgType, web

JSON = dict[str, Any]

# --- ids, tokens, bitfields ----------------------------------------------------------------

DISCORD_EPOCH_MS = 1_420_070_400_000


def snowflake_at(unix_ms: int, increment: int = 0) -> int:
    """A Discord id: milliseconds since 2015 in the top bits, so discord.py's ``created_at`` works."""
    return ((unix_ms - DISCORD_EPOCH_MS) << 22) | (increment & 0xFFF)


_FIXED_MS = 1_700_000_000_000  # the fixed objects were "created" in November 2023
APP_ID = snowflake_at(_FIXED_MS, 1)
BOT_ID = snowflake_at(_FIXED_MS, 2)  # distinct from APP_ID (equal on modern apps) so mix-ups show
GUILD_ID = snowflake_at(_FIXED_MS, 3)  # also the id of the @everyone role
CHANNEL_ID = snowflake_at(_FIXED_MS, 4)  # #general, a text channel in the guild
OWNER_ID = snowflake_at(_FIXED_MS, 5)  # owns the guild and the application
BOT_ROLE_ID = snowflake_at(_FIXED_MS, 6)  # the bot's managed role
ADMIN_ROLE_ID = snowflake_at(_FIXED_MS, 7)  # "Admins": ADMIN_PERMISSIONS
BOT_TOKEN = "discord-test-token"
BOT_NAME = "teambot"

# Permission bits (https://discord.com/developers/docs/topics/permissions)
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_APPLICATION_COMMANDS = 1 << 31
MANAGE_THREADS = 1 << 34
CREATE_PUBLIC_THREADS = 1 << 35
SEND_MESSAGES_IN_THREADS = 1 << 38
MEMBER_PERMISSIONS = (
    VIEW_CHANNEL | SEND_MESSAGES | READ_MESSAGE_HISTORY | EMBED_LINKS | ATTACH_FILES | ADD_REACTIONS
    | USE_APPLICATION_COMMANDS | CREATE_PUBLIC_THREADS | SEND_MESSAGES_IN_THREADS
)  # fmt: skip
ADMIN_PERMISSIONS = MEMBER_PERMISSIONS | MANAGE_GUILD | MANAGE_CHANNELS | MANAGE_MESSAGES | MANAGE_THREADS
BOT_PERMISSIONS = MEMBER_PERMISSIONS | MANAGE_MESSAGES | MANAGE_THREADS

# Gateway intents (https://discord.com/developers/docs/topics/gateway#gateway-intents)
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1  # privileged
INTENT_GUILD_PRESENCES = 1 << 8  # privileged
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15  # privileged
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT

# Message flags and types
SUPPRESS_EMBEDS = 1 << 2
EPHEMERAL = 1 << 6
LOADING = 1 << 7  # a deferred ("thinking…") interaction response
MESSAGE_DEFAULT, MESSAGE_REPLY, MESSAGE_CHAT_INPUT_COMMAND, MESSAGE_THREAD_STARTER = 0, 19, 20, 21

# Interaction types and callback types
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT = 1, 2, 3
CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE = 4, 5, 6, 7

# Channel types
GUILD_TEXT, DM, PUBLIC_THREAD = 0, 1, 11

APPLICATION_FLAGS = (1 << 19) | (1 << 23)  # GATEWAY_MESSAGE_CONTENT_LIMITED, APPLICATION_COMMAND_BADGE
HEARTBEAT_INTERVAL_MS = 41_250
CONTENT_LIMIT = 2000
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024


@dataclass
class Call:
    method: str
    path: str  # relative to api_base, without the query: "/channels/123/messages"
    json: Any  # the JSON body (payload_json of a multipart body), or None
    at: float = field(default_factory=time.monotonic)
    query: dict[str, str] = field(default_factory=dict)
    status: int = 0  # the status the fake answered
    files: list[str] = field(default_factory=list)  # names of uploaded files


@dataclass
class _RateLimit:
    method: str
    path: re.Pattern[str]
    remaining: int
    retry_after: float


@dataclass
class _Interaction:
    id: int
    token: str
    type: int
    channel_id: int
    user: JSON
    name: str | None  # the command's name, for application commands
    message: JSON | None  # the message a component is on
    dispatched_at: float = field(default_factory=time.monotonic)
    callbacks: list[JSON] = field(default_factory=list)
    original: JSON | None = None
    followups: list[JSON] = field(default_factory=list)


@dataclass
class _Session:
    id: str
    intents: int
    seq: int = 0
    sent: list[tuple[int, str]] = field(default_factory=list)  # every dispatch (seq, frame as sent), for replay on RESUME


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, str]
    json: Any
    files: list[tuple[str, bytes, str]]  # (filename, data, content type)
    match: re.Match[str]

    def id(self, group: int) -> int:
        return int(self.match.group(group))


Handler = Callable[[_Request], Awaitable[web.Response]]


class FakeDiscord:
    interaction_deadline_s: float = 3.0  # the first callback must come this soon after INTERACTION_CREATE
    token_lifetime_s: float = 15 * 60  # interaction tokens (webhook routes) stop working after this
    privileged_intents: int = PRIVILEGED_INTENTS  # those enabled in the Developer Portal; asking for others closes with 4014

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.resumed = asyncio.Event()
        self.identifies = 0
        self.resumes = 0
        self.calls: list[Call] = []
        self.messages: dict[int, list[JSON]] = defaultdict(list)
        self.channels: dict[int, JSON] = {CHANNEL_ID: _text_channel(CHANNEL_ID, "general")}
        self.commands: dict[int | None, list[JSON]] = {}  # registered commands: None = global, else guild id
        self.downloads: list[str] = []  # attachment URLs fetched
        self.intents: int | None = None  # what the last IDENTIFY asked for
        self.presence: JSON | None = None  # the last presence update (op 3)
        self.users: dict[int, JSON] = {BOT_ID: _bot_user(), OWNER_ID: _person(OWNER_ID)}
        self.roles: list[JSON] = [
            _role(GUILD_ID, "@everyone", MEMBER_PERMISSIONS, 0),  # the @everyone role's id is the guild's
            _role(BOT_ROLE_ID, BOT_NAME, BOT_PERMISSIONS, 1, managed=True, tags={"bot_id": str(BOT_ID)}),
            _role(ADMIN_ROLE_ID, "Admins", ADMIN_PERMISSIONS, 2),
        ]
        self.member_roles: dict[int, list[str]] = {BOT_ID: [str(BOT_ROLE_ID)]}  # user id -> role ids (none: just @everyone)
        self.other_guilds: dict[int, JSON] = {}  # more servers the bot is in (add_guild): id -> {"name", "owner_id"}
        self.left_guilds: list[int] = []  # servers the bot left (DELETE /users/@me/guilds/{id})
        self._files: dict[int, tuple[bytes, str]] = {}
        self._interactions: dict[str, _Interaction] = {}
        self._rate_limits: list[_RateLimit] = []
        self._session: _Session | None = None
        self._socket: web.WebSocketResponse | None = None
        self._live = asyncio.Event()  # a socket is identified or resumed: dispatches go out now
        self._send_lock = asyncio.Lock()  # keeps sequence numbers in wire order, and replay atomic
        self._last_id = 0
        self._routes = self._route_table()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- server ----------------------------------------------------------------------------

    async def start(self) -> FakeDiscord:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/v10/{path:.*}", self._api)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{channel}/{attachment}/{filename}", self._attachment)
        app.router.add_get("/ephemeral-attachments/{channel}/{attachment}/{filename}", self._attachment)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self._live.clear()
        if self._socket is not None:
            await self._socket.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # --- what tests do ---------------------------------------------------------------------

    def called(self, method: str, path_prefix: str) -> list[Call]:
        return [c for c in self.calls if c.method == method.upper() and c.path.startswith(path_prefix)]

    def rate_limit(self, method: str, path_regex: str, times: int = 1, retry_after: float = 1.0) -> None:
        """The next ``times`` requests matching (re.search on the path) get Discord's 429."""
        self._rate_limits.append(_RateLimit(method.upper(), re.compile(path_regex), times, retry_after))

    def add_attachment(self, filename: str, data: bytes, content_type: str) -> JSON:
        """An attachment as Discord describes it (slash command option, message); served by this fake."""
        return self._store_file(filename, data, content_type, folder="ephemeral-attachments", owner=APP_ID) | {"ephemeral": True}

    def add_user(self, user_id: int, username: str, *, global_name: str | None = None, permissions: int = MEMBER_PERMISSIONS) -> JSON:
        """Names a person (otherwise people are "user<id>") and gives them roles granting ``permissions``."""
        self.users[user_id] = _person(user_id, username, global_name)
        self.member_roles[user_id] = self._roles_granting(permissions)
        return self.users[user_id]

    async def add_guild(self, guild_id: int, name: str, *, owner_id: int) -> int:
        """Someone adds the bot to another server: in READY's guilds when added before the bot connects,
        else a GUILD_CREATE (a join) at once. The server has one text channel, whose id is returned;
        ``owner_id`` owns it, so discord.py gives them every permission there (Manage Server included)."""
        channel_id = self._snowflake()
        self.channels[channel_id] = _text_channel(channel_id, "lobby") | {"guild_id": str(guild_id)}
        self.other_guilds[guild_id] = {"name": name, "owner_id": owner_id}
        if self._live.is_set():
            await self._dispatch("GUILD_CREATE", self._guild_create(guild_id), wait=False)
        return channel_id

    def interaction(self, token: str) -> JSON:
        record = self._interactions[token]
        return {"callbacks": record.callbacks, "original": record.original, "followups": record.followups}

    def find(self, channel_id: int, message_id: int | str) -> JSON | None:
        return next((m for m in self.messages[channel_id] if m["id"] == str(message_id)), None)

    async def slash_command(
        self, name: str, options: list[JSON], *, user_id: int, permissions: int, channel_id: int = CHANNEL_ID, resolved: JSON | None = None
    ) -> JSON:
        """A person runs /name: INTERACTION_CREATE type 2. Returns the interaction payload."""
        scope, command = self._registered(name, self._guild_of(channel_id))
        data: JSON = {
            "id": command["id"] if command else str(self._snowflake()),
            "name": name,
            "type": 1,
            "options": _stringify_ids(options),
        }
        if scope is not None:
            data["guild_id"] = str(scope)  # Discord says which guild's command it was; discord.py looks it up there
        if resolved:
            data["resolved"] = {kind: {str(k): v for k, v in items.items()} for kind, items in resolved.items()}
        await self._grant(user_id, permissions)
        await self._wait_live()  # the 3 s to answer start when the client can get the interaction
        payload = self._interaction_payload(APPLICATION_COMMAND, data, user_id, permissions, channel_id, name=name)
        await self._dispatch("INTERACTION_CREATE", payload, wait=True)
        return payload

    async def click(self, custom_id: str, *, user_id: int, message: JSON, permissions: int) -> JSON:
        """A person clicks a component on ``message``: INTERACTION_CREATE type 3. Returns the payload."""
        channel_id = int(message["channel_id"])
        current = self.find(channel_id, message["id"]) or message
        component = _find_component(current.get("components") or [], custom_id)
        if component is None:
            raise ValueError(f"message {current['id']} has no component with custom_id {custom_id!r}")
        data: JSON = {"custom_id": custom_id, "component_type": component["type"]}
        if component["type"] != 2:
            data["values"] = []  # a select menu with nothing chosen
        await self._grant(user_id, permissions)
        await self._wait_live()  # the 3 s to answer start when the client can get the interaction
        payload = self._interaction_payload(MESSAGE_COMPONENT, data, user_id, permissions, channel_id, message=current)
        await self._dispatch("INTERACTION_CREATE", payload, wait=True)
        return payload

    async def user_message(
        self,
        content: str,
        *,
        user_id: int,
        channel_id: int = CHANNEL_ID,
        mention_bot: bool = False,
        dm: bool = False,
        attachments: list[JSON] | None = None,
    ) -> JSON:
        """A person posts a message (in a guild channel or thread, or in a DM with the bot); returns it."""
        if mention_bot:
            content = f"<@{BOT_ID}> {content}"
        if dm:
            channel_id = int(self._dm_channel(user_id)["id"])
        else:
            self._guild_of(channel_id)  # a known channel of a server the bot is in
        message = self._compose(channel_id, self._user(user_id), {"content": content}, [])
        message["attachments"] = [{k: v for k, v in a.items() if k != "ephemeral"} for a in attachments or []]
        self._store(message)
        await self._dispatch("MESSAGE_CREATE", self._gateway_message(message), wait=True)
        return message

    async def _grant(self, user_id: int, permissions: int) -> None:
        """Makes the member's roles grant ``permissions``: discord.py's Member.guild_permissions reads the
        roles, not the interaction's "permissions" field. A role for a new set is announced first."""
        before = len(self.roles)
        self.member_roles[user_id] = self._roles_granting(permissions)
        for role in self.roles[before:]:
            await self._dispatch("GUILD_ROLE_CREATE", {"guild_id": str(GUILD_ID), "role": role}, wait=True)

    def _roles_granting(self, permissions: int) -> list[str]:
        if not permissions & ~MEMBER_PERMISSIONS:
            return []  # @everyone is enough
        role = next((r for r in self.roles[1:] if int(r["permissions"]) == permissions and not r["managed"]), None)
        if role is None:
            role = _role(self._snowflake(), f"permissions {permissions:#x}", permissions, len(self.roles))
            self.roles.append(role)
        return [role["id"]]

    async def drop_connection(self, code: int = 4000) -> None:
        """Closes the gateway socket as a failing Discord would (4000: unknown error, reconnect).

        discord.py reconnects at once to READY's resume_gateway_url and sends RESUME; dispatches
        made meanwhile are replayed then.
        """
        socket = self._socket
        if socket is None:
            raise RuntimeError("no gateway connection to drop")
        self.resumed.clear()
        self._live.clear()
        self._socket = None
        await socket.close(code=code, message=b"fake discord dropped the connection")

    # --- gateway -----------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await socket.prepare(request)
        await socket.send_str(
            json.dumps({"op": 10, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS, "_trace": ["fake-gateway"]}, "s": None, "t": None})
        )
        try:
            async for frame in socket:
                if frame.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                message = json.loads(frame.data)
                op, data = message.get("op"), message.get("d")
                if op == 1:  # HEARTBEAT
                    await socket.send_str(json.dumps({"op": 11, "d": None, "s": None, "t": None}))
                elif op == 2:  # IDENTIFY
                    await self._identify(socket, data)
                elif op == 6:  # RESUME
                    await self._resume(socket, data)
                elif op == 3:  # PRESENCE_UPDATE
                    self.presence = data
                elif op == 8:  # REQUEST_GUILD_MEMBERS: all we know is the bot
                    chunk = {
                        "guild_id": str(GUILD_ID),
                        "members": [self._member(BOT_ID)],
                        "chunk_index": 0,
                        "chunk_count": 1,
                        "nonce": data.get("nonce"),
                    }
                    await self._dispatch("GUILD_MEMBERS_CHUNK", chunk, wait=False)
        finally:
            if self._socket is socket:
                self._socket = None
                self._live.clear()
        return socket

    async def _identify(self, socket: web.WebSocketResponse, data: JSON) -> None:
        if data.get("token") != BOT_TOKEN:
            await socket.close(code=4004, message=b"Authentication failed.")
            return
        self.identifies += 1
        self.intents = int(data.get("intents", 0))
        if self.intents & PRIVILEGED_INTENTS & ~self.privileged_intents:
            await socket.close(code=4014, message=b"Disallowed intent(s).")  # discord.py raises PrivilegedIntentsRequired
            return
        async with self._send_lock:
            self._session = _Session(id=secrets.token_hex(16), intents=self.intents)
            self._socket = socket
            ready: JSON = {
                "v": 10,
                "user": self._me(),
                "guilds": [{"id": str(g), "unavailable": True} for g in [GUILD_ID, *self.other_guilds]],  # each follows as GUILD_CREATE
                "session_id": self._session.id,
                "session_type": "normal",
                "resume_gateway_url": self.gateway_url,  # discord.py RESUMEs here (it adds ?v=&encoding=&compress=)
                "application": {"id": str(APP_ID), "flags": APPLICATION_FLAGS},
                "private_channels": [],
                "relationships": [],
                "presences": [],
                "guild_join_requests": [],
                "geo_ordered_rtc_regions": [],
                "user_settings": {},
                "_trace": ["fake-gateway"],
            }
            if "shard" in data:
                ready["shard"] = data["shard"]
            await self._send(socket, "READY", ready)
            for guild_id in [GUILD_ID, *self.other_guilds]:
                await self._send(socket, "GUILD_CREATE", self._guild_create(guild_id))
            self._live.set()
        self.ready.set()

    async def _resume(self, socket: web.WebSocketResponse, data: JSON) -> None:
        self.resumes += 1
        session = self._session
        if data.get("token") != BOT_TOKEN:
            await socket.close(code=4004, message=b"Authentication failed.")
            return
        if session is None or data.get("session_id") != session.id:
            await socket.send_str(json.dumps({"op": 9, "d": False, "s": None, "t": None}))  # not resumable: IDENTIFY again
            return
        async with self._send_lock:
            self._socket = socket
            client_seq = data.get("seq") or 0
            for seq, frame in session.sent:  # what the client missed, in order, then RESUMED
                if seq > client_seq:
                    await socket.send_str(frame)
            await self._send(socket, "RESUMED", {"_trace": ["fake-gateway"]})
            self._live.set()
        self.resumed.set()

    async def _send(self, socket: web.WebSocketResponse | None, event: str, data: JSON) -> None:
        """One dispatch (op 0) with the session's next sequence number; logged for RESUME. Hold _send_lock."""
        session = self._session
        assert session is not None
        session.seq += 1
        frame = json.dumps({"op": 0, "t": event, "s": session.seq, "d": data})  # serialised now: later changes stay out
        session.sent.append((session.seq, frame))
        if socket is not None and not socket.closed:
            try:
                await socket.send_str(frame)
            except (ConnectionError, RuntimeError):
                pass  # the socket is going away: the client gets this frame on RESUME

    async def _dispatch(self, event: str, data: JSON, *, wait: bool) -> None:
        """Sends an event to the bot if its intents want it.

        ``wait`` (events a test causes) waits for a live session, so a test may act while the
        client is still connecting or resuming. Otherwise (echoes of the bot's own REST calls) an
        event made while disconnected is kept and replayed when the client RESUMEs.
        """
        if wait:
            await self._wait_live()
        if self._session is None:
            return
        filtered = self._filter_for_intents(event, data, self._session.intents)
        if filtered is None:
            return
        async with self._send_lock:
            await self._send(self._socket if self._live.is_set() else None, event, filtered)

    async def _wait_live(self) -> None:
        await asyncio.wait_for(self._live.wait(), 10)

    def _filter_for_intents(self, event: str, data: JSON, intents: int) -> JSON | None:
        if event in ("MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE"):
            in_guild = "guild_id" in data
            if not intents & (INTENT_GUILD_MESSAGES if in_guild else INTENT_DIRECT_MESSAGES):
                return None
            if event != "MESSAGE_DELETE" and in_guild and not intents & INTENT_MESSAGE_CONTENT:
                author = (data.get("author") or {}).get("id")
                mentioned = any(m.get("id") == str(BOT_ID) for m in data.get("mentions", []))
                if author != str(BOT_ID) and not mentioned:  # Discord blanks what the privileged intent covers
                    data = data | {"content": "", "embeds": [], "attachments": [], "components": []}
        elif event.startswith(("THREAD_", "GUILD_ROLE_")) and not intents & INTENT_GUILDS:
            return None
        return data

    # --- REST plumbing ---------------------------------------------------------------------

    def _route_table(self) -> list[tuple[str, re.Pattern[str], Handler, bool]]:
        """(method, path, handler, needs the bot token). Paths are relative to /api/v10."""
        hook = r"/webhooks/(\d+)/([^/]+)"
        table: list[tuple[str, str, Handler, bool]] = [
            ("GET", r"/users/@me", self._get_me, True),
            ("GET", r"/users/(\d+)", self._get_user, True),
            ("POST", r"/users/@me/channels", self._open_dm, True),
            ("DELETE", r"/users/@me/guilds/(\d+)", self._leave_guild, True),
            ("GET", r"/oauth2/applications/@me", self._get_application, True),
            ("GET", r"/applications/@me", self._get_application, True),
            ("GET", r"/gateway", self._get_gateway, False),
            ("GET", r"/gateway/bot", self._get_gateway, True),
            ("GET", r"/applications/(\d+)/commands", self._get_commands, True),
            ("PUT", r"/applications/(\d+)/commands", self._put_commands, True),
            ("GET", r"/applications/(\d+)/guilds/(\d+)/commands", self._get_commands, True),
            ("PUT", r"/applications/(\d+)/guilds/(\d+)/commands", self._put_commands, True),
            ("GET", r"/guilds/(\d+)", self._get_guild, True),
            ("GET", r"/guilds/(\d+)/channels", self._get_guild_channels, True),
            ("GET", r"/guilds/(\d+)/members/(\d+)", self._get_member, True),
            ("GET", r"/channels/(\d+)", self._get_channel, True),
            ("GET", r"/channels/(\d+)/messages", self._get_messages, True),
            ("POST", r"/channels/(\d+)/messages", self._post_message, True),
            ("GET", r"/channels/(\d+)/messages/(\d+)", self._get_message, True),
            ("PATCH", r"/channels/(\d+)/messages/(\d+)", self._patch_message, True),
            ("DELETE", r"/channels/(\d+)/messages/(\d+)", self._delete_message, True),
            ("POST", r"/channels/(\d+)/messages/(\d+)/threads", self._create_thread, True),
            ("PUT", r"/channels/(\d+)/messages/(\d+)/reactions/([^/]+)/@me", self._add_reaction, True),
            ("DELETE", r"/channels/(\d+)/messages/(\d+)/reactions/([^/]+)/@me", self._remove_reaction, True),
            ("POST", r"/channels/(\d+)/typing", self._typing, True),
            ("POST", r"/interactions/(\d+)/([^/]+)/callback", self._callback, False),
            ("POST", hook, self._post_followup, False),
            ("GET", hook + r"/messages/(@original|\d+)", self._get_webhook_message, False),
            ("PATCH", hook + r"/messages/(@original|\d+)", self._patch_webhook_message, False),
            ("DELETE", hook + r"/messages/(@original|\d+)", self._delete_webhook_message, False),
        ]
        return [(method, re.compile(path), handler, auth) for method, path, handler, auth in table]

    async def _api(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        body, files = await _read_body(request)
        call = Call(request.method, path, body, query=dict(request.query), files=[name for name, _, _ in files])
        self.calls.append(call)
        response = await self._route(request, path, body, files)
        call.status = response.status
        return response

    async def _route(self, request: web.Request, path: str, body: Any, files: list[tuple[str, bytes, str]]) -> web.Response:
        matching = [(m, route) for route in self._routes if (m := route[1].fullmatch(path))]
        if not matching:
            return _error(404, 0, "404: Not Found")
        chosen = next(((m, route) for m, route in matching if route[0] == request.method), None)
        if chosen is None:
            return _error(405, 0, "405: Method Not Allowed")
        match, (_, pattern, handler, needs_auth) = chosen
        if needs_auth and request.headers.get("Authorization") != f"Bot {BOT_TOKEN}":
            return _error(401, 0, "401: Unauthorized")
        bucket = f"{request.method}:{pattern.pattern}".encode().hex()[:32]
        limit = next((r for r in self._rate_limits if r.remaining > 0 and r.method == request.method and r.path.search(path)), None)
        if limit is not None:
            limit.remaining -= 1
            return _too_many_requests(limit.retry_after, bucket)
        response = await handler(_Request(request.method, path, dict(request.query), body, files, match))
        # Discord sends its bucket headers on every answer; a generous bucket never makes discord.py wait.
        response.headers.update(_rate_limit_headers(limit=5, remaining=4, reset_after=1.0, bucket=bucket))
        return response

    async def _attachment(self, request: web.Request) -> web.Response:
        self.downloads.append(str(request.url))
        try:
            data, content_type = self._files[int(request.match_info["attachment"])]
        except (KeyError, ValueError):
            return web.Response(status=404, text="Not Found")
        return web.Response(body=data, headers={"Content-Type": content_type})

    # --- REST: users, application, commands, guild -------------------------------------------

    async def _get_me(self, req: _Request) -> web.Response:
        return _ok(self._me())

    async def _get_user(self, req: _Request) -> web.Response:
        return _ok(self._user(req.id(1)))

    async def _get_application(self, req: _Request) -> web.Response:
        return _ok({
            "id": str(APP_ID), "name": BOT_NAME, "description": "A team knowledge bot", "icon": None, "summary": "", "type": None,
            "bot_public": False, "bot_require_code_grant": False, "owner": self._user(OWNER_ID), "team": None,
            "verify_key": "a" * 64, "flags": APPLICATION_FLAGS, "hook": True, "bot": self.users[BOT_ID],
            "interactions_endpoint_url": None,  # interactions arrive over the gateway (discord.py warns otherwise)
            "redirect_uris": [], "tags": [], "approximate_guild_count": 1,
            "integration_types_config": {"0": {"oauth2_install_params": {"scopes": ["bot", "applications.commands"], "permissions": str(BOT_PERMISSIONS)}}},
        })  # fmt: skip

    async def _get_gateway(self, req: _Request) -> web.Response:
        data: JSON = {"url": self.gateway_url}
        if req.path.endswith("/bot"):
            data |= {"shards": 1, "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}}
        return _ok(data)

    async def _get_commands(self, req: _Request) -> web.Response:
        scope = req.id(2) if req.match.lastindex == 2 else None
        return _ok(self.commands.get(scope, []))

    async def _put_commands(self, req: _Request) -> web.Response:
        """Bulk overwrite: Discord echoes the commands with ids (kept for a name already registered)."""
        if req.id(1) != APP_ID:
            return _error(403, 50001, "Missing Access")
        scope = req.id(2) if req.match.lastindex == 2 else None
        old = {c["name"]: c for c in self.commands.get(scope, [])}
        registered = []
        for command in req.json or []:
            previous = old.get(command["name"])
            registered.append({
                "type": 1, "description": "", "options": [], "default_member_permissions": None, "nsfw": False,
                "contexts": None, "integration_types": [0], **command,
                "id": previous["id"] if previous else str(self._snowflake()), "application_id": str(APP_ID),
                "version": str(self._snowflake()), **({"guild_id": str(scope)} if scope else {}),
            })  # fmt: skip
        self.commands[scope] = registered
        return _ok(registered)

    async def _leave_guild(self, req: _Request) -> web.Response:
        guild_id = req.id(1)
        if guild_id not in self.other_guilds and guild_id != GUILD_ID or guild_id in self.left_guilds:
            return _error(404, 10004, "Unknown Guild")
        self.left_guilds.append(guild_id)
        await self._dispatch("GUILD_DELETE", {"id": str(guild_id)}, wait=False)
        return _no_content()

    async def _get_guild(self, req: _Request) -> web.Response:
        if req.id(1) != GUILD_ID:
            return _error(404, 10004, "Unknown Guild")
        return _ok(self._guild())

    async def _get_guild_channels(self, req: _Request) -> web.Response:
        if req.id(1) != GUILD_ID:
            return _error(404, 10004, "Unknown Guild")
        return _ok([c for c in self.channels.values() if c["type"] == GUILD_TEXT])

    async def _get_member(self, req: _Request) -> web.Response:
        if req.id(1) != GUILD_ID:
            return _error(404, 10004, "Unknown Guild")
        return _ok(self._member(req.id(2)))

    # --- REST: channels and messages -----------------------------------------------------------

    async def _get_channel(self, req: _Request) -> web.Response:
        channel = self.channels.get(req.id(1))
        return _ok(channel) if channel else _error(404, 10003, "Unknown Channel")

    async def _open_dm(self, req: _Request) -> web.Response:
        return _ok(self._dm_channel(int((req.json or {})["recipient_id"])))

    async def _get_messages(self, req: _Request) -> web.Response:
        channel_id = req.id(1)
        if channel_id not in self.channels:
            return _error(404, 10003, "Unknown Channel")
        limit = max(1, min(int(req.query.get("limit", 50)), 100))
        visible = [m for m in self.messages[channel_id] if not int(m["flags"]) & EPHEMERAL]
        newest_first = sorted(visible, key=lambda m: -int(m["id"]))
        if "before" in req.query:
            newest_first = [m for m in newest_first if int(m["id"]) < int(req.query["before"])]
        if "after" in req.query:
            newest_first = [m for m in newest_first if int(m["id"]) > int(req.query["after"])][-limit:]
        return _ok([_public(m) for m in newest_first[:limit]])

    async def _get_message(self, req: _Request) -> web.Response:
        message = self.find(req.id(1), req.id(2))
        return _ok(_public(message)) if message else _error(404, 10008, "Unknown Message")

    async def _post_message(self, req: _Request) -> web.Response:
        channel_id = req.id(1)
        if channel_id not in self.channels:
            return _error(404, 10003, "Unknown Channel")
        body: JSON = req.json or {}
        if (problem := _invalid(body, req.files, new=True)) is not None:
            return problem
        reference = body.get("message_reference")
        replied: JSON | None = None
        if reference and reference.get("message_id"):
            replied = self.find(int(reference.get("channel_id") or channel_id), reference["message_id"])
            if replied is None and reference.get("fail_if_not_exists", True):
                return _form_error("message_reference", "REPLIES_UNKNOWN_MESSAGE", "Unknown message")
        message = self._compose(channel_id, self.users[BOT_ID], body, req.files, replied=replied)
        self._store(message)
        await self._dispatch("MESSAGE_CREATE", self._gateway_message(message), wait=False)
        return _ok(_public(message))

    async def _patch_message(self, req: _Request) -> web.Response:
        message = self.find(req.id(1), req.id(2))
        if message is None:
            return _error(404, 10008, "Unknown Message")
        if message["author"]["id"] != str(BOT_ID):
            return _error(403, 50005, "Cannot edit a message authored by another user")
        if (problem := _invalid(req.json or {}, req.files, new=False)) is not None:
            return problem
        self._edit(message, req.json or {}, req.files)
        await self._dispatch("MESSAGE_UPDATE", self._gateway_message(message), wait=False)
        return _ok(_public(message))

    async def _delete_message(self, req: _Request) -> web.Response:
        message = self.find(req.id(1), req.id(2))
        if message is None:
            return _error(404, 10008, "Unknown Message")
        await self._remove(message)
        return _no_content()

    async def _create_thread(self, req: _Request) -> web.Response:
        """A public thread from a message: the thread's id is the message's id (as on Discord)."""
        parent_id, message_id = req.id(1), req.id(2)
        parent = self.channels.get(parent_id)
        starter = self.find(parent_id, message_id)
        if parent is None or parent["type"] != GUILD_TEXT:
            return _error(404, 10003, "Unknown Channel")
        if starter is None:
            return _error(404, 10008, "Unknown Message")
        if message_id in self.channels:
            return _error(400, 160004, "A thread has already been created for this message")
        body: JSON = req.json or {}
        name = str(body.get("name") or "")
        if not 1 <= len(name) <= 100:
            return _form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        now = _now()
        thread: JSON = {
            "id": str(message_id), "type": PUBLIC_THREAD, "guild_id": str(GUILD_ID), "parent_id": str(parent_id), "owner_id": str(BOT_ID),
            "name": name, "last_message_id": None, "rate_limit_per_user": int(body.get("rate_limit_per_user") or 0), "flags": 0,
            "message_count": 0, "total_message_sent": 0, "member_count": 1,
            "thread_metadata": {"archived": False, "auto_archive_duration": int(body.get("auto_archive_duration") or 4320),
                                "archive_timestamp": now, "locked": False, "create_timestamp": now},
            "member": {"id": str(message_id), "user_id": str(BOT_ID), "join_timestamp": now, "flags": 1},
        }  # fmt: skip
        self.channels[message_id] = thread
        starter["thread"] = thread
        # What people see first in the thread: a system message pointing at the message it started from.
        first = self._compose(message_id, starter["author"], {"content": ""}, [], replied=starter)
        first.update(type=MESSAGE_THREAD_STARTER, mentions=[])
        self._store(first, count=False)
        await self._dispatch("THREAD_CREATE", thread | {"newly_created": True}, wait=False)
        return _ok(thread)

    async def _add_reaction(self, req: _Request) -> web.Response:
        message = self.find(req.id(1), req.id(2))
        if message is None:
            return _error(404, 10008, "Unknown Message")
        emoji = req.match.group(3)
        reactions = message.setdefault("reactions", [])
        if not any(r["emoji"]["name"] == emoji and r["me"] for r in reactions):
            reactions.append({"emoji": {"id": None, "name": emoji}, "count": 1, "count_details": {"burst": 0, "normal": 1},
                              "me": True, "me_burst": False, "burst_colors": []})  # fmt: skip
        return _no_content()

    async def _remove_reaction(self, req: _Request) -> web.Response:
        message = self.find(req.id(1), req.id(2))
        if message is None:
            return _error(404, 10008, "Unknown Message")
        message["reactions"] = [r for r in message.get("reactions", []) if not (r["emoji"]["name"] == req.match.group(3) and r["me"])]
        return _no_content()

    async def _typing(self, req: _Request) -> web.Response:
        return _no_content() if req.id(1) in self.channels else _error(404, 10003, "Unknown Channel")

    # --- REST: interactions --------------------------------------------------------------------

    async def _callback(self, req: _Request) -> web.Response:
        """POST /interactions/{id}/{token}/callback: the one initial response to an interaction."""
        record = self._interactions.get(req.match.group(2))
        if record is None or record.id != req.id(1) or time.monotonic() - record.dispatched_at > self.interaction_deadline_s:
            return _error(404, 10062, "Unknown interaction")  # unknown, or answered too late (Discord allows 3 s)
        if record.callbacks:
            return _error(400, 40060, "Interaction has already been acknowledged.")
        body: JSON = req.json or {}
        kind = int(body.get("type", 0))
        data: JSON = body.get("data") or {}
        if kind in (DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE) and record.type != MESSAGE_COMPONENT:
            return _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID", "Invalid interaction response type")
        if kind not in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE, 9):
            return _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID", "Invalid interaction response type")
        if kind in (CHANNEL_MESSAGE, UPDATE_MESSAGE) and (problem := _invalid(data, req.files, new=kind == CHANNEL_MESSAGE)) is not None:
            return problem
        record.callbacks.append(body)
        message: JSON | None = None
        if kind in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE):
            message = self._response_message(
                record,
                data if kind == CHANNEL_MESSAGE else {"flags": data.get("flags")},
                req.files,
                loading=kind == DEFERRED_CHANNEL_MESSAGE,
            )
            record.original = message
            self._store(message)
            if not int(message["flags"]) & EPHEMERAL:
                await self._dispatch("MESSAGE_CREATE", self._gateway_message(message), wait=False)
        elif kind in (DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE) and record.message is not None:
            message = self.find(int(record.message["channel_id"]), record.message["id"])
            record.original = message
            if kind == UPDATE_MESSAGE and message is not None:
                self._edit(message, data, req.files)
                if not int(message["flags"]) & EPHEMERAL:
                    await self._dispatch("MESSAGE_UPDATE", self._gateway_message(message), wait=False)
        if req.query.get("with_response") not in ("1", "true", "True"):
            return _no_content()
        answer: JSON = {"interaction": {"id": str(record.id), "type": record.type}, "resource": {"type": kind}}
        if message is not None:
            answer["interaction"] |= {
                "response_message_id": message["id"],
                "response_message_loading": bool(int(message["flags"]) & LOADING),
                "response_message_ephemeral": bool(int(message["flags"]) & EPHEMERAL),
            }
            answer["resource"]["message"] = _public(message)
        return _ok(answer)

    def _webhook(self, req: _Request) -> _Interaction | web.Response:
        """The interaction behind /webhooks/{application}/{token}, or Discord's refusal."""
        record = self._interactions.get(req.match.group(2))
        if req.id(1) != APP_ID or record is None or not record.callbacks:
            return _error(404, 10015, "Unknown Webhook")  # also before the interaction was answered
        if time.monotonic() - record.dispatched_at > self.token_lifetime_s:
            return _error(401, 50027, "Invalid Webhook Token")
        return record

    def _webhook_target(self, record: _Interaction, which: str) -> JSON | None:
        if which == "@original":
            return record.original
        return next((m for m in [record.original, *record.followups] if m is not None and m["id"] == which), None)

    async def _post_followup(self, req: _Request) -> web.Response:
        record = self._webhook(req)
        if isinstance(record, web.Response):
            return record
        body: JSON = req.json or {}
        if (problem := _invalid(body, req.files, new=True)) is not None:
            return problem
        original = record.original
        if original is not None and int(original["flags"]) & LOADING:
            # The first follow-up after a deferral replaces the "thinking…" message (its ephemerality included).
            self._edit(original, body, req.files)
            message = original
            event = "MESSAGE_UPDATE"
        else:
            message = self._response_message(record, body, req.files)
            self._store(message)
            event = "MESSAGE_CREATE"
        record.followups.append(message)
        if not int(message["flags"]) & EPHEMERAL:
            await self._dispatch(event, self._gateway_message(message), wait=False)
        if req.query.get("wait") in ("1", "true", "True"):
            return _ok(_public(message))
        return _no_content()

    async def _get_webhook_message(self, req: _Request) -> web.Response:
        record = self._webhook(req)
        if isinstance(record, web.Response):
            return record
        message = self._webhook_target(record, req.match.group(3))
        return _ok(_public(message)) if message else _error(404, 10008, "Unknown Message")

    async def _patch_webhook_message(self, req: _Request) -> web.Response:
        record = self._webhook(req)
        if isinstance(record, web.Response):
            return record
        message = self._webhook_target(record, req.match.group(3))
        if message is None:
            return _error(404, 10008, "Unknown Message")
        if (problem := _invalid(req.json or {}, req.files, new=False)) is not None:
            return problem
        self._edit(message, req.json or {}, req.files)
        if not int(message["flags"]) & EPHEMERAL:
            await self._dispatch("MESSAGE_UPDATE", self._gateway_message(message), wait=False)
        return _ok(_public(message))

    async def _delete_webhook_message(self, req: _Request) -> web.Response:
        record = self._webhook(req)
        if isinstance(record, web.Response):
            return record
        message = self._webhook_target(record, req.match.group(3))
        if message is None:
            return _error(404, 10008, "Unknown Message")
        await self._remove(message)
        if message is record.original:
            record.original = None
        return _no_content()

    # --- building Discord's objects ------------------------------------------------------------

    def _snowflake(self) -> int:
        self._last_id = max(self._last_id + 1, snowflake_at(int(time.time() * 1000)))
        return self._last_id

    def _me(self) -> JSON:
        return self.users[BOT_ID] | {"verified": True, "mfa_enabled": False, "flags": 0, "email": None, "locale": "en-US", "bio": ""}

    def _user(self, user_id: int) -> JSON:
        if user_id not in self.users:
            self.users[user_id] = _person(user_id)
        return self.users[user_id]

    def _member(self, user_id: int) -> JSON:
        return self._member_fields(user_id) | {"user": self._user(user_id)}

    def _member_fields(self, user_id: int) -> JSON:
        """A guild member without "user", as in MESSAGE_CREATE's "member" and mentions."""
        return {
            "roles": list(self.member_roles.get(user_id, [])), "joined_at": "2023-11-14T22:13:20.000000+00:00",
            "deaf": False, "mute": False, "flags": 0, "pending": False, "nick": None, "avatar": None, "banner": None,
            "premium_since": None, "communication_disabled_until": None,
        }  # fmt: skip

    def _guild(self, guild_id: int = GUILD_ID) -> JSON:
        other = self.other_guilds.get(guild_id)
        name, owner = (other["name"], other["owner_id"]) if other else ("Test guild", OWNER_ID)
        roles = [_role(guild_id, "@everyone", MEMBER_PERMISSIONS, 0)] if other else self.roles
        return {
            "id": str(guild_id), "name": name, "icon": None, "splash": None, "discovery_splash": None, "banner": None,
            "description": None, "owner_id": str(owner), "afk_channel_id": None, "afk_timeout": 300, "verification_level": 1,
            "default_message_notifications": 1, "explicit_content_filter": 2, "mfa_level": 0, "nsfw_level": 0, "features": [],
            "roles": roles,
            "emojis": [], "stickers": [], "application_id": None, "system_channel_id": None, "system_channel_flags": 0,
            "rules_channel_id": None, "public_updates_channel_id": None, "safety_alerts_channel_id": None, "max_members": 500_000,
            "vanity_url_code": None, "premium_tier": 0, "premium_subscription_count": 0, "preferred_locale": "en-US",
            "premium_progress_bar_enabled": False, "max_video_channel_users": 25, "max_stage_video_channel_users": 50,
        }  # fmt: skip

    def _guild_create(self, guild_id: int = GUILD_ID) -> JSON:
        """GUILD_CREATE: the guild with its channels, active threads and (no members intent) just the bot as member."""
        channels = [c for c in self.channels.values() if c.get("guild_id") == str(guild_id)]
        return self._guild(guild_id) | {
            "joined_at": "2023-11-14T22:13:20.000000+00:00", "large": False, "unavailable": False, "lazy": True,
            "member_count": len(self.users),
            "members": [self._member(BOT_ID)], "voice_states": [], "presences": [], "stage_instances": [],
            "guild_scheduled_events": [], "soundboard_sounds": [],
            "channels": [c for c in channels if c["type"] == GUILD_TEXT],
            "threads": [c for c in channels if c["type"] == PUBLIC_THREAD and not c["thread_metadata"]["archived"]],
        }  # fmt: skip

    def _dm_channel(self, user_id: int) -> JSON:
        """The bot's DM channel with a person, made on first use (Discord sends no CHANNEL_CREATE for DMs)."""
        for channel in self.channels.values():
            if channel["type"] == DM and channel["recipients"][0]["id"] == str(user_id):
                return channel
        channel_id = self._snowflake()
        self.channels[channel_id] = {
            "id": str(channel_id),
            "type": DM,
            "last_message_id": None,
            "flags": 0,
            "recipients": [self._user(user_id)],
        }
        return self.channels[channel_id]

    def _interaction_payload(
        self,
        kind: int,
        data: JSON,
        user_id: int,
        permissions: int,
        channel_id: int,
        *,
        name: str | None = None,
        message: JSON | None = None,
    ) -> JSON:
        channel = self.channels.get(channel_id)
        if channel is None:
            raise ValueError(f"unknown channel {channel_id}")
        record = _Interaction(
            self._snowflake(), "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(60), kind, channel_id, self._user(user_id), name, message
        )
        self._interactions[record.token] = record
        payload: JSON = {
            "id": str(record.id), "application_id": str(APP_ID), "type": kind, "data": data, "token": record.token, "version": 1,
            "channel_id": str(channel_id), "channel": channel | {"permissions": str(permissions)},
            "app_permissions": str(BOT_PERMISSIONS), "locale": "en-US", "entitlements": [],
            "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,  # discord.py requires it
        }  # fmt: skip
        if channel["type"] == DM:
            payload |= {"user": record.user, "context": 1, "authorizing_integration_owners": {"0": "0"}}  # bot DM, guild install
        else:
            member = self._member(user_id) | {"permissions": str(permissions)}  # the member's permissions in that channel
            guild = channel["guild_id"]
            payload |= {"guild_id": guild, "guild": {"id": guild, "locale": "en-US", "features": []},
                        "guild_locale": "en-US", "member": member, "context": 0,
                        "authorizing_integration_owners": {"0": guild}}  # fmt: skip
        if message is not None:
            payload["message"] = _public(message)
        return payload

    def _guild_of(self, channel_id: int) -> int | None:
        """The server a channel is in (None for a DM); a server the bot left delivers nothing."""
        channel = self.channels.get(channel_id)
        if channel is None:
            raise ValueError(f"unknown channel {channel_id}")
        guild_id = int(channel["guild_id"]) if channel.get("guild_id") else None
        if guild_id in self.left_guilds:
            raise ValueError(f"the bot left guild {guild_id}: Discord would deliver nothing from it")
        return guild_id

    def _registered(self, name: str, guild_id: int | None) -> tuple[int | None, JSON | None]:
        """Which synced command a name is: a guild command wins over a global one, as in Discord's client."""
        for scope in (guild_id, None):
            command = next((c for c in self.commands.get(scope, []) if c["name"] == name), None)
            if command is not None:
                return scope, command
        return None, None

    def _compose(
        self, channel_id: int, author: JSON, body: JSON, files: list[tuple[str, bytes, str]], *, replied: JSON | None = None
    ) -> JSON:
        """A new message as Discord returns it (not stored yet)."""
        channel = self.channels[channel_id]
        message: JSON = {
            "id": str(self._snowflake()), "channel_id": str(channel_id), "author": author, "content": body.get("content") or "",
            "timestamp": _now(), "edited_timestamp": None, "tts": bool(body.get("tts")), "mention_everyone": False, "mentions": [],
            "mention_roles": [], "attachments": self._attachments(body, files, []), "embeds": _embeds(body.get("embeds")),
            "pinned": False, "type": MESSAGE_DEFAULT, "components": body.get("components") or [],
            "flags": int(body.get("flags") or 0) & (SUPPRESS_EMBEDS | (1 << 12)),  # SUPPRESS_NOTIFICATIONS
        }  # fmt: skip
        if channel["type"] != DM:
            message["guild_id"] = channel["guild_id"]
        if body.get("nonce") is not None:
            message["nonce"] = body["nonce"]
        if replied is not None:
            message["type"] = MESSAGE_REPLY
            message["message_reference"] = {"type": 0, "channel_id": replied["channel_id"], "message_id": replied["id"],
                                            **({"guild_id": replied["guild_id"]} if "guild_id" in replied else {})}  # fmt: skip
            message["referenced_message"] = {k: v for k, v in _public(replied).items() if k != "referenced_message"}
        self._set_mentions(message, body.get("allowed_mentions"), replied)
        return message

    def _response_message(self, record: _Interaction, body: JSON, files: list[tuple[str, bytes, str]], *, loading: bool = False) -> JSON:
        """A message made through an interaction (its response or a follow-up); may be ephemeral."""
        message = self._compose(record.channel_id, self.users[BOT_ID], body, files)
        message["flags"] |= (int(body.get("flags") or 0) & EPHEMERAL) | (LOADING if loading else 0)
        message["type"] = MESSAGE_CHAT_INPUT_COMMAND if record.type == APPLICATION_COMMAND else MESSAGE_DEFAULT
        message |= {"webhook_id": str(APP_ID), "application_id": str(APP_ID), "interaction_token": record.token}
        metadata: JSON = {
            "id": str(record.id),
            "type": record.type,
            "user": record.user,
            "authorizing_integration_owners": {"0": str(GUILD_ID)},
        }
        if record.type == APPLICATION_COMMAND:
            metadata["name"] = record.name
            message["interaction"] = {"id": str(record.id), "type": record.type, "name": record.name, "user": record.user}
        if record.message is not None:
            metadata["interacted_message_id"] = record.message["id"]
        message["interaction_metadata"] = metadata
        return message

    def _edit(self, message: JSON, body: JSON, files: list[tuple[str, bytes, str]]) -> None:
        """Applies a PATCH body: only the fields present change; a deferred message stops loading."""
        was_loading = bool(int(message["flags"]) & LOADING)
        if "content" in body:
            message["content"] = body["content"] or ""
            self._set_mentions(message, body.get("allowed_mentions"), None)
        if "embeds" in body:
            message["embeds"] = _embeds(body["embeds"])
        if "components" in body:
            message["components"] = body["components"] or []
        if "attachments" in body or files:
            message["attachments"] = self._attachments(body, files, message["attachments"])
        flags = int(message["flags"]) & ~LOADING
        if body.get("flags") is not None:  # only SUPPRESS_EMBEDS can be changed by an edit
            flags = (flags & ~SUPPRESS_EMBEDS) | (int(body["flags"]) & SUPPRESS_EMBEDS)
        message["flags"] = flags
        if not was_loading:
            message["edited_timestamp"] = _now()

    def _set_mentions(self, message: JSON, allowed: JSON | None, replied: JSON | None) -> None:
        """Who the content pings, after allowed_mentions (none given: everything parses, as on Discord)."""
        parse = set(allowed.get("parse", [])) if allowed is not None else {"users", "roles", "everyone"}
        listed = {str(u) for u in (allowed or {}).get("users", [])}
        ids = list(dict.fromkeys(re.findall(r"<@!?(\d+)>", message["content"])))
        mentions = [self._user(int(i)) for i in ids if "users" in parse or i in listed]
        if replied is not None and (allowed is None or allowed.get("replied_user", True)) and replied["author"]["id"] not in ids:
            mentions.append(replied["author"])
        message["mentions"] = mentions
        message["mention_roles"] = re.findall(r"<@&(\d+)>", message["content"]) if "roles" in parse else []
        message["mention_everyone"] = "everyone" in parse and bool(re.search(r"@(everyone|here)\b", message["content"]))

    def _attachments(self, body: JSON, files: list[tuple[str, bytes, str]], existing: list[JSON]) -> list[JSON]:
        """The attachments after a send or edit: existing ones the body keeps, then the uploaded files."""
        uploaded = [
            self._store_file(name, data, content_type, folder="attachments", owner=CHANNEL_ID) for name, data, content_type in files
        ]
        if "attachments" not in body:
            return existing + uploaded
        kept: list[JSON] = []
        for entry in body.get("attachments") or []:
            match = next((a for a in existing if a["id"] == str(entry.get("id"))), None)
            if match is not None:
                kept.append(match)
        return kept + uploaded

    def _store_file(self, filename: str, data: bytes, content_type: str, *, folder: str, owner: int) -> JSON:
        attachment_id = self._snowflake()
        self._files[attachment_id] = (data, content_type)
        expires = int(time.time()) + 86_400  # Discord signs CDN links: ?ex=&is=&hm=
        url = f"{self.base}/{folder}/{owner}/{attachment_id}/{filename}?ex={expires:x}&is={expires - 86_400:x}&hm={secrets.token_hex(32)}&"
        return {"id": str(attachment_id), "filename": filename, "size": len(data), "url": url, "proxy_url": url,
                "content_type": content_type, "width": None, "height": None}  # fmt: skip

    def _store(self, message: JSON, *, count: bool = True) -> None:
        channel_id = int(message["channel_id"])
        self.messages[channel_id].append(message)
        channel = self.channels[channel_id]
        if not int(message["flags"]) & EPHEMERAL:
            channel["last_message_id"] = message["id"]
            if count and channel["type"] == PUBLIC_THREAD:
                channel["message_count"] += 1
                channel["total_message_sent"] += 1

    async def _remove(self, message: JSON) -> None:
        channel_id = int(message["channel_id"])
        self.messages[channel_id][:] = [m for m in self.messages[channel_id] if m is not message]  # in place: tests may hold the list
        if not int(message["flags"]) & EPHEMERAL:
            event = {
                "id": message["id"],
                "channel_id": message["channel_id"],
                **({"guild_id": message["guild_id"]} if "guild_id" in message else {}),
            }
            await self._dispatch("MESSAGE_DELETE", event, wait=False)

    def _gateway_message(self, message: JSON) -> JSON:
        """MESSAGE_CREATE/UPDATE's payload: in a guild, the author's and mentioned users' member fields too."""
        data = _public(message)
        if "guild_id" in data and not data.get("webhook_id"):
            data["member"] = self._member_fields(int(data["author"]["id"]))
        if "guild_id" in data:
            data["mentions"] = [u | {"member": self._member_fields(int(u["id"]))} for u in data["mentions"]]
        return data


# --- helpers -------------------------------------------------------------------------------------


def _bot_user() -> JSON:
    return {"id": str(BOT_ID), "username": BOT_NAME, "discriminator": "4821", "global_name": None, "avatar": None,
            "bot": True, "system": False, "public_flags": 0, "banner": None, "accent_color": None}  # fmt: skip


def _role(role_id: int, name: str, permissions: int, position: int, **extra: Any) -> JSON:
    return {"id": str(role_id), "name": name, "permissions": str(permissions), "position": position, "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None}, "hoist": False,
            "icon": None, "unicode_emoji": None, "managed": False, "mentionable": False, "flags": 0, **extra}  # fmt: skip


def _person(user_id: int, username: str | None = None, global_name: str | None = None) -> JSON:
    name = username or f"user{user_id}"
    return {"id": str(user_id), "username": name, "discriminator": "0", "global_name": global_name or name.title(),
            "avatar": None, "bot": False, "public_flags": 0, "banner": None, "accent_color": None}  # fmt: skip


def _text_channel(channel_id: int, name: str) -> JSON:
    return {"id": str(channel_id), "type": GUILD_TEXT, "guild_id": str(GUILD_ID), "name": name, "position": 0,
            "permission_overwrites": [], "topic": None, "nsfw": False, "last_message_id": None, "rate_limit_per_user": 0,
            "parent_id": None, "flags": 0, "default_thread_rate_limit_per_user": 0, "default_auto_archive_duration": 4320}  # fmt: skip


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _public(message: JSON) -> JSON:
    """A stored message as Discord shows it (a deep copy, without the fake's bookkeeping)."""
    return copy.deepcopy({k: v for k, v in message.items() if k != "interaction_token"})


def _embeds(embeds: Any) -> list[JSON]:
    return [{"type": "rich", **e} for e in embeds or []]


def _stringify_ids(options: list[JSON]) -> list[JSON]:
    """Option values of type user, channel, role, mentionable and attachment are snowflake strings on the wire."""
    out = []
    for option in options:
        option = dict(option)
        if option.get("type") in (6, 7, 8, 9, 11) and "value" in option:
            option["value"] = str(option["value"])
        if "options" in option:
            option["options"] = _stringify_ids(option["options"])
        out.append(option)
    return out


def _find_component(components: list[JSON], custom_id: str) -> JSON | None:
    for component in components:
        if component.get("custom_id") == custom_id:
            return component
        for key in ("components", "accessory"):
            children = component.get(key)
            found = _find_component(children if isinstance(children, list) else [children] if children else [], custom_id)
            if found is not None:
                return found
    return None


def _invalid(body: JSON, files: list[tuple[str, bytes, str]], *, new: bool) -> web.Response | None:
    """Discord's checks on a message body: length limits, and nothing empty when sending."""
    content = body.get("content") or ""
    if len(content) > CONTENT_LIMIT:
        return _form_error("content", "BASE_TYPE_MAX_LENGTH", f"Must be {CONTENT_LIMIT} or fewer in length.")
    embeds = body.get("embeds") or []
    if len(embeds) > 10:
        return _form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
    for embed in embeds:
        if len(embed.get("description") or "") > 4096 or len(embed.get("title") or "") > 256:
            return _form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Embed field too long.")
    rows = body.get("components") or []
    if len(rows) > 5 or any(len(row.get("components") or []) > 5 for row in rows if row.get("type") == 1):
        return _form_error("components", "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
    for row in rows:
        for item in row.get("components") or []:
            if len(item.get("custom_id") or "") > 100 or len(item.get("label") or "") > 80:
                return _form_error("components", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
    if new and not (content or embeds or rows or files or body.get("sticker_ids") or body.get("poll")):
        return _error(400, 50006, "Cannot send an empty message")
    return None


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _ok(data: Any) -> web.Response:
    # Exactly "application/json": discord.py's json_or_text compares the header verbatim, and
    # aiohttp's json_response would add "; charset=utf-8" (discord.py then sees a str, not a dict).
    return web.Response(body=_json_bytes(data), headers={"Content-Type": "application/json"})


def _no_content() -> web.Response:
    return web.Response(status=204)


def _error(status: int, code: int, message: str, errors: JSON | None = None) -> web.Response:
    body: JSON = {"message": message, "code": code}
    if errors is not None:
        body["errors"] = errors
    return web.Response(status=status, body=_json_bytes(body), headers={"Content-Type": "application/json"})


def _form_error(field_name: str, code: str, message: str) -> web.Response:
    return _error(400, 50035, "Invalid Form Body", {field_name: {"_errors": [{"code": code, "message": message}]}})


def _rate_limit_headers(*, limit: int, remaining: int, reset_after: float, bucket: str) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
        "X-RateLimit-Reset-After": f"{reset_after:.3f}",
        "X-RateLimit-Bucket": bucket,
    }


def _too_many_requests(retry_after: float, bucket: str) -> web.Response:
    """Discord's 429. discord.py retries only when the answer is JSON and carries a ``Via`` header
    (without it, it assumes a Cloudflare ban and raises); it sleeps the body's ``retry_after``."""
    headers = _rate_limit_headers(limit=5, remaining=0, reset_after=retry_after, bucket=bucket)
    headers |= {
        "Retry-After": str(math.ceil(retry_after)),
        "X-RateLimit-Scope": "user",
        "Via": "1.1 google",
        "Content-Type": "application/json",
    }
    body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}
    return web.Response(status=429, body=_json_bytes(body), headers=headers)


async def _read_body(request: web.Request) -> tuple[Any, list[tuple[str, bytes, str]]]:
    """The JSON body, or a multipart body's payload_json and files[n] (how discord.py uploads files)."""
    if request.content_type.startswith("multipart/"):
        payload: Any = None
        files: list[tuple[str, bytes, str]] = []
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue  # discord.py never nests multipart bodies
            if part.name == "payload_json":
                payload = json.loads(await part.text())
            elif part.name and part.name.startswith("files["):
                content_type = part.headers.get("Content-Type", "application/octet-stream")
                files.append((part.filename or "file", bytes(await part.read()), content_type))
        return payload, files
    text = await request.text()
    return (json.loads(text) if text else None), []
