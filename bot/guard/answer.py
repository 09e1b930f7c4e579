"""The answer as the checks see it: its sentences (claims), what it cites, and the passages it
is held to. Built once per answer; every check reads it."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bot.evidence import joined, sentences
from bot.guard.quantities import Quantity, quantities
from bot.guard.reading import PassageReading, opener, read_passage, without_citations, words
from bot.guard.refusal import claimed_after, is_refusal, says_it_does_not_know
from bot.prompt import CITATION

_SOURCE_LABEL = re.compile(r"^\s*\[\d{1,3}\]\s*[^\n]{0,200}\([^()\n]*\.[A-Za-z0-9]{1,5}[,)]")
_CODE = re.compile(r"```[\s\S]*?(?:```|$)|`[^`\n]*`")
from rag.search.retriever import Passage

# Sentence vectors for texts (rows, unit length, each language's mean taken out where the
# embedder has measured ones): what the support check compares by meaning.
Meaning = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class Claim:
    """One sentence of the answer, without its citation marks."""

    index: int
    written: str  # the sentence as written, citations included
    text: str  # the sentence without its citation marks
    said: str  # what it claims: without a "Yes," opener; for a refusal, what follows its "but" ("" for none)
    words: list[str]
    quantities: list[Quantity]
    refusal: bool


@dataclass(frozen=True)
class Problem:
    """Why a check failed: the check's name, the span it failed on and the reason in words."""

    check: str  # citations, language, support, numbers, names, bindings
    why: str
    span: str = ""
    claim: int | None = None  # the sentence it is about (None: the whole answer)

    def __str__(self) -> str:
        return f"“{_short(self.span)}” {self.why}" if self.span else self.why


@dataclass(frozen=True)
class Answer:
    text: str
    question: str
    claims: list[Claim]
    cited: list[int]  # passage numbers cited that exist
    wrong_citations: list[int]  # numbers cited that are no passage
    sources: list[PassageReading]  # the cited passages (all of them when none is cited)
    refusal: bool  # the answer says the documents do not answer the question
    passages: Sequence[Passage] = ()  # every passage the model was shown, numbered from 1
    meaning: Meaning | None = field(default=None, compare=False)


def read_answer(text: str, question: str, passages: Sequence[Passage], meaning: Meaning | None = None) -> Answer:
    numbers = [int(m.group(1)) for m in CITATION.finditer(_CODE.sub(" ", text)) if m.group(1) != "0"]  # x[0] in code cites nothing
    cited = sorted({n for n in numbers if 1 <= n <= len(passages)})
    wrong = sorted({n for n in numbers if not 1 <= n <= len(passages)})
    held_to = cited or range(1, len(passages) + 1)
    sources = [read_passage(n, passages[n - 1].title, passages[n - 1].heading, passages[n - 1].text) for n in held_to]
    claims = []
    for k, written in enumerate(sentences(text)):
        sentence = " ".join(without_citations(written).split())
        if not sentence or not any(ch.isalnum() for ch in sentence) or _SOURCE_LABEL.match(written):
            continue  # nothing, or a source's label the model copied ("[2] Release process (release-process.rst)"): a citation
        refusal = is_refusal(sentence)
        said = claimed_after(sentence) if refusal else sentence[len(opener(sentence)) :].strip()
        claims.append(Claim(k, written, sentence, said, words(said), quantities(said), refusal))
    return Answer(text, question, claims, cited, wrong, sources, says_it_does_not_know(text), passages, meaning)


def without(answer: Answer, dropped: set[int]) -> str:
    """The answer's text without the sentences numbered ``dropped``."""
    return functools.reduce(joined, (c.written for c in answer.claims if c.index not in dropped), "")


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
