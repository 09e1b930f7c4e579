"""The admin console's API, /healthz and /metrics, on a real service (real llama.cpp, Chroma, HTTP)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.core import AnswerDone
from bot.runtime import open_runtime
from bot.service import Service
from config.errors import ConfigError
from config.settings import Settings
from inference.client import Endpoint
from tests.conftest import indexed_copy, make_settings
from tests.fake_llm import FakeLLM, Reply
from tests.proc import async_wait_for
from tests.raw_http import MiB, post_lazily

ADMIN_TOKEN = "console-test-token-1f8e2"
ON_CALL_QUESTION = "Who gets paged if the primary on-call does not acknowledge a page?"


def console_settings(data: Path, knowledge: Path, llm_url: str, **extra: Any) -> Settings:
    secrets = {} if extra.pop("no_token", False) else {"TEAMBOT_ADMIN_TOKEN": extra.pop("TEAMBOT_ADMIN_TOKEN", ADMIN_TOKEN)}
    rag = {"max_file_mb": 0.05, **extra.pop("rag", {})}
    inference = {"backend": "external", "base_url": llm_url, **extra.pop("inference", {})}
    return make_settings(data, knowledge, inference=inference, http_port=0, rag=rag, **secrets, **extra)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    async with open_runtime(settings, with_llm=True, serving=True) as runtime:
        service = Service(runtime)
        await service.start()
        try:
            assert service.http is not None
            async with httpx.AsyncClient(base_url=service.http.url, timeout=120) as client:
                yield service, client
        finally:
            await service.stop()


async def sign_in(client: httpx.AsyncClient) -> None:
    response = await client.post("/admin/api/login", json={"password": ADMIN_TOKEN})
    assert response.status_code == 200, response.text


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def ask(client: httpx.AsyncClient, question: str) -> tuple[list[str], dict[str, Any]]:
    deltas, done = [], {}
    async with client.stream("POST", "/admin/api/ask", json={"question": question, "collections": ["default"]}) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            event = json.loads(line)
            assert "error" not in event, event
            if "delta" in event:
                deltas.append(event["delta"])
            if "done" in event:
                done = event["done"]
    return deltas, done


async def test_console_api_health_and_metrics(indexed_settings: Settings, llamacpp_endpoint: Endpoint, tmp_path: Path) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    async with serving(console_settings(data, knowledge, llamacpp_endpoint.base_url)) as (service, client):
        health = await client.get("/healthz")
        assert health.status_code == 200, health.text
        checks = health.json()["checks"]
        assert checks["llm"]["ok"] and checks["chroma"]["ok"] and checks["scheduler"]["ok"] and checks["scheduler"]["leader"]

        # Signed out, nothing but the page and the sign-in answers.
        assert (await client.get("/admin")).status_code == 200
        assert (await client.get("/admin/api/documents")).status_code == 401
        wrong = await client.post("/admin/api/login", json={"password": "guess"})
        assert wrong.status_code == 401 and "wrong admin token" in wrong.json()["error"]
        assert "teambot_console" not in wrong.cookies
        await sign_in(client)

        documents = (await client.get("/admin/api/documents")).json()["documents"]
        assert {d["path"] for d in documents} >= {"oncall-guide.md", "faq.txt"}
        assert all(d["collection"] == "default" and d["chunks"] > 0 and d["indexed_at"] > 0 for d in documents)

        files = [
            ("files", ("bike-storage.md", b"# Bike storage\n\nBicycles go in the basement bike room. The code is 4711.\n", "text/markdown")),
            ("files", ("setup.exe", b"MZ\x90\x00", "application/octet-stream")),
            ("files", ("huge.md", b"# Huge\n\n" + b"word " * 20_000, "text/markdown")),
            ("files", ("broken.pdf", b"%PDF-1.4 not really", "application/pdf")),
        ]
        upload = await client.post("/admin/api/upload", data={"collection": "facilities"}, files=files)
        assert upload.status_code == 200, upload.text
        results = {r["file"]: r for r in upload.json()["results"]}
        assert results["bike-storage.md"]["ok"] and results["bike-storage.md"]["chunks"] == 1
        assert not results["setup.exe"]["ok"] and "cannot read '.exe'" in results["setup.exe"]["error"]
        assert not results["huge.md"]["ok"] and "over the limit of 0.05 MB" in results["huge.md"]["error"]
        assert not results["broken.pdf"]["ok"]
        assert sorted(p.name for p in (data / "knowledge" / "facilities").iterdir()) == ["bike-storage.md"]  # nothing else was kept
        bad_collection = await client.post("/admin/api/upload", data={"collection": "../etc"}, files=files[:1])
        assert bad_collection.status_code == 400 and "invalid collection name" in bad_collection.json()["error"]

        deltas, done = await ask(client, ON_CALL_QUESTION)
        assert done["found"] and done["answer"].strip() and done["mode"] in ("generative", "extractive")
        assert "".join(deltas) == done["answer"] if done["mode"] == "generative" else done["replaced"] and done["guard"]["problems"]
        assert all(s["quote"] for s in done["sources"])  # every source with its quote
        assert done["sources"][0]["path"] == "oncall-guide.md" and 0 < done["sources"][0]["score"] <= 1
        _, nothing = await ask(client, "qwxz zzyzx florble?")
        assert not nothing["found"] and nothing["sources"] == []

        message = (await client.post("/admin/api/reindex")).json()["message"]
        assert message.startswith(("Re-index started", "Re-index queued"))
        runs = await async_wait_for(
            lambda: [r for r in service.scheduler.history.recent() if "console" in r.trigger.split("+") and r.state == "done"], "the console's run"
        )
        assert runs[0].reports  # every collection, the new one included
        assert {r.collection for r in runs[0].reports} == {"default", "facilities"}
        listing = (await client.get("/admin/api/runs")).json()
        assert listing["runs"][0]["totals"]["failed"] == 0 and listing["leader"]

        removed = await client.delete("/admin/api/documents", params={"collection": "facilities", "path": "bike-storage.md"})
        assert removed.status_code == 200 and removed.json()["removed"]["chunks"] == 1
        missing = await client.delete("/admin/api/documents", params={"collection": "facilities", "path": "nope.md"})
        assert missing.status_code == 400 and "has no document 'nope.md'" in missing.json()["error"]

        # A Slack answer and its vote, as the console lists them.
        answer_id = service.answers.record("slack", "C1", "1.0", "U1", "Where is the bike room?", AnswerDone("In the basement [1].", [], [1], True))
        service.answers.vote(answer_id, "U2", "down")
        recent = (await client.get("/admin/api/answers")).json()["answers"]
        assert recent[0]["question"] == "Where is the bike room?" and recent[0]["down"] == 1 and recent[0]["platform"] == "slack"

        scraped = (await client.get("/metrics")).text
        assert metric(scraped, "teambot_questions_total", platform="console") == 2
        assert metric(scraped, "teambot_retrieval_nothing_relevant_total", platform="console") == 1
        assert metric(scraped, "teambot_first_token_seconds_count", platform="console") == 2
        assert metric(scraped, "teambot_answer_seconds_sum", platform="console") > 0
        assert metric(scraped, "teambot_uploads_total", outcome="added") == 1
        assert metric(scraped, "teambot_uploads_total", outcome="refused") >= 3
        assert metric(scraped, "teambot_index_runs_total", state="done") >= 2
        assert metric(scraped, "teambot_index_chunks", collection="default") > 7
        assert metric(scraped, "teambot_index_documents", collection="default") == 7

        await client.post("/admin/api/logout")
        assert (await client.get("/admin/api/documents")).status_code == 401
    log = (data / "logs" / "teambot.log").read_text() if (data / "logs" / "teambot.log").exists() else ""
    assert ADMIN_TOKEN not in log


async def test_healthz_names_a_dead_llm_server(indexed_settings: Settings, fake_llm: FakeLLM, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    async with serving(console_settings(data, knowledge, fake_llm.base_url)) as (_, client):
        assert (await client.get("/healthz")).status_code == 200
        fake_llm.stop()
        health = await client.get("/healthz")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "fail" and not body["checks"]["llm"]["ok"] and body["checks"]["chroma"]["ok"]
        assert "does not answer" in body["checks"]["llm"]["detail"]
        assert fake_llm.base_url not in health.text and str(data) not in health.text  # unauthenticated: no addresses or paths
    assert f"the LLM server at {fake_llm.base_url} does not answer" in caplog.text  # the details go to the log


def start_question(client: httpx.AsyncClient) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(client.post("/admin/api/ask", json={"question": ON_CALL_QUESTION, "collections": ["default"]}))


async def test_healthz_says_busy_not_down_while_the_llm_serves_one_request_at_a_time(
    indexed_settings: Settings, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    fake_llm.one_at_a_time = True  # like llama.cpp's server: /models waits for the answer being generated
    release = threading.Event()
    fake_llm.script.append(Reply(hold=release))
    async with serving(console_settings(data, knowledge, fake_llm.base_url, inference={"hang_timeout_s": 600})) as (_, client):
        await sign_in(client)
        question = start_question(client)
        try:
            await async_wait_for(lambda: fake_llm.streams_open == 1, "the answer to start streaming")
            probes = fake_llm.models_asked
            health = await client.get("/healthz")
            assert health.status_code == 200, health.text
            assert health.json()["checks"]["llm"]["state"] == "busy"
            assert fake_llm.models_asked == probes  # not probed: a probe would wait behind the answer
        finally:
            release.set()
        assert (await question).status_code == 200
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.json()["checks"]["llm"]["state"] == "idle"


async def test_healthz_says_hung_while_requests_wait_without_progress_and_healthy_once_it_resumes(
    indexed_settings: Settings, fake_llm: FakeLLM, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    release = threading.Event()
    fake_llm.script.append(Reply(hold=release))  # one token, then silence until released
    async with serving(console_settings(data, knowledge, fake_llm.base_url, inference={"hang_timeout_s": 2})) as (_, client):
        await sign_in(client)
        question = start_question(client)
        try:
            await async_wait_for(lambda: fake_llm.streams_open == 1, "the answer to start streaming")
            deadline = time.monotonic() + 120
            while (health := await client.get("/healthz")).status_code == 200:
                assert time.monotonic() < deadline, "/healthz did not say the silent LLM server hung"
                await asyncio.sleep(0.2)
            llm = health.json()["checks"]["llm"]
            assert health.status_code == 503 and llm["state"] == "hung", health.text
            assert "made no progress" in llm["detail"] and "inference.hang_timeout_s = 2" in llm["detail"]
            assert (await client.get("/healthz")).json()["checks"]["llm"]["state"] == "hung"
            assert caplog.text.count("is reachable but made no progress") == 1  # logged once
            assert "stopped" not in caplog.text
        finally:
            release.set()
        assert (await question).status_code == 200
        await async_wait_for(lambda: "made progress again" in caplog.text, "the recovery in the log")
        health = await client.get("/healthz")
        assert health.status_code == 200, health.text


async def test_without_an_admin_token_the_console_is_off_and_says_so(settings: Settings, fake_llm: FakeLLM) -> None:
    async with serving(console_settings(settings.data_dir, settings.rag.knowledge_dir, fake_llm.base_url, no_token=True)) as (service, client):
        assert service.console_off and "TEAMBOT_ADMIN_TOKEN" in service.console_off
        for response in (await client.get("/admin"), await client.post("/admin/api/login", json={"password": ""})):
            assert response.status_code == 503 and "Set TEAMBOT_ADMIN_TOKEN in teambot's environment" in response.text
        assert (await client.get("/healthz")).status_code == 200  # the rest of teambot runs


@pytest.mark.parametrize("body", [b"not json", b'{"question": ""}', b'{"question": "x", "collections": ["Bad Name"]}'])
async def test_a_bad_question_request_is_refused_clearly(settings: Settings, fake_llm: FakeLLM, body: bytes) -> None:
    async with serving(console_settings(settings.data_dir, settings.rag.knowledge_dir, fake_llm.base_url)) as (_, client):
        await sign_in(client)
        response = await client.post("/admin/api/ask", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and response.json()["error"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_new_admin_token_ends_the_old_tokens_sessions(settings: Settings, fake_llm: FakeLLM, backend: str, request: pytest.FixtureRequest) -> None:
    """Issue 22.7: teambot restarted with another TEAMBOT_ADMIN_TOKEN refuses the sessions signed in
    with the old one, with the state in the data dir or shared by the replicas in PostgreSQL."""
    shared = {"state_url": request.getfixturevalue("state_url")} if backend == "postgresql" else {}
    old_token, new_token = ADMIN_TOKEN, "console-test-token-rotated-7a3c"

    def with_token(token: str) -> Settings:
        return console_settings(settings.data_dir, settings.rag.knowledge_dir, fake_llm.base_url, TEAMBOT_ADMIN_TOKEN=token, **shared)

    async with serving(with_token(old_token)) as (_, client):
        await sign_in(client)
        old_session = {"Cookie": f"teambot_console={client.cookies['teambot_console']}"}
        assert (await client.get("/admin/api/session", headers=old_session)).status_code == 200
    async with serving(with_token(old_token)) as (_, client):  # a restart with the same token keeps the session
        assert (await client.get("/admin/api/session", headers=old_session)).status_code == 200
    async with serving(with_token(new_token)) as (_, client):
        client.cookies.clear()
        refused = await client.get("/admin/api/session", headers=old_session)
        assert refused.status_code == 401 and "sign in first" in refused.json()["error"]
        assert (await client.post("/admin/api/login", json={"password": old_token})).status_code == 401
        assert (await client.post("/admin/api/login", json={"password": new_token})).status_code == 200
        assert (await client.get("/admin/api/session")).status_code == 200
    log = (settings.data_dir / "logs" / "teambot.log").read_text() if (settings.data_dir / "logs" / "teambot.log").exists() else ""
    assert old_token not in log and new_token not in log


async def test_a_short_admin_token_is_refused_at_start(settings: Settings, fake_llm: FakeLLM) -> None:
    short = make_settings(
        settings.data_dir, settings.rag.knowledge_dir, inference={"backend": "external", "base_url": fake_llm.base_url}, http_port=0,
        TEAMBOT_ADMIN_TOKEN="hunter2-abc",
    )  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        async with serving(short):
            pass
    assert "TEAMBOT_ADMIN_TOKEN is 11 characters long" in str(refused.value) and "at least 16" in str(refused.value)
    assert "hunter2" not in str(refused.value) + (refused.value.hint or "")


async def test_the_console_can_listen_on_its_own_port(settings: Settings, fake_llm: FakeLLM) -> None:
    own_port = console_settings(settings.data_dir, settings.rag.knowledge_dir, fake_llm.base_url, console={"port": 0})
    async with serving(own_port) as (service, client):
        assert service.console_http is not None and service.console_http.port != service.http.port
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/admin")).status_code == 404  # not on the main listener, the one Slack's events reach
        async with httpx.AsyncClient(base_url=service.console_http.url, timeout=120) as console:
            assert (await console.get("/admin")).status_code == 200
            await sign_in(console)
            assert (await console.get("/admin/api/documents")).status_code == 200
        assert service.console_url == f"{service.console_http.url}/admin"


async def test_an_upload_past_its_limit_is_refused_413_while_it_streams(settings: Settings, fake_llm: FakeLLM) -> None:
    """rag.max_file_mb = 0.05 here: an upload may carry 20 such files (about 2 MB); a chunked one of 32 MB is cut off."""
    async with serving(console_settings(settings.data_dir, settings.rag.knowledge_dir, fake_llm.base_url)) as (service, client):
        await sign_in(client)
        boundary = "teambot-test-boundary"
        prefix = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.md"\r\nContent-Type: text/markdown\r\n\r\n'.encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Cookie": f"teambot_console={client.cookies['teambot_console']}"}
        answer = await asyncio.to_thread(post_lazily, service.http.url, "/admin/api/upload", 32 * MiB, declared=False, headers=headers, prefix=prefix)
        assert answer.status == 413, answer
        assert "upload fewer or smaller files" in json.loads(answer.body)["error"] and answer.sent < 32 * MiB
        assert not (settings.data_dir / "knowledge" / "default" / "big.md").exists()
        assert (await client.get("/admin/api/documents")).status_code == 200  # the session and the server carry on
