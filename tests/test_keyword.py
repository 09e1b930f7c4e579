"""The BM25 index: the same scores as bm25s (which it replaced), and rows added and removed in place."""

from __future__ import annotations

import random

import numpy as np

from bench.corpus import questions, sentence
from rag.search.keyword import KeywordIndex, tokenize


def corpus(count: int, seed: int = 3) -> list[list[str]]:
    rng = random.Random(seed)
    docs = [tokenize(" ".join(sentence(rng) for _ in range(rng.randint(1, 3)))) for _ in range(count)]
    return docs + [[]]  # an empty row, as bm25s counts it


def bm25s_scores(docs: list[list[str]], query: list[str]) -> np.ndarray:
    import bm25s

    index = bm25s.BM25()
    index.index([doc or [""] for doc in docs], show_progress=False)
    return index.get_scores(query)


def test_scores_are_bm25s_scores_to_the_bit() -> None:
    docs = corpus(400)
    index = KeywordIndex(docs)
    for question in questions(40) + ["billing billing latency", "没有的词"]:
        query = tokenize(question)
        assert np.array_equal(index.scores(query), bm25s_scores(docs, query)), question


def test_rows_added_and_removed_score_as_a_fresh_index_of_what_is_left() -> None:
    docs = corpus(300)
    index = KeywordIndex(docs[:200])
    index.add(docs[200:])
    removed = list(range(0, 300, 7))
    index.remove(removed)
    left = [k for k in range(len(docs)) if k not in set(removed)]
    fresh = KeywordIndex([docs[k] for k in left])
    for question in questions(30):
        query = tokenize(question)
        assert np.array_equal(index.scores(query)[left], fresh.scores(query)), question
        assert not index.scores(query)[removed].any()
        # The same BM25 scores rank by rank (rows of equal scores may come in another order).
        assert [index.scores(query)[h.index] for h in index.search(query, 10)] == [fresh.scores(query)[h.index] for h in fresh.search(query, 10)]
    index.keep(np.asarray(left))
    assert index.size == index.rows == len(left)
    query = tokenize(questions(1)[0])
    assert np.array_equal(index.scores(query), fresh.scores(query))
    assert index.coverage(query, range(len(left))) == fresh.coverage(query, range(len(left)))
