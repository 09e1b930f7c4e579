"""Index runs as real processes: a run killed mid-batch is completed by the next with no duplicate
or orphan chunks; `teambot status` shows the history; `teambot index` joins a running service's queue."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
from pathlib import Path

from bench.corpus import write_corpus
from bot.runtime import knowledge_runtime
from config.settings import Settings
from rag.operations.index_runs import IndexRuns
from rag.operations.scheduler import IndexScheduler
from tests.proc import TEAMBOT_CMD, async_wait_for, process_env, wait_for
from tests.test_indexer import assert_consistent


def manifest_states(settings: Settings) -> dict[str, int]:
    path = settings.data_dir / "index.sqlite"
    if not path.exists():
        return {}
    db = sqlite3.connect(path, timeout=5)
    try:
        return dict(db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())
    except sqlite3.OperationalError:  # the table is not made yet
        return {}
    finally:
        db.close()


def teambot(args: list[str], settings: Settings, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TEAMBOT_CMD, *args], env=process_env(settings), capture_output=True, text=True, timeout=timeout)


def test_a_run_killed_mid_batch_is_completed_by_the_next(settings: Settings, knowledge: Path) -> None:
    write_corpus(knowledge / "runbooks", 240, sentences_per_file=12)
    files = 240 + 7
    process = subprocess.Popen([*TEAMBOT_CMD, "index"], env=process_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # A batch is marked pending before its chunks are written: kill the process inside that window.
        wait_for(lambda: (s := manifest_states(settings)).get("pending") and s.get("indexed"), "a pending batch after an indexed one", timeout=240, every=0.01)
        process.kill()
    finally:
        process.wait(30)
    killed = manifest_states(settings)
    assert killed.get("pending", 0) > 0 and killed.get("indexed", 0) < files, killed  # it died in the middle of a batch

    again = teambot(["index", "--json"], settings)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["failed"] == [] and report["added"] + report["updated"] + report["unchanged"] == files
    assert report["unchanged"] == killed["indexed"]  # what the killed run finished is not embedded again
    assert manifest_states(settings) == {"indexed": files}
    with knowledge_runtime(settings) as runtime:
        assert_consistent(runtime)
        assert runtime.store.count("default") == report["total_chunks"]

    status = teambot(["status", "--json"], settings)
    assert status.returncode == 0, status.stderr
    runs = json.loads(status.stdout)["runs"]
    assert [(r["trigger"], r["state"]) for r in runs] == [("cli", "done"), ("cli", "interrupted")]
    assert "killed or crashed" in runs[1]["error"] and runs[0]["totals"]["chunks"] == report["chunks"]
    text = teambot(["status"], settings).stdout
    assert "interrupted (cli" in text and f"default: {files} documents, {report['total_chunks']} chunks, 0 failed" in text
    assert "no teambot serve runs the index now" in text


def test_status_shows_failures_of_the_last_run(settings: Settings, knowledge: Path) -> None:
    (knowledge / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    assert teambot(["index"], settings).returncode == 0
    status = json.loads(teambot(["status", "--json"], settings).stdout)
    (default,) = [c for c in status["collections"] if c["collection"] == "default"]
    assert default["documents"] == 7 and [f["path"] for f in default["failed"]] == ["broken.pdf"]
    assert status["runs"][0]["totals"]["failed"] == 1 and status["service"] is None
    assert "failed default/broken.pdf:" in teambot(["status"], settings).stdout


async def test_teambot_index_joins_the_running_services_queue(settings: Settings, knowledge: Path) -> None:
    with knowledge_runtime(settings) as runtime:
        scheduler = IndexScheduler(settings, IndexRuns(runtime.indexer, runtime.history, "service:1:a"), info=lambda: {"pid": 4242, "host": "teambot-1"})
        await scheduler.start()
        try:
            await async_wait_for(lambda: [r for r in runtime.history.recent() if r.state == "done"], "the run at start")
            (knowledge / "faq.txt").write_text("Parking is free on weekends.\n")
            process = await asyncio.create_subprocess_exec(
                *TEAMBOT_CMD, "index", "--json", env=process_env(settings), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            stdout, stderr = await asyncio.wait_for(process.communicate(), 240)
            status = await asyncio.to_thread(teambot, ["status"], settings)
        finally:
            await scheduler.stop()
    assert process.returncode == 0, stderr.decode()
    assert "teambot serve (pid 4242 on teambot-1) runs the index: this re-index joined its queue" in stderr.decode()
    report = json.loads(stdout)
    assert report["collection"] == "default" and report["updated"] == 1 and report["unchanged"] == 6
    assert "index run by teambot serve (pid 4242 on teambot-1)" in status.stdout
    rows = sqlite3.connect(settings.data_dir / "index-runs.sqlite").execute("SELECT trigger, holder FROM runs ORDER BY id").fetchall()
    assert rows == [("start", "service:1:a"), ("cli", "service:1:a")]  # the service ran it, not the command
