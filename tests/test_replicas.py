"""Two `teambot serve` replicas sharing one Chroma server, one data dir and one knowledge folder:
both answer, only the lease holder re-indexes, and when it is killed mid-run the other takes
over within the lease's TTL and completes the run, leaving no duplicate or orphan chunks."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import time
from pathlib import Path

import httpx

from bot.runtime import knowledge_runtime
from config.settings import Settings
from inference.client import Endpoint
from rag.operations.run_history import RunHistory
from tests.conftest import make_settings
from tests.proc import async_wait_for, process_env, start_serve, stop_serve
from tests.test_indexer import assert_consistent

ADMIN_TOKEN = "replica-test-token-92aa"
ON_CALL_QUESTION = "Who gets paged if the primary on-call does not acknowledge a page?"
HELD_DOC = "# Held\n\nThis document was held back by a named pipe.\n"


async def signed_in(url: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=url, timeout=180)
    assert (await client.post("/admin/api/login", json={"password": ADMIN_TOKEN})).status_code == 200
    return client


async def answer(client: httpx.AsyncClient) -> dict:
    response = await client.post("/admin/api/ask", json={"question": ON_CALL_QUESTION})
    events = [json.loads(line) for line in response.text.splitlines()]
    assert not any("error" in e for e in events), events
    return events[-1]["done"]


def release_pipe(pipe: Path, deadline_s: float) -> bool:
    """Writes the held document into the pipe once a reader opens it, then leaves a plain file in its place."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:  # ENXIO: nobody reads it yet
                return False
            time.sleep(0.05)
    tmp = pipe.with_name(".held.tmp")
    tmp.write_text(HELD_DOC)
    os.replace(tmp, pipe)  # the next read of the path finds a plain file with the same text
    os.write(fd, HELD_DOC.encode())
    os.close(fd)
    return True


async def test_two_replicas_share_the_index_and_the_survivor_completes_a_killed_leaders_run(
    chroma_server: str, llamacpp_endpoint: Endpoint, knowledge: Path, tmp_path: Path
) -> None:
    held = tmp_path / "held"
    held.mkdir()
    pipe = held / "held.md"
    os.mkfifo(pipe)  # the leader's run stops on it, in the middle of the run (after the default collection)
    settings: Settings = make_settings(tmp_path / "shared-data", knowledge, rag={"chroma_url": chroma_server, "collections": {"zz-held": str(held)}})
    env = process_env(
        settings,
        TEAMBOT_RAG__CHROMA_URL=chroma_server,
        TEAMBOT_RAG__COLLECTIONS=json.dumps({"zz-held": str(held)}),
        TEAMBOT_RAG__LEASE_TTL_S="3",
        TEAMBOT_INFERENCE__BACKEND="external",
        TEAMBOT_INFERENCE__BASE_URL=llamacpp_endpoint.base_url,
        TEAMBOT_ADMIN_TOKEN=ADMIN_TOKEN,
    )
    history = RunHistory(settings.data_dir / "index-runs.sqlite")
    leader, leader_url, _ = await start_serve(env)
    follower = None
    try:
        held_run = await async_wait_for(lambda: (r := history.running()) and r.current == "zz-held" and r, "the leader's run to reach the held collection")
        assert f":{leader.pid}:" in held_run.holder

        follower, follower_url, follower_log = await start_serve(env)
        a, b = await signed_in(leader_url), await signed_in(follower_url)
        for client in (a, b):  # both replicas answer, while the leader's run is in progress
            done = await answer(client)
            assert done["found"] and done["sources"][0]["path"] == "oncall-guide.md"
        runs_seen_by_b = (await b.get("/admin/api/runs")).json()
        assert runs_seen_by_b["leader"] is False and runs_seen_by_b["runs"][0]["state"] == "running"
        queued = (await b.post("/admin/api/reindex")).json()["message"]
        assert queued.startswith("Re-index queued")
        assert [r.holder for r in history.recent()] == [held_run.holder]  # the follower ran nothing

        leader.send_signal(signal.SIGKILL)
        await leader.wait()
        assert await asyncio.to_thread(release_pipe, pipe, 60), "the surviving replica never read the held file"
        runs = await async_wait_for(
            lambda: (r := history.recent()) and r[0].state == "done" and r[0].id != held_run.id and r, "the survivor's run", timeout=120
        )
        survivor_run, killed_run = runs[0], runs[1]
        assert killed_run.id == held_run.id and killed_run.state == "interrupted"
        assert f":{follower.pid}:" in survivor_run.holder and survivor_run.started_at >= (killed_run.finished_at or 0)
        assert "console" in survivor_run.trigger or "start" in survivor_run.trigger
        by_collection = {r.collection: r for r in survivor_run.indexed}
        assert by_collection["zz-held"].added == 1 and by_collection["default"].unchanged == 7
        assert (await b.get("/admin/api/runs")).json()["leader"] is True
        done = await answer(b)
        assert done["found"]
        await a.aclose()
        await b.aclose()
    finally:
        await stop_serve(leader, follower)
        history.close()
    assert follower.returncode == 0, "".join(follower_log)
    with knowledge_runtime(settings) as runtime:
        assert_consistent(runtime, "default")
        assert_consistent(runtime, "zz-held")
