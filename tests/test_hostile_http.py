"""Hostile HTTP requests against a real `teambot serve` (console and Slack's HTTP Events API, the
real slack-bolt against tests/fake_slack.py): oversized bodies, parallel password guesses,
cross-site requests, foreign Host names, replayed signed requests, malformed signature headers.

Big bodies are generated lazily (the same 1 MiB block sent again and again), so this test's own
memory stays small; the server's peak memory is read from /proc/<pid>/status (VmHWM)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx
import pytest

from config.settings import Settings
from tests.conftest import closed_port, indexed_copy, make_settings
from tests.fake_llm import FakeLLM
from tests.fake_slack import TEAM
from tests.proc import Served, async_wait_for, process_env, serve_with_fakes, start_serve
from tests.raw_http import post_lazily

ADMIN_TOKEN = "hostile-test-admin-token-5b2e9"
SIGNING_SECRET = "hostile-test-signing-secret"
CHANNEL = "C0GENERAL"
MiB = 1024 * 1024
MEMORY_GROWTH_ALLOWED_KB = 40 * 1024  # the server's peak may grow this much (buffers), not by the body


@pytest.fixture(scope="module")
async def served(indexed_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    data, knowledge = indexed_copy(indexed_settings, tmp_path_factory.mktemp("hostile"))
    async with serve_with_fakes(make_settings(data, knowledge), TEAMBOT_ADMIN_TOKEN=ADMIN_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET) as served:
        yield served


@pytest.fixture
async def client(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served.url, timeout=120) as http:
        yield http


@pytest.fixture
async def signed_in(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served.url, timeout=120) as http:
        response = await http.post("/admin/api/login", json={"password": ADMIN_TOKEN})
        assert response.status_code == 200, response.text
        yield http


def slack_headers(body: bytes, timestamp: str, content_type: str = "application/json") -> dict[str, str]:
    signature = "v0=" + hmac.new(SIGNING_SECRET.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature, "Content-Type": content_type}


# --- request bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "declared"), [("/admin/api/login", False), ("/admin/api/login", True), ("/slack/events", False), ("/slack/events", True)]
)
async def test_an_oversized_body_is_refused_413_before_it_is_read(
    served: Served, client: httpx.AsyncClient, path: str, declared: bool
) -> None:
    size = 512 * MiB if declared else 64 * MiB  # a declared length is refused at once; a chunked body as it passes the limit
    peak_before = served.peak_kb()
    # For Slack a well-formed (wrongly signed) request: the signature can only be checked once the body is read.
    headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "v0=00"}
    answer = await asyncio.to_thread(post_lazily, served.url, path, size, declared=declared, headers=headers)
    assert answer.status == 413, answer
    assert "limit of" in json.loads(answer.body)["error"]
    assert answer.sent < size  # it was not read to the end
    assert served.peak_kb() - peak_before < MEMORY_GROWTH_ALLOWED_KB
    assert served.process.returncode is None
    assert (await client.get("/healthz")).status_code == 200  # and it goes on serving


def read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """An HTTP answer's head and its whole body (by its Content-Length), read from ``sock``."""
    received = b""
    while b"\r\n\r\n" not in received and (data := sock.recv(65536)):
        received += data
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length and (data := sock.recv(65536)):
        body += data
    return head, body


async def test_a_refused_upload_s_connection_is_closed_gracefully_not_reset(served: Served) -> None:
    # Closing a socket with unread bytes makes the kernel reset the connection and drop the answer not
    # yet sent: a client still uploading got "connection reset" in place of its 413 (1 in 10 under load).
    # The server now sends FIN after the 413 and takes (and drops) what still comes until the client closes.
    def upload_after_the_413() -> tuple[bytes, bytes]:
        parts = urlsplit(served.url)
        with socket.create_connection((parts.hostname, parts.port), timeout=120) as sock:
            sock.sendall(f"POST /admin/api/login HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: {512 * MiB}\r\n\r\n".encode())
            head, _ = read_answer(sock)
            sock.sendall(b"x" * MiB)  # the upload goes on: the old server reset the connection here
            sock.shutdown(socket.SHUT_WR)
            return head, sock.recv(65536)  # the end of the stream, not ECONNRESET

    head, after = await asyncio.to_thread(upload_after_the_413)
    assert head.startswith(b"HTTP/1.1 413"), head
    assert after == b""
    assert served.process.returncode is None


