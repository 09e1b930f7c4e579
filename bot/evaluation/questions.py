"""Question sets for `teambot eval`: a YAML or JSONL file of questions with what a right answer
must show. Read once into typed items; every mistake in the file is an error naming the item
and the key.

YAML: a mapping with ``name``, optional ``collection`` (the default for every item) and
``items`` (a list); no object tags and no aliases. JSONL: one item per line. A set is at most
MAX_SET_MB. An item:

- ``question`` (required)
- ``id`` (default: its position), ``kind`` (a free label the report groups by: direct,
  paraphrase, cross-lingual, off-topic, follow-up, topic-switch, feedback, ...)
- ``expect_sources``: paths relative to the collection's folder; any one found is a hit
- ``expect_facts``: strings the right answer contains; ``facts: all`` (default) or ``any``
- ``refuse: true``: the knowledge base cannot answer; the bot must say it does not know
- ``history``: earlier turns, oldest first, each ``{question, answer}``
- ``model_answers``: texts as a capable model would write them for this question, each
  ``{text, correct: true|false, wrong: blatant|binding, notes}``; sources are cited by file
  name (``[oncall-guide.md]``). ``correct: true`` on a ``refuse: true`` item is an honest
  refusal. `teambot eval --model-answers` replays them through the answer flow (bot.evaluation.replay).
- ``model_rewrite``: the model's reply to bot.rewrite's request for search queries (``en: ...``
  and ``zh: ...`` lines), as a capable model would write it; with bot.rewrite_question on,
  `--model-answers` replays it and `--retrieval-only` searches with it
- ``collection``, ``notes`` (free text, ignored)

An item with nothing to check (no sources, no facts, not a refusal, e.g. exported feedback an
admin has not completed yet) is skipped with a warning.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bot.prompt import Turn, language_of
from config.errors import TeambotError
from config.settings import DEFAULT_COLLECTION, check_collection_name

ITEM_KEYS = {"id", "kind", "question", "expect_sources", "expect_facts", "facts", "refuse", "history", "collection", "notes", "model_answers", "model_rewrite"}
ANSWER_KEYS = {"text", "correct", "wrong", "notes"}
WrongKind = Literal["blatant", "binding"]
WRONG_KINDS: tuple[WrongKind, ...] = ("blatant", "binding")
SET_KEYS = {"name", "collection", "items", "corpus", "notes"}


# The shipped sets are under 100 KB; thousands of questions with written answers stay under this.
# YAML is parsed in Python at a few hundred KB a second (a 50 MB set took 155 s and 3.1 GB), so
# a bigger file is refused unread.
MAX_SET_MB = 5
MB = 1024 * 1024
MAX_SET_BYTES = MAX_SET_MB * MB


class QuestionSetError(TeambotError):
    """A question-set file cannot be read, or an item in it is malformed."""


@dataclass(frozen=True)
class ModelAnswer:
    """A text as a capable model would write it for a question, with what it is."""

    text: str  # citing sources by file name: [oncall-guide.md]
    correct: bool
    wrong: WrongKind | None = None  # how a wrong answer is wrong: invented (blatant), or true values put to the wrong thing (binding)

    def label(self, refuse: bool) -> str:
        """correct, refusal (an honest "the documents don't say"), blatant or binding."""
        if self.correct:
            return "refusal" if refuse else "correct"
        return self.wrong or "blatant"


@dataclass(frozen=True)
class EvalItem:
    id: str
    question: str
    kind: str = ""
    expect_sources: tuple[str, ...] = ()
    expect_facts: tuple[str, ...] = ()
    facts: Literal["all", "any"] = "all"
    refuse: bool = False
    history: tuple[Turn, ...] = ()
    collection: str = DEFAULT_COLLECTION
    model_answers: tuple[ModelAnswer, ...] = ()
    model_rewrite: str = ""  # the model's written reply to the request for search queries (bot.rewrite)

    @property
    def language(self) -> str:
        """The question's language: "zh" when it has Chinese characters, else "en"."""
        return language_of(self.question)

    @property
    def checkable(self) -> bool:
        return self.refuse or bool(self.expect_sources or self.expect_facts)


