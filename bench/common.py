"""What every benchmark needs: isolated settings, a plain llama-index baseline, percentiles, results."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from config.settings import Settings, load_settings

RESULTS = Path(__file__).resolve().parent / "results"
# Questions the sample knowledge base (examples/knowledge) answers.
QUESTIONS = [
    "Who gets paged if the primary on-call does not acknowledge a page?",
    "How many approvals does a pull request need?",
    "When does the release train leave?",
    "What do I do if my laptop is stolen?",
    "Who is my onboarding buddy?",
]
EMPTY_CONFIG = Path(__file__).resolve().parent.parent / "tests" / "teambot-test.toml"
ONE_FILE = Path(__file__).resolve().parent.parent / "examples" / "knowledge" / "faq.txt"


def bench_settings(work: Path, knowledge: Path, **overrides: Any) -> Settings:
    rag = {"knowledge_dir": str(knowledge), **overrides.pop("rag", {})}
    return load_settings(EMPTY_CONFIG, data_dir=str(work / "data"), rag=rag, **overrides)


async def serve_tree(tree: Path, work: Path, **env: str) -> tuple[asyncio.subprocess.Process, str]:
    """A fresh `teambot serve` of ``tree`` (another checkout, or this one) in ``work``, on a one-file
    knowledge folder (the sample FAQ), with ``env`` added; its process and HTTP base URL. Call it from
    a directory outside both trees, so that `python -m bot` finds ``tree``'s code."""
    from tests.proc import process_env, start_serve

    if work.exists():
        shutil.rmtree(work)
    knowledge = work / "knowledge"
    knowledge.mkdir(parents=True)
    shutil.copy(ONE_FILE, knowledge)
    environment = process_env(bench_settings(work, knowledge), **env)
    environment["PYTHONPATH"] = str(tree)
    process, url, _ = await start_serve(environment)
    return process, url


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[k], 2)


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
            "mean": round(statistics.fmean(values), 2), "n": len(values)}


def plain_llamaindex_index(folder: Path, chroma_dir: Path, embed_batch_size: int | None = None) -> tuple[int, float]:
    """The baseline: SimpleDirectoryReader + VectorStoreIndex.from_documents into Chroma, same embedder model.

    Returns (nodes written, seconds). Every call re-reads and re-embeds everything.
    """
    import chromadb
    from llama_index.core import SimpleDirectoryReader, StorageContext, VectorStoreIndex
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from rag.ingest.embedder import model_location

    kwargs = {} if embed_batch_size is None else {"embed_batch_size": embed_batch_size}
    embed_model = HuggingFaceEmbedding(model_name=model_location(""), device="cpu", **kwargs)
    client = chromadb.PersistentClient(path=str(chroma_dir), settings=chromadb.Settings(anonymized_telemetry=False))
    started = time.perf_counter()
    documents = SimpleDirectoryReader(str(folder)).load_data()
    collection = client.get_or_create_collection(f"baseline-{int(started * 1000) % 10**9}")
    storage = StorageContext.from_defaults(vector_store=ChromaVectorStore(chroma_collection=collection))
    VectorStoreIndex.from_documents(documents, storage_context=storage, embed_model=embed_model)
    return collection.count(), time.perf_counter() - started


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "machine": machine(), "date": time.strftime("%Y-%m-%d"), **data}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