async def test_a_small_body_is_still_read(signed_in: httpx.AsyncClient) -> None:
    documents = await signed_in.get("/admin/api/documents")
    assert documents.status_code == 200 and documents.json()["documents"]


# --- sign-in throttling -----------------------------------------------------------------------


async def test_parallel_wrong_sign_ins_are_refused_429_per_address(served: Served) -> None:
    # From 127.0.0.2 (loopback too), so the other tests' address keeps its attempts.
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2", limits=httpx.Limits(max_connections=100))
    async with httpx.AsyncClient(base_url=served.url, transport=transport, timeout=120) as guesser:
        started = time.monotonic()
        answers = await asyncio.gather(*(guesser.post("/admin/api/login", json={"password": f"guess-{n:04d}"}) for n in range(100)))
        elapsed = time.monotonic() - started
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {401, 429}
        assert statuses.count(429) >= 90, statuses
        refused = next(a for a in answers if a.status_code == 429)
        assert int(refused.headers["Retry-After"]) >= 1 and "too many sign-in attempts" in refused.json()["error"]
        right = await guesser.post("/admin/api/login", json={"password": ADMIN_TOKEN})
        assert right.status_code == 429  # the right token waits its turn too
    print(f"100 parallel wrong sign-ins: {elapsed:.2f} s, {statuses.count(429)} refused with 429")
    async with httpx.AsyncClient(base_url=served.url, timeout=120) as other:  # another address is not held up
        assert (await other.post("/admin/api/login", json={"password": ADMIN_TOKEN})).status_code == 200


async def test_forwarded_for_from_an_untrusted_address_does_not_dodge_the_sign_in_throttle(served: Served) -> None:
    """Issue 22.11: from 127.0.0.1 (uvicorn trusted it as a proxy), each guess naming another
    X-Forwarded-For address had a bucket of its own; console.trusted_proxies is empty here."""
    async with httpx.AsyncClient(base_url=served.url, limits=httpx.Limits(max_connections=100), timeout=120) as guesser:
        answers = await asyncio.gather(*(
            guesser.post("/admin/api/login", json={"password": f"guess-{n:04d}"}, headers={"X-Forwarded-For": f"198.51.100.{n % 250}, 10.0.{n // 250}.{n % 250}"})
            for n in range(100)
        ))  # fmt: skip
        statuses = [a.status_code for a in answers]
        assert statuses.count(429) >= 90, statuses

        async def signed_in_again() -> bool:  # the other tests sign in from 127.0.0.1: its bucket refills on success
            return (await guesser.post("/admin/api/login", json={"password": ADMIN_TOKEN})).status_code == 200

        deadline = time.monotonic() + 60
        while not await signed_in_again():
            assert time.monotonic() < deadline, "the right token was still refused after 60 s"
            await asyncio.sleep(0.5)
    log = served.log()
    assert "wrong admin token was given from 127.0.0.1" in log and "wrong admin token was given from 10.0." not in log


# --- cross-site requests and Host -------------------------------------------------------------


async def test_state_changes_from_a_foreign_origin_are_refused(served: Served, signed_in: httpx.AsyncClient) -> None:
    question = json.dumps({"question": "Who is on call?", "collections": ["default"]})
    foreign = {"Origin": "http://evil.example"}
    attempts = [
        signed_in.post("/admin/api/ask", content=question, headers={**foreign, "Content-Type": "application/json"}),
        signed_in.post("/admin/api/reindex", headers=foreign),
        signed_in.delete("/admin/api/documents", params={"collection": "default", "path": "faq.txt"}, headers=foreign),
        signed_in.post("/admin/api/reindex", headers={"Referer": "http://evil.example/page"}),
        signed_in.post("/admin/api/login", json={"password": ADMIN_TOKEN}, headers=foreign),
    ]
    for response in [await attempt for attempt in attempts]:
        assert response.status_code == 403 and "cross-site request refused" in response.json()["error"], response.text
    own = {"Origin": served.url, "Content-Type": "application/json"}
    async with signed_in.stream("POST", "/admin/api/ask", content=question, headers=own) as answer:
        assert answer.status_code == 200
        assert any("done" in json.loads(line) for line in [line async for line in answer.aiter_lines()])
    documents = (await signed_in.get("/admin/api/documents")).json()["documents"]
    assert "faq.txt" in {d["path"] for d in documents}  # the foreign DELETE removed nothing


