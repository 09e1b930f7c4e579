"""Retrieval latency at 10,000 chunks, query embedding included, beside a plain llama-index retriever.

    .venv/bin/python -m bench.retrieval [--chunks 10000] [--queries 300] [--compare rag.translate_query=false ...]

--compare times a second retriever on the same collection with those settings, interleaved
with the first (the code before a change, as far as a setting turns it off), so both see the
same machine load.

Both search the same Chroma collection; the baseline is
``VectorStoreIndex.from_vector_store(...).as_retriever(similarity_top_k=4)`` (vector search only),
teambot's is the hybrid vector + BM25 search with its relevance threshold.
Writes bench/results/retrieval.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.common import bench_settings, save, summary_ms
from bench.corpus import questions, write_corpus
from bot.runtime import knowledge_runtime
from rag.ingest.embedder import load_embedder
from rag.store.chroma import CHROMA_PREFIX

WARM_UP_QUERIES = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--compare", action="append", default=[], help="KEY=VALUE: a setting of a second retriever timed beside")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="teambot-bench-") as tmp:
        work = Path(tmp)
        folder = work / "knowledge"
        write_corpus(folder, args.chunks)
        settings = bench_settings(work, folder)
        with knowledge_runtime(settings) as runtime:
            report = runtime.indexer.run()
            assert report.total_chunks == args.chunks, report
            results = {"chunks": report.total_chunks, "index_seconds": report.seconds, "top_k": settings.rag.top_k}
            other = None
            if args.compare:
                from bench.eval import nested
                from rag.search.retriever import Retriever

                compared = bench_settings(work, folder, **nested(args.compare))
                other = Retriever(compared.rag, runtime.store, runtime.manifest, models_dir=compared.models_dir)
                results["compared_settings"] = args.compare
            results.update(measure(runtime, settings, questions(args.queries), other))
    print(json.dumps(results, indent=2))
    print("saved", save("retrieval", results))


def measure(runtime, settings, queries: list[str], other=None) -> dict:  # type: ignore[no-untyped-def]
    from llama_index.core import VectorStoreIndex
    from llama_index.vector_stores.chroma import ChromaVectorStore

    collection = runtime.store.collection("default")
    assert collection is not None and collection.name == CHROMA_PREFIX + "default"
    embed_model = load_embedder(settings.rag.embed_model, settings.rag.embed_batch_size).model  # type: ignore[attr-defined]
    baseline = VectorStoreIndex.from_vector_store(ChromaVectorStore(chroma_collection=collection), embed_model=embed_model).as_retriever(
        similarity_top_k=settings.rag.top_k
    )

    for query in queries[:WARM_UP_QUERIES]:
        runtime.retriever.search(query, ["default"])
        baseline.retrieve(query)
        if other is not None:
            other.search(query, ["default"])

    ours, plain, stages, found = [], [], {"embed": [], "vector": [], "keyword": []}, 0
    compared: list[float] = []
    compared_stages: dict[str, list[float]] = {"embed": [], "vector": [], "keyword": []}
    for query in queries:  # interleaved, so both see the same machine load
        started = time.perf_counter()
        result = runtime.retriever.search(query, ["default"])
        ours.append((time.perf_counter() - started) * 1000)
        found += bool(result.passages)
        for stage in stages:
            stages[stage].append(result.timings_ms[stage])
        if other is not None:
            started = time.perf_counter()
            before = other.search(query, ["default"])
            compared.append((time.perf_counter() - started) * 1000)
            for stage, values in compared_stages.items():
                values.append(before.timings_ms[stage])
        started = time.perf_counter()
        baseline.retrieve(query)
        plain.append((time.perf_counter() - started) * 1000)
    return {
        "queries": len(queries),
        "teambot_hybrid_ms": summary_ms(ours),
        "teambot_stages_ms": {stage: summary_ms(values) for stage, values in stages.items()},
        "teambot_questions_with_passages": found,
        "plain_llamaindex_vector_ms": summary_ms(plain),
        **({"compared_ms": summary_ms(compared), "compared_stages_ms": {k: summary_ms(v) for k, v in compared_stages.items()}} if compared else {}),
    }


if __name__ == "__main__":
    main()
