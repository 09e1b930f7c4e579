"""A setting an answer writes as an assignment (``rope_scaling_factor=2.5``, ``--tp 2``) is set
to that value in its cited passages, not merely named there with the value somewhere else.

"设置 `rope_scaling_factor=0.7`" has the name and the number of its passage, but the passage's
example sets ``rope_scaling_factor=2.5`` and its 0.7 is ``cache_max_entry_count=0.7``: a wrong
binding. Assignments are read as ``name=value`` and ``name = value`` (in code or an argument
list), ``--name value`` and ``--name=value`` (a command line; an option alone in its code span,
"the `--work-dir` directory", has no value); names match with ``-`` and ``_`` alike, values with
their quotes taken off (and as numbers: 2.5 is 2.50). A passage's value that is itself a name
it assigns (``backend_config=engine_config`` after ``engine_config = PytorchEngineConfig(tp=tp)``)
stands for that value too: an answer may write it either way.

Only a setting the passages assign is judged; it is wrongly bound when every assignment of it
there has another value, unless a passage sentence names it beside the value without giving the
value to another name ("set rope_scaling_factor to 4 for 128k"), or the question gives the value
(the user's own).
"""

from __future__ import annotations

import re
from functools import lru_cache

from bot.guard.answer import Answer, Problem
from rag.search.keyword import STOPWORDS

_VALUE = r"""("[^"\n]*"|'[^'\n]*'|[A-Za-z0-9_.:/+@~${}\-]*[A-Za-z0-9_/+@~}\-])"""  # quoted, or a plain ASCII token (no end stop)
_ASSIGNED = re.compile(rf"(?<![\w.\-])([A-Za-z_][A-Za-z0-9_]*(?:[.\-][A-Za-z0-9_]+)*)\s*=(?!=)\s*{_VALUE}")
_OPTION = re.compile(rf"(?<![\w\-])--([A-Za-z][A-Za-z0-9_\-]*)(?:=|\s+)(?!-)({_VALUE[1:-1]})")
_OPTION_ALONE = re.compile(r"`--([A-Za-z][\w-]*)`\s+([A-Za-z]+)")  # "saved in the `--work-dir` directory": the word after it is prose


def check(answer: Answer) -> list[Problem]:
    held: dict[str, set[str]] = {}
    for p in answer.sources:
        for name, values in _assignments(answer.passages[p.n - 1].text).items():
            held.setdefault(name, set()).update(values)
    if not held:
        return []
    for values in held.values():  # backend_config=engine_config, engine_config = PytorchEngineConfig(tp=tp): either may be written
        values.update(v for alias in list(values) for v in held.get(_name(alias), ()))
    question = {_plain(v) for v in re.findall(r"[\w.\-]+", answer.question)}
    prose = {(_name(m.group(1)), _plain(m.group(2))) for m in _OPTION_ALONE.finditer(answer.text)}
    problems = []
    for claim in answer.claims:
        for name, values in _assignments(claim.text).items():
            if name not in held:
                continue  # a setting the passages do not set: the names and numbers checks judge it
            for value in values:
                if "/" in value:
                    continue  # a path or a model id: the user's to choose (the names check reads a model's name)
                if value in held[name] or value in question or (name, value) in prose or _said_beside(answer, name, value):
                    continue
                shown = " or ".join(sorted(held[name])[:3])
                problems.append(
                    Problem("bindings", f"sets {name} to {value} where the cited passage sets it to {shown}", claim.text, claim.index)
                )
    return problems


@lru_cache(maxsize=4096)
def _assignments(text: str) -> dict[str, set[str]]:
    """Each name the text assigns, with the values it assigns it."""
    out: dict[str, set[str]] = {}
    for pattern in (_ASSIGNED, _OPTION):
        for match in pattern.finditer(text):
            value = _plain(match.group(2))
            if value:
                out.setdefault(_name(match.group(1)), set()).add(value)
    return out


def _said_beside(answer: Answer, name: str, value: str) -> bool:
    """A passage sentence that names the setting and writes the value, the value given to no other name."""
    for p in answer.sources:
        for sentence in p.sentences:
            text = sentence.text
            if name not in _name(text):
                continue
            assigned = _assignments(text)
            if any(value in values for other, values in assigned.items() if other != name):
                continue
            if any(_plain(w) == value for w in re.findall(r"[\w.\-]+", text)):
                return True
    return False


def _name(text: str) -> str:
    return text.casefold().replace("-", "_")


def _plain(value: str) -> str:
    value = value.strip().strip("\"'").casefold()
    if value in STOPWORDS:
        return ""  # "pass it to --adapters as name=path": prose, no value
    try:
        return f"{float(value):g}"
    except ValueError:
        return value
