"""Shared state: SQLite files in the data dir against PostgreSQL (state_url), on this machine.

    .venv/bin/python -m bench.shared_state [--files 5000] [--trials 8] [--seconds 30]

1. Migration: a data dir whose manifest holds ``--files`` documents (indexed with the MiniLM
   embedder, the faster one: embedding plays no part in what is measured) moved into an empty
   PostgreSQL by ``teambot state migrate``'s code (rows copied and counted, the files stored).
2. No-op re-index of those files, as the scheduler runs it (IndexRuns.run over the collection:
   the folder scanned and hashed, the manifest compared, nothing embedded), three times on
   SQLite, then three times on PostgreSQL, where a run first compares the shared uploads
   with the folder (the price of sharing no filesystem). Median seconds.
3. Lease failover: two IndexLease objects on one backend with rag.lease_ttl_s = 3; the holder
   renews every TTL/3 (as the scheduler does) and stops at a random moment; the other tries
   every TTL/3; seconds from the holder's last renewal to the takeover. ``--trials`` each.
4. Question throughput: 1, then 2 `teambot serve` replicas on one PostgreSQL and one `chroma
   run`, a scripted instant LLM (tests/fake_llm.py, so the CPU is the limit), the console's
   /admin/api/ask from 8 clients spread over the replicas for ``--seconds``; answers/s.

PostgreSQL is a throwaway server (tests/postgres.py: fsync off, loopback), so its numbers
are those of the database's protocol and queries, not of a disk. Writes
bench/results/shared-state.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import QUESTIONS, bench_settings, save
from bench.corpus import write_corpus
from bot.runtime import knowledge_runtime
from bot.state_migration import migrate_state
from config.settings import Settings
from rag.operations.lease import IndexLease
from rag.operations.run_history import RunHistory
from rag.store.database import Database
from tests.conftest import EXAMPLES
from tests.fake_llm import FakeLLM
from tests.postgres import create_database, running_server
from tests.proc import async_wait_for, process_env, start_chroma, start_serve, stop_serve

ADMIN_TOKEN = "bench-shared-state-token"
TTL_S = 3.0
CLIENTS = 8


def noop_runs(settings: Settings, runs: int = 3) -> list[float]:
    """Seconds of each no-op re-index of the default collection (the runtime, and so the embedder, loaded once)."""
    seconds = []
    with knowledge_runtime(settings) as runtime:
        for _ in range(runs):
            started = time.perf_counter()
            report = runtime.desk.index(None, "default", trigger="bench")
            seconds.append(round(time.perf_counter() - started, 3))
            assert report.added == report.updated == report.deleted == 0 and not report.failed, report
    return seconds


def renew_until(holder: IndexLease, dies_at: float, stop: threading.Event, last_renewal: list[float]) -> None:
    """Renews every TTL/3, as the scheduler does, until ``dies_at``; records the last renewal."""
    while time.monotonic() < dies_at:
        holder.acquire()
        last_renewal[0] = time.monotonic()
        if stop.wait(TTL_S / 3):
            return


def failover(open_db: Any, trials: int, seed: int = 5) -> list[float]:
    """Seconds from the holder's last renewal to the other's takeover, per trial."""
    rng = random.Random(seed)
    took = []
    for trial in range(trials):
        holder = IndexLease(open_db(), f"holder:{trial}", TTL_S)
        other = IndexLease(open_db(), f"other:{trial}", TTL_S)
        try:
            stop = threading.Event()
            last_renewal = [0.0]
            dies_at = time.monotonic() + rng.uniform(TTL_S, 2 * TTL_S)  # the holder dies at a random moment
            renewing = threading.Thread(target=renew_until, args=(holder, dies_at, stop, last_renewal))
            renewing.start()
            time.sleep(rng.uniform(0, TTL_S / 3))  # the other's schedule is out of phase with the holder's
            while not other.acquire():
                time.sleep(TTL_S / 3)
            took.append(round(time.monotonic() - last_renewal[0], 3))
            stop.set()
            renewing.join()
            other.release()
        finally:
            holder.close()
            other.close()
    return took


async def throughput(replicas: int, url: str, chroma: str, llm: FakeLLM, work: Path, seconds: float) -> dict[str, Any]:
    processes, urls = [], []
    try:
        for n in range(replicas):
            root = work / f"replica-{replicas}-{n}"
            knowledge = Path(shutil.copytree(EXAMPLES, root / "knowledge"))
            settings = bench_settings(root, knowledge)
            env = process_env(
                settings, TEAMBOT_STATE_URL=url, TEAMBOT_RAG__CHROMA_URL=chroma, TEAMBOT_INFERENCE__BACKEND="external",
                TEAMBOT_INFERENCE__BASE_URL=llm.base_url, TEAMBOT_ADMIN_TOKEN=ADMIN_TOKEN, TEAMBOT_RAG__REINDEX_INTERVAL="0",
                TEAMBOT_BOT__ANSWER_MODE="generative",
            )  # fmt: skip
            process, base, _ = await start_serve(env)
            processes.append(process)
            urls.append(base)
            if n == 0:  # the first replica indexes the sample knowledge base at start
                history = RunHistory(RunHistory.database(url, work))
                try:
                    await async_wait_for(lambda h=history: (r := h.recent(1)) and r[0].state == "done", "the first index run", timeout=600)
                finally:
                    history.close()
        async with httpx.AsyncClient(timeout=120) as http:
            login = await http.post(f"{urls[0]}/admin/api/login", json={"password": ADMIN_TOKEN})
            cookie = {"Cookie": f"teambot_console={login.cookies['teambot_console']}"}
            http.cookies.clear()
            for base in urls:  # warm: the first question loads the collection's cache
                await http.post(f"{base}/admin/api/ask", headers={**cookie, "Origin": base}, json={"question": QUESTIONS[0]})
            answered: list[float] = []
            deadline = time.monotonic() + seconds

            async def client(k: int) -> None:
                base = urls[k % len(urls)]
                n = k
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    response = await http.post(f"{base}/admin/api/ask", headers={**cookie, "Origin": base}, json={"question": QUESTIONS[n % len(QUESTIONS)]})
                    done = json.loads(response.text.splitlines()[-1])
                    assert "done" in done, done
                    answered.append(time.perf_counter() - started)
                    n += 1

            began = time.monotonic()
            await asyncio.gather(*(client(k) for k in range(CLIENTS)))
            elapsed = time.monotonic() - began
        return {
            "replicas": replicas, "clients": CLIENTS, "seconds": round(elapsed, 1), "answers": len(answered),
            "answers_per_s": round(len(answered) / elapsed, 2), "latency_p50_ms": round(statistics.median(answered) * 1000, 1),
        }  # fmt: skip
    finally:
        await stop_serve(*processes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    results: dict[str, Any] = {"files": args.files}
    work = Path(tempfile.mkdtemp(prefix="teambot-bench-state-"))
    try:
        with running_server() as server:
            # 1 and 2: a data dir of --files documents, no-op runs on SQLite, the migration, no-op runs on PostgreSQL.
            corpus = work / "corpus"
            write_corpus(corpus, args.files)
            sqlite = bench_settings(work / "one-host", corpus, rag={"embed_model": ""})
            started = time.perf_counter()
            with knowledge_runtime(sqlite) as runtime:
                report = runtime.desk.index(None, "default", trigger="bench")
            print(f"indexed {report.added} files in {time.perf_counter() - started:.0f} s", flush=True)
            results["noop_reindex_sqlite_s"] = noop_runs(sqlite)
            print("no-op re-index, SQLite:", results["noop_reindex_sqlite_s"], flush=True)
            url = create_database(server)
            migration = migrate_state(sqlite, url)
            results["migration"] = {
                "seconds": migration.seconds, "files": migration.files, "files_mb": round(migration.files_bytes / 1024 / 1024, 1),
                "rows": {t.table: t.copied for t in migration.tables},
            }  # fmt: skip
            print("migration:", results["migration"], flush=True)
            shared = bench_settings(work / "one-host", corpus, rag={"embed_model": ""}, state_url=url)
            results["noop_reindex_postgresql_s"] = noop_runs(shared)
            print("no-op re-index, PostgreSQL:", results["noop_reindex_postgresql_s"], flush=True)

            # 3: lease failover on each backend.
            lease_url = create_database(server)

            def sqlite_db() -> Database:
                return IndexLease.database(None, work / "lease")

            def postgres_db() -> Database:
                return IndexLease.database(lease_url, work)

            results["failover_s"] = {"ttl_s": TTL_S, "sqlite": failover(sqlite_db, args.trials), "postgresql": failover(postgres_db, args.trials)}
            print("failover:", results["failover_s"], flush=True)

            # 4: question throughput, 1 and 2 replicas.
            chroma, chroma_url = start_chroma(work / "chroma")
            llm = FakeLLM().start()
            try:
                qurl = create_database(server)
                results["throughput"] = [asyncio.run(throughput(n, qurl, chroma_url, llm, work, args.seconds)) for n in (1, 2)]
                print("throughput:", results["throughput"], flush=True)
            finally:
                llm.stop()
                chroma.terminate()
                chroma.wait(30)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(save("shared-state", results))


if __name__ == "__main__":
    main()
