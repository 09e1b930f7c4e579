"""A local Slack for tests: the Web API, Socket Mode and the file host, on 127.0.0.1.

It speaks Slack's wire protocols to the real slack-bolt / slack_sdk clients: Web API methods
answer JSON with "ok"; ``apps.connections.open`` hands out a websocket URL on this server,
where events, slash commands and button clicks are sent as Socket Mode envelopes and acked by
envelope_id; ``url_private`` downloads need the bot token, and without it get an HTML sign-in
page with status 200, as Slack does. Every call is recorded; messages are kept per channel so
that history methods and assertions see what users would see. A method can be told to answer
429 with Retry-After, and the chat streaming API can be switched off ("unknown_method").
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

BOT_USER = "UBOT"
BOT_ID = "BBOT"
TEAM = "T0TEAM"
BOT_TOKEN = "xoxb-test-bot-token"
APP_TOKEN = "xapp-test-app-token"
SIGN_IN_PAGE = "<!DOCTYPE html><html><head><title>Sign in | Slack</title></head><body>Sign in to Slack</body></html>"


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


class FakeSlack:
    def __init__(self, *, admins: tuple[str, ...] = (), streaming: bool = False) -> None:
        self.admins = set(admins)
        self.streaming = streaming
        self.calls: list[Call] = []
        self.messages: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.files: dict[str, tuple[bytes, str]] = {}
        self.rate_limited: dict[str, int] = {}  # method -> how many calls still get a 429
        self.retry_after_s = 1
        self.acked: list[str] = []
        self.responses: list[dict[str, Any]] = []  # what listeners sent to response_url
        self.connected = asyncio.Event()
        self._socket: web.WebSocketResponse | None = None
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- server --------------------------------------------------------------------------

    async def start(self) -> FakeSlack:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_get("/socket", self._socket_mode)
        app.router.add_get("/files/{file_id}", self._file)
        app.router.add_post("/response/{token}", self._response_url)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await _params(request)
        self.calls.append(Call(method, params))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        expected = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != expected:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if self.rate_limited.get(method):
            self.rate_limited[method] -= 1
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": str(self.retry_after_s)})
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        return web.json_response(handler(params) if handler else {"ok": True})

    # --- Web API methods -----------------------------------------------------------------

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "user_id": BOT_USER, "bot_id": BOT_ID, "team_id": TEAM, "user": "teambot", "team": "Test team"}

    def _apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/socket"}

    def _chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._add(params["channel"], {"user": BOT_USER, "bot_id": BOT_ID, "text": params.get("text", ""),
                                                "blocks": _json(params.get("blocks")), "thread_ts": params.get("thread_ts")})  # fmt: skip
        return {"ok": True, "channel": params["channel"], "ts": message["ts"], "message": message}

    def _chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self.find(params["channel"], params["ts"])
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        message.update(text=params.get("text", ""), blocks=_json(params.get("blocks")))
        return {"ok": True, "channel": params["channel"], "ts": params["ts"], "text": message["text"]}

    def _chat_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        self.messages[params["channel"]] = [m for m in self.messages[params["channel"]] if m["ts"] != params["ts"]]
        return {"ok": True}

    def _chat_startStream(self, params: dict[str, Any]) -> dict[str, Any]:
        if not self.streaming:
            return {"ok": False, "error": "unknown_method"}
        message = self._add(params["channel"], {"user": BOT_USER, "bot_id": BOT_ID, "text": params.get("markdown_text", ""),
                                                "thread_ts": params.get("thread_ts"), "streaming": True})  # fmt: skip
        return {"ok": True, "channel": params["channel"], "ts": message["ts"]}

    def _chat_appendStream(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self.find(params["channel"], params["ts"])
        if message is None or not message.get("streaming"):
            return {"ok": False, "error": "message_not_in_streaming_state"}
        message["text"] += params.get("markdown_text", "")
        return {"ok": True, "channel": params["channel"], "ts": params["ts"]}

    def _chat_stopStream(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self.find(params["channel"], params["ts"])
        if message is None or not message.get("streaming"):
            return {"ok": False, "error": "message_not_in_streaming_state"}
        message["text"] += params.get("markdown_text") or ""
        message.update(streaming=False, blocks=_json(params.get("blocks")))
        return {"ok": True, "channel": params["channel"], "ts": params["ts"]}

    def _conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        thread = params["ts"]
        found = [m for m in self.messages[params["channel"]] if m["ts"] == thread or m.get("thread_ts") == thread]
        return {"ok": True, "messages": sorted(found, key=lambda m: float(m["ts"])), "has_more": False}

    def _conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        top_level = [m for m in self.messages[params["channel"]] if not m.get("thread_ts") or m["thread_ts"] == m["ts"]]
        newest_first = sorted(top_level, key=lambda m: -float(m["ts"]))
        return {"ok": True, "messages": newest_first[: int(params.get("limit", 100))], "has_more": False}

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = params["user"]
        return {"ok": True, "user": {"id": user, "name": user.lower(), "is_admin": user in self.admins, "is_owner": False}}

    # --- Socket Mode, files, response_url ------------------------------------------------

    async def _socket_mode(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        self._socket = socket
        await socket.send_json({"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0APP"}})
        self.connected.set()
        async for frame in socket:
            if frame.type == WSMsgType.TEXT:
                envelope_id = json.loads(frame.data).get("envelope_id")
                if envelope_id:
                    self.acked.append(envelope_id)
        return socket

    async def _file(self, request: web.Request) -> web.Response:
        authorised = request.headers.get("Authorization") == f"Bearer {BOT_TOKEN}"
        if not authorised or request.match_info["file_id"] not in self.files:  # as Slack answers a file the token may not read
            return web.Response(text=SIGN_IN_PAGE, content_type="text/html")
        data, mimetype = self.files[request.match_info["file_id"]]
        return web.Response(body=data, content_type=mimetype)

    async def _response_url(self, request: web.Request) -> web.Response:
        self.responses.append(await request.json())
        return web.Response(text="ok")

    # --- what tests do -------------------------------------------------------------------

    def user_message(self, channel: str, user: str, text: str, *, thread_ts: str | None = None, files: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """A person's message, kept in the channel; returns the message event Slack would send."""
        channel_type = "im" if channel.startswith("D") else "channel"
        message = self._add(channel, {"user": user, "text": text, "thread_ts": thread_ts, "team": TEAM})
        event = {"type": "message", "channel": channel, "user": user, "text": text, "ts": message["ts"],
                 "event_ts": message["ts"], "channel_type": channel_type, "team": TEAM}  # fmt: skip
        if thread_ts:
            event["thread_ts"] = thread_ts
        if files:
            event.update(subtype="file_share", files=files)
        return event

    def share_file(self, name: str, data: bytes, mimetype: str, *, url: str | None = None) -> dict[str, Any]:
        """A file as Slack describes it in a file_share event; downloadable from this server."""
        file_id = f"F{next(self._ids):06d}"
        self.files[file_id] = (data, mimetype)
        link = url or f"{self.base}/files/{file_id}"
        return {"id": file_id, "name": name, "title": name, "mimetype": mimetype, "size": len(data),
                "url_private": link, "url_private_download": link}  # fmt: skip

    def event_body(self, event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
        """The Events API payload (event_callback) around an event."""
        return {"token": "legacy", "team_id": TEAM, "api_app_id": "A0APP", "event": event, "type": "event_callback",
                "event_id": event_id or f"Ev{next(self._ids):08d}", "event_time": int(time.time()),
                "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}]}  # fmt: skip

    async def send_event(self, event: dict[str, Any], event_id: str | None = None) -> str:
        return await self._envelope("events_api", self.event_body(event, event_id))

    async def send_command(self, command: str, text: str, *, user: str, channel: str) -> str:
        payload = {"command": command, "text": text, "user_id": user, "channel_id": channel, "team_id": TEAM,
                   "response_url": f"{self.base}/response/{next(self._ids)}", "trigger_id": "T.1", "api_app_id": "A0APP"}  # fmt: skip
        return await self._envelope("slash_commands", payload)

    async def click(self, action_id: str, value: str, *, user: str, channel: str, message_ts: str) -> str:
        payload = {"type": "block_actions", "user": {"id": user}, "team": {"id": TEAM}, "api_app_id": "A0APP",
                   "channel": {"id": channel}, "message": {"ts": message_ts}, "container": {"type": "message", "message_ts": message_ts},
                   "trigger_id": "T.2", "response_url": f"{self.base}/response/{next(self._ids)}",
                   "actions": [{"action_id": action_id, "value": value, "block_id": "feedback", "type": "button"}]}  # fmt: skip
        return await self._envelope("interactive", payload)

    async def _envelope(self, kind: str, payload: dict[str, Any]) -> str:
        await asyncio.wait_for(self.connected.wait(), 10)
        assert self._socket is not None
        envelope_id = f"env-{next(self._ids)}"
        await self._socket.send_json({"envelope_id": envelope_id, "type": kind, "payload": payload, "accepts_response_payload": kind != "events_api"})
        return envelope_id

    def find(self, channel: str, ts: str) -> dict[str, Any] | None:
        return next((m for m in self.messages[channel] if m["ts"] == ts), None)

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The bot's messages in a thread, oldest first."""
        return [m for m in self.messages[channel] if m.get("thread_ts") == thread_ts and m.get("user") == BOT_USER]

    def called(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def _add(self, channel: str, message: dict[str, Any]) -> dict[str, Any]:
        ts = f"{1_700_000_000 + next(self._ts)}.000100"
        message = {"type": "message", "ts": ts, **{k: v for k, v in message.items() if v is not None}}
        self.messages[channel].append(message)
        return message


async def _params(request: web.Request) -> dict[str, Any]:
    """A method's arguments, wherever slack_sdk put them: the query, a form or a JSON body."""
    params: dict[str, Any] = dict(request.query)
    body = await request.text()
    if request.content_type == "application/json" and body:
        params.update(json.loads(body))
    elif body:
        params.update(parse_qsl(body, keep_blank_values=True))
    return params


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
