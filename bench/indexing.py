"""Indexing: first-index throughput and the no-op re-index, each beside plain llama-index.

    .venv/bin/python -m bench.indexing [--files 2000] [--noop-files 1000]

Writes bench/results/indexing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import EMPTY_CONFIG, bench_settings, plain_llamaindex_index, save
from bench.corpus import write_corpus
from bot.runtime import knowledge_runtime


def first_index(files: int, work: Path) -> dict:
    folder = work / "first"
    write_corpus(folder, files)
    settings = bench_settings(work / "ours", folder)
    _warm_up(work)
    with knowledge_runtime(settings) as runtime:
        report = runtime.indexer.run()
    ours = {"chunks": report.chunks, "seconds": round(report.seconds, 2), "chunks_per_s": round(report.chunks / report.seconds, 1)}
    results = {"files": files, "teambot": ours}
    for label, batch in (("plain_llamaindex_default_batch", None), ("plain_llamaindex_batch_64", 64)):
        nodes, seconds = plain_llamaindex_index(folder, work / f"{label}-chroma", batch)
        results[label] = {"chunks": nodes, "seconds": round(seconds, 2), "chunks_per_s": round(nodes / seconds, 1)}
    return results


def _warm_up(work: Path) -> None:
    """Loads the embedder and imports Chroma and llama-index once, untimed, so both sides start warm."""
    folder = work / "warm-up"
    write_corpus(folder, 5, seed=1)
    with knowledge_runtime(bench_settings(work / "warm-up-data", folder)) as runtime:
        runtime.indexer.run()
    plain_llamaindex_index(folder, work / "warm-up-chroma")


def noop_reindex(files: int, work: Path) -> dict:
    folder = work / "noop"
    write_corpus(folder, files, seed=99)
    settings = bench_settings(work / "noop-ours", folder)
    with knowledge_runtime(settings) as runtime:
        runtime.indexer.run()
        second = runtime.indexer.run()
    assert second.unchanged == files and second.chunks == 0, second

    # The whole command, as a cron job or a user would run it: a new process, imports included.
    env_settings = {"TEAMBOT_DATA_DIR": str(settings.data_dir), "TEAMBOT_RAG__KNOWLEDGE_DIR": str(folder), "TEAMBOT_CONFIG": str(EMPTY_CONFIG)}
    teambot = str(Path(sys.executable).parent / "teambot")
    started = time.perf_counter()
    command = subprocess.run([teambot, "index", "--json"], env={**_env(), **env_settings}, capture_output=True, text=True, check=True)
    command_seconds = time.perf_counter() - started
    assert json.loads(command.stdout)["unchanged"] == files

    nodes, baseline_seconds = plain_llamaindex_index(folder, work / "noop-baseline-chroma")
    return {
        "files": files,
        "teambot_in_process_seconds": round(second.seconds, 3),
        "teambot_command_seconds": round(command_seconds, 2),
        "plain_llamaindex_seconds": round(baseline_seconds, 2),
        "plain_llamaindex_chunks_embedded": nodes,
    }


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TEAMBOT_")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--noop-files", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="teambot-bench-") as tmp:
        work = Path(tmp)
        results = {"first_index": first_index(args.files, work), "noop_reindex": noop_reindex(args.noop_files, work)}
    print(json.dumps(results, indent=2))
    print("saved", save("indexing", results))


if __name__ == "__main__":
    main()
