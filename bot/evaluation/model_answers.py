"""`teambot eval --model-answers`: a question set's written model answers replayed through the
real answer flow (bot.evaluation.replay), and what users read of them.

For each answer: a correct one should be shown as the model wrote it; a wrong one (blatant:
invented; binding: true values put to the wrong thing) should never reach the user; an honest
refusal ("the documents don't say") should be shown as a refusal. Counted in total, per
language of the question, per kind of question, and for answers whose cited passages are in
the other language.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.answering import AnswerFlow
from bot.core import search_text
from bot.evaluation.questions import EvalItem, ModelAnswer
from bot.evaluation.replay import FILE_CITATION, ReplayModel
from bot.evaluation.runner import answer_result
from bot.evaluation.scoring import ItemResult, Refusals, groups, percentile, refusals
from bot.prompt import language_of

LABELS = ("correct", "refusal", "blatant", "binding")
WANTED = {"correct": "shown", "refusal": "kept", "blatant": "blocked", "binding": "blocked"}  # what should happen to each


@dataclass
class ReplayResult:
    """What happened to one written answer."""

    item: EvalItem
    answer: ModelAnswer
    asked: ItemResult
    cited_missing: bool = False  # it cites a file retrieval did not bring (the replay gave a number out of range)
    crosses: bool = False  # a cited passage is in another language than the question
    prompt: str = field(default="", repr=False)  # the messages the model was sent, as one text ("" when it was not asked)

    @property
    def label(self) -> str:
        return self.answer.label(self.item.refuse)

    @property
    def model_asked(self) -> bool:
        """Whether the replay model was asked (not when nothing passed the relevance bar)."""
        return bool(self.asked.generated)

    @property
    def reached(self) -> bool:
        """Whether the guard had this answer to judge as written: the model was asked, and every
        file a correct answer cites was among the passages (else retrieval, not the guard, decided)."""
        return self.model_asked and not (self.label == "correct" and self.cited_missing)

    @property
    def shown(self) -> bool:
        """The model's text reached the user as it wrote it."""
        return self.asked.mode == "generative" and self.asked.answer == self.asked.generated

    @property
    def outcome(self) -> str:
        """shown (as written), trimmed (without sentences the guard left out), refused (by the bot,
        or as the model's own refusal), replaced (quotes instead), error."""
        r = self.asked
        if r.error:
            return "error"
        if r.refused:
            return "refused"
        if self.shown:
            return "shown"
        return "trimmed" if r.mode == "generative" else "replaced"

    @property
    def ok(self) -> bool:
        """Whether users read what they should: the correct answer as written, the wrong one never
        (a trimmed wrong answer counts as shown), a refusal as a refusal."""
        label, outcome = self.label, self.outcome
        if label == "correct":
            return outcome == "shown"
        if label == "refusal":
            return outcome == "refused"
        return outcome in ("replaced", "refused")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.item.id, "kind": self.item.kind, "language": self.item.language, "label": self.label,
            "text": self.answer.text, "outcome": self.outcome, "ok": self.ok, "model_asked": self.model_asked,
            "cited_missing": self.cited_missing, "crosses_languages": self.crosses, "shown_text": self.asked.answer,
            "mode": self.asked.mode, "guard_ok": self.asked.guard_ok, "problems": self.asked.problems,
            "error": self.asked.error, "guard_ms": self.asked.timings_ms.get("guard"),
            "prompt_chars": len(self.prompt) if self.prompt else None,
        }  # fmt: skip


@dataclass(frozen=True)
class Count:
    ok: int  # as wanted (shown, blocked, kept)
    of: int
    ok_reached: int  # the same among the answers the guard had to judge (ReplayResult.reached)
    reached: int
    trimmed: int = 0  # of those, shown without a sentence or two

    def share(self, reached: bool = True) -> float | None:
        good, total = (self.ok_reached, self.reached) if reached else (self.ok, self.of)
        return good / total if total else None

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {
            "ok": self.ok, "of": self.of, "share": r(self.share(False)), "ok_reached": self.ok_reached, "reached": self.reached,
            "share_reached": r(self.share()), "trimmed": self.trimmed,
        }  # fmt: skip


