"""The search queries a real model writes (bot.rewrite_question), and retrieval with them.

    python -m bench.model_rewrites --set knowledge [--data-dir DIR] [--label NAME] [--set-value KEY=VALUE ...]

The configured model (by default the shipped SmolLM2 through llama.cpp; any OpenAI-compatible
server with --set-value inference.backend=external --set-value inference.base_url=...) is asked
for each question's search queries as the core asks it (bot.rewrite). Its replies are saved in
bench/results/rewrites-<set>[-<label>].json, and the set is searched, retrieval only, three ways
in the same run: the question alone, with the written model_rewrite, and with this model's
replies. Results: bench/results/eval-<set>-<label>-{alone,written,model}.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from bench.common import bench_settings, save
from bench.eval import SETS, add_set_arguments, nested, set_corpus
from bot.core import search_text
from bot.evaluation.questions import EvalItem, load_question_set
from bot.evaluation.report import EvalReport, render
from bot.evaluation.runner import run_retrieval
from bot.rewrite import rewrite_messages
from bot.runtime import knowledge_runtime, open_runtime
from config.settings import Settings
from inference.client import ChatClient


async def model_replies(settings: Settings, items: list[EvalItem]) -> tuple[dict[str, str], str, float]:
    """Each item's reply from the configured model to the request for search queries; the model's description; seconds per reply."""
    replies: dict[str, str] = {}
    async with open_runtime(settings, with_llm=True, progress=lambda m: print(m, file=sys.stderr)) as runtime:
        assert runtime.server is not None and runtime.endpoint is not None
        inference = settings.inference
        client = ChatClient(runtime.endpoint, timeout_s=inference.request_timeout_s, max_retries=0, temperature=inference.temperature,
                            max_tokens=inference.max_tokens)  # fmt: skip
        started = time.perf_counter()
        try:
            for k, item in enumerate(items, start=1):
                parts = [delta async for delta in client.stream_chat(rewrite_messages(search_text(item.question, item.history)[0]))]
                replies[item.id] = "".join(parts).strip()
                print(f"{k}/{len(items)} {item.id}: {replies[item.id][:100]!r}", file=sys.stderr)
        finally:
            await client.aclose()
        return replies, runtime.server.description, (time.perf_counter() - started) / max(len(items), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_arguments(parser)
    parser.add_argument("--label", default="", help="a name for this run's result files")
    parser.add_argument("--set-value", action="append", default=[], help="a setting for this run, e.g. inference.base_url=...")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()

    question_set = load_question_set(SETS[args.set])
    items = question_set.items[: args.limit]
    name = f"{args.set}" + (f"-{args.label}" if args.label else "")
    with tempfile.TemporaryDirectory(prefix="teambot-rewrites-") as tmp:
        work = args.data_dir or Path(tmp)
        knowledge = set_corpus(args.set, args.corpus, work)
        settings = bench_settings(work, knowledge, **nested(["bot.rewrite_question=true", *args.set_value]))
        with knowledge_runtime(settings) as runtime:
            runtime.indexer.run()
        replies, model, seconds = asyncio.run(model_replies(settings, items))
        save(f"rewrites-{name}", {"set": args.set, "model": model, "seconds_per_reply": round(seconds, 2), "replies": replies})
        readings = {
            "alone": [dataclasses.replace(item, model_rewrite="") for item in items],
            "written": items,
            "model": [dataclasses.replace(item, model_rewrite=replies.get(item.id, "")) for item in items],
        }
        with knowledge_runtime(settings) as runtime:
            runtime.retriever.warm_up([])
            for reading, searched in readings.items():
                results = run_retrieval(runtime.retriever, searched, rewrite=True)
                report = EvalReport(question_set.name, f"retrieval only, search queries: {reading}", results, settings.rag.top_k, question_set.skipped)
                print(render(report))
                data = report.to_json()
                data["rewrites_by"] = model if reading == "model" else reading
                print(f"saved {save(f'eval-{name}-{reading}', data)}", file=sys.stderr)


if __name__ == "__main__":
    main()