async def test_json_sent_as_another_content_type_is_refused_415(signed_in: httpx.AsyncClient) -> None:
    question = json.dumps({"question": "Who is on call?", "collections": ["default"]})
    as_text = await signed_in.post("/admin/api/ask", content=question, headers={"Content-Type": "text/plain"})
    assert as_text.status_code == 415 and "application/json" in as_text.json()["error"]
    login_as_form = await signed_in.post("/admin/api/login", data={"password": ADMIN_TOKEN})
    assert login_as_form.status_code == 415
    upload_as_json = await signed_in.post("/admin/api/upload", json={"files": []})
    assert upload_as_json.status_code == 415 and "multipart/form-data" in upload_as_json.json()["error"]


async def test_a_foreign_host_is_refused(served: Served, signed_in: httpx.AsyncClient) -> None:
    for path in ("/admin", "/admin/api/documents"):
        response = await signed_in.get(path, headers={"Host": "attacker.example"})
        assert response.status_code == 403 and "console.allowed_hosts" in response.json()["error"]
    port = urlsplit(served.url).port
    assert (await signed_in.get("/admin/api/documents", headers={"Host": f"localhost:{port}"})).status_code == 200


# --- Slack's Events API -----------------------------------------------------------------------


async def test_a_malformed_slack_timestamp_is_refused_without_a_traceback(served: Served, client: httpx.AsyncClient) -> None:
    body = json.dumps({"type": "event_callback", "event_id": "Ev0BADTS", "event": {"type": "app_mention"}}).encode()
    for timestamp in ("not-a-time", "1e9", "", "99999999999999999999999"):
        headers = {**slack_headers(body, timestamp), "X-Slack-Request-Timestamp": timestamp}
        response = await client.post("/slack/events", content=body, headers=headers)
        assert response.status_code in (400, 401), (timestamp, response.status_code)
    not_utf8 = b'{"type": "\xff"}'
    response = await client.post("/slack/events", content=not_utf8, headers=slack_headers(not_utf8, str(int(time.time()))))
    assert response.status_code in (400, 401)
    # A marker logged after those requests were handled: a wrong sign-in from an address of its own.
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.3")
    async with httpx.AsyncClient(base_url=served.url, transport=transport, timeout=120) as marker:
        assert (await marker.post("/admin/api/login", json={"password": "marker-guess"})).status_code == 401
    log = await async_wait_for(
        lambda: (text := served.log()) and "wrong admin token was given from 127.0.0.3" in text and text, "the marker in the log"
    )
    assert "Traceback" not in log and "Exception in ASGI application" not in log


MALFORMED_SIGNED_BODIES = [  # each signed with the right secret: bolt read them and answered 500 with a traceback
    ("application/json", b"not json"),
    ("application/json", b"[]"),
    ("application/json", b"null"),
    ("application/json", b'"event_callback"'),
    ("application/json", b"[" * 100_000),  # deeper than json.loads recurses
    ("application/json", b'{"type": "event_callback", "event_id": "Ev0MAL1", "event": "app_mention"}'),
    ("application/json", b'{"type": "event_callback", "event_id": "Ev0MAL2", "event": null}'),
    ("application/json", b'{"type": "event_callback", "event_id": "Ev0MAL3", "event": {"type": "app_mention"}, "authorizations": "x"}'),
    ("application/json", b'{"type": "event_callback", "event_id": "Ev0MAL4", "event": {"type": "app_mention"}, "team": ["T1"]}'),
    ("application/json", b'{"type": "event_callback", "event_id": "Ev0MAL5", "event": {"type": "message", "message": 7}}'),
    ("application/x-www-form-urlencoded", b"payload=not-json"),
    ("application/x-www-form-urlencoded", b"payload=%5B1%5D"),
    ("application/x-www-form-urlencoded", b"payload=%7B%22type%22%3A%22block_actions%22%2C%22actions%22%3A%22x%22%7D"),
]


