"""Every name in the answer is in its cited passages: a capitalised word inside a sentence, a
CamelCase, ALL-CAPS or digit-bearing word anywhere (PagerDuty, SEV1, AWQ, int8), an option, a
snake_case identifier, an address or a path, and in Chinese the words CC-CEDICT marks as proper
nouns (北京, 星期一). Across languages a name may stand as its translation: "Shanghai" for
"上海", "Monday" for "周一", "上海" for "Shanghai"."""

from __future__ import annotations

import re
from functools import cache

from bot.guard.answer import Answer, Problem
from bot.guard.reading import PassageReading, flat
from rag.search.bilingual import dictionary
from rag.search.keyword import _jieba, _normalise

_LATIN_NAME = re.compile(
    r"`[^`\n]{1,80}`"  # code
    r"|[\w.+-]+@[\w-]+(?:\.[\w-]+)+"  # an address
    r"|(?<![\w/.-])(?:https?://|~/|\./|/)[\w./~:%#?=&+-]+"  # a URL or a path
    r"|(?<![\w-])--?[A-Za-z][\w-]*"  # an option
    r"|\b[a-z]+(?:_[a-z0-9]+)+\b"  # snake_case
    r"|\b[A-Za-z]*[0-9]+[A-Za-z][\w.-]*|\b[A-Za-z][\w-]*?[0-9][\w.-]*"  # letters with digits: SEV1, int8, A100-80G, 4bit
    r"|\b[A-Z][a-z]+[A-Z][A-Za-z]*\b"  # CamelCase
    r"|\b[A-Z]{2,}s?\b"  # ALL CAPS
    r"|(?<![.!?。！？:：]\s)(?<!^)(?<!^[-*•]\s)\b[A-Z][a-zA-Z]*(?:[-_][A-Za-z0-9]+)*\b"  # capitalised inside a sentence
)
NOT_NAMES = frozenset({"I", "RMB", "CNY", "OK", "AM", "PM", "A.M", "P.M", "True", "False", "None"})
# Computing's vocabulary written in capitals: words a technical answer uses as it uses "file" or "server", not names of
# this team's things (IT, SEV, AWQ are names: a wrong one is a wrong answer).
VOCABULARY = frozenset(
    """API APIs CLI CPU CPUs GPU GPUs JSON YAML TOML CSV HTTP HTTPS URL URLs REST POST GET PUT DELETE PATCH OOM SSH SQL
    UI OS RAM VRAM SDK TCP UDP DNS IP ID IDs PID ENV UTF KV LLM LLMs""".split()
)
MIN_PREFIX = 4  # a name this long may start a longer identifier of the passage ("PyTorch" in "PytorchEngineConfig")
_LATIN = re.compile(r"^[A-Za-z]+$")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_WORD = re.compile(r"^[\w.+#-]+$")
_ORDINAL = re.compile(r"^\d{1,2}(?:st|nd|rd|th)$", re.IGNORECASE)  # "the 15th": a day, which the numbers check reads


def check(answer: Answer) -> list[Problem]:
    asked = {n.casefold() for n in names_in(answer.question)}  # a name the question gives is the user's, not the model's
    problems = []
    for claim in answer.claims:
        if not claim.said:
            continue
        missing = [
            name for name in names_in(claim.said) if name.casefold() not in asked and not any(_found(name, p) for p in answer.sources)
        ]
        if missing:
            shown = ", ".join(dict.fromkeys(missing))
            problems.append(Problem("names", f"the name(s) {shown} are not in the cited passages", claim.text, claim.index))
    return problems


def names_in(text: str) -> list[str]:
    """The names of ``text`` (see the module's doc)."""
    found = [m.group(0).strip("`.,:;") for m in _LATIN_NAME.finditer(text)]
    found = [n for n in found if len(n) > 1 and n not in NOT_NAMES and n not in VOCABULARY and not _ORDINAL.match(n)]
    if _HAN.search(text):  # Chinese place names (北京, 杭州) as jieba tags them and CC-CEDICT knows them
        words = dictionary()
        found += [w for w, tag in _posseg().lcut(text) if tag == "ns" and len(w) > 1 and words.is_name(w)]
    return found


@cache
def _posseg():  # type: ignore[no-untyped-def]
    _jieba()
    import jieba.posseg

    return jieba.posseg


def _found(name: str, passage: PassageReading) -> bool:
    if " " in name or not _WORD.match(name):  # code, a path, an address: as written, spaces aside
        return _same_identifier(flat(name)) in _same_identifier(passage.flat)
    # a name's bounds are Latin letters, digits and "_-": Chinese text may touch it (加上--eager-mode。)
    after = "" if len(name) >= MIN_PREFIX else r"(?![A-Za-z0-9_])"
    if name.isupper():  # an acronym is not the word it spells: "IT" is not "it"
        if re.search(rf"(?<![A-Za-z0-9_-]){re.escape(_same_identifier(name))}{after}", _same_identifier(passage.cased)):
            return True
    elif re.search(rf"(?<![A-Za-z0-9_-]){re.escape(_same_identifier(name.casefold()))}{after}", _same_identifier(passage.plain)):
        return True
    entry = dictionary().entry(name)
    if entry is not None and entry.proper:  # a Chinese name: its English name in an English passage
        return bool(entry.name) and re.search(rf"\b{re.escape(entry.name.casefold())}\b", passage.plain) is not None
    if _LATIN.match(name):  # an English name: a Chinese word of the passage that means it
        stem = _normalise(name.lower())
        return any(stem in s.said.glossed for s in passage.sentences) or stem in passage.context.glossed
    return False


def _same_identifier(text: str) -> str:
    """quant_policy and --quant-policy name one setting: "_" and "-" read alike."""
    return text.replace("_", "-")
