"""How the guard reads an answer and its passages: sentences, clauses, words in both languages,
negation and quantities. Pure functions; a passage's reading is cached (the same passages come
back question after question).

Words are the keyword search's (jieba for Chinese, stemmed English, stopwords left out), and
each quantity is one word for its value and unit ("600 元", "600 yuan" and "RMB 600" are all
"600yuan"; "10:00" and "10 am" are "10clock"). Within one language words match as they are.
Across languages a passage's Chinese words stand for their English glosses (CC-CEDICT): a
Chinese answer word is found in an English passage when one of its glosses is there, an English
answer word in a Chinese passage when it is one of the passage words' glosses.

A clause is what a number is bound to: a sentence cut at commas, semicolons and colons (and
their Chinese forms), so "Acknowledge a page within 5 minutes" and "If the primary does not
acknowledge a page within 15 minutes" are two clauses with different numbers, and so are the two
sentences of "Releases leave at 14:00. Whatever is merged by noon goes out" (a period after a
number ends a sentence when a capitalised word follows).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from bot.evidence import paragraphs
from bot.guard.quantities import Quantity, codes, quantities
from bot.prompt import CITATION, language_of
from rag.search.bilingual import KEPT_STOPWORDS, dictionary
from rag.search.keyword import STOPWORDS, _jieba, _normalise

_WORDLIKE = re.compile(r"[0-9A-Za-z\u00c0-\u024f\u3400-\u4dbf\u4e00-\u9fff]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_ABBREVIATIONS = re.compile(r"\b(?:e\.g|i\.e|etc|vs|cf)\.?(?=\W|$)", re.IGNORECASE)
_LETTER = re.compile(r"^[a-z]$")  # a letter alone (a variable, an option's letter) says nothing
_CLAUSE_END = re.compile(r"(?<=[，；：])\s*|(?<=[,;:])\s+|\s+(?=(?:but|however|unless|although|even if|except)\b)|(?<=[。！？!?])\s*|(?<=[^0-9]\.)\s+|(?<=[0-9]\.)\s+(?=[A-Z][a-z])")
_NEGATION = re.compile(
    r"\b(?:not|no|never|neither|nor|cannot|can't|don't|doesn't|didn't|isn't|aren't|won't|without|none|nothing)\b|n't\b|不|没|无|未|非|别|勿",
    re.IGNORECASE,
)
# Limits, not negations: "不超过 600 元" is "up to 600 yuan".
_LIMIT = re.compile(
    r"不(?:超过|超出|多于|少于|低于|高于|晚于|早于|得超过|能超过)|(?:no|not)\s+(?:more|less|later|earlier|longer|fewer)\s+than|(?:must\s+)?not\s+exceed",
    re.IGNORECASE,
)
# Words that say how, not what: left out of what a sentence must share with its passage.
FILLER = frozenset(
    """per up also usually typically generally just simply basically really actually may might need needs must one ones
    together along both either whether get gets got make makes use used using still already
    所以 因此 然后 而且 并且 并 另外 此外 其中 一直 已经 还 还要 要 就 再 先 只 只要 即可 会 应该 建议 比如 例如 通常 一般
    大约 大概 左右 这个 那个 这些 那些 这样 直接 具体 需要 必须 得 以 之 这 该 其 每 开始 这部分 部分 个 位 名 一位 一名 一个 一种""".split()
)
_OPENER = re.compile(
    r"^(?:yes|no|yep|nope|sure|correct|right|indeed|exactly|not quite|absolutely|of course|definitely|"
    r"是的|是|对|对的|没错|不是|不|不对|可以|不可以|不能|不行|能|当然|当然可以|需要|不需要|必须|不用)(?=[\s,.!;:，。！；：]|$)[\s,.!;:，。！；：]*",
    re.IGNORECASE,
)


def key(quantity: Quantity) -> str:
    """One word for a quantity's value and unit."""
    return f"{quantity.value:g}{quantity.unit}"


def words(text: str) -> list[str]:
    """The words of a text: its quantities (one word each, see ``key``), then jieba's precise
    segmentation of the rest, stopwords and filler left out, English stemmed."""
    found = quantities(text)
    rest = text
    for q in reversed(found):
        rest = rest[: q.start] + " " + rest[q.end :]
    out = [key(q) for q in found]
    for token in _jieba().lcut(_ABBREVIATIONS.sub(" ", rest)):
        token = token.strip().lower()
        if token and (token not in STOPWORDS or token in KEPT_STOPWORDS) and token not in FILLER and _WORDLIKE.search(token) and not _LETTER.match(token):
            out.append(_normalise(token))
    return out


