"""Every number in the answer is in its cited passages, as the same quantity: "600 yuan" is
"600 元", "10 am" is "10:00", "seven days" is "7 天" or "one week"; a number written as in the
passage (a version, a port) counts as it is, and so does a small count of what the answer
itself lists."""

from __future__ import annotations

import re

from bot.guard.answer import Answer, Claim, Problem
from bot.guard.quantities import Quantity, quantities
from bot.guard.reading import flat


MAX_COUNTED = 10
_ITEMS = re.compile(r"[,、，;；]|\band\b|\bor\b|和|及|以及|或")


def check(answer: Answer) -> list[Problem]:
    stated = [q for p in answer.sources for q, _, _ in p.quantities()] + quantities(answer.question)  # the question's are the user's
    problems = []
    for k, claim in enumerate(answer.claims):
        missing = [
            q.text
            for q in claim.quantities
            if not any(q.same(s) for s in stated)
            and not (not q.unit and any(flat(q.text) in p.flat for p in answer.sources))
            and not _counted(q, claim.said, answer.claims[k + 1 :])
        ]
        if missing:
            shown = ", ".join(dict.fromkeys(missing))
            problems.append(Problem("numbers", f"the number(s) {shown} are not in the cited passages", claim.text, claim.index))
    return problems


def _counted(quantity: Quantity, said: str, following: list[Claim]) -> bool:
    """A small count the answer itself lists ("Three names are supported: internlm, qwen and
    llama3", "有三个：" and three lines after it): the model counted, it did not invent."""
    if quantity.unit or not 2 <= quantity.value <= MAX_COUNTED:
        return False
    before = re.split(r"[，。；：,;:]", said[: quantity.start])[-1]
    if len([item for item in _ITEMS.split(re.sub(r"(?:这|那|these|those|the)\s*$", "", before.strip())) if item.strip()]) == quantity.value:
        return True  # "北京、上海、广州、深圳这四个城市"
    colon = re.search(r"[:：]", said[quantity.end :])
    if colon is None:
        return False
    listed = said[quantity.end + colon.end() :].strip(" .。")
    if listed:  # the items follow in the sentence
        return len([item for item in _ITEMS.split(listed) if item.strip()]) == quantity.value
    return len(following) >= quantity.value  # the items follow as the next lines
