"""Answer quality on the two question sets, with `teambot eval`'s own code, in a fresh data dir.

    python -m bench.eval --set knowledge                       # examples/eval/knowledge.yaml over examples/knowledge
    python -m bench.eval --set lmdeploy-docs --corpus PATH     # examples/eval/lmdeploy-docs.yaml over lmdeploy's docs
    options: --retrieval-only, --calibrate, --variants, --model-answers, --label NAME, --set-value KEY=VALUE (repeatable),
             --data-dir DIR (keep the index there: the next run with it indexes nothing again)

The lmdeploy corpus is third-party and never committed: PATH is a clone of
https://github.com/InternLM/lmdeploy (its docs/en and docs/zh_cn are read at the commit the
question set names, with `git archive`) or a folder that already holds en/ and zh_cn/. Only
.md and .rst files are indexed, into one collection.

Results: bench/results/eval-<set>[-<label>].json (every question included). With
--model-answers also the size of the prompts the model was sent, in characters and in the
shipped model's tokens (SmolLM2's vocabulary; its context is inference.context_size = 4096).
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import bench_settings, percentile, save
from bot.evaluation.commands import evaluate, evaluate_model_answers
from bot.evaluation.model_answers import replayed_items
from bot.evaluation.questions import load_question_set
from bot.evaluation.report import render
from bot.evaluation.variants import kv_variants
from bot.runtime import knowledge_runtime
from config.settings import literal

REPO = Path(__file__).resolve().parent.parent
SETS = {"knowledge": REPO / "examples" / "eval" / "knowledge.yaml", "lmdeploy-docs": REPO / "examples" / "eval" / "lmdeploy-docs.yaml"}
CORPUS_SUFFIXES = {".md", ".rst"}


def lmdeploy_corpus(source: Path, commit: str, folders: dict[str, str], target: Path) -> Path:
    """The docs as one folder of en/ and zh_cn/, .md and .rst only."""
    target.mkdir(parents=True, exist_ok=True)
    if all((source / name).is_dir() for name in folders):  # already extracted
        for name in folders:
            _copy_docs(source / name, target / name)
        return target
    git_dir = source / ".git" if (source / ".git").exists() else source
    archive = subprocess.run(["git", "--git-dir", str(git_dir), "archive", commit, *folders.values()], capture_output=True, check=False)
    if archive.returncode != 0:
        sys.exit(f"cannot read {', '.join(folders.values())} at {commit} from {source}: {archive.stderr.decode().strip()}\n"
                 "give --corpus a clone of https://github.com/InternLM/lmdeploy (with that commit), or a folder holding en/ and zh_cn/")
    with tempfile.TemporaryDirectory() as raw, tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(raw, filter="data")
        for name, folder in folders.items():
            _copy_docs(Path(raw) / folder, target / name)
    return target


def add_set_arguments(parser: argparse.ArgumentParser) -> None:
    """--set, --corpus and --data-dir: which shipped set, where lmdeploy's docs are, where the index stays."""
    parser.add_argument("--set", choices=sorted(SETS), default="knowledge")
    parser.add_argument("--corpus", type=Path, help="lmdeploy-docs: a clone of InternLM/lmdeploy, or a folder with en/ and zh_cn/")
    parser.add_argument("--data-dir", type=Path, help="keep the corpus and the index here, to be reused by the next run (default: a fresh one)")


def set_corpus(set_name: str, corpus: Path | None, work: Path) -> Path:
    """The folder a shipped set's questions are asked of: the sample knowledge base, or lmdeploy's
    docs read from ``corpus`` into ``work``/corpus (exits with what to give when it is missing)."""
    if set_name == "knowledge":
        return REPO / "examples" / "knowledge"
    if corpus is None:
        sys.exit(f"--set {set_name} needs --corpus (a clone of https://github.com/InternLM/lmdeploy)")
    source = yaml.safe_load(SETS[set_name].read_text(encoding="utf-8"))["corpus"]
    return lmdeploy_corpus(corpus, source["commit"], source["folders"], work / "corpus")