async def test_a_signed_malformed_slack_body_is_refused_400_without_a_traceback(served: Served, client: httpx.AsyncClient) -> None:
    """Issue 22.12: through the real slack-bolt, a correctly signed body bolt cannot read."""
    for content_type, body in MALFORMED_SIGNED_BODIES:
        response = await client.post("/slack/events", content=body, headers=slack_headers(body, str(int(time.time())), content_type))
        assert response.status_code == 400, (body[:80], response.status_code, response.text[:200])
        error = response.json()["error"]
        assert error.startswith("invalid request: ") and len(error) < 120, error
    # The service carries on: a well-formed event is still answered.
    slack = served.fake_slack
    event = slack.user_message(CHANNEL, "U1", "<@UBOT> Where is the bike room?")
    body = json.dumps(slack.event_body({**event, "type": "app_mention"}, event_id="Ev0AFTERMAL")).encode()
    assert (await client.post("/slack/events", content=body, headers=slack_headers(body, str(int(time.time()))))).status_code == 200
    await async_wait_for(lambda: any(m.get("thread_ts") == event["ts"] for m in slack.messages[CHANNEL]), "the answer after them", timeout=120)
    # A marker logged after those requests were handled: a wrong sign-in from an address of its own.
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.4")
    async with httpx.AsyncClient(base_url=served.url, transport=transport, timeout=120) as marker:
        assert (await marker.post("/admin/api/login", json={"password": "marker-guess"})).status_code == 401
    log = await async_wait_for(
        lambda: (text := served.log()) and "wrong admin token was given from 127.0.0.4" in text and text, "the marker in the log"
    )
    assert "Traceback" not in log and "Exception in ASGI application" not in log and "Failed to run" not in log
    assert "a signed Slack request was refused: its event is not an object" in log


async def test_a_replayed_signed_slash_command_is_answered_once(served: Served, client: httpx.AsyncClient) -> None:
    slack = served.fake_slack

    def command(text: str) -> bytes:
        return urlencode({
            "command": "/ask", "text": text, "user_id": "U7", "channel_id": CHANNEL, "team_id": TEAM, "api_app_id": "A0APP",
            "response_url": f"{slack.base}/response/1", "trigger_id": "T.1",
        }).encode()  # fmt: skip

    def asked(text: str) -> list[dict]:
        return [m for m in slack.messages[CHANNEL] if m["text"].endswith(f"asked: {text}")]

    form = "application/x-www-form-urlencoded"
    body, timestamp = command("Where is the bike room?"), str(int(time.time()))
    first = await client.post("/slack/events", content=body, headers=slack_headers(body, timestamp, form))
    replay = await client.post("/slack/events", content=body, headers=slack_headers(body, timestamp, form))
    assert (first.status_code, replay.status_code) == (200, 200)
    # Another command after the replay: once it is posted, the replay would have been too.
    later = command("Who gets paged?")
    assert (await client.post("/slack/events", content=later, headers=slack_headers(later, timestamp, form))).status_code == 200
    await async_wait_for(lambda: asked("Who gets paged?"), "the later command's question in the channel", timeout=120)
    await async_wait_for(lambda: len(served.fake_llm.requests) >= 2, "both answers", timeout=120)
    assert len(asked("Where is the bike room?")) == 1


