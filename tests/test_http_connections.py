"""What clients may hold of a real `teambot serve`'s HTTP server (issue 22.2): idle connections
under a small open-file limit, request heads that never finish, bodies that stop, and a server
whose every connection is in a request. Connections are raw sockets, opened by this process."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from config.settings import Settings
from tests.conftest import indexed_copy, make_settings
from tests.proc import Served, serve_with_fakes

MAX_CONNECTIONS = 24
HEADER_TIMEOUT_S = 5.0
BODY_TIMEOUT_S = 20.0  # longer than it can take here to open MAX_CONNECTIONS connections in requests
HEADROOM_FILES = 4 * 16 + 40  # serve's open-file limit: what it holds idle, the cap, and this (4 accept bursts, and room)
DEADLINE_S = 120.0


@pytest.fixture(scope="module")
async def served(indexed_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    data, knowledge = indexed_copy(indexed_settings, tmp_path_factory.mktemp("connections"))
    async with serve_with_fakes(
        make_settings(data, knowledge),
        SLACK_SIGNING_SECRET="connections-test-signing-secret",
        TEAMBOT_ADMIN_TOKEN="connections-test-admin-token-7f3a",
        TEAMBOT_HTTP_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        TEAMBOT_HTTP_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        TEAMBOT_HTTP_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
    ) as served:
        # As systemd's LimitNOFILE would, but tight: what serve holds now, the cap, and some room.
        limit = served.descriptors() + MAX_CONNECTIONS + HEADROOM_FILES
        resource.prlimit(served.process.pid, resource.RLIMIT_NOFILE, (limit, limit))
        yield served


async def open_idle(served: Served) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that sends a request line and one header, and then nothing."""
    reader, writer = await asyncio.open_connection(*served.address)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: teambot\r\n")
    await writer.drain()
    return reader, writer


async def healthz(served: Served) -> int:
    async with httpx.AsyncClient(base_url=served.url, timeout=DEADLINE_S) as client:
        return (await client.get("/healthz")).status_code


async def test_idle_connections_cannot_shut_out_a_request(served: Served) -> None:
    # 300 idle connections against an open-file limit of ~110: the old server ran out of descriptors
    # (EMFILE on every accept, a traceback each time) and /healthz was not answered at all.
    idle_before = served.descriptors()
    idle = await asyncio.gather(*(open_idle(served) for _ in range(300)))
    try:
        assert await asyncio.wait_for(healthz(served), DEADLINE_S) == 200
        assert served.descriptors() <= idle_before + MAX_CONNECTIONS + 8  # + the probe's and its checks'
        log = served.log()
        assert "closed to make room" in log  # the longest idle ones, one per newcomer past the cap
        assert "Too many open files" not in log
        assert log.count("closed to make room") <= 2, log[-2000:]  # once a minute, with a count
    finally:
        for _, writer in idle:
            writer.close()
    assert served.process.returncode is None


async def read_until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes | None:
    """What the server sent before it closed the connection; None if it is still open after ``timeout``."""
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return b""


async def test_a_request_head_that_does_not_come_is_answered_408(served: Served) -> None:
    reader, writer = await open_idle(served)
    try:
        answer = await read_until_closed(reader, DEADLINE_S)
        assert answer is not None, "the connection was still open"
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"request head did not arrive within 5 s" in answer
    finally:
        writer.close()


def signed_event_head(length: int) -> bytes:
    return (
        f"POST /slack/events HTTP/1.1\r\nHost: teambot\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
        f"X-Slack-Request-Timestamp: {int(time.time())}\r\nX-Slack-Signature: v0=00\r\nExpect: 100-continue\r\n\r\n"
    ).encode()


async def in_a_request(served: Served) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose request head was taken (the server asked for the body: 100 Continue) and whose body stops after 10 bytes."""
    reader, writer = await asyncio.open_connection(*served.address)
    writer.write(signed_event_head(1000))
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)).startswith(b"HTTP/1.1 100")
    writer.write(b'{"type": "')
    await writer.drain()
    return reader, writer


async def test_a_body_that_stops_is_answered_408_and_a_full_server_answers_503(served: Served) -> None:
    # Every connection in a request (none idle to close): a newcomer is refused at once with 503,
    # and once the stopped bodies run out of time (408) there is room again.
    stalled = [await in_a_request(served) for _ in range(MAX_CONNECTIONS)]
    try:
        reader, writer = await asyncio.open_connection(*served.address)
        refused = await read_until_closed(reader, DEADLINE_S)
        writer.close()
        assert refused is not None and refused.startswith(b"HTTP/1.1 503"), refused
        assert b"too many open connections" in refused
        answers = await asyncio.gather(*(read_until_closed(r, DEADLINE_S) for r, _ in stalled))
        assert all(a is not None and b"HTTP/1.1 408" in a and b"request body did not arrive within 20 s" in a for a in answers), answers[:3]
        assert await asyncio.wait_for(healthz(served), DEADLINE_S) == 200
        assert "refused (503)" in served.log()
    finally:
        for _, writer in stalled:
            writer.close()
    assert "Traceback" not in served.log()
