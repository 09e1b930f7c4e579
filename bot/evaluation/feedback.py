"""`teambot eval export-feedback`: answers users voted 👎 become question-set items for an admin
to complete, so every bad answer can become a regression case.

Each item has the question, ``kind: feedback``, and ``notes`` with what teambot answered and
from which files; an admin fills in ``expect_sources`` and ``expect_facts`` (or sets
``refuse: true``). Until then `teambot eval` skips the item and says so.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import yaml

from bot.answer_log import LoggedAnswer

HEADER = """\
# Questions users voted 👎 in chat, exported by `teambot eval export-feedback` on {date}.
# Complete each item: expect_sources (the files that answer it) and expect_facts (what the right
# answer says), or `refuse: true` when the knowledge base cannot answer it. `teambot eval`
# skips items that have neither.
"""


def feedback_items(answers: Sequence[LoggedAnswer]) -> list[dict[str, object]]:
    items = []
    for answer in answers:
        files = ", ".join(sorted({str(s.get("path", "")) for s in answer.sources})) or "none"
        when = time.strftime("%Y-%m-%d", time.localtime(answer.created_at))
        items.append(
            {
                "id": f"feedback-{answer.id[:8]}",
                "kind": "feedback",
                "question": answer.question,
                "expect_sources": [],
                "expect_facts": [],
                "notes": f"{answer.platform}, {when}: {answer.down} 👎, {answer.up} 👍. teambot answered: {answer.answer.strip()} (sources: {files})",
            }
        )
    return items


def feedback_yaml(answers: Sequence[LoggedAnswer], name: str = "feedback") -> str:
    body = yaml.safe_dump({"name": name, "items": feedback_items(answers)}, allow_unicode=True, sort_keys=False, width=100)
    return HEADER.format(date=time.strftime("%Y-%m-%d")) + body