async def test_a_retried_event_whose_first_delivery_was_lost_is_answered(served: Served, client: httpx.AsyncClient) -> None:
    slack = served.fake_slack
    event = slack.user_message(CHANNEL, "U1", "<@UBOT> How many approvals does a pull request need?")
    body = json.dumps(slack.event_body({**event, "type": "app_mention"}, event_id="Ev0LOSTFIRST")).encode()
    retry_headers = {**slack_headers(body, str(int(time.time()))), "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    assert (await client.post("/slack/events", content=body, headers=retry_headers)).status_code == 200
    await async_wait_for(
        lambda: any(m.get("thread_ts") == event["ts"] for m in slack.messages[CHANNEL]), "the answer to the retried event", timeout=120
    )


# --- /healthz ---------------------------------------------------------------------------------


async def test_healthz_shows_no_paths_or_addresses(served: Served, client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    text = health.text
    for internal in (str(served.data_dir), "/", served.fake_llm.base_url, "127.0.0.1"):
        assert internal not in text.replace("\\/", "/"), internal


# --- the Docker image -------------------------------------------------------------------------


def dockerfile_instruction(name: str) -> str:
    """An instruction of the Dockerfile with its continuation lines joined."""
    text = (Path(__file__).resolve().parent.parent / "Dockerfile").read_text().replace("\\\n", " ")
    found = [line.strip() for line in text.splitlines() if line.strip().startswith(f"{name} ")]
    assert found, f"the Dockerfile has no {name}"
    return " ".join(found)


async def test_the_image_listens_on_all_interfaces_and_its_healthcheck_probes_healthz(served: Served) -> None:
    assert re.search(r"\bTEAMBOT_HTTP_HOST=0\.0\.0\.0\b", dockerfile_instruction("ENV"))
    command = json.loads(dockerfile_instruction("HEALTHCHECK").split(" CMD ", 1)[1])
    assert command[0] == "python"  # the image has no curl
    port = str(urlsplit(served.url).port)
    probe = await asyncio.create_subprocess_exec(sys.executable, *command[1:], env={**os.environ, "TEAMBOT_HTTP_PORT": port})
    assert await asyncio.wait_for(probe.wait(), 120) == 0
    down = await asyncio.create_subprocess_exec(
        sys.executable, *command[1:], env={**os.environ, "TEAMBOT_HTTP_PORT": str(closed_port())}, stderr=asyncio.subprocess.DEVNULL
    )
    assert await asyncio.wait_for(down.wait(), 120) != 0


def dockerfile_env() -> dict[str, str]:
    """The environment the image sets (its ENV instructions), by name."""
    return dict(item.split("=", 1) for item in dockerfile_instruction("ENV").split()[1:])


async def test_the_image_serves_the_console_on_a_port_of_its_own(settings: Settings, fake_llm: FakeLLM) -> None:
    """Issue 22.13: `teambot serve` with the image's settings (its ports swapped for free ones here)
    serves /admin only on the console's listener, on every interface, and not beside /slack/events."""
    image = dockerfile_env()
    assert image["TEAMBOT_CONSOLE__PORT"] != image["TEAMBOT_HTTP_PORT"]
    taken_from_image = {k: v for k, v in image.items() if k.startswith("TEAMBOT_") and k not in ("TEAMBOT_DATA_DIR", "TEAMBOT_RAG__KNOWLEDGE_DIR")}
    http_port, console_port = closed_port(), closed_port()
    env = process_env(
        settings, TEAMBOT_INFERENCE__BACKEND="external", TEAMBOT_INFERENCE__BASE_URL=fake_llm.base_url, TEAMBOT_ADMIN_TOKEN=ADMIN_TOKEN
    )
    env.update(taken_from_image, TEAMBOT_HTTP_PORT=str(http_port), TEAMBOT_CONSOLE__PORT=str(console_port))
    process, url, stderr = await start_serve(env)
    try:
        assert f"Admin console at http://0.0.0.0:{console_port}/admin" in "".join(stderr)
        async with httpx.AsyncClient(timeout=120) as http:
            assert "checks" in (await http.get(f"http://127.0.0.1:{http_port}/healthz")).json()  # served here (503 only for lack of an index)
            for path in ("/admin", "/admin/api/login"):
                assert (await http.get(f"http://127.0.0.1:{http_port}{path}")).status_code == 404, path
            assert (await http.get(f"http://127.0.0.1:{console_port}/admin")).status_code == 200
            login = await http.post(f"http://127.0.0.1:{console_port}/admin/api/login", json={"password": ADMIN_TOKEN})
            assert login.status_code == 200, login.text
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 120)
