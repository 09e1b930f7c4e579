"""Two `teambot serve` replicas that share no file: separate data dirs, each with its own copy of
the knowledge folders, on one PostgreSQL (state_url) and one `chroma run`. Slack (HTTP Events
API, the real slack-bolt against tests/fake_slack.py) and the console reach either replica.

- a console session made on one replica is valid on the other;
- an upload on the follower is answered from the leader, and the leader writes it into its
  own folder from PostgreSQL;
- Slack's retry of an event answered by one replica is not answered again by the other;
- a vote given on one replica shows in the other's console;
- the leader is killed in the middle of a run and the follower takes the lease over and
  completes the run, with no duplicate chunks although its folders are other paths."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from bot.runtime import knowledge_runtime
from config.settings import Settings
from rag.operations.run_history import RunHistory
from tests.conftest import EXAMPLES, make_settings
from tests.fake_llm import FakeLLM
from tests.fake_slack import BOT_TOKEN, BOT_USER, FakeSlack
from tests.proc import async_wait_for, process_env, start_serve, stop_serve
from tests.test_indexer import assert_consistent
from tests.test_replicas import HELD_DOC
from tests.test_slack import CHANNEL, SIGNING_SECRET, final_answers, sign

ADMIN_TOKEN = "pg-replica-test-token-31c"
BIKE_DOC = "# Bike room\n\nThe bike room is in the basement. Its door code is 4711; it changes every quarter.\n"
BIKE_QUESTION = "What is the door code of the bike room?"
ON_CALL_QUESTION = "Who gets paged if the primary on-call does not acknowledge a page?"


def replica(root: Path, state_url: str, chroma_url: str, llm_url: str, slack_url: str) -> tuple[Settings, dict[str, str]]:
    """A replica's own data dir and knowledge folders (copies, at its own paths) and its environment."""
    knowledge = Path(shutil.copytree(EXAMPLES, root / "knowledge"))
    held = root / "held"
    held.mkdir()
    settings = make_settings(root / "data", knowledge, state_url=state_url, rag={"chroma_url": chroma_url, "collections": {"zz-held": str(held)}})
    env = process_env(
        settings,
        TEAMBOT_STATE_URL=state_url,
        TEAMBOT_RAG__CHROMA_URL=chroma_url,
        TEAMBOT_RAG__COLLECTIONS=json.dumps({"zz-held": str(held)}),
        TEAMBOT_RAG__LEASE_TTL_S="3",
        TEAMBOT_RAG__REINDEX_INTERVAL="0",
        TEAMBOT_INFERENCE__BACKEND="external",
        TEAMBOT_INFERENCE__BASE_URL=llm_url,
        TEAMBOT_ADMIN_TOKEN=ADMIN_TOKEN,
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=slack_url,
    )
    return settings, env


async def post_signed(
    http: httpx.AsyncClient, url: str, body: bytes, content_type: str = "application/json", *, later_s: int = 0, **headers: str
) -> httpx.Response:
    """Signed as Slack signs, ``later_s`` seconds from now (a retry is signed anew)."""
    signed = sign(body, int(time.time()) + later_s)
    return await http.post(f"{url}/slack/events", content=body, headers={**signed, "Content-Type": content_type, **headers})


