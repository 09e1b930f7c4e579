"""The retriever's cache of a collection: read in batches, then updated by what changed (real Chroma, real indexer)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bot.runtime import knowledge_runtime
from config.settings import Settings
from rag.search.query_encoder import load_query_encoder
from rag.store.chroma import CHROMA_PREFIX, EMBED_MODEL_KEY
from rag.store.manifest import FileRecord

# SQLite refuses statements with more than 32,766 variables; one read of this many chunks did.
OVER_SQLITE_LIMIT = 40_000
CHUNKS_PER_DOCUMENT = 5
BIKES = "# Bicycles\n\nBicycles are stored in the basement bicycle room, behind the blue door.\n"
QUESTION = "Where are the bicycles stored?"


def test_a_collection_past_sqlites_variable_limit_is_searched(settings: Settings) -> None:
    question = "Where is the spare key of the server room kept?"
    with knowledge_runtime(settings) as runtime:
        store = runtime.store
        answer = np.asarray(load_query_encoder(settings.rag.embed_model, settings.rag.embed_batch_size, settings.models_dir)(question))
        dimension = len(answer)
        # Cheap HNSW settings: the test is about reading the collection, not about Chroma's own index.
        collection = store._chroma().create_collection(
            CHROMA_PREFIX + "default",
            configuration={"hnsw": {"space": "cosine", "ef_construction": 16, "max_neighbors": 4}},
            metadata={EMBED_MODEL_KEY: store.embed_model},
            embedding_function=None,
        )
        rng = np.random.default_rng(5)
        for start in range(0, OVER_SQLITE_LIMIT, 5000):
            vectors = rng.standard_normal((5000, dimension)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            ids = [f"doc{(start + k) // CHUNKS_PER_DOCUMENT}:{(start + k) % CHUNKS_PER_DOCUMENT}" for k in range(5000)]
            if start == 0:  # the one chunk that answers the question: its vector is the question's
                vectors[0] = answer
            collection.add(
                ids=ids,
                embeddings=vectors,
                documents=["The spare key of the server room is kept in the safe." if k == 0 else f"filler {i}" for k, i in enumerate(ids)],
                metadatas=[
                    {"document_id": i.split(":")[0], "source": f"{i.split(':')[0]}.md", "keywords": "spare key server room kept safe" if k == 0 else f"filler w{i}"}
                    for k, i in enumerate(ids)
                ],
            )
        records = [
            FileRecord("default", f"doc{d}", "/kb", f"doc{d}.md", "x", 1, "", CHUNKS_PER_DOCUMENT, "indexed", "", time.time())
            for d in range(OVER_SQLITE_LIMIT // CHUNKS_PER_DOCUMENT)
        ]
        runtime.manifest.save(records)
        assert store.count("default") == OVER_SQLITE_LIMIT
        best = runtime.retriever.search(question, ["default"]).passages[0]
        assert best.path == "doc0.md" and best.text.startswith("The spare key")


class ReadSpy:
    """Counts the chunks whose vectors are read from the real Chroma collection."""

    def __init__(self, collection: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.vectors_read = 0
        real = collection.get

        def get(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            if "embeddings" in (kwargs.get("include") or ()):
                self.vectors_read += len(result["ids"])
            return result

        monkeypatch.setattr(collection, "get", get)


def passages(runtime: Any, question: str) -> list[tuple[str, str, float]]:
    return [(p.path, p.chunk_id, p.score) for p in runtime.retriever.search(question, ["default"]).passages]


def test_an_upload_reads_only_its_chunks_and_a_removal_none(settings: Settings, knowledge: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with knowledge_runtime(settings) as runtime:
        runtime.indexer.run()
        assert runtime.retriever.search(QUESTION, ["default"]).passages == []  # the cache is read whole
        spy = ReadSpy(runtime.store.collection("default"), monkeypatch)
        old = runtime.retriever.cached("default")
        assert old is not None
        old_rows = old.rows
        (knowledge / "bikes.md").write_text(BIKES)
        report = runtime.indexer.run([knowledge / "bikes.md"])
        assert report.added == 1 and report.chunks >= 1
        best = runtime.retriever.search(QUESTION, ["default"]).passages[0]
        assert best.path == "bikes.md"
        assert spy.vectors_read == report.chunks  # the new document's chunks, not the collection's
        # A search still using the cache it started with sees it as it was (the update made a new one).
        assert old.rows == old_rows == len(old.vectors) == len(old.alive) == old.keyword.rows < runtime.retriever.cached("default").rows

        # Updated in place, the cache ranks as one read afresh.
        questions = [QUESTION, "Who gets paged if the primary on-call does not acknowledge a page?", "出差住宿每晚可以报销多少钱？"]
        with knowledge_runtime(settings) as fresh:
            assert [passages(runtime, q) for q in questions] == [passages(fresh, q) for q in questions]

        record = next(r for r in runtime.manifest.files("default").values() if r.path == "bikes.md")
        runtime.indexer.remove("default", [record])
        assert all(p.path != "bikes.md" for p in runtime.retriever.search(QUESTION, ["default"], min_score=0).passages)
        assert spy.vectors_read == report.chunks  # a removal reads nothing
        with knowledge_runtime(settings) as fresh:
            assert [passages(runtime, q) for q in questions] == [passages(fresh, q) for q in questions]


def test_a_rebuilt_collection_is_read_again_whole(settings: Settings, knowledge: Path) -> None:
    with knowledge_runtime(settings) as runtime, knowledge_runtime(settings) as writer:
        runtime.indexer.run()
        assert runtime.retriever.search(QUESTION, ["default"]).passages == []
        (knowledge / "bikes.md").write_text(BIKES)
        writer.indexer.run(rebuild=True)  # another process drops the collection and indexes it again
        assert runtime.retriever.search(QUESTION, ["default"]).passages[0].path == "bikes.md"
        cache = runtime.retriever.cached("default")
        assert cache is not None and cache.live == runtime.store.count("default")
