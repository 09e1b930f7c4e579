"""The answer is written in the question's language (quotations and source names aside)."""

from __future__ import annotations

from bot.guard.answer import Answer, Problem
from bot.guard.reading import without_citations
from bot.prompt import language_of


def check(answer: Answer) -> list[Problem]:
    if language_of(without_citations(answer.text)) != language_of(answer.question):
        return [Problem("language", "it is not in the language of the question")]
    return []
