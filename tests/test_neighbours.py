"""Passages widened with their neighbouring chunks (rag.neighbours): real indexer, real Chroma, real embedder."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from bot.runtime import Runtime, knowledge_runtime
from config.settings import Settings, with_values
from rag.ingest.embedder import token_counter
from rag.search.neighbours import joined, overlap, widened
from rag.store.chroma import ChromaStore, StoredChunk
from tests.conftest import make_settings

ANIMALS = ["walrus", "heron", "otter", "badger", "falcon", "lynx", "marten", "osprey", "ibex", "puffin", "stoat", "gecko"]
# One section of numbered sentences, each unique, long enough for several 40-token chunks; then another section.
GUIDE = (
    "# Code words\n\n## The list\n\n"
    + " ".join(f"Locker {n} is {animal}." for n, animal in enumerate(ANIMALS, start=1))
    + "\n\n## Elsewhere\n\nThe canteen opens at noon and serves soup on Fridays only.\n"
)


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def small_chunks(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """GUIDE indexed in 40-token chunks with a 15-token overlap: consecutive chunks share a sentence."""
    base = tmp_path_factory.mktemp("neighbours")
    knowledge = base / "knowledge"
    knowledge.mkdir()
    (knowledge / "lockers.md").write_text(GUIDE, encoding="utf-8")
    settings = make_settings(base / "data", knowledge, rag={"chunk_size": 40, "chunk_overlap": 15, "top_k": 1})
    with knowledge_runtime(settings) as runtime:
        report = runtime.indexer.run()
    assert report.added == 1 and report.chunks >= 6, report
    return settings


@pytest.fixture
def runtime(small_chunks: Settings) -> Iterator[Runtime]:
    with knowledge_runtime(small_chunks) as runtime:
        yield runtime


def _chunks(store: ChromaStore) -> list[StoredChunk]:
    """The stored chunks of lockers.md in the list section, in order."""
    chunks = sorted(store.get("default"), key=lambda c: c.metadata["position"])
    listed = [c for c in chunks if c.metadata["heading"] == "The list"]
    assert len(listed) >= 5 and all(overlap(a.text, b.text) for a, b in pairwise(listed)), [c.text for c in chunks]
    return listed


def _count(settings: Settings):  # type: ignore[no-untyped-def]
    return token_counter(settings.rag.embed_model)


def _middle(listed: list[StoredChunk]) -> int:
    return len(listed) // 2


def test_a_chunk_is_shown_with_its_neighbours_in_order_without_the_overlap(small_chunks: Settings) -> None:
    settings = with_values(small_chunks, {"rag.neighbours": "1"})
    with knowledge_runtime(settings) as runtime:
        listed = _chunks(runtime.store)
        middle = listed[_middle(listed)]
        animal = next(
            a for a in ANIMALS if f" is {a}." in middle.text and all(f" is {a}." not in c.text for c in listed if c is not middle)
        )
        passage = runtime.retriever.search(f"Which locker is {animal}?", ["default"], min_score=0).passages[0]
    before, after = listed[_middle(listed) - 1], listed[_middle(listed) + 1]
    assert passage.chunk_id == middle.id  # ranking stays on the chunk
    assert passage.text.startswith(before.text) and passage.text.endswith(after.text)
    assert _flat(passage.text) in _flat(GUIDE)  # a contiguous stretch of the document: in order, nothing repeated
    sentences = [f"Locker {n} " for n in range(1, len(ANIMALS) + 1) if f"Locker {n} " in passage.text]
    assert all(passage.text.count(s) == 1 for s in sentences) and len(sentences) > len([s for s in sentences if s in middle.text])


def test_consecutive_chunks_lose_only_their_overlap() -> None:
    assert joined(["one two three four", "three four five six"]) == "one two three four five six"
    assert joined(["the value is 1", "and the next"]) == "the value is 1\nand the next"
    assert joined(["ends in ab", "ab starts"]) == "ends in ab\nab starts"  # 2 characters may be chance: kept


def test_a_neighbour_of_another_section_is_not_added(runtime: Runtime, small_chunks: Settings) -> None:
    listed = _chunks(runtime.store)
    last = listed[-1]
    shown = widened([("default", last)], runtime.store, 1, 10_000, _count(small_chunks))
    assert len(shown) == 1 and shown[0].text.startswith(listed[-2].text[:20]) and "canteen" not in shown[0].text


def test_retrieved_chunks_that_touch_once_widened_become_one_passage(runtime: Runtime, small_chunks: Settings) -> None:
    listed = _chunks(runtime.store)
    m = _middle(listed)
    canteen = next(c for c in runtime.store.get("default") if "canteen" in c.text)
    hits = [("default", listed[m - 1]), ("default", canteen), ("default", listed[m + 1])]  # m-1 and m+1 meet at m
    shown = widened(hits, runtime.store, 1, 10_000, _count(small_chunks))
    assert [s.hit for s in shown] == [0, 1]  # the merged passage is at the place of the better chunk
    assert shown[0].chunk_ids == tuple(c.id for c in listed[m - 2 : m + 3])
    assert _flat(shown[0].text) in _flat(GUIDE)
    adjacent = widened([("default", listed[m]), ("default", listed[m + 1])], runtime.store, 1, 10_000, _count(small_chunks))
    assert len(adjacent) == 1 and adjacent[0].chunk_ids == tuple(c.id for c in listed[m - 1 : m + 3])


def test_the_budget_widens_the_best_passage_first_and_holds(runtime: Runtime, small_chunks: Settings) -> None:
    count = _count(small_chunks)
    listed = _chunks(runtime.store)
    m = _middle(listed)
    best, second = listed[m], listed[0]
    hits = [("default", best), ("default", second)]
    alone = count(best.text) + count(second.text)
    budget = alone + count(listed[m - 1].text) + count(listed[m + 1].text)  # room for the best one's two neighbours only
    shown = widened(hits, runtime.store, 1, budget, count)
    assert shown[0].chunk_ids == (listed[m - 1].id, best.id, listed[m + 1].id)
    assert shown[1].chunk_ids == (second.id,)
    assert sum(count(s.text) for s in shown) <= budget
    tight = widened(hits, runtime.store, 2, alone, count)  # no room: the chunks themselves, whole
    assert [s.text for s in tight] == [best.text, second.text]


def test_a_chunk_stored_without_its_position_is_shown_as_it_is(
    runtime: Runtime, small_chunks: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """An index written before chunks carried their position: its neighbours are in the store, but it is not widened."""
    listed = _chunks(runtime.store)
    m = _middle(listed)
    old = StoredChunk(listed[m].id, listed[m].text, {k: v for k, v in listed[m].metadata.items() if k != "position"})
    assert runtime.store.get("default", [listed[m - 1].id, listed[m + 1].id])  # the neighbours are there
    shown = widened([("default", old), ("default", listed[0])], runtime.store, 1, 10_000, _count(small_chunks))
    assert shown[0].text == old.text and shown[0].chunk_ids == (old.id,)
    assert shown[1].chunk_ids == (listed[0].id, listed[1].id)  # a chunk with its position still is
    assert "collection default holds chunks indexed without their position" in caplog.text and "--rebuild" in caplog.text


def test_neighbours_0_gives_the_chunks_as_stored(small_chunks: Settings, tmp_path: Path) -> None:
    question = "Which locker is the falcon?"
    with knowledge_runtime(with_values(small_chunks, {"rag.top_k": "4", "rag.neighbours": "0"})) as runtime:
        plain = runtime.retriever.search(question, ["default"], min_score=0).passages
        stored = {c.id: c.text for c in runtime.store.get("default")}
    with knowledge_runtime(with_values(small_chunks, {"rag.top_k": "4", "rag.neighbours": "1"})) as runtime:
        wide = runtime.retriever.search(question, ["default"], min_score=0).passages
    assert len(plain) == 4 and [p.text for p in plain] == [stored[p.chunk_id] for p in plain]
    order = [p.chunk_id for p in plain]
    assert [p.chunk_id for p in wide] == [
        i for i in order if i in {p.chunk_id for p in wide}
    ]  # the same chunks, best first (touching ones merged)
    assert all(any(_flat(p.text) in _flat(w.text) for w in wide) for p in plain)
    assert sum(len(p.text) for p in wide) > sum(len(p.text) for p in plain)