@dataclass(frozen=True)
class QuestionSet:
    name: str
    path: Path
    items: list[EvalItem]
    skipped: list[str] = field(default_factory=list)  # ids of items with nothing to check


def load_question_set(path: Path) -> QuestionSet:
    text = _text(path)
    if path.suffix.lower() == ".jsonl":
        raw_items, name, default = _jsonl(path, text), path.stem, DEFAULT_COLLECTION
    else:
        raw_items, name, default = _yaml(path, text)
    items: list[EvalItem] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for k, raw in enumerate(raw_items, start=1):
        item = _item(path, k, raw, default)
        if item.id in seen:
            raise QuestionSetError(f"{path}: item {k} repeats the id {item.id!r}", "give every item its own id")
        seen.add(item.id)
        if item.checkable:
            items.append(item)
        else:
            skipped.append(item.id)
    if not items:
        raise QuestionSetError(f"{path} has no question with something to check", "give items expect_sources, expect_facts or refuse: true")
    return QuestionSet(name, path, items, skipped)


def _text(path: Path) -> str:
    """The file's text, read only if it is within MAX_SET_MB."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SET_BYTES + 1)
            size = os.fstat(file.fileno()).st_size
        if len(data) > MAX_SET_BYTES:
            raise QuestionSetError(
                f"{path} is {max(size, len(data)) / MB:.1f} MB, over the limit of {MAX_SET_MB} MB for a question set",
                "split it into several sets and run `teambot eval` on each",
            )
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QuestionSetError(f"cannot read the question set {path}: {exc}", "give the path of a .yaml or .jsonl file") from None


def _yaml(path: Path, text: str) -> tuple[list[Any], str, str]:
    import yaml

    class NoAliases(yaml.SafeLoader):
        """safe_load's loader (no object tags), refusing aliases: `*a` repeats what `&a` names, and
        a few nested ones make a few hundred bytes stand for gigabytes once anything prints them."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                alias = self.peek_event()
                raise QuestionSetError(
                    f"{path}, line {alias.start_mark.line + 1}: the YAML alias *{alias.anchor} is refused in a question set",
                    f"write out in full what &{alias.anchor} names wherever it is used",
                )
            return super().compose_node(parent, index)

    try:
        data = yaml.load(text, Loader=NoAliases)  # noqa: S506 (NoAliases is a SafeLoader)
    except yaml.YAMLError as exc:
        raise QuestionSetError(f"{path} is not valid YAML: {exc}", "fix the line it names") from None
    if isinstance(data, list):
        return data, path.stem, DEFAULT_COLLECTION
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise QuestionSetError(f"{path} has no list of items", "write `items:` with one entry per question (see the README's `teambot eval`)")
    unknown = set(data) - SET_KEYS
    if unknown:
        raise QuestionSetError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}", f"allowed: {', '.join(sorted(SET_KEYS))}")
    default = str(data.get("collection") or DEFAULT_COLLECTION)
    return data["items"], str(data.get("name") or path.stem), default


def _jsonl(path: Path, text: str) -> list[Any]:
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise QuestionSetError(f"{path}:{n} is not JSON: {exc.msg}", "one JSON object per line") from None
    return items