async def test_two_replicas_share_state_through_postgresql_and_no_files(
    state_url: str, chroma_server: str, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    slack = await FakeSlack().start()
    a_settings, a_env = replica(tmp_path / "a", state_url, chroma_server, fake_llm.base_url, slack.api_url)
    b_settings, b_env = replica(tmp_path / "b", state_url, chroma_server, fake_llm.base_url, slack.api_url)
    history = RunHistory(RunHistory.database(state_url, tmp_path))
    leader = follower = None
    http = httpx.AsyncClient(timeout=180)
    try:
        leader, a_url, _ = await start_serve(a_env)
        await async_wait_for(lambda: (r := history.recent()) and r[0].state == "done" and r, "the leader's first run", timeout=300)
        follower, b_url, _ = await start_serve(b_env)

        # A console session made on the leader is valid on the follower.
        login = await http.post(f"{a_url}/admin/api/login", json={"password": ADMIN_TOKEN})
        assert login.status_code == 200
        cookie = {"Cookie": f"teambot_console={login.cookies['teambot_console']}"}
        http.cookies.clear()  # sent only where a request says so
        assert (await http.get(f"{b_url}/admin/api/session", headers=cookie)).status_code == 200
        assert (await http.get(f"{b_url}/admin/api/session")).status_code == 401

        # An upload on the follower is answered from the leader, and reaches the leader's folder.
        upload = await http.post(
            f"{b_url}/admin/api/upload", headers={**cookie, "Origin": b_url}, data={"collection": "default"}, files=[("files", ("bike-room.md", BIKE_DOC.encode(), "text/markdown"))]
        )
        assert upload.status_code == 200, upload.text
        [result] = upload.json()["results"]
        assert result["ok"] and result["chunks"] >= 1, result
        asked = await http.post(f"{a_url}/admin/api/ask", headers={**cookie, "Origin": a_url}, json={"question": BIKE_QUESTION})
        done = [json.loads(line) for line in asked.text.splitlines()][-1]["done"]
        assert done["found"] and done["sources"][0]["path"] == "bike-room.md", done
        await async_wait_for(lambda: (a_settings.rag.knowledge_dir / "bike-room.md").is_file(), "the leader to write the upload into its folder")
        assert (a_settings.rag.knowledge_dir / "bike-room.md").read_text() == BIKE_DOC

        # Slack's retry of an event the leader answered, delivered to the follower, is not answered again.
        event = slack.user_message(CHANNEL, "U1", f"<@{BOT_USER}> {ON_CALL_QUESTION}")
        body = json.dumps(slack.event_body({**event, "type": "app_mention"}, event_id="Ev0ACROSS")).encode()
        assert (await post_signed(http, a_url, body)).status_code == 200
        [answer] = await async_wait_for(lambda: final_answers(slack, CHANNEL, event["ts"]), "the leader's answer", timeout=300)
        retry = await post_signed(http, b_url, body, later_s=2, **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
        assert retry.status_code == 200
        b_log = b_settings.logs_dir / "teambot.log"
        await async_wait_for(lambda: "event Ev0ACROSS delivered again" in b_log.read_text(), "the follower to recognize the retry")
        assert len(final_answers(slack, CHANNEL, event["ts"])) == 1

        # A vote on the leader shows in the follower's console.
        answer_id = next(b for b in answer["blocks"] if b["type"] == "actions")["elements"][0]["value"]
        click: dict[str, Any] = {
            "type": "block_actions", "user": {"id": "U3"}, "team": {"id": "T0TEAM"}, "api_app_id": "A0APP",
            "channel": {"id": CHANNEL}, "message": {"ts": answer["ts"]}, "container": {"type": "message", "message_ts": answer["ts"]},
            "trigger_id": "T.2", "response_url": f"{slack.base}/response/1",
            "actions": [{"action_id": "feedback_down", "value": answer_id, "block_id": "feedback", "type": "button"}],
        }  # fmt: skip
        form = urlencode({"payload": json.dumps(click)}).encode()
        assert (await post_signed(http, a_url, form, "application/x-www-form-urlencoded")).status_code == 200

        async def voted() -> bool:
            answers = (await http.get(f"{b_url}/admin/api/answers", headers=cookie)).json()["answers"]
            return any(a["id"] == answer_id and a["down"] == 1 for a in answers)

        deadline = time.monotonic() + 120
        while not await voted():
            assert time.monotonic() < deadline, "the vote never showed in the follower's console"
            await asyncio.sleep(0.1)

        # The leader is killed in the middle of a run; the follower completes it.
        os.mkfifo(tmp_path / "a" / "held" / "held.md")  # the leader's run stops on it
        (tmp_path / "b" / "held" / "held.md").write_text(HELD_DOC)
        assert (await http.post(f"{b_url}/admin/api/reindex", headers={**cookie, "Origin": b_url})).status_code == 200
        held_run = await async_wait_for(
            lambda: (r := history.running()) and r.current == "zz-held" and r, "the leader's run to reach the held collection", timeout=300
        )
        assert f":{leader.pid}:" in held_run.holder
        leader.send_signal(signal.SIGKILL)
        await leader.wait()
        runs = await async_wait_for(
            lambda: (r := history.recent()) and r[0].state == "done" and r[0].id > held_run.id and r, "the follower's run", timeout=300
        )
        assert f":{follower.pid}:" in runs[0].holder and history.get(held_run.id).state == "interrupted"  # type: ignore[union-attr]
        by_collection = {r.collection: r for r in runs[0].indexed}
        assert by_collection["zz-held"].added == 1
        assert by_collection["default"].added == 0 and by_collection["default"].unchanged == 8  # 7 samples and the upload, at other paths
    finally:
        await stop_serve(leader, follower)
        await http.aclose()
        await slack.stop()
        history.close()
    with knowledge_runtime(b_settings) as runtime:
        assert_consistent(runtime, "default")
        assert_consistent(runtime, "zz-held")
        assert {r.root for r in runtime.manifest.files("default").values()} == {"collection:default"}
