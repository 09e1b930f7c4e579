"""Keyword search: a jieba tokenizer (Chinese and English alike, English words stemmed with
Snowball) and a BM25 index (bm25s).

Besides BM25 ranking, the index gives each hit a keyword score in [0, 1]: the IDF-weighted
share of the query's words that the chunk contains. Words the knowledge base has never seen
weigh the most, so a question about something absent scores low even when it shares a
common word with some chunk. That score is what the relevance threshold can rely on;
raw BM25 scores have no fixed scale.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

# A token worth indexing contains a letter, a digit or a CJK character.
_WORDLIKE = re.compile(r"[0-9A-Za-z\u00c0-\u024f\u3400-\u4dbf\u4e00-\u9fff]")
_LATIN_WORD = re.compile(r"^[a-z\u00c0-\u024f]+$")

ENGLISH_STOPWORDS = frozenset(
    """a about above after again all am an and any are as at be been before being below between both
    but by can could did do does doing down during each for from further had has have having he her
    here hers him his how i if in into is it its itself just me more most my no nor not of off on
    once only or other our ours out over own same she should so some such than that the their them
    then there these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours please tell know
    don doesn didn isn aren wasn weren won shouldn couldn wouldn t s ll ve re d m""".split()
)
CHINESE_STOPWORDS = frozenset(
    """的 了 是 在 我 有 和 就 不 人 都 一 一个 上 也 很 到 说 要 去 你 会 着 没有 看 好 自己 这 那 吗 呢 吧 啊
    什么 怎么 怎样 如何 哪些 哪里 哪个 为什么 请问 请 可以 能 能否 是否 我们 他们 它 与 及 或 等 对 把 被 从""".split()
)
STOPWORDS = ENGLISH_STOPWORDS | CHINESE_STOPWORDS


@cache
def _jieba():  # type: ignore[no-untyped-def]
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


@cache
def _stemmer():  # type: ignore[no-untyped-def]
    import snowballstemmer

    return snowballstemmer.stemmer("english")


@lru_cache(maxsize=200_000)
def _normalise(token: str) -> str:
    """"Leaves" and "leave" become one word; Chinese words and numbers stay as they are."""
    return _stemmer().stemWord(token) if _LATIN_WORD.match(token) else token


def tokenize(text: str) -> list[str]:
    """Words of ``text`` for keyword search: jieba's search-mode segmentation, lower-cased, stopwords dropped, stemmed."""
    return [
        _normalise(token)
        for token in (t.strip().lower() for t in _jieba().lcut_for_search(text))
        if token and token not in STOPWORDS and _WORDLIKE.search(token)
    ]


@dataclass(frozen=True)
class KeywordHit:
    index: int  # position in the corpus the index was built from
    score: float  # keyword score in [0, 1]


class KeywordIndex:
    def __init__(self, corpus: Sequence[Sequence[str]]) -> None:
        import bm25s

        self.size = len(corpus)
        self._terms = [frozenset(doc) for doc in corpus]
        self._df = Counter(term for terms in self._terms for term in terms)
        self._bm25 = bm25s.BM25()
        if self.size:
            # bm25s needs at least one token per document.
            self._bm25.index([list(doc) or [""] for doc in corpus], show_progress=False)

    def idf(self, term: str) -> float:
        df = self._df.get(term, 0)
        return math.log(1 + (self.size - df + 0.5) / (df + 0.5))

    def coverage(self, query_terms: Sequence[str], index: int) -> float:
        """IDF-weighted share of the query's distinct words present in corpus document ``index``."""
        terms = set(query_terms)
        total = sum(self.idf(t) for t in terms)
        if not total:
            return 0.0
        return sum(self.idf(t) for t in terms if t in self._terms[index]) / total

    def search(self, query_terms: Sequence[str], limit: int) -> list[KeywordHit]:
        """The documents BM25 ranks highest for the query (only those sharing a word with it)."""
        if not self.size or not query_terms:
            return []
        scores = self._bm25.get_scores(list(query_terms))
        count = min(limit, int(np.count_nonzero(scores)))
        if count == 0:
            return []
        best = np.argpartition(-scores, count - 1)[:count]
        best = best[np.argsort(-scores[best])]
        return [KeywordHit(int(i), self.coverage(query_terms, int(i))) for i in best]