def _copy_docs(source: Path, target: Path) -> None:
    for path in source.rglob("*"):
        if path.is_file() and path.suffix.lower() in CORPUS_SUFFIXES:
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)


def prompt_tokens(prompts: list[str]) -> dict[str, float]:
    """p50 / p90 / max of the prompts' lengths in the shipped model's tokens (its vocabulary alone is loaded)."""
    import llama_cpp

    from inference.llamacpp import shipped_model_path

    if not prompts:
        return {}
    vocabulary = llama_cpp.Llama(str(shipped_model_path()), vocab_only=True, verbose=False)
    counts = [float(len(vocabulary.tokenize(text.encode(), add_bos=False, special=False))) for text in prompts]
    return {"p50": percentile(counts, 50), "p90": percentile(counts, 90), "max": max(counts), "n": len(counts)}


def nested(values: list[str]) -> dict:
    """["rag.embed_model=", "bot.answer_mode=extractive"] as settings overrides ({"rag": {"embed_model": ""}, ...}),
    so that what depends on them (the embedder's relevance bar) is worked out again."""
    out: dict = {}
    for value in values:
        key, _, raw = value.partition("=")
        *sections, leaf = key.split(".")
        target = out
        for section in sections:
            target = target.setdefault(section, {})
        target[leaf] = literal(raw) if raw else raw
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_arguments(parser)
    parser.add_argument("--retrieval-only", action="store_true")
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--variants", action="store_true", help="answer with each KV cache precision too")
    parser.add_argument("--model-answers", action="store_true", help="replay the set's written model answers instead of asking the LLM")
    parser.add_argument("--label", default="", help="a name for this run's result file")
    parser.add_argument("--set-value", action="append", default=[], help="a setting for this run, e.g. rag.min_score=0.45")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()

    question_set = load_question_set(SETS[args.set])
    with tempfile.TemporaryDirectory(prefix="teambot-eval-") as tmp:
        work = args.data_dir or Path(tmp)
        knowledge = set_corpus(args.set, args.corpus, work)
        settings = bench_settings(work, knowledge, **nested(args.set_value))
        started = time.perf_counter()
        with knowledge_runtime(settings) as runtime:
            indexed = runtime.indexer.run()
        print(f"indexed {indexed.added} files ({indexed.chunks} chunks, {len(indexed.failed)} failed) in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
        items = question_set.items[: args.limit]
        if args.model_answers:
            report = evaluate_model_answers(settings, question_set, replayed_items(items))
        else:
            variants = kv_variants(settings) if args.variants else []
            report = evaluate(settings, question_set, items, retrieval_only=args.retrieval_only, calibrate=args.calibrate, variants=variants)
    print(render(report))
    name = f"eval-{args.set}" + (f"-{args.label}" if args.label else "")
    data = report.to_json()
    if report.replays is not None:
        data["prompt_tokens"] = prompt_tokens([r.prompt for r in report.replays.results if r.prompt])
        print(f"prompt tokens (SmolLM2's vocabulary): {data['prompt_tokens']}", file=sys.stderr)
    data["corpus"] = {"files": indexed.added, "chunks": indexed.chunks, "failed": len(indexed.failed)}
    data["settings"] = {"set_value": args.set_value, "min_score": settings.rag.bar, "vector_weight": settings.rag.weight, "top_k": settings.rag.top_k,
                        "embed_model": settings.rag.embed_model or "all-MiniLM-L6-v2 (shipped)", "kv_cache_type": settings.inference.kv_cache_type}
    shown = ["CLONE_OF_LMDEPLOY" if previous == "--corpus" else arg for previous, arg in zip(["", *sys.argv[1:]], sys.argv[1:], strict=False)]
    data["command"] = "python -m bench.eval " + " ".join(shown)
    print(f"saved {save(name, data)}", file=sys.stderr)


if __name__ == "__main__":
    main()
