"""Retrieval in one collection of 10,000, 50,000 and 200,000 chunks: latency, memory, and how soon an upload is found.

    .venv/bin/python -m bench.large_collection [--sizes 10000 50000 200000] [--queries 300] [--before /work/before]

Indexing 200,000 chunks through the embedder would take hours on two cores, so the collection
is filled directly: a pool of real chunks (bench/corpus.py files read and chunked by teambot's
reader and chunker, embedded by rag.embed_model) is embedded once; every chunk written is a
pool chunk whose vector has a little noise added (then normalised) and whose text has a word of
its own, with the metadata the indexer writes (llama-index's, as ChromaVectorStore.add makes
it), 5,000 chunks per write to the collection ChromaStore made, and the documents' manifest rows
saved per write, a new generation each, as the indexer does.

Each size is measured in a fresh process for this code and, with --before, for another checkout
(the same collection, copied): the first search (it reads the collection), p50/p99 of
--queries searches after WARM_UP_QUERIES, the process's VmRSS and VmHWM, and one upload through
the knowledge desk (saved, parsed, embedded, written) followed by searches until one finds it.
Writes bench/results/large-collection.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script by the measuring child, whose PYTHONPATH picks the code
    sys.path.append(str(REPO))

from bench.common import bench_settings, save, summary_ms
from bench.corpus import questions, write_corpus

WARM_UP_QUERIES = 20
POOL_FILES = 600  # real chunks embedded once, reused with noise
SENTENCES_PER_FILE = 3
CHUNKS_PER_DOCUMENT = 5
WRITE_BATCH = 5000  # chunks per Chroma write (under SQLite's variable limit)
NOISE = 0.05  # of a pool vector's length, spread over the dimensions
UPLOAD_NAME = "bicycle-storage.md"
UPLOAD = "# Bicycle storage\n\nBicycles are stored in the basement bicycle room, behind the blue door; the code is 4711.\n"
UPLOAD_QUESTION = "Where are the bicycles stored?"
SEARCHABLE_DEADLINE_S = 120


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--before", type=Path, help="another checkout to measure beside this one (e.g. /work/before)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/teambot-large-collection"))
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child: measure the collection in this work dir
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.queries)))
        return

    work: Path = args.work
    pool = load_pool(work)
    results: dict[str, object] = {"queries": args.queries, "pool_chunks": len(pool["texts"]), "sizes": {}}
    filled, previous = 0, None
    for size in sorted(args.sizes):
        # One collection per size, kept in the work dir: a second run measures again without filling.
        collection = work / f"chunks-{size}"
        if not collection.exists():
            started = time.perf_counter()
            building = work / f"building-{size}"  # a path of its own: chromadb keeps a client per path in this process
            shutil.rmtree(building, ignore_errors=True)
            if previous is not None:
                shutil.copytree(previous, building)
            fill(building, pool, filled, size)
            building.rename(collection)
            print(f"filled {size} chunks (+{size - filled} in {time.perf_counter() - started:.0f} s)", flush=True)
        filled, previous = size, collection
        trees = {"after": REPO} | ({"before": args.before.resolve()} if args.before else {})
        measured = {}
        for name, tree in trees.items():
            copy = work / f"measure-{name}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(collection, copy)
            measured[name] = run_child(tree, copy, args.queries)
            shutil.rmtree(copy, ignore_errors=True)
            print(size, name, json.dumps(measured[name]), flush=True)
        results["sizes"][str(size)] = measured  # type: ignore[index]
    print("saved", save("large-collection", results))


def load_pool(work: Path) -> dict[str, list]:  # type: ignore[type-arg]
    """Real chunks of the benchmark corpus, embedded once (kept in the work dir for the next run)."""
    from rag.ingest.chunking import Chunker
    from rag.ingest.documents import read_document
    from rag.ingest.embedder import load_embedder
    from rag.search.keyword import tokenize

    cached = work / "pool.json"
    if cached.exists():
        return json.loads(cached.read_text())
    settings = bench_settings(work, work / "pool-files")
    rag = settings.rag
    chunker = Chunker(rag.chunk_size, rag.chunk_overlap, rag.embed_model)
    pool: dict[str, list] = {"texts": [], "titles": [], "headings": [], "keywords": [], "embedding_texts": []}  # type: ignore[type-arg]
    for path in write_corpus(work / "pool-files", POOL_FILES, SENTENCES_PER_FILE):
        doc = read_document(path)
        for chunk in chunker.split(doc):
            pool["texts"].append(chunk.text)
            pool["titles"].append(doc.title)
            pool["headings"].append(chunk.heading)
            pool["keywords"].append(" ".join(tokenize(f"{doc.title}\n{chunk.heading}\n{chunk.text}")))
            pool["embedding_texts"].append(chunk.embedding_text(doc.title))
    started = time.perf_counter()
    pool["vectors"] = [list(map(float, v)) for v in load_embedder(rag.embed_model, rag.embed_batch_size).passages(pool["embedding_texts"])]
    print(f"embedded a pool of {len(pool['texts'])} chunks in {time.perf_counter() - started:.0f} s", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(pool))
    return pool


def fill(work: Path, pool: dict[str, list], start: int, end: int) -> None:  # type: ignore[type-arg]
    """Chunks start..end-1 of the collection, written as the indexer writes them."""
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
    from llama_index.core.vector_stores.utils import node_to_metadata_dict

    from bot.runtime import knowledge_runtime
    from rag.ingest.indexer import chunk_id_for, doc_id_for
    from rag.store.manifest import FileRecord

    folder = work / "knowledge"
    folder.mkdir(parents=True, exist_ok=True)
    root = str(folder.resolve())
    settings = bench_settings(work, folder)
    vectors = np.asarray(pool["vectors"], dtype=np.float32)
    rng = np.random.default_rng(start)
    picks = random.Random(start)
    with knowledge_runtime(settings) as runtime:
        collection = runtime.store.collection("default", create=True)
        assert collection is not None
        for first in range(start, end, WRITE_BATCH):
            count = min(WRITE_BATCH, end - first)
            chosen = [picks.randrange(len(vectors)) for _ in range(count)]
            noisy = vectors[chosen] + rng.standard_normal((count, vectors.shape[1])).astype(np.float32) * (NOISE / np.sqrt(vectors.shape[1]))
            noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
            ids, metadatas, documents, records = [], [], [], {}
            for k, p in enumerate(chosen):
                number = first + k
                path = f"bulk/doc-{number // CHUNKS_PER_DOCUMENT:06d}.md"
                doc_id = doc_id_for("default", root, path)
                position = number % CHUNKS_PER_DOCUMENT
                unique = f"ref{number:06d}"
                node = TextNode(
                    id_=chunk_id_for(doc_id, position),
                    text=f"{pool['texts'][p]} {unique}",
                    metadata={
                        "collection": "default", "source": path, "title": pool["titles"][p], "heading": pool["headings"][p],
                        "position": position, "page": "", "keywords": f"{pool['keywords'][p]} {unique}",
                    },
                    relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc_id)},
                )  # fmt: skip
                ids.append(node.node_id)
                metadatas.append({key: "" if value is None else value for key, value in node_to_metadata_dict(node, remove_text=True, flat_metadata=True).items()})
                documents.append(node.text)
                records[doc_id] = FileRecord("default", doc_id, root, path, f"{number:064d}", 1000, pool["titles"][p], position + 1, "indexed", "", time.time())
            collection.add(ids=ids, embeddings=noisy, metadatas=metadatas, documents=documents)
            runtime.manifest.save(records.values())


def run_child(tree: Path, work: Path, queries: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--measure", str(work), "--queries", str(queries)],
        env=env, cwd=work, capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-2000:]}"}
    return json.loads(lines[-1])


def memory_mb() -> dict[str, float]:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: round(int(status[key].split()[0]) / 1024, 1) for key in ("VmRSS", "VmHWM")}


def measure(work: Path, count: int) -> dict[str, object]:
    from bot.runtime import knowledge_runtime

    settings = bench_settings(work, work / "knowledge")
    asked = questions(count)
    result: dict[str, object] = {}
    with knowledge_runtime(settings) as runtime:
        retriever = runtime.retriever
        result["chunks"] = runtime.store.count("default")
        started = time.perf_counter()
        try:
            retriever.search(asked[0], ["default"])
        except Exception as exc:  # today's code at 50,000 chunks: "too many SQL variables"
            result.update(error=f"{type(exc).__name__}: {exc}", first_search_s=round(time.perf_counter() - started, 2), memory_mb=memory_mb())
            return result
        result["first_search_s"] = round(time.perf_counter() - started, 2)  # reads the collection (and loads the query encoder)
        for question in asked[:WARM_UP_QUERIES]:
            retriever.search(question, ["default"])
        total, embed, found = [], [], 0
        stages: dict[str, list[float]] = {"vector": [], "keyword": []}  # similarity and z-scores; BM25, coverage and fusion
        for question in asked:
            started = time.perf_counter()
            searched = retriever.search(question, ["default"])
            total.append((time.perf_counter() - started) * 1000)
            embed.append(searched.timings_ms["embed"])
            for stage, values in stages.items():
                values.append(searched.timings_ms[stage])
            found += bool(searched.passages)
        result.update(
            search_ms=summary_ms(total),
            search_without_embedding_ms=summary_ms([t - e for t, e in zip(total, embed)]),
            embedding_ms=summary_ms(embed),
            stages_ms={stage: summary_ms(values) for stage, values in stages.items()},
            questions_with_passages=found,
            memory_mb=memory_mb(),
        )
        started = time.perf_counter()
        runtime.desk.add("default", UPLOAD_NAME, UPLOAD.encode(), "bench")  # returns once the file is indexed
        indexed = time.perf_counter()
        searches = 0
        while time.perf_counter() - indexed < SEARCHABLE_DEADLINE_S:
            searches += 1
            if any(p.path == UPLOAD_NAME for p in retriever.search(UPLOAD_QUESTION, ["default"]).passages):
                break
        else:
            searches = -1
        found_at = time.perf_counter()
        result["upload"] = {
            "index_s": round(indexed - started, 3),  # saved, parsed, embedded, written by the desk's index run
            "indexed_to_searchable_s": round(found_at - indexed, 3),  # until a search finds it
            "searches": searches,  # -1: not found within SEARCHABLE_DEADLINE_S
        }
        result["memory_after_upload_mb"] = memory_mb()
    return result


if __name__ == "__main__":
    main()
