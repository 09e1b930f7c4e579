"""Keyword search: a jieba tokenizer (Chinese and English alike, English words stemmed with
Snowball) and a BM25 index that rows can be added to and removed from.

The index keeps how often each word occurs in each row (a sparse matrix) and scores a question
when it is asked: Lucene's BM25 with bm25s's defaults, computed in the same steps and float32
sums as bm25s (tests/test_keyword.py checks that the scores are equal), but with no scores
fixed at build time, so an upload adds its rows instead of rebuilding the index.

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
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
import scipy.sparse

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


WEIGHTS_KEPT = 4_000_000  # postings whose BM25 scores are kept between questions (16 MB of scores)
UNIONS_KEPT = 256  # translated words whose rows are kept (a question's words are asked three times: BM25, coverage, absent)


@dataclass(frozen=True)
class QueryWord:
    """A word of the question and the words that stand for it in the other language (its
    translations, rag.search.expansion), each with a weight; a row holding any of them holds the word."""

    forms: tuple[str, ...]  # the word itself first
    weights: tuple[float, ...]  # per form, in (0, 1]: the word itself 1

    @classmethod
    def plain(cls, term: str) -> QueryWord:
        return cls((term,), (1.0,))


def plain_words(terms: Sequence[str]) -> list[QueryWord]:
    return [QueryWord.plain(t) for t in terms]


@dataclass(frozen=True)
class KeywordHit:
    index: int  # position in the corpus the index was built from
    score: float  # keyword score in [0, 1]


class KeywordIndex:
    """BM25 over rows numbered in the order they were added; removed rows keep their number
    (and count for nothing) until ``keep`` renumbers the index. Changes replace the arrays and
    the vocabulary rather than change them, so a shallow copy can be changed while searches
    go on with the original."""

    K1 = 1.5  # bm25s's (and Lucene's) defaults
    B = 0.75

    def __init__(self, corpus: Sequence[Sequence[str]] = ()) -> None:
        self._vocabulary: dict[str, int] = {}
        self._counts = scipy.sparse.csc_matrix((0, 0), dtype=np.float32)  # rows x words: occurrences
        self._added: list[scipy.sparse.csc_matrix] = []  # rows added since, joined to _counts by the next search
        self._lock = threading.Lock()  # joining added rows, keeping weights
        self._length = np.zeros(0, dtype=np.int64)  # words per row (an empty row counts 1, as in bm25s)
        self._alive = np.zeros(0, dtype=bool)
        self._norm: np.ndarray | None = None  # per row: K1 * (1 - B + B * length / average length)
        self._weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # word -> its rows and their BM25 share, as last asked
        self._unions: dict[tuple[str, ...], np.ndarray] = {}  # a translated word's forms -> the live rows holding any, as last asked
        self.size = 0  # rows not removed
        self.add(corpus)

    @property
    def rows(self) -> int:
        """Rows numbered so far, removed ones included."""
        return len(self._alive)

    def add(self, corpus: Sequence[Sequence[str]]) -> None:
        """Appends one row per document of ``corpus``."""
        if not corpus:
            return
        lengths = np.asarray([len(doc) for doc in corpus], dtype=np.int64)
        # Object strings: a fixed-width array would be as wide as the longest word in every entry.
        words, where = np.unique(np.asarray([term for doc in corpus for term in doc] or [""], dtype=object), return_inverse=True)
        self._vocabulary = dict(self._vocabulary)
        columns = np.asarray([self._vocabulary.setdefault(str(word), len(self._vocabulary)) for word in words], dtype=np.int64)
        # One entry per word occurrence; the matrix sums the repeats of a word in a row into its count.
        added = scipy.sparse.csc_matrix(
            (np.ones(int(lengths.sum()), dtype=np.float32), (np.repeat(np.arange(len(corpus)), lengths), columns[where[: int(lengths.sum())]])),
            shape=(len(corpus), len(self._vocabulary)),
        )
        added.sum_duplicates()
        self._added = [*self._added, added]
        self._length = np.concatenate([self._length, [max(len(doc), 1) for doc in corpus]])
        self._alive = np.concatenate([self._alive, np.ones(len(corpus), dtype=bool)])
        self.size += len(corpus)
        self._norm = None
        self._weights = {}
        self._unions = {}

    def _joined(self) -> scipy.sparse.csc_matrix:
        """The counts of every row: the rows added since the last search joined in once (not once per batch)."""
        with self._lock:
            if self._added:
                width = len(self._vocabulary)
                blocks = [_widened(block, width) for block in [self._counts, *self._added] if block.shape[0]]
                counts = scipy.sparse.vstack(blocks, format="csc") if len(blocks) > 1 else blocks[0]
                counts.sort_indices()
                self._counts, self._added = counts, []
            return self._counts

    def remove(self, rows: Sequence[int]) -> None:
        """Rows that no longer count (their numbers stay taken until ``keep``)."""
        rows = np.asarray(rows, dtype=np.int64)
        self.size -= int(self._alive[rows].sum())
        self._alive = self._alive.copy()
        self._alive[rows] = False
        self._norm = None
        self._weights = {}
        self._unions = {}

    def keep(self, rows: np.ndarray) -> None:
        """Keeps only ``rows`` (live ones), renumbered 0.. in that order."""
        self._counts = self._joined().tocsr()[rows].tocsc()
        self._counts.sort_indices()
        self._length = self._length[rows]
        self._alive = np.ones(len(rows), dtype=bool)
        self.size = len(rows)
        self._norm = None
        self._weights = {}
        self._unions = {}

    def _postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """The live rows holding ``term`` (ascending) and how often it occurs in each."""
        column = self._vocabulary.get(term)
        if column is None:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
        matrix = self._joined()
        start, end = matrix.indptr[column], matrix.indptr[column + 1]
        rows, counts = matrix.indices[start:end], matrix.data[start:end]
        if self.size < self.rows:
            live = self._alive[rows]
            rows, counts = rows[live], counts[live]
        return rows, counts

    def idf(self, term: str, document_frequency: int | None = None) -> float:
        df = len(self._postings(term)[0]) if document_frequency is None else document_frequency
        return math.log(1 + (self.size - df + 0.5) / (df + 0.5))

    def scores(self, query_terms: Sequence[str]) -> np.ndarray:
        """Every row's BM25 score for the query (float32; 0 for rows without its words and removed rows)."""
        return self.word_scores(plain_words(query_terms))

    def word_scores(self, words: Sequence[QueryWord]) -> np.ndarray:
        """Every row's BM25 score for the query's words: a word with translations counts once per
        row, with the IDF of the rows holding any of its forms and the best weighted term
        frequency of its forms, so that many translations, or a rare one, weigh no more than the
        word would (a word of one form scores exactly as BM25)."""
        scores = np.zeros(self.rows, dtype=np.float32)
        for word in words:  # as bm25s: a word asked twice counts twice
            if len(word.forms) == 1:
                rows, weights = self._weighted(word.forms[0])
                scores[rows] += np.float32(word.weights[0]) * weights if word.weights[0] != 1.0 else weights
                continue
            rows, weights = self._translated(word)
            scores[rows] += weights
        return scores

    def _translated(self, word: QueryWord) -> tuple[np.ndarray, np.ndarray]:
        """The live rows holding any of ``word``'s forms, and its BM25 score in each."""
        if self._norm is None:
            average = self._length[self._alive].sum() / self.size if self.size else 1.0
            self._norm = self.K1 * ((1 - self.B) + self.B * self._length / average)
        postings = [(self._postings(form), weight) for form, weight in zip(word.forms, word.weights, strict=True)]
        rows = self._rows_holding(word.forms)
        if not len(rows):
            return rows, np.zeros(0, dtype=np.float32)
        best = np.zeros(len(rows), dtype=np.float64)
        for (form_rows, counts), weight in postings:
            if len(form_rows):
                at = np.searchsorted(rows, form_rows)
                tf = counts / (self._norm[form_rows] + counts)
                best[at] = np.maximum(best[at], weight * tf)
        return rows, (self.idf("", len(rows)) * best).astype(np.float32)

    def _weighted(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """The live rows holding ``term`` and its BM25 score in each (float32, as bm25s stores them).
        Kept for the words asked most recently, up to WEIGHTS_KEPT postings: common words cost the most."""
        kept = self._weights.get(term)
        if kept is not None:
            return kept
        if self._norm is None:
            average = self._length[self._alive].sum() / self.size if self.size else 1.0
            self._norm = self.K1 * ((1 - self.B) + self.B * self._length / average)
        rows, counts = self._postings(term)
        idf = np.float32(self.idf(term, len(rows)))
        weighted = rows, (np.float64(idf) * (counts / (self._norm[rows] + counts))).astype(np.float32)
        with self._lock:  # searches in other threads share the dict
            weights = self._weights
            while weights and sum(len(r) for r, _ in weights.values()) + len(rows) > WEIGHTS_KEPT:
                weights.pop(next(iter(weights)))
            weights[term] = weighted
        return weighted

    def coverage(self, query_terms: Sequence[str] | Sequence[QueryWord], indexes: Sequence[int]) -> list[float]:
        """For each row of ``indexes``: the IDF-weighted share of the query's distinct words it
        contains (a word with translations: any of its forms, with the IDF of the rows holding any)."""
        words = {w.forms: w for w in _words(query_terms)}.values()
        postings = {w.forms: self._rows_holding(w.forms) for w in words}
        idf = {forms: self.idf("", len(rows)) for forms, rows in postings.items()}
        total = sum(idf.values())
        if not total:
            return [0.0] * len(indexes)
        wanted = np.asarray(indexes, dtype=np.int64)
        present = {}
        for forms, rows in postings.items():
            at = np.searchsorted(rows, wanted)
            present[forms] = (at < len(rows)) & (rows[np.minimum(at, len(rows) - 1)] == wanted) if len(rows) else np.zeros(len(wanted), dtype=bool)
        return [sum(idf[f] for f in postings if present[f][k]) / total for k in range(len(wanted))]

    def absent_share(self, query_terms: Sequence[str] | Sequence[QueryWord]) -> float:
        """The IDF-weighted share of the query's distinct words that no row holds in any form:
        what a question about something the knowledge base never mentions has much of."""
        words = {w.forms: w for w in _words(query_terms)}.values()
        frequencies = [len(self._rows_holding(w.forms)) for w in words]
        idf = [self.idf("", df) for df in frequencies]
        total = sum(idf)
        return sum(i for i, df in zip(idf, frequencies, strict=True) if df == 0) / total if total else 0.0

    def _rows_holding(self, forms: tuple[str, ...]) -> np.ndarray:
        """The live rows holding any of ``forms`` (ascending), kept for the last UNIONS_KEPT words asked."""
        rows = self._unions.get(forms)
        if rows is None:
            rows = _union(self._postings(form)[0] for form in forms)
            with self._lock:
                unions = self._unions
                while len(unions) >= UNIONS_KEPT:
                    unions.pop(next(iter(unions)))
                unions[forms] = rows
        return rows

    def knows(self, term: str) -> bool:
        """Whether any row was ever indexed with ``term``."""
        return term in self._vocabulary

    def search(self, query_terms: Sequence[str] | Sequence[QueryWord], limit: int) -> list[KeywordHit]:
        """The rows BM25 ranks highest for the query (only those sharing a word with it)."""
        words = _words(query_terms)
        if not self.size or not words:
            return []
        scores = self.word_scores(words)
        count = min(limit, int(np.count_nonzero(scores)))
        if count == 0:
            return []
        best = np.argpartition(-scores, count - 1)[:count]
        best = best[np.argsort(-scores[best])]
        return [KeywordHit(int(i), score) for i, score in zip(best, self.coverage(words, best))]


def _words(query: Sequence[str] | Sequence[QueryWord]) -> list[QueryWord]:
    return [w if isinstance(w, QueryWord) else QueryWord.plain(w) for w in query]


def _union(postings: Iterable[np.ndarray]) -> np.ndarray:
    rows = list(postings)
    return rows[0] if len(rows) == 1 else np.unique(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int32)


def mostly_chinese(tokens: Sequence[str]) -> bool:
    """Whether most of ``tokens`` (of ``tokenize``) are Chinese words."""
    chinese = sum(1 for t in tokens if "\u3400" <= t[0] <= "\u9fff")
    return chinese > len(tokens) - chinese


def _widened(counts: scipy.sparse.csc_matrix, width: int) -> scipy.sparse.csc_matrix:
    """``counts`` with empty columns for the words added since (a new matrix: the one searches use stays as it is)."""
    indptr = counts.indptr
    wider = np.concatenate([indptr, np.full(width - counts.shape[1], indptr[-1], dtype=indptr.dtype)])
    return scipy.sparse.csc_matrix((counts.data, counts.indices, wider), shape=(counts.shape[0], width))