@dataclass(frozen=True)
class ReplaySummary:
    counts: dict[str, Count]  # per label
    right_refusals: Refusals  # each question answered by its right written answers: refused exactly the ones to refuse?
    not_asked: int  # answers the model never gave: nothing passed the relevance bar
    cited_missing: int  # correct answers citing a file retrieval did not bring
    guard_ms_p50: float | None
    guard_ms_p90: float | None
    prompt_chars_p50: float | None = None  # of the messages the model was sent
    prompt_chars_p90: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            **{label: count.to_json() for label, count in self.counts.items()},
            "right_answers_refusal": {"precision": self.right_refusals.precision, "recall": self.right_refusals.recall, "f1": self.right_refusals.f1},
            "not_asked": self.not_asked, "cited_missing": self.cited_missing,
            "guard_ms": {"p50": self.guard_ms_p50, "p90": self.guard_ms_p90},
            "prompt_chars": {"p50": self.prompt_chars_p50, "p90": self.prompt_chars_p90},
        }  # fmt: skip


def summarize_replays(results: Sequence[ReplayResult]) -> ReplaySummary:
    counts = {}
    for label in LABELS:
        part = [r for r in results if r.label == label]
        reached = [r for r in part if r.reached]
        counts[label] = Count(sum(r.ok for r in part), len(part), sum(r.ok for r in reached), len(reached), sum(r.outcome == "trimmed" for r in reached))
    guard = [r.asked.timings_ms["guard"] for r in results if "guard" in r.asked.timings_ms]
    right = [r.asked for r in results if r.label in ("correct", "refusal") and not r.asked.error]
    prompts = [float(len(r.prompt)) for r in results if r.prompt]
    return ReplaySummary(
        counts=counts,
        right_refusals=refusals(right),
        not_asked=sum(not r.model_asked for r in results),
        cited_missing=sum(r.cited_missing for r in results if r.label == "correct"),
        guard_ms_p50=percentile(guard, 50),
        guard_ms_p90=percentile(guard, 90),
        prompt_chars_p50=percentile(prompts, 50),
        prompt_chars_p90=percentile(prompts, 90),
    )


@dataclass
class ReplayReport:
    results: list[ReplayResult] = field(default_factory=list)

    @property
    def summary(self) -> ReplaySummary:
        return summarize_replays(self.results)

    def rows(self) -> dict[str, ReplaySummary]:
        """Totals, per language of the question, per kind of question, and across languages."""
        rows = {"all": self.summary}
        rows.update({f"lang {k}": summarize_replays(v) for k, v in groups(self.results, lambda r: r.item.language).items()})
        rows.update({k: summarize_replays(v) for k, v in groups(self.results, lambda r: r.item.kind or "-").items()})
        crossing = [r for r in self.results if r.crosses]
        if crossing:
            rows["answers across languages"] = summarize_replays(crossing)
        return rows

    def metric(self, name: str) -> float | None:
        """correct_shown, blatant_blocked, binding_blocked, refusals_kept (the --min-* floors of --model-answers):
        shares among the answers the guard had to judge (ReplayResult.reached)."""
        label = {"correct_shown": "correct", "blatant_blocked": "blatant", "binding_blocked": "binding", "refusals_kept": "refusal"}[name]
        return self.summary.counts[label].share()

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary.to_json(), "rows": {k: v.to_json() for k, v in self.rows().items()}, "answers": [r.to_json() for r in self.results]}


REPLAY_FLOORS = ("correct_shown", "blatant_blocked", "binding_blocked", "refusals_kept")