def _item(path: Path, k: int, raw: Any, default_collection: str) -> EvalItem:
    where = f"{path}: item {k}"
    if not isinstance(raw, dict):
        raise QuestionSetError(f"{where} is not a mapping", "each item is {question: ..., expect_sources: [...], ...}")
    if raw.get("id"):
        where = f"{path}: item {raw['id']!r}"
    unknown = set(raw) - ITEM_KEYS
    if unknown:
        raise QuestionSetError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}", f"allowed: {', '.join(sorted(ITEM_KEYS))}")
    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise QuestionSetError(f"{where} has no question", "add `question: ...`")
    facts = raw.get("facts", "all")
    if facts not in ("all", "any"):
        raise QuestionSetError(f"{where}: facts = {facts!r}", "use `facts: all` (every string) or `facts: any` (one of them)")
    refuse = raw.get("refuse", False)
    if not isinstance(refuse, bool):
        raise QuestionSetError(f"{where}: refuse = {refuse!r}", "use true or false")
    sources, expected = _strings(where, raw, "expect_sources"), _strings(where, raw, "expect_facts")
    if refuse and (sources or expected):
        raise QuestionSetError(f"{where} expects a refusal and also sources or facts", "a question the bot must refuse has no expected answer")
    collection = str(raw.get("collection") or default_collection)
    try:
        check_collection_name(collection)
    except TeambotError as exc:
        raise QuestionSetError(f"{where}: {exc.message}", exc.hint) from None
    return EvalItem(
        id=str(raw.get("id") or k),
        question=question.strip(),
        kind=str(raw.get("kind") or ""),
        expect_sources=sources,
        expect_facts=expected,
        facts=facts,
        refuse=refuse,
        history=_history(where, raw.get("history")),
        collection=collection,
        model_answers=_model_answers(where, raw.get("model_answers")),
        model_rewrite=_model_rewrite(where, raw.get("model_rewrite")),
    )


def _model_rewrite(where: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise QuestionSetError(f"{where}: model_rewrite must be a text", "model_rewrite: \"en: ...\\nzh: ...\" (the model's two search queries)")
    return value.strip()


def _strings(where: str, raw: dict[str, Any], key: str) -> tuple[str, ...]:
    value = raw.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) and str(v).strip() for v in value):
        raise QuestionSetError(f"{where}: {key} must be a list of non-empty strings", f"e.g. {key}: [\"...\"]")
    return tuple(str(v).strip() for v in value)


def _history(where: str, value: Any) -> tuple[Turn, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise QuestionSetError(f"{where}: history must be a list of {{question, answer}}", "oldest turn first")
    turns = []
    for turn in value:
        if not isinstance(turn, dict) or not isinstance(turn.get("question"), str) or not isinstance(turn.get("answer"), str):
            raise QuestionSetError(f"{where}: every history turn needs a question and an answer (strings)", "history: [{question: ..., answer: ...}]")
        turns.append(Turn(turn["question"], turn["answer"]))
    return tuple(turns)


def _model_answers(where: str, value: Any) -> tuple[ModelAnswer, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise QuestionSetError(f"{where}: model_answers must be a list of {{text, correct}}", "model_answers: [{text: ..., correct: true}]")
    answers = []
    for k, raw in enumerate(value, start=1):
        at = f"{where}, model answer {k}"
        if not isinstance(raw, dict) or not isinstance(raw.get("text"), str) or not raw["text"].strip():
            raise QuestionSetError(f"{at} has no text", "each model answer is {text: ..., correct: true|false}")
        unknown = set(raw) - ANSWER_KEYS
        if unknown:
            raise QuestionSetError(f"{at}: unknown key(s) {', '.join(sorted(unknown))}", f"allowed: {', '.join(sorted(ANSWER_KEYS))}")
        correct, wrong = raw.get("correct"), raw.get("wrong")
        if not isinstance(correct, bool):
            raise QuestionSetError(f"{at}: correct = {correct!r}", "use correct: true or correct: false")
        if correct and wrong is not None:
            raise QuestionSetError(f"{at} is correct and also wrong: {wrong!r}", "drop `wrong` from a correct answer")
        if not correct and wrong not in WRONG_KINDS:
            raise QuestionSetError(f"{at}: wrong = {wrong!r}", "a wrong answer says how: wrong: blatant (invented) or wrong: binding (true values put to the wrong thing)")
        answers.append(ModelAnswer(raw["text"].strip(), correct, wrong))
    return tuple(answers)
