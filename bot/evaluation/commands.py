"""`teambot eval`: measure the answers on a question set; `teambot eval export-feedback`: turn 👎
answers into question-set items."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from bot.answer_log import AnswerLog
from bot.cli_output import ProgressBar, err, guarded, out, print_json, progress_line
from bot.evaluation.calibrate import fits, search_all
from bot.evaluation.feedback import feedback_yaml
from bot.evaluation.model_answers import replayed_items, run_replays
from bot.evaluation.questions import EvalItem, QuestionSet, load_question_set
from bot.evaluation.replay import MODEL, ReplayModel
from bot.evaluation.report import EvalReport, render
from bot.evaluation.runner import run_answers, run_retrieval
from bot.evaluation.variants import Variant, kv_variants, parse_variant, run_variants
from bot.runtime import knowledge_runtime, open_runtime
from config.settings import Settings, with_values


class _EvalGroup(typer.core.TyperGroup):
    """`teambot eval FILE ...` runs the question set; `teambot eval export-feedback` is the other command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(cls=_EvalGroup, help="Measure teambot's answers on a question set.", no_args_is_help=True)

Floor = Annotated[float | None, typer.Option(min=0.0, max=1.0)]


@eval_app.command("run", help="Measure the answers to a question set (a .yaml or .jsonl file); also: teambot eval FILE.")
def run_command(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The question set (YAML or JSONL; see the README).")],
    retrieval_only: Annotated[bool, typer.Option("--retrieval-only", help="Only retrieval and refusals: no LLM is started.")] = False,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Fit the relevance decision (rag.relevance) for the best refusal F1 on these questions.")] = False,
    variants: Annotated[bool, typer.Option("--variants", help="Answer with each KV cache precision of the backend (llama.cpp f16/q8_0/q4_0, lmdeploy quant_policy 0/8/4).")] = False,
    variant: Annotated[list[str] | None, typer.Option("--variant", help="A variant of your own: NAME:key=value[,key=value] (repeatable).")] = None,
    model_answers: Annotated[
        bool, typer.Option("--model-answers", help="Replay the set's written model answers through the answer flow instead of asking the LLM.")
    ] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N questions.")] = None,
    show_all: Annotated[bool, typer.Option("--show-all", help="List every question, not only those that went wrong.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (every question included).")] = False,
    min_hit_at_1: Floor = None,
    min_hit_at_k: Floor = None,
    min_mrr: Floor = None,
    min_refusal_f1: Floor = None,
    min_fact_accuracy: Floor = None,
    min_citation_precision: Floor = None,
    min_language_match: Floor = None,
    min_correct_shown: Floor = None,
    min_blatant_blocked: Floor = None,
    min_binding_blocked: Floor = None,
    min_refusals_kept: Floor = None,
) -> None:
    """Exit code 1 when a --min-* floor is not met (for a team's own CI)."""
    settings: Settings = ctx.obj
    floors = {
        name: value
        for name, value in (
            ("hit_at_1", min_hit_at_1), ("hit_at_k", min_hit_at_k), ("mrr", min_mrr), ("refusal_f1", min_refusal_f1),
            ("fact_accuracy", min_fact_accuracy), ("citation_precision", min_citation_precision), ("language_match", min_language_match),
            ("correct_shown", min_correct_shown), ("blatant_blocked", min_blatant_blocked), ("binding_blocked", min_binding_blocked),
            ("refusals_kept", min_refusals_kept),
        )
        if value is not None
    }  # fmt: skip
    chosen = [*(kv_variants(settings) if variants else []), *(parse_variant(v) for v in variant or [])] if variants or variant else []
    question_set = guarded(lambda: load_question_set(file))
    items = question_set.items[:limit]
    if model_answers:
        if retrieval_only or calibrate or chosen:
            err.print("[red]--model-answers[/red] replays written answers: it goes with none of --retrieval-only, --calibrate, --variants, --variant")
            raise typer.Exit(2)
        items = replayed_items(items)
        if not items:
            err.print(f"[red]{escape(str(file))} has no model_answers[/red] to replay (see the README's `teambot eval`)")
            raise typer.Exit(2)
        report = guarded(lambda: evaluate_model_answers(settings, question_set, items))
    else:
        report = guarded(lambda: evaluate(settings, question_set, items, retrieval_only=retrieval_only, calibrate=calibrate, variants=chosen))
    if as_json:
        print_json({**report.to_json(), "floors": floors, "missed_floors": report.missed_floors(floors)})
    else:
        out.print(render(report, show_all), markup=False)
    missed = report.missed_floors(floors)
    for line in missed:
        err.print(f"[red]floor missed:[/red] {line}")
    if missed:
        raise typer.Exit(1)


