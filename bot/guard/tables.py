"""A number an answer takes from a markdown table of its cited passages stands in the row the
sentence is about, not just somewhere in the table.

"llama2-7b FP16 的 RPS 是 7.950" has every number and name of the passage, but 7.950 is in the
llama2-13b row. The row a sentence is about is the one that holds most of its row anchors:

- a cell written in the sentence ("llama2-7b"), one that tells rows apart (not in every row);
- a number the sentence puts beside a word of a column's header ("batch 1", "128 个 token" with
  the columns batch and output_tokens): that column holds that number in the row.

Anchors are read from the sentence; from the question when the sentence names none ("每秒 102.21
个 token" to "batch 1、输入 1 个 token 生成 128 个 token 时……"). The number is wrongly bound when
it is in no best row of any table holding it (and nowhere in the passages outside their tables);
a sentence with no anchors, or anchors no row holds, is not judged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from bot.guard.answer import Answer, Problem
from bot.guard.quantities import Quantity, quantities

_ROW = re.compile(r"^\s*\|(.*)\|\s*$")
_RULE = re.compile(r"^[\s|:\-]+$")
_NUMBER = re.compile(r"^[-+]?\d+(?:,\d{3})*(?:\.\d+)?$")
_HEADER_WORD = re.compile(r"[a-z\u3400-\u9fff]+")
_NEAR_WORD = re.compile(r"[A-Za-z_\u3400-\u9fff]+")
_BEFORE = re.compile(r"([A-Za-z_\u3400-\u9fff]+)[\s（(:：=]*$")
_SKIPPED = re.compile(r"^[\s个（()）:：=、,，]*")  # between a number and the word beside it: "128 个 token", "batch: 1"
MIN_CELL = 3  # characters: a shorter text cell ("-", "no") anchors nothing


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class _Anchor:
    cell: str = ""  # a text cell the row must hold
    value: float = 0.0  # or a number one of ``columns`` must hold
    columns: tuple[int, ...] = ()
    start: int = -1  # where the number stands in its text (so a number is no anchor of itself)

    def held_by(self, row: tuple[str, ...]) -> bool:
        if self.cell:
            return any(c.casefold() == self.cell for c in row)
        return any(k < len(row) and _value(row[k]) == self.value for k in self.columns)


def check(answer: Answer) -> list[Problem]:
    read = [(_tables(answer.passages[p.n - 1].text), _outside_tables(answer.passages[p.n - 1].text)) for p in answer.sources]
    if not any(tables for tables, _ in read):
        return []
    problems = []
    for claim in answer.claims:
        for quantity in claim.quantities:
            if quantity.unit or any(quantity.amount in prose for _, prose in read):
                continue  # an amount with a unit, or a number the passages also write outside their tables
            holding = [t for tables, _ in read for t in tables if any(_value(c) == quantity.amount for r in t.rows for c in r)]
            if not holding:
                continue  # not from a table (the numbers check says whether it is there at all)
            wrong = _wrong_row(quantity, claim.said, answer.question, holding)
            if wrong:
                problems.append(
                    Problem(
                        "bindings",
                        f"puts {quantity.text} where the cited table's row “{wrong}” has another number",
                        claim.text,
                        claim.index,
                    )
                )
    return problems


def _wrong_row(quantity: Quantity, said: str, question: str, tables: list[Table]) -> str | None:
    """The row the sentence is about (its first cell) when ``quantity`` is in none of the best rows; None when it is in
    one, or when the sentence (or the question) anchors no row."""
    about = None
    for table in tables:
        anchors = [a for a in _anchors(said, table) if a.start != quantity.start] or _anchors(question, table)
        if not anchors:
            return None
        scores = [sum(a.held_by(row) for a in anchors) for row in table.rows]
        best = max(scores)
        if best == 0:
            return None
        rows = [row for row, score in zip(table.rows, scores) if score == best]
        if any(_value(c) == quantity.amount for row in rows for c in row):
            return None
        about = about or " | ".join(rows[0][:4])
    return about


def _anchors(text: str, table: Table) -> list[_Anchor]:
    folded = text.casefold()
    out = []
    for cell in dict.fromkeys(c.casefold() for row in table.rows for c in row):
        if len(cell) < MIN_CELL or _value(cell) is not None or not re.search(r"[a-z\u3400-\u9fff]", cell):
            continue
        if sum(any(c.casefold() == cell for c in row) for row in table.rows) == len(table.rows):
            continue  # in every row: it tells no row apart
        if re.search(rf"(?<![\w.\-]){re.escape(cell)}(?![\w\-])", folded):
            out.append(_Anchor(cell=cell))
    headers = [{_stem(w) for w in _HEADER_WORD.findall(h.casefold())} for h in table.header]
    for q in quantities(text):
        if q.unit:
            continue
        near = {_stem(w) for w in _beside(text, q)}
        columns = tuple(k for k, words in enumerate(headers) if words & near)
        if columns:
            out.append(_Anchor(value=q.amount, columns=columns, start=q.start))
    return out


def _beside(text: str, q: Quantity) -> list[str]:
    """The word right before a number and the word right after it (past 个, brackets and colons)."""
    out = []
    before = _BEFORE.search(text[: q.start])
    if before:
        out.append(before.group(1).casefold())
    after = text[q.end :]
    word = _NEAR_WORD.match(after, _SKIPPED.match(after).end())
    if word:
        out.append(word.group(0).casefold())
    return out


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def _value(cell: str) -> float | None:
    cell = cell.strip()
    return float(cell.replace(",", "")) if _NUMBER.match(cell) else None


@lru_cache(maxsize=4096)
def _tables(text: str) -> tuple[Table, ...]:
    """The markdown tables of a text: a header row, its rule (| --- |) and the rows below it."""
    out = []
    lines = text.splitlines()
    k = 0
    while k + 1 < len(lines):
        head, rule = _ROW.match(lines[k]), lines[k + 1]
        if head and _ROW.match(rule) and _RULE.match(rule) and "-" in rule:
            rows = []
            k += 2
            while k < len(lines) and (row := _ROW.match(lines[k])):
                rows.append(tuple(c.strip() for c in row.group(1).split("|")))
                k += 1
            if rows:
                out.append(Table(tuple(c.strip() for c in head.group(1).split("|")), tuple(rows)))
            continue
        k += 1
    return tuple(out)


@lru_cache(maxsize=4096)
def _outside_tables(text: str) -> frozenset[float]:
    """The numbers the text writes outside its tables."""
    return frozenset(q.amount for q in quantities("\n".join(line for line in text.splitlines() if not _ROW.match(line))))
