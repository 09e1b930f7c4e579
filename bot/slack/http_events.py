"""Slack's Events API endpoint (/slack/events, HTTP mode), in front of slack-bolt's handler.

It refuses what bolt would turn into a 500 (a malformed timestamp header, a body that is not
UTF-8) with a plain 401/400, checks the signature, and answers a replayed request once: Slack
signs ``v0:<timestamp>:<body>`` and bolt accepts a signature for 5 minutes, so the same signed
request sent twice in that window (a replay, or a retry of a request that did arrive) is
acknowledged without being handled again. A retry whose first delivery never arrived is a
request not seen before, and is handled. Events are also answered once by event_id (see
SlackAdapter), which covers retries Slack signs anew.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict

from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.signature import SignatureVerifier
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

log = logging.getLogger(__name__)

SIGNATURE_WINDOW_S = 5 * 60  # slack_sdk's SignatureVerifier refuses timestamps further off than this
SEEN_REQUESTS_MAX = 100_000  # signed requests remembered within the window (only valid signatures are counted)


class EventsEndpoint:
    def __init__(self, app: AsyncApp, signing_secret: str) -> None:
        self._bolt = AsyncSlackRequestHandler(app)
        self._verifier = SignatureVerifier(signing_secret)
        self._seen: OrderedDict[str, float] = OrderedDict()  # sha256 of timestamp and body -> when it may be forgotten

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
        key = hashlib.sha256(timestamp.encode() + b":" + body).hexdigest()
        if not self._remember(key, int(timestamp)):
            log.info(
                "a signed Slack request was delivered again (retry %s): answered once", request.headers.get("x-slack-retry-num", "none")
            )
            return Response(status_code=200)
        response = await self._bolt.handle(request)
        if not 200 <= response.status_code < 300:
            self._seen.pop(key, None)  # not handled: Slack's retry of it must be
        return response

    def _remember(self, key: str, timestamp: int) -> bool:
        """False when ``key`` was seen within the signature window; else remembers it."""
        now = time.time()
        while self._seen and (next(iter(self._seen.values())) < now or len(self._seen) >= SEEN_REQUESTS_MAX):
            self._seen.popitem(last=False)
        if key in self._seen:
            return False
        self._seen[key] = max(timestamp, now) + SIGNATURE_WINDOW_S + 1
        return True


def _refused(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