def evaluate(
    settings: Settings, question_set: QuestionSet, items: list[EvalItem], *, retrieval_only: bool, calibrate: bool, variants: list[Variant]
) -> EvalReport:
    k = settings.rag.top_k
    with _Bar(len(items) * (1 + calibrate + len(variants))) as bar:
        if retrieval_only:
            with knowledge_runtime(settings) as runtime:
                runtime.retriever.warm_up([])
                report = EvalReport(question_set.name, "retrieval only", run_retrieval(runtime.retriever, items, bar.step, settings.bot.rewrite_question), k, question_set.skipped)
                if calibrate:
                    report.calibration = fits(search_all(runtime.retriever, items, bar.step, settings.bot.rewrite_question), runtime.retriever.rule, settings.rag.weight, k)
        else:

            async def answers() -> EvalReport:
                async with open_runtime(settings, with_llm=True, progress=bar.note) as runtime:
                    assert runtime.server is not None
                    results = await run_answers(runtime.require_flow(), items, bar.step)
                    report = EvalReport(question_set.name, f"answers by {runtime.server.description}", results, k, question_set.skipped)
                    if calibrate:
                        report.calibration = fits(await asyncio.to_thread(search_all, runtime.retriever, items, bar.step, settings.bot.rewrite_question), runtime.retriever.rule, settings.rag.weight, k)
                return report

            report = asyncio.run(answers())
        if variants:
            report.variants = asyncio.run(run_variants(settings, variants, items, lambda name, item: bar.step(item)))
    return report


def evaluate_model_answers(settings: Settings, question_set: QuestionSet, items: list[EvalItem]) -> EvalReport:
    """Each item's written answers, replayed as the LLM's through the real answer flow."""
    with _Bar(len(items)) as bar, ReplayModel() as replay:
        replayed = with_values(settings, {"inference.base_url": replay.base_url, "inference.model": MODEL, "inference.backend": "external"})

        async def answers() -> EvalReport:
            async with open_runtime(replayed, with_llm=True, progress=bar.note) as runtime:
                replays = await run_replays(runtime.require_flow(), replay, items, bar.step)
            report = EvalReport(question_set.name, "written model answers, replayed", [r.asked for r in replays.results], settings.rag.top_k, question_set.skipped)
            report.replays = replays
            return report

        return asyncio.run(answers())


@eval_app.command("export-feedback")
def export_feedback(
    ctx: typer.Context,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the question set here (default: stdout).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="The latest N voted-down answers.")] = 500,
) -> None:
    """Answers voted 👎 in chat, as question-set items for an admin to complete."""
    settings: Settings = ctx.obj
    def read() -> str:
        if not settings.state_url and not (settings.data_dir / AnswerLog.FILE).exists():
            return feedback_yaml([])
        log = AnswerLog(AnswerLog.database(settings.state_url, settings.data_dir))
        try:
            return feedback_yaml(log.recent(limit, voted_down=True))
        finally:
            log.close()

    text = guarded(read)
    if out_file is None:
        out.file.write(text)
        return
    out_file.write_text(text, encoding="utf-8")
    count = text.count("\n- id: ")
    progress_line(f"wrote {count} voted-down answer(s) to {out_file}: complete expect_sources / expect_facts (or refuse: true) in each")


class _Bar(ProgressBar):
    """A progress bar on stderr over the questions asked."""

    def __init__(self, total: int) -> None:
        super().__init__("evaluating")
        self._task = self._progress.add_task("", total=total)

    def step(self, item: EvalItem) -> None:
        self._progress.update(self._task, advance=1, description=item.id)

    def note(self, message: str) -> None:
        self._progress.console.print(f"[dim]{escape(message)}[/dim]")