def replayed_items(items: Sequence[EvalItem]) -> list[EvalItem]:
    return [item for item in items if item.model_answers]


async def run_replays(
    flow: AnswerFlow, replay: ReplayModel, items: Sequence[EvalItem], progress: Callable[[EvalItem], None] | None = None
) -> ReplayReport:
    """Every written answer of ``items`` asked through ``flow``, whose LLM is ``replay``; one at a time."""
    report = ReplayReport()
    for item in items:
        if item.model_rewrite:
            replay.rewrite(search_text(item.question, item.history)[0], item.model_rewrite)
        for answer in item.model_answers:
            replay.answer(item.question, answer.text)
            replay.prompts.pop(item.question.strip(), None)
            asked = await answer_result(flow, item)
            report.results.append(_judged(item, answer, asked, replay.prompts.get(item.question.strip(), "")))
        if progress:
            progress(item)
    return report


def _judged(item: EvalItem, answer: ModelAnswer, asked: ItemResult, prompt: str = "") -> ReplayResult:
    shown = {path: text for path, text in zip(asked.paths, asked.texts, strict=True)}  # the passages' files, and a text of each
    cited = set(FILE_CITATION.findall(answer.text))
    crosses = any(language_of(shown[path]) != item.language for path in cited & shown.keys())
    crosses = crosses or (not cited & shown.keys() and item.kind == "cross-lingual")
    return ReplayResult(item, answer, asked, cited_missing=bool(cited - shown.keys()), crosses=crosses, prompt=prompt)


def replay_lines(report: ReplayReport) -> list[str]:
    """The table of what users read of the written answers, and the answers that went wrong."""
    heads = {"correct": "correct shown", "blatant": "blatant blocked", "binding": "binding blocked", "refusal": "refusals kept"}
    lines = [
        "written model answers: for each kind, as wanted among those the guard judged (the model was asked and every file a",
        "correct answer cites was retrieved), then among all (retrieval's refusals and misses included); +n✂: shown without",
        "a sentence or two the guard left out (not counted as shown for a correct answer, nor as blocked for a wrong one)",
        "refusal F1: of the questions as their right answers (correct ones, honest refusals) were shown: refused exactly those to refuse?",
        f"{'':26} " + " ".join(f"{heads[label]:>24}" for label in heads)
        + f" {'not asked':>10} {'guard ms p50/p90':>17} {'refusal F1':>10} {'prompt chars p50/p90':>21}",
    ]
    for name, s in report.rows().items():
        cells = [_cell(s.counts[label]) for label in heads]
        guard = f"{_num(s.guard_ms_p50)} / {_num(s.guard_ms_p90)}"
        prompt = f"{_num(s.prompt_chars_p50)} / {_num(s.prompt_chars_p90)}"
        lines.append(
            f"{name[:26]:<26} " + " ".join(f"{c:>24}" for c in cells)
            + f" {s.not_asked:>10} {guard:>17} {_num(s.right_refusals.f1, 2):>10} {prompt:>21}"
        )  # fmt: skip
    wrong = [r for r in report.results if not r.ok and r.reached]
    if wrong:
        lines += ["", "written answers the guard judged wrongly:"]
        for r in wrong[:80]:
            why = "; ".join(r.asked.problems) if r.asked.problems else r.asked.error or r.asked.mode
            lines.append(f"  ✗ {r.item.id} [{r.label}, {r.item.language}] {r.outcome}: {r.answer.text[:90]!r} — {why[:240]}")
        if len(wrong) > 80:
            lines.append(f"  … and {len(wrong) - 80} more (--json lists every answer)")
    return lines


def _cell(count: Count) -> str:
    if not count.of:
        return "-"
    reached = f"{count.ok_reached}/{count.reached} {_num(count.share(), 2)}" if count.reached else "-"
    trimmed = f" +{count.trimmed}✂" if count.trimmed else ""
    return f"{reached}{trimmed} · {count.ok}/{count.of}"


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
