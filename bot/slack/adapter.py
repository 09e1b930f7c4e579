"""The Slack front end: slack-bolt's AsyncApp, over Socket Mode or the HTTP Events API.

Every incoming event is acknowledged first (bolt does it before the listener runs), read into
a typed value (bot.slack.messages), answered through the core, and rendered by
bot.slack.render. One error boundary per event: the user gets a short apology, the log the
stack. Payloads and user text are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler, async_default_handlers
from slack_sdk.web.async_client import AsyncWebClient
from starlette.routing import Route

from bot.answer_log import AnswerLog
from bot.answering import AnswerFlow
from bot.desk_replies import NOT_ADMIN, Markup, added_text, documents_text, failure_text, removed_text
from bot.platform_state import SeenOnce, claim_once
from bot.slack import messages as msg
from bot.slack.http_events import EventsEndpoint
from bot.slack.messages import PLATFORM, slack_error
from bot.slack.render import FEEDBACK_ACTION_DOWN, FEEDBACK_ACTION_UP, SECTION_TEXT_LIMIT, escape
from bot.slack.streaming import AnswerMessage, StreamSupport
from config.errors import ConfigError, TeambotError
from config.settings import Settings
from rag.operations.desk import KnowledgeDesk, UploadError

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
# What the adapter listens to; deploy/slack-manifest.yml asks Slack for exactly these.
SUBSCRIBED_EVENTS = ("app_mention", "message")
SLASH_COMMANDS = ("/ask", "/kb")
# Where Slack serves files (url_private); the bot token is sent nowhere else but SLACK_API_URL's host.
SLACK_FILE_HOSTS = frozenset({"files.slack.com", "files-edu.slack.com", "files.slack-gov.com"})
SEEN_EVENT_TTL_S = 3600  # how long an event_id is remembered to answer it once (Slack retries within minutes)
ADMIN_CACHE_S = 300
RATE_LIMIT_RETRIES = 5
DOWNLOAD_TIMEOUT_S = 60
MARKUP = Markup(bold=lambda text: f"*{text}*", escape=escape, refused=":no_entry:", warning=":warning:", limit=SECTION_TEXT_LIMIT)
KB_HELP = (
    "*Knowledge base commands* (for admins)\n"
    "• `/kb list [collection]`: the documents and their chunks\n"
    "• `/kb remove NAME` or `/kb remove COLLECTION:NAME`: delete a document\n"
    "• `/kb upload [collection]`: how to add files\n"
    "• `/kb reindex`: re-index every collection now (only changed files are embedded)"
)


class SlackAdapter:
    def __init__(self, settings: Settings, flow: AnswerFlow, desk: KnowledgeDesk, answers: AnswerLog, seen: SeenOnce) -> None:
        """``seen``: the event ids already answered, shared by every replica (bot.platform_state)."""
        if settings.slack_bot_token is None:
            raise ConfigError("Slack needs SLACK_BOT_TOKEN (xoxb-...)", "set it in the environment")
        if settings.slack_app_token is None and settings.slack_signing_secret is None:
            raise ConfigError(
                "Slack needs SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP Events API) beside SLACK_BOT_TOKEN",
                "Socket Mode needs no public URL: create an app-level token with connections:write (xapp-...)",
            )
        if settings.slack_app_token is not None and not settings.slack_app_token.get_secret_value().startswith("xapp-"):
            raise ConfigError("SLACK_APP_TOKEN is not an app-level token (they start with xapp-)", "copy it from Basic Information > App-Level Tokens")
        self._settings = settings
        self._flow = flow
        self._desk = desk
        self._answers = answers
        self._bot_token = settings.slack_bot_token.get_secret_value()
        self.client = AsyncWebClient(
            token=self._bot_token,
            base_url=settings.slack_api_url,
            retry_handlers=[*async_default_handlers(), AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES)],
        )
        signing_secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
        self.app = AsyncApp(
            client=self.client,
            signing_secret=signing_secret,
            request_verification_enabled=signing_secret is not None,
            logger=logging.getLogger("slack_bolt.teambot"),
        )
        self._streams = StreamSupport(enabled=settings.slack.streaming == "auto")
        self._seen = seen
        self._admins: dict[str, tuple[bool, float]] = {}
        self._socket: AsyncSocketModeHandler | None = None
        self.bot_user_id = ""
        self.team_id = ""
        self._register()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Checks the token with auth.test, then connects Socket Mode if SLACK_APP_TOKEN is set."""
        try:
            auth = await self.client.auth_test()
        except SlackApiError as exc:
            raise ConfigError(f"Slack refused SLACK_BOT_TOKEN ({slack_error(exc)})", "copy the Bot User OAuth Token (xoxb-...) again") from None
        except Exception as exc:  # aiohttp's connection errors
            raise TeambotError(f"cannot reach Slack's Web API at {self._settings.slack_api_url} ({type(exc).__name__})", "check the network, or SLACK_API_URL") from None
        self.bot_user_id, self.team_id = auth["user_id"], auth.get("team_id", "")
        if self._settings.slack_app_token is not None:
            self._socket = AsyncSocketModeHandler(self.app, self._settings.slack_app_token.get_secret_value())
            await self._socket.connect_async()
        log.info("Slack connected as %s (%s)", self.bot_user_id, "Socket Mode" if self._socket else "HTTP Events API")

    async def stop(self) -> None:
        if self._socket is not None:
            await self._socket.close_async()

    def routes(self) -> list[Route]:
        """The Events API endpoint for teambot's HTTP server (when SLACK_SIGNING_SECRET is set)."""
        if self._settings.slack_signing_secret is None:
            return []
        return [Route(EVENTS_PATH, EventsEndpoint(self.app, self._settings.slack_signing_secret.get_secret_value(), self._seen).handle, methods=["POST"])]

    # --- listeners ------------------------------------------------------------------------

    def _register(self) -> None:
        mention, message = SUBSCRIBED_EVENTS
        ask, kb = SLASH_COMMANDS
        self.app.event(mention)(self._on_mention)
        self.app.event(message)(self._on_message)
        self.app.command(ask)(self._on_ask)
        self.app.command(kb)(self._on_kb)
        self.app.action(FEEDBACK_ACTION_UP)(self._on_feedback)
        self.app.action(FEEDBACK_ACTION_DOWN)(self._on_feedback)

    async def _on_mention(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        if msg.is_from_a_bot(event, self.bot_user_id) or not await self._first_delivery(body):
            return
        question = msg.question_from_message(event, self.team_id, self._settings.slack)
        await self._answer(question)

    async def _on_message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        subtype = event.get("subtype")
        if subtype not in (None, "file_share", "thread_broadcast") or msg.is_from_a_bot(event, self.bot_user_id):
            return  # edits, deletions, joins; our own and other bots' messages
        if not await self._first_delivery(body):
            return
        if event.get("channel_type") == "im":
            if event.get("files"):
                await self._on_files(event)
            elif msg.strip_mentions(event.get("text", "")):
                await self._answer(msg.question_from_message(event, self.team_id, self._settings.slack))
            return
        if msg.mentions(event.get("text", ""), self.bot_user_id):
            return  # app_mention answers it
        thread = event.get("thread_ts")
        if self._settings.slack.follow_ups and thread and thread != event["ts"]:
            if await asyncio.to_thread(self._answers.answered_in, PLATFORM, event["channel"], thread):
                await self._answer(msg.question_from_message(event, self.team_id, self._settings.slack))

    async def _on_ask(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        text = msg.strip_mentions(command.get("text", ""))
        if not text:
            await ack("Ask me something: `/ask How do I request VPN access?`")
            return
        await ack()
        channel, user = command["channel_id"], command["user_id"]
        try:
            anchor = await self.client.chat_postMessage(channel=channel, text=f"<@{user}> asked: {escape(text)}")
        except SlackApiError as exc:
            await respond(text=f"I cannot post in this channel ({slack_error(exc)}): invite me with `/invite @teambot`, or ask me in a direct message.", response_type="ephemeral")
            return
        is_dm = channel.startswith("D")
        await self._answer(
            msg.slack_question(
                channel=channel, user=user, team=command.get("team_id", self.team_id), text=text,
                reply_thread=anchor["ts"], history_thread=None if is_dm else anchor["ts"], question_ts=anchor["ts"],
                collections=msg.collections_for(channel, is_dm, self._settings.slack),
            )
        )  # fmt: skip

    async def _on_feedback(self, ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        await ack()
        vote = "up" if action["action_id"] == FEEDBACK_ACTION_UP else "down"
        recorded = await asyncio.to_thread(self._answers.vote, action.get("value", ""), body["user"]["id"], vote)
        text = "Thanks for the feedback!" if recorded else "That answer is no longer on record, but thanks."
        await respond(text=text, response_type="ephemeral", replace_original=False)

    async def _on_kb(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        await ack()
        sub, _, argument = command.get("text", "").strip().partition(" ")
        sub, argument = sub.lower(), argument.strip()
        if sub in ("", "help"):
            await respond(text=KB_HELP, response_type="ephemeral")
            return
        if not await self._is_admin(command["user_id"]):
            await respond(text=NOT_ADMIN, response_type="ephemeral")
            return
        channel = command["channel_id"]
        default = msg.collections_for(channel, channel.startswith("D"), self._settings.slack)[0]
        try:
            if sub == "list":
                collection = argument or default
                text = documents_text(collection, await asyncio.to_thread(self._desk.documents, collection), MARKUP)
            elif sub == "remove" and argument:
                collection, name = msg.parse_remove_target(argument, default)
                text = removed_text(await asyncio.to_thread(self._desk.remove, collection, name, f"{PLATFORM}:remove"), MARKUP)
            elif sub == "reindex":
                text = (await asyncio.to_thread(self._desk.request_reindex, PLATFORM)).text()
            elif sub == "upload":
                text = (
                    "Share the files with me in a direct message. To add them to a collection other than "
                    f"`{argument or 'default'}`, write its name as the message. I index them at once."
                )
            else:
                text = KB_HELP
        except ValueError:
            text = f":no_entry: `{escape(argument)}` is not `NAME` or `COLLECTION:NAME`."
        except TeambotError as exc:
            text = failure_text(exc, MARKUP)
        await respond(text=text, response_type="ephemeral")

    # --- answering ------------------------------------------------------------------------

    async def _answer(self, question: msg.SlackQuestion) -> None:
        request = question.request
        message = AnswerMessage(
            client=self.client, channel=request.channel, thread_ts=question.reply_thread,
            interval_s=self._settings.slack.update_interval_s, streams=self._streams,
            recipient_user=request.user, recipient_team=question.team,
        )  # fmt: skip
        history = await self._history(question) if request.text else []
        await self._flow.answer(replace(request, history=tuple(history)), message)

    async def _history(self, question: msg.SlackQuestion) -> list[Any]:
        limit = 2 * self._settings.bot.history_turns + 2
        if not limit:
            return []
        try:
            if question.history_thread:
                response = await self.client.conversations_replies(channel=question.request.channel, ts=question.history_thread, limit=100)
            elif question.reply_thread is None:  # a direct message: the conversation is the DM
                response = await self.client.conversations_history(channel=question.request.channel, limit=limit)
            else:
                return []
        except SlackApiError as exc:
            log.warning("no conversation history (%s); answering without it", slack_error(exc))
            return []
        return msg.turns(response.get("messages", []), self.bot_user_id, question.question_ts)

    # --- uploads --------------------------------------------------------------------------

    async def _on_files(self, event: dict[str, Any]) -> None:
        channel, user = event["channel"], event.get("user", "")
        if not await self._is_admin(user):
            await self._say(channel, "Sorry, only knowledge base admins can add documents. Ask one of them to share the file with me.")
            return
        try:
            collection = msg.upload_collection(event.get("text", ""))
        except ValueError as exc:
            await self._say(channel, f":no_entry: `{escape(str(exc))}` is not a collection name: use lowercase letters, digits, '-' or '_'.")
            return
        for file in msg.shared_files(event):
            await self._say(channel, await self._add_file(file, collection))

    async def _add_file(self, file: msg.SharedFile, collection: str) -> str:
        try:
            await asyncio.to_thread(self._desk.check, file.name, file.size)
            data = await self._download(file)
            added = await asyncio.to_thread(self._desk.add, collection, file.name, data, f"{PLATFORM}:upload")
        except TeambotError as exc:
            return failure_text(exc, MARKUP, subject=f"{file.name} was not added: ")
        return added_text(added, MARKUP)

    async def _download(self, file: msg.SharedFile) -> bytes:
        """The file's bytes, fetched with the bot token from Slack's file host only, within the size limit."""
        if not file.url:
            raise UploadError(f"{file.name}: Slack sent no download link", "share the file again")
        if not self._is_slack_file_url(file.url):
            raise UploadError(f"{file.name}: refusing to send the bot token to {urlsplit(file.url).hostname}", "share the file from Slack itself")
        limit = self._desk.max_bytes
        data = bytearray()
        async with httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT_S, follow_redirects=False) as http:
            async with http.stream("GET", file.url, headers={"Authorization": f"Bearer {self._bot_token}"}) as response:
                if response.status_code != 200:
                    raise UploadError(f"{file.name}: Slack answered the download with HTTP {response.status_code}", "the app needs the files:read scope")
                content_type = response.headers.get("content-type", "")
                if content_type.startswith("text/html") and not file.mimetype.startswith("text/html"):
                    raise UploadError(
                        f"{file.name}: Slack sent a sign-in page instead of the file", "the app needs the files:read scope; reinstall it"
                    )
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > limit:
                        raise UploadError(f"{file.name} is over the limit of {self._settings.rag.max_file_mb:g} MB", "split it, or raise rag.max_file_mb")
        return bytes(data)

    def _is_slack_file_url(self, url: str) -> bool:
        parts, api = urlsplit(url), urlsplit(self._settings.slack_api_url)
        if parts.scheme == "https" and parts.hostname in SLACK_FILE_HOSTS:
            return True
        return (parts.scheme, parts.hostname, parts.port) == (api.scheme, api.hostname, api.port)

    # --- helpers --------------------------------------------------------------------------

    async def _is_admin(self, user: str) -> bool:
        if user in self._settings.slack.admin_users:
            return True
        cached = self._admins.get(user)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        try:
            info = (await self.client.users_info(user=user))["user"]
        except SlackApiError as exc:
            log.warning("users.info failed (%s): treating the user as no admin", slack_error(exc))
            return False
        is_admin = bool(info.get("is_admin") or info.get("is_owner") or info.get("is_primary_owner"))
        self._admins[user] = (is_admin, time.monotonic() + ADMIN_CACHE_S)
        return is_admin

    async def _say(self, channel: str, text: str, thread_ts: str | None = None) -> None:
        await self.client.chat_postMessage(channel=channel, text=text, thread_ts=thread_ts)

    async def _first_delivery(self, body: dict[str, Any]) -> bool:
        """False for an event_id seen before, by any replica: Slack's retries and Socket Mode redeliveries are answered once."""
        event_id = body.get("event_id")
        if not event_id:
            return True
        if await claim_once(self._seen, f"slack-event:{event_id}", SEEN_EVENT_TTL_S):
            return True
        log.info("event %s delivered again (retry %s); answered once", event_id, body.get("retry_attempt", "?"))
        return False
