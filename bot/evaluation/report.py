"""What `teambot eval` prints: the totals, the same by language and by kind of question, the
questions that went wrong, and the calibration and variant tables. Pure text; ``--json`` gives
the same numbers (and every question) for machines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.evaluation.calibrate import Fit
from bot.evaluation.model_answers import REPLAY_FLOORS, ReplayReport, replay_lines
from bot.evaluation.scoring import ItemResult, Summary, groups, summarize
from bot.evaluation.variants import VariantResult

FLOORS = ("hit_at_1", "hit_at_k", "mrr", "refusal_f1", "fact_accuracy", "citation_precision", "language_match")


@dataclass
class EvalReport:
    name: str
    mode: str  # "retrieval only" or the answering server's description
    results: list[ItemResult]
    k: int
    skipped: list[str] = field(default_factory=list)
    calibration: list[Fit] = field(default_factory=list)
    variants: list[VariantResult] = field(default_factory=list)
    replays: ReplayReport | None = None  # --model-answers

    @property
    def summary(self) -> Summary:
        return summarize(self.results, self.k)

    def by(self, what: str) -> dict[str, Summary]:
        key = (lambda r: r.item.language) if what == "language" else (lambda r: r.item.kind or "-")
        return {name: summarize(part, self.k) for name, part in groups(self.results, key).items()}

    def missed_floors(self, floors: dict[str, float]) -> list[str]:
        summary = self.summary
        missed = []
        for name, floor in floors.items():
            if name in REPLAY_FLOORS:
                value = self.replays.metric(name) if self.replays is not None else None
            else:
                value = summary.metric(name)
            if value is None or value < floor:
                missed.append(f"{name} = {_num(value)} is under the floor {floor:g}")
        return missed

    def to_json(self) -> dict[str, Any]:
        return {
            "set": self.name, "mode": self.mode, "summary": self.summary.to_json(),
            "by_language": {k: v.to_json() for k, v in self.by("language").items()},
            "by_kind": {k: v.to_json() for k, v in self.by("kind").items()},
            "skipped": self.skipped, "items": [r.to_json() for r in self.results],
            "calibration": [f.to_json() for f in self.calibration],
            "variants": [v.to_json() for v in self.variants],
            "model_answers": self.replays.to_json() if self.replays is not None else None,
        }  # fmt: skip


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ms(latency: dict[str, dict[str, float | None]], key: str) -> str:
    part = latency.get(key)
    if not part:
        return "-"
    return f"{_num(part['p50'], 0)} / {_num(part['p90'], 0)}"


def summary_table(rows: dict[str, Summary], answers: bool) -> list[str]:
    head = f"{'':16} {'n':>4} {'hit@1':>6} {'hit@k':>6} {'MRR':>5}  {'refusal P / R / F1':<18}"
    if answers:
        head += f" {'facts':>6} {'model':>6} {'cite-P':>6} {'cited':>6} {'lang':>5} {'guard':>6}  {'retrieve ms':<13} {'first text ms':<15} {'total ms':<15}"
    else:
        head += f"  {'retrieve ms p50 / p90'}"
    lines = [head]
    for name, s in rows.items():
        r = s.refusal
        line = (
            f"{name[:16]:16} {s.questions:>4} {_num(s.hit_at_1):>6} {_num(s.hit_at_k):>6} {_num(s.mrr):>5}  "
            f"{_num(r.precision)} / {_num(r.recall)} / {_num(r.f1):<6}"
        )
        if answers:
            line += (
                f" {_num(s.fact_accuracy):>6} {_num(s.model_fact_accuracy):>6} {_num(s.citation_precision):>6} {_num(s.cited_share):>6} {_num(s.language_match):>5} "
                f"{_num(s.guard_accepted):>6}  {_ms(s.latency_ms, 'retrieve'):<13} {_ms(s.latency_ms, 'first_text'):<15} {_ms(s.latency_ms, 'total'):<15}"
            )
        else:
            line += f"  {_ms(s.latency_ms, 'retrieve')}"
        lines.append(line)
    return lines


def what_went_wrong(result: ItemResult) -> list[str]:
    item, wrong = result.item, []
    if result.error:
        wrong.append(f"error: {result.error}")
    if item.refuse and not result.refused:
        wrong.append("answered; should refuse")
    if not item.refuse and result.refused:
        wrong.append("refused")
    if item.expect_sources and result.rank is None and not result.refused:
        wrong.append(f"no expected source in {result.paths[:4]}")
    elif item.expect_sources and result.rank and result.rank > 1:
        wrong.append(f"expected source at rank {result.rank}")
    if result.fact_ok is False and not result.refused:
        wrong.append(f"facts missing ({item.facts} of {list(item.expect_facts)})")
    return wrong


def render(report: EvalReport, show_all: bool = False) -> str:
    answers = report.mode != "retrieval only"
    summary = report.summary
    lines = [f"{report.name}: {len(report.results)} questions, {report.mode}, k = {report.k}"]
    if answers:
        modes = ", ".join(f"{sum(r.mode == m for r in report.results)} {m}" for m in ("generative", "extractive", "not-found"))
        lines.append(f"answers: {modes}; rejected by the guard and shown all the same: {summary.rejected_shown}; errors: {summary.errors}")
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} item(s) with nothing to check: {', '.join(report.skipped[:10])}")
    lines.append("")
    lines += summary_table({"all": report.summary, **{f"lang {k}": v for k, v in report.by("language").items()}}, answers)
    lines.append("")
    lines += summary_table({f"{k}": v for k, v in report.by("kind").items()}, answers)
    if report.replays is not None:
        lines += ["", *replay_lines(report.replays)]
        return "\n".join(lines)
    wrong = [(r, what_went_wrong(r)) for r in report.results]
    shown = [(r, w) for r, w in wrong if w or show_all]
    if shown:
        lines += ["", "questions that went wrong:" if not show_all else "every question:"]
        for r, w in shown[: None if show_all else 40]:
            lines.append(f"  {'✗' if w else '✓'} {r.item.id} [{r.item.kind or '-'}, {r.item.language}] {'; '.join(w) or 'ok'}")
        if len(shown) > 40 and not show_all:
            lines.append(f"  … and {len(shown) - 40} more (--json lists every question)")
    if report.calibration:
        lines += ["", "relevance decision fitted for the best refusal F1 (configured -> fitted rule; a single bar, rag.min_score, for comparison):"]
        lines += calibration_lines(report.calibration)
    if report.variants:
        lines += ["", "inference variants:"]
        lines += variant_lines(report.variants)
    return "\n".join(lines)


def calibration_lines(fits: Sequence[Fit]) -> list[str]:
    lines = [f"  {'questions':<12} {'n':>4}  {'refusal F1':>16}  {'hit@k':>16}  {'single bar':>10} {'F1':>5} {'hit@k':>5}"]
    for f in fits:
        b, a, bar = f.before, f.after, f.bar
        single = f"{-bar.rule.bias:>10.3f} {_num(bar.refusal.f1):>5} {_num(bar.hit_at_k):>5}" if bar else ""
        lines.append(
            f"  {f.scope:<12} {f.questions:>4}  {_num(b.refusal.f1):>7} -> {_num(a.refusal.f1):<6}  "
            f"{_num(b.hit_at_k):>7} -> {_num(a.hit_at_k):<6}  {single}"
        )
    for f in fits:
        values = ", ".join(f"{k} = {v:g}" for k, v in f.after.rule.to_setting().items())
        lines.append(f"  {f.scope}: [rag] relevance = {{ {values} }}")
    return lines


def variant_lines(variants: Sequence[VariantResult]) -> list[str]:
    lines = [f"  {'variant':<16} {'facts':>6} {'model':>6} {'refusal F1':>10} {'hit@k':>6} {'pieces/s':>9} {'first text p50':>15} {'peak RSS MiB':>13} {'KV MiB':>7}"]
    for v in variants:
        s = v.summary
        first = s.latency_ms.get("first_text", {}).get("p50")
        lines.append(
            f"  {v.variant.name:<16} {_num(s.fact_accuracy):>6} {_num(s.model_fact_accuracy):>6} {_num(s.refusal.f1):>10} {_num(s.hit_at_k):>6} {_num(v.pieces_per_s, 1):>9} "
            f"{_num(first, 0):>15} {_num(v.peak_rss_mib, 0):>13} {_num(v.kv_cache_mib, 1):>7}"
        )
    return lines
