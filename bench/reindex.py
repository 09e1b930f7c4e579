"""Keeping the index fresh: a re-index of 5,000 files with 1% changed, and questions answered
while a full index runs beside the same questions on an idle machine.

    .venv/bin/python -m bench.reindex [--files 5000] [--changed 50] [--questions 8]

1. Re-index with 1% changed: the corpus is indexed once, then ``--changed`` files are edited
   and the scheduler's run (``IndexScheduler.run_all``, what `teambot serve` runs on schedule,
   with the embedder already loaded) is timed; then the same as a new `teambot index` process
   (imports and the embedder's load included, as a cron job would run it).
2. Questions during a full index: the sample knowledge base answers ``--questions`` questions
   (real llama.cpp, SmolLM2, max_tokens 128) on an idle machine, then again while the 5,000
   files are embedded from scratch into another collection in a thread of the same process
   (as the scheduler does). Writes bench/results/reindex.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import aclosing
from pathlib import Path

from bench.common import EMPTY_CONFIG, bench_settings, save, summary_ms
from bench.corpus import write_corpus
from bot.core import AnswerDone
from bot.runtime import knowledge_runtime, open_runtime
from rag.ingest.indexer import IndexReport
from rag.operations.index_runs import IndexRuns
from rag.operations.scheduler import IndexScheduler

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "knowledge"
QUESTIONS = [
    "Who gets paged if the primary on-call does not acknowledge a page?",
    "出差住宿每晚可以报销多少钱？",
    "How many approvals does a pull request need?",
    "When does the release train leave?",
    "What do I do if my laptop is stolen?",
    "Who is my onboarding buddy?",
    "报销需要在多少天内提交？",
    "When is the team standup?",
]


def edit(paths: list[Path]) -> None:
    for path in paths:
        path.write_text(path.read_text(encoding="utf-8") + "\nUpdated: the owner changed this week.\n", encoding="utf-8")


def reindex_changed(files: int, changed: int, work: Path) -> dict:
    folder = work / "corpus"
    paths = write_corpus(folder, files, sentences_per_file=3)
    settings = bench_settings(work, folder)
    print(f"indexing {files} files once ...", file=sys.stderr)
    with knowledge_runtime(settings) as runtime:
        first = runtime.indexer.run()
        step = max(1, files // changed)
        edit(paths[::step][:changed])
        scheduler = IndexScheduler(settings, IndexRuns(runtime.indexer, runtime.history, "bench:1:a"))
        run = scheduler.run_all()
        report = run.report_for("default")
        assert isinstance(report, IndexReport) and report.updated == changed and report.unchanged == files - changed, report
        in_service = {"seconds": round(run.finished_at - run.started_at, 2), "updated": report.updated, "chunks_embedded": report.chunks}

    edit(paths[1::step][:changed])
    env = {**os.environ, "PYTHONPATH": str(REPO), "TEAMBOT_DATA_DIR": str(settings.data_dir),
           "TEAMBOT_RAG__KNOWLEDGE_DIR": str(folder), "TEAMBOT_CONFIG": str(EMPTY_CONFIG)}  # fmt: skip
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "bot", "index", "--json"], env=env, capture_output=True, text=True, check=True)
    process_seconds = time.perf_counter() - started
    cli = json.loads(out.stdout)
    assert cli["updated"] == changed, cli
    return {
        "files": files,
        "changed": changed,
        "first_index": {"seconds": round(first.seconds, 2), "chunks": first.chunks},
        "scheduled_run_in_service": in_service,
        "teambot_index_process": {"seconds": round(process_seconds, 2), "indexer_seconds": cli["seconds"], "chunks_embedded": cli["chunks"]},
    }


async def ask_all(engine, questions: list[str]) -> list[dict[str, float]]:  # type: ignore[no-untyped-def]
    timings = []
    for question in questions:
        async with aclosing(engine.answer(question)) as events:
            async for event in events:
                if isinstance(event, AnswerDone):
                    timings.append(event.timings_ms)
    return timings


def summarize(timings: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {key: summary_ms([t[key] for t in timings]) for key in ("retrieve", "first_token", "total")}


async def questions_during_full_index(files: int, rounds: int, work: Path) -> dict:
    knowledge = Path(shutil.copytree(EXAMPLES, work / "knowledge"))
    bulk = work / "bulk"
    write_corpus(bulk, files, sentences_per_file=3, seed=3)
    settings = bench_settings(work, knowledge, inference={"max_tokens": 128, "temperature": 0.0})
    async with open_runtime(settings, with_llm=True) as runtime:
        runtime.indexer.run()
        engine = runtime.require_engine()
        questions = (QUESTIONS * (rounds // len(QUESTIONS) + 1))[:rounds]
        await ask_all(engine, questions[:2])  # warm-up: the query encoder, the keyword cache, llama.cpp
        idle = await ask_all(engine, questions)

        print(f"asking while {files} files are indexed from scratch ...", file=sys.stderr)
        done = threading.Event()
        index_result: dict = {}

        def full_index() -> None:
            report = runtime.indexer.run([bulk], "bulk")
            index_result.update(seconds=report.seconds, chunks=report.chunks)
            done.set()

        indexing = asyncio.create_task(asyncio.to_thread(full_index))
        busy: list[dict[str, float]] = []
        k = 0
        while not done.is_set():
            busy += await ask_all(engine, [questions[k % len(questions)]])
            k += 1
        await indexing
    assert len(busy) >= 3, f"only {len(busy)} questions fitted in the full index: use more files"
    return {
        "questions_idle": len(idle),
        "questions_during_index": len(busy),
        "full_index": {"files": files, **index_result},
        "idle_ms": summarize(idle),
        "during_full_index_ms": summarize(busy),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--changed", type=int, default=50)
    parser.add_argument("--questions", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="teambot-bench-") as tmp:
        reindex = reindex_changed(args.files, args.changed, Path(tmp) / "reindex")
        print(json.dumps(reindex, indent=2), file=sys.stderr)
        during = asyncio.run(questions_during_full_index(args.files, args.questions, Path(tmp) / "during"))
    path = save("reindex", {"reindex_1_percent": reindex, "questions": during})
    print(path.read_text())


if __name__ == "__main__":
    main()
