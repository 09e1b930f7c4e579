"""Slack's Events API endpoint (/slack/events, HTTP mode), in front of slack-bolt's handler.

It refuses what bolt would turn into a 500 with a traceback (a malformed timestamp header, a body
that is not UTF-8, and, once the signature is checked, a body bolt cannot read: not JSON, not an
object, or with a field of another shape than Slack sends, see ``unreadable``) with a plain
401/400 and a short reason, and answers a replayed request once: Slack
signs ``v0:<timestamp>:<body>`` and bolt accepts a signature for 5 minutes, so the same signed
request sent twice in that window (a replay, or a retry of a request that did arrive) is
acknowledged without being handled again. A retry whose first delivery never arrived is a
request not seen before, and is handled. Events are also answered once by event_id (see
SlackAdapter), which covers retries Slack signs anew. Both are remembered in the state
database (bot.platform_state), so that a request sent again to another replica counts too.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.context import BoltContext
from slack_bolt.request.internals import build_context, parse_body
from slack_sdk.signature import SignatureVerifier
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bot.platform_state import SeenOnce, claim_once

log = logging.getLogger(__name__)

SIGNATURE_WINDOW_S = 5 * 60  # slack_sdk's SignatureVerifier refuses timestamps further off than this
# The shapes of the fields bolt's parsing, middleware and listener matching read without checking
# their type (slack_bolt.request.internals, payload_utils, listener_matcher), at the top of a body
# and in its event, as Slack's payload reference gives them. null is accepted where bolt allows it.
OBJECT_FIELDS = ("event", "view", "message", "previous_message", "container", "item", "assistant_thread", "function_data", "workflow_step")
OBJECT_OR_TEXT_FIELDS = ("team", "user", "channel", "enterprise")
LIST_OF_OBJECTS_FIELDS = ("authorizations", "response_urls", "actions", "files")
_JSON_KINDS = {list: "an array, not a", str: "a string, not a", int: "a number, not a", float: "a number, not a", bool: "a boolean, not a", type(None): "null, not a"}


class EventsEndpoint:
    def __init__(self, app: AsyncApp, signing_secret: str, seen: SeenOnce) -> None:
        self._bolt = AsyncSlackRequestHandler(app)
        self._verifier = SignatureVerifier(signing_secret)
        self._seen = seen  # "slack-request:" + sha256 of timestamp and body, until its signature expires

    async def handle(self, request: Request) -> Response:
        timestamp = request.headers.get("x-slack-request-timestamp", "")
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            return _refused(401, "invalid request: X-Slack-Request-Timestamp must be a Unix time in seconds")
        body = await request.body()
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return _refused(400, "invalid request: the body is not UTF-8")
        if not self._verifier.is_valid(body, timestamp, request.headers.get("x-slack-signature", "")):
            return _refused(401, "invalid request")
        content_type = request.headers.get("content-type", "").split(";")[0] or None  # as bolt reads it
        if (why := unreadable(body.decode("utf-8"), content_type)) is not None:
            log.warning("a signed Slack request was refused: %s", why)
            return _refused(400, f"invalid request: {why}")
        key = "slack-request:" + hashlib.sha256(timestamp.encode() + b":" + body).hexdigest()
        ttl_s = max(int(timestamp) - time.time(), 0) + SIGNATURE_WINDOW_S + 1  # until bolt would refuse the signature anyway
        if not await claim_once(self._seen, key, ttl_s):
            log.info(
                "a signed Slack request was delivered again (retry %s): answered once", request.headers.get("x-slack-retry-num", "none")
            )
            return Response(status_code=200)
        response = await self._bolt.handle(request)
        if not 200 <= response.status_code < 300:
            await asyncio.to_thread(self._seen.forget, key)  # not handled: Slack's retry of it must be
        return response


def unreadable(body: str, content_type: str | None) -> str | None:
    """Why slack-bolt could not read this (signed) body, or None: what it would otherwise answer with
    a 500 and a logged traceback. The body is parsed as bolt parses it, its fields checked against
    the shapes Slack sends, and bolt's context built from it (pure functions of the body)."""
    try:
        payload = parse_body(body, content_type)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return "the body is not valid JSON (or a form whose payload field is)"
    if not isinstance(payload, dict):
        return f"the body is {_JSON_KINDS.get(type(payload), 'not')} JSON object"
    if "event" in payload and not isinstance(payload["event"], dict):
        return "its event is not an object"
    for where, part in (("the body", payload), ("its event", payload.get("event") or {})):
        if (why := _misshapen(part)) is not None:
            return f"in {where}, {why}"
    try:
        build_context(BoltContext(), payload)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError):
        return "its fields are not shaped as Slack sends them"
    return None


def _misshapen(part: dict[str, Any]) -> str | None:
    for name in OBJECT_FIELDS:
        if part.get(name) is not None and not isinstance(part[name], dict):
            return f"{name} is not an object"
    for name in OBJECT_OR_TEXT_FIELDS:
        if part.get(name) is not None and not isinstance(part[name], dict | str):
            return f"{name} is neither an object nor a string"
    for name in LIST_OF_OBJECTS_FIELDS:
        value = part.get(name)
        if value is not None and not (isinstance(value, list) and all(isinstance(item, dict) for item in value)):
            return f"{name} is not a list of objects"
    return None


def _refused(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
