"""Slack's Events API endpoint (/slack/events, HTTP mode), in front of slack-bolt's handler.

It refuses what bolt would turn into a 500 (a malformed timestamp header, a body that is not
UTF-8) with a plain 401/400, checks the signature, and answers a replayed request once: Slack
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

from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.signature import SignatureVerifier
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bot.platform_state import SeenOnce, claim_once

log = logging.getLogger(__name__)

SIGNATURE_WINDOW_S = 5 * 60  # slack_sdk's SignatureVerifier refuses timestamps further off than this


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


def _refused(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
