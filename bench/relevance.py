"""Issue 24's instrument: each question of a set searched once per variant of the settings with
no relevance bar, every candidate's features kept (bot.evaluation.calibrate.search_all), so that
relevance rules are fitted and replayed offline in seconds, and fitted on one set and reported
on the other.

    python -m bench.relevance dump --set knowledge --variant plain:rag.translate_query=false --variant expand
    python -m bench.relevance dump --set lmdeploy-docs --corpus PATH --data-dir /tmp/i24-lmdeploy --variant ...
    python -m bench.relevance report --variant expand [--rule bar:0.27]   # fits on each set, reports on the other
    python -m bench.relevance dump --set knowledge --variant rewrite:bot.rewrite_question=true   # the written search queries too

A variant is NAME[:key=value,key=value]. --data-dir keeps the index between runs (an index run
of an unchanged corpus reads nothing again). Results: bench/results/relevance-<set>-<variant>.json
(the features) and bench/results/relevance-report-<variant>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, bench_settings, save
from bench.eval import SETS, add_set_arguments, nested, set_corpus
from bot.evaluation.calibrate import Found, RuleScore, Searched, fit_bar, fit_rule, score_rule, search_all
from bot.evaluation.questions import load_question_set
from bot.runtime import knowledge_runtime
from rag.search.relevance import RelevanceRule

SET_NAMES = ("knowledge", "lmdeploy-docs")


def dump(args: argparse.Namespace) -> None:
    question_set = load_question_set(SETS[args.set])
    with tempfile.TemporaryDirectory(prefix="teambot-relevance-") as tmp:
        work = args.data_dir or Path(tmp)
        knowledge = set_corpus(args.set, args.corpus, work)
        for variant in args.variant:
            name, _, values = variant.partition(":")
            settings = bench_settings(work, knowledge, **nested([v for v in values.split(",") if v]))
            with knowledge_runtime(settings) as runtime:
                started = time.perf_counter()
                indexed = runtime.indexer.run()
                print(f"{name}: index run {indexed.added} added, {indexed.chunks} chunks, {time.perf_counter() - started:.0f} s", file=sys.stderr)
                runtime.retriever.warm_up([])
                started = time.perf_counter()
                searched = search_all(runtime.retriever, question_set.items, rewrite=settings.bot.rewrite_question)  # written model_rewrite
                seconds = time.perf_counter() - started
            data = {"set": args.set, "variant": variant, "search_s": round(seconds, 1), "questions": [s.to_json() for s in searched]}
            path = save(f"relevance-{args.set}-{name}", data)
            compact(path)
            print(f"saved {path} ({seconds:.0f} s)", file=sys.stderr)


def compact(path: Path) -> None:
    """One question a line: the features of every candidate make an indented file five times longer."""
    data = json.loads(path.read_text(encoding="utf-8"))
    questions = data.pop("questions")
    head = json.dumps(data, ensure_ascii=False)[:-1]
    lines = ",\n".join(json.dumps(q, ensure_ascii=False, separators=(",", ":")) for q in questions)
    path.write_text(f'{head}, "questions": [\n{lines}\n]}}\n', encoding="utf-8")


def load(set_name: str, variant: str) -> list[Searched]:
    items = {item.id: item for item in load_question_set(SETS[set_name]).items}
    data = json.loads((RESULTS / f"relevance-{set_name}-{variant}.json").read_text(encoding="utf-8"))
    return [Searched(items[q["id"]], [Found(f["path"], f["score"], f["features"]) for f in q["found"]]) for q in data["questions"]]


def breakdown(searched: list[Searched], rule: RelevanceRule) -> dict[str, object]:
    """hit@4 per kind (old and new lmdeploy items apart), refusal F1 overall and per language."""
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    out: dict[str, object] = {}
    groups: dict[str, list[Searched]] = {"all": searched}
    for s in searched:
        groups.setdefault(f"kind {s.item.kind}", []).append(s)
        groups.setdefault(f"lang {s.item.language}", []).append(s)
        if s.item.kind in ("cross-lingual", "paraphrase"):
            age = "new" if s.item.id.startswith("i24-") else "old"
            groups.setdefault(f"kind {s.item.kind} {age}", []).append(s)
            groups.setdefault(f"kind {s.item.kind} {s.item.language}", []).append(s)
    for name, part in sorted(groups.items()):
        score = score_rule(part, rule)
        out[name] = {"n": len(part), "hit_at_4": r(score.hit_at_k), "refusal_f1": r(score.refusal.f1)}
    return out


def show(title: str, rows: dict[str, dict[str, object]]) -> None:
    print(f"\n{title}")
    print(f"  {'':<28}" + "".join(f"{name:>30}" for name in rows))
    keys = sorted({k for v in rows.values() for k in v})  # type: ignore[attr-defined]
    for key in keys:
        cells = []
        for value in rows.values():
            got = value.get(key)  # type: ignore[attr-defined]
            cells.append(f"{'':>30}" if got is None else f"{got['n']:>6} {_f(got['hit_at_4']):>11} {_f(got['refusal_f1']):>11}")
        print(f"  {key:<28}" + "".join(cells))


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def report(args: argparse.Namespace) -> None:
    sets = {name: load(name, args.variant) for name in SET_NAMES}
    results: dict[str, object] = {"variant": args.variant}
    rows: dict[str, dict[str, object]] = {}
    if args.bar is not None:
        rule = RelevanceRule.bar(args.bar, args.vector_weight)
        for name, searched in sets.items():
            rows[f"{name} bar {args.bar}"] = breakdown(searched, rule)
    for train, test in (("knowledge", "lmdeploy-docs"), ("lmdeploy-docs", "knowledge")):
        fitted: RuleScore = fit_rule(sets[train], args.vector_weight) if not args.single_bar else fit_bar(sets[train], args.vector_weight)
        results[f"fit on {train}"] = {"relevance": fitted.rule.to_setting(), "train_refusal_f1": fitted.refusal.f1, "train_hit_at_4": fitted.hit_at_k}
        print(f"fitted on {train}: {fitted.rule.to_setting()} (on {train} itself: F1 {_f(fitted.refusal.f1)}, hit@4 {_f(fitted.hit_at_k)})")
        rows[f"{test} (fit {train[:3]})"] = breakdown(sets[test], fitted.rule)
    results["rows"] = rows
    show(f"variant {args.variant}: n, hit@4, refusal F1", rows)
    print(f"saved {save(f'relevance-report-{args.variant}' + ('-bar' if args.single_bar else ''), results)}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    d = commands.add_parser("dump")
    add_set_arguments(d)
    d.add_argument("--variant", action="append", required=True)
    r = commands.add_parser("report")
    r.add_argument("--variant", required=True)
    r.add_argument("--bar", type=float, help="also replay this single bar (rag.min_score) on both sets")
    r.add_argument("--vector-weight", type=float, default=0.7)
    r.add_argument("--single-bar", action="store_true", help="fit a single bar instead of the rule")
    args = parser.parse_args()
    dump(args) if args.command == "dump" else report(args)


if __name__ == "__main__":
    main()
