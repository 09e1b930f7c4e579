"""Bilingual question expansion: each content word of a question, with the words that stand
for it in the other language, through CC-CEDICT (rag.search.bilingual).

A Chinese word brings the stemmed English words of its short glosses (报销 -> reimburs, appli,
...); an English word brings the Chinese words it glosses (quantiz -> 量化). Only translations
that some chunk of the collection holds are kept (the rest could match nothing), at most
MAX_FORMS of them. The keyword search counts a word once per chunk whichever of its forms the
chunk holds, with the IDF of all the chunks holding any form (rag.search.keyword.QueryWord), so
a word with many translations, or one rare translation, weighs no more than one word; a chunk
in the question's language matches the word itself, one in the other language its translations.
Words the dictionary lacks (product names, code) stay as they are.

``other_language_text`` is the question in the other language's words (their first glosses
or Chinese words), the text of the second query vector (rag.translated_vector).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rag.search.bilingual import Dictionary
from rag.search.keyword import QueryWord

MAX_FORMS = 6  # translations kept per word (the dictionary's order: common senses first)
CHINESE_GLOSS_WORDS = 2  # content words of a gloss, at most, that translate a Chinese word
TRANSLATION_WEIGHT = 1.0  # a translation's weight against the word itself (1: as the word)


def is_chinese(term: str) -> bool:
    return "\u3400" <= term[0] <= "\u9fff"


def expand(terms: Sequence[str], dictionary: Dictionary, known: Callable[[str], bool]) -> list[QueryWord]:
    """``terms`` (of rag.search.keyword.tokenize) as query words with their translations that
    ``known`` accepts (words some chunk holds)."""
    words = []
    for term in terms:
        if is_chinese(term):
            candidates = {w: 1.0 for w in dictionary.gloss_words(term, CHINESE_GLOSS_WORDS)}
        else:
            glossed = dictionary.glossed_by(term)
            candidates = dict(sorted(glossed.items(), key=lambda kv: (-kv[1], len(kv[0]), kv[0])))
        kept = [(w, weight) for w, weight in candidates.items() if w != term and known(w)][:MAX_FORMS]
        words.append(QueryWord((term, *(w for w, _ in kept)), (1.0, *(TRANSLATION_WEIGHT * weight for _, weight in kept))))
    return words


def other_language_text(terms: Sequence[str], dictionary: Dictionary, known: Callable[[str], bool]) -> str:
    """The question's words in the other language, one per word (its first known translation;
    the word itself when it has none)."""
    out = []
    for word in expand(terms, dictionary, known):
        out.append(word.forms[1] if len(word.forms) > 1 else word.forms[0])
    return " ".join(dict.fromkeys(out))