@dataclass(frozen=True)
class Said:
    """What a passage text says, as words an answer in either language is matched against."""

    own: frozenset[str]  # its words (and every jieba piece of them), its quantities' words and their bare values
    glossed: frozenset[str]  # the English glosses of its Chinese words

    def has(self, word: str) -> bool:
        """Whether ``word`` of an answer is here: as itself, or across languages."""
        if word in self.own:
            return True
        if _HAN.search(word):
            return bool(dictionary().english(word) & self.own)
        return word in self.glossed

    def __or__(self, other: Said) -> Said:
        return Said(self.own | other.own, self.glossed | other.glossed)


EMPTY = Said(frozenset(), frozenset())


@lru_cache(maxsize=20_000)
def said(text: str) -> Said:
    from rag.search.keyword import tokenize

    own = set(words(text)) | {_bare(q) for q in quantities(text)}
    own |= {t for t in tokenize(text) if not t[:1].isdigit()}  # the overlapping pieces of Chinese words, for partial matches
    glossed = {g for w in own if _HAN.search(w) for g in dictionary().english(w)}
    return Said(frozenset(own), frozenset(glossed))


def covered(terms: Iterable[str], found: Said) -> float:
    """The share of ``terms`` found in ``found``."""
    terms = list(terms)
    if not terms:
        return 1.0
    return sum(found.has(t) for t in terms) / len(terms)


def opener(sentence: str) -> str:
    """The short "Yes," / "No." / "是的，" a sentence starts with ("" when none): it needs no support of its own."""
    match = _OPENER.match(sentence)
    return match.group(0) if match else ""


def negated(text: str) -> bool:
    return bool(_NEGATION.search(_LIMIT.sub(" ", text)))


def clauses(sentence: str) -> list[str]:
    parts = [p.strip(" ,;:，；：") for p in _CLAUSE_END.split(sentence)]
    return [p for p in parts if p] or [sentence]


@dataclass(frozen=True)
class Clause:
    text: str
    said: Said
    words: tuple[str, ...]
    negated: bool
    quantities: tuple[Quantity, ...]
    codes: tuple[Quantity, ...]  # names with a number in them (SEV1, int8): bound like numbers


@dataclass(frozen=True)
class PassageSentence:
    text: str
    said: Said
    paragraph: Said  # its paragraph or list item: what a clause's number is also bound to
    clauses: tuple[Clause, ...]


@dataclass(frozen=True)
class PassageReading:
    """One passage as the guard reads it."""

    n: int  # its number, as the answer cites it
    language: str
    sentences: tuple[PassageSentence, ...]
    context: Said  # the title's and heading's words: every sentence of the passage is under them
    cased: str  # the whole text (title and heading too), white space as single spaces: for names
    plain: str  # the same, case-folded
    flat: str  # the same without any white space: for code

    def windows(self) -> list[tuple[int, Said]]:
        """Each sentence with the next one (an answer often joins the two) and the context: (sentence index, words)."""
        out = []
        for k, sentence in enumerate(self.sentences):
            following = self.sentences[k + 1].said if k + 1 < len(self.sentences) else EMPTY
            out.append((k, sentence.said | following | self.context))
        return out

    def quantities(self) -> list[tuple[Quantity, Clause, PassageSentence]]:
        return [(q, c, s) for s in self.sentences for c in s.clauses for q in c.quantities]


def read_passage(n: int, title: str, heading: str, text: str) -> PassageReading:
    language, read, context, cased = _read_passage(title, heading, text)
    return PassageReading(n, language, read, context, cased, cased.casefold(), flat(cased))


@lru_cache(maxsize=4096)
def _read_passage(title: str, heading: str, text: str) -> tuple[str, tuple[PassageSentence, ...], Said, str]:
    read = []
    for paragraph in paragraphs(text):
        around = said(" ".join(paragraph))
        for sentence in paragraph:
            parts = tuple(Clause(c, said(c), tuple(words(c)), negated(c), tuple(quantities(c)), tuple(codes(c))) for c in clauses(sentence))
            read.append(PassageSentence(sentence, said(sentence), around, parts))
    return language_of(text), tuple(read), said(f"{title}\n{heading}"), re.sub(r"\s+", " ", f"{title}\n{heading}\n{text}")


def flat(text: str) -> str:
    return re.sub(r"\s+", "", text).casefold()


def without_citations(text: str) -> str:
    return CITATION.sub(" ", text)


def _bare(quantity: Quantity) -> str:
    """A quantity's number alone, as written ("six hours": "6"): what a bare number in an answer matches."""
    return f"{quantity.amount:g}"
