"""The answer cites at least one passage, and only passages that exist (a refusal may cite none).

A citation of a passage that does not exist is the fault of the sentence it stands in; the
guard may leave that sentence out of a refusal."""

from __future__ import annotations

from bot.guard.answer import Answer, Problem


def check(answer: Answer) -> list[Problem]:
    problems = []
    if answer.wrong_citations:
        wrong = ", ".join(f"[{n}]" for n in answer.wrong_citations)
        where = [c for c in answer.claims if any(f"[{n}]" in c.written for n in answer.wrong_citations)]
        if where:
            problems += [Problem("citations", f"cites {wrong}, which is not a source", c.text, c.index) for c in where]
        else:
            problems.append(Problem("citations", f"it cites {wrong}, which is not a source"))
    if not answer.cited and not answer.refusal:
        problems.append(Problem("citations", "it cites no source"))
    return problems
