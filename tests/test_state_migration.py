"""`teambot state migrate`: a real data dir (the indexed sample knowledge base, runs, answers,
votes, a console session) moved into a real PostgreSQL by the command line, then served from
there: every row counted, no document embedded again, the knowledge files stored for replicas."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bot.answer_log import AnswerLog
from bot.core import AnswerDone
from bot.platform_state import PlatformState, session_key
from bot.runtime import knowledge_runtime
from config.errors import ConfigError
from config.settings import Settings
from rag.operations.lease import IndexLease
from rag.operations.shared_uploads import SharedUploads
from tests.conftest import EXAMPLES, make_settings
from tests.test_cli import run, teambot_env
from tests.test_indexer import assert_consistent

SESSION_KEY = session_key(b"migration-test-admin-token")
DONE = AnswerDone("In the basement [1].", [], [1], True)


def test_a_data_dir_moves_into_postgresql_and_is_served_from_there(settings: Settings, state_url: str, tmp_path: Path) -> None:
    data, knowledge = settings.data_dir, settings.rag.knowledge_dir  # its own copy of the samples: files are added to it below
    (tmp_path / "environ.txt").write_text("SLACK_BOT_TOKEN=xoxb-not-for-the-database\n")
    (knowledge / "environ.txt").symlink_to(tmp_path / "environ.txt")  # never copied into the shared state
    (knowledge / "team").mkdir()
    (knowledge / "team" / "rota.md").write_text("# Rota\n\nThe on-call week starts on Tuesday.\n")  # stored as team/rota.md
    (knowledge / "team" / "Q&A.md").write_text("# Q and A\n\nAsk in #help.\n")  # a name no upload has: replicas would not write it
    settings = make_settings(data, knowledge)
    with knowledge_runtime(settings) as runtime:
        runtime.desk.index(None, "default")
        runtime.history.request("console")
        documents = {r.doc_id: r.path for r in runtime.manifest.files("default").values()}
    log = AnswerLog(AnswerLog.database(None, data))
    answer = log.record("slack", "C1", "1.0", "U1", "Where is the bike room?", DONE)
    log.vote(answer, "U2", "down")
    log.close()
    platform = PlatformState(PlatformState.database(None, data))
    session = platform.sessions.start(SESSION_KEY, 3600)
    platform.close()

    moved = run(["state", "migrate", "--to", state_url], teambot_env(settings))
    assert moved.returncode == 0, moved.stderr
    assert "answers                  1 rows in SQLite,        1 in PostgreSQL" in moved.stdout
    assert f"files                    {len(documents)} rows in SQLite" in moved.stdout
    assert "knowledge files          8" in moved.stdout
    assert "skipped default/team/Q&A.md: replicas would not write it ('Q&A.md' is not a safe file or folder name" in moved.stdout
    assert "skipped default/environ.txt: not read: a link to a file outside the knowledge folder" in moved.stdout
    assert f"for the Chroma store embedded on {socket.gethostname()} at {data / 'chroma'}" in moved.stdout

    again = run(["state", "migrate", "--to", state_url], teambot_env(settings))
    assert again.returncode == 2 and "already holds teambot state" in again.stderr

    shared = make_settings(data, knowledge, state_url=state_url)
    with knowledge_runtime(shared, serving=True) as runtime:
        assert {r.doc_id: r.path for r in runtime.manifest.files("default", "collection:default").values()} == documents
        report = runtime.desk.index(None, "default")
        assert (report.added, report.updated, report.deleted, report.unchanged) == (0, 0, 0, len(documents))  # nothing embedded again
        assert_consistent(runtime, "default")
        assert [(a.id, a.down) for a in runtime.answers.recent()] == [(answer, 1)]  # type: ignore[union-attr]
        assert runtime.platform.sessions.valid(SESSION_KEY, session)  # type: ignore[union-attr]
        [waiting] = runtime.history.waiting()
        assert waiting.trigger == "console"
        assert runtime.history.request("cli").id == waiting.id + 1  # ids continue after the copied ones
    elsewhere = make_settings(tmp_path / "replica", knowledge, state_url=state_url, rag={"chroma_url": "http://chroma.internal:8000"})
    with pytest.raises(ConfigError, match="describes the Chroma store embedded on .* but this replica uses http://chroma.internal:8000"):
        knowledge_runtime(elsewhere)  # its store holds none of the chunks the shared manifest lists
    uploads = SharedUploads(SharedUploads.database(state_url, data))
    try:
        assert sorted(f.name for f in uploads.current("default")) == sorted([p.name for p in EXAMPLES.iterdir()] + ["team/rota.md"])
    finally:
        uploads.close()


def test_a_running_service_or_a_bad_url_is_refused(settings: Settings, state_url: str) -> None:
    lease = IndexLease(IndexLease.database(None, settings.data_dir), "host:1:x", ttl_s=600)
    lease.acquire({"pid": 4242, "host": "box"})
    lease.close()
    refused = run(["state", "migrate", "--to", state_url], teambot_env(settings))
    assert refused.returncode == 2 and "pid 4242 on box" in refused.stderr and "stop it first" in refused.stderr
    not_pg = run(["state", "migrate", "--to", "mysql://db/teambot"], teambot_env(settings))
    assert not_pg.returncode == 2 and "not a PostgreSQL URL" in not_pg.stderr
    nothing = run(["state", "migrate"], teambot_env(settings))
    assert nothing.returncode == 2 and "--to postgresql://" in nothing.stderr
