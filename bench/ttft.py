"""The core's overhead on time-to-first-token, beside calling the LLM server directly with the same prompt.

    .venv/bin/python -m bench.ttft [--rounds 5]

Both ask the same llama.cpp server (SmolLM2-135M Q4_1, KV cache q8_0), started by teambot's
manager. "direct" sends the exact messages the core builds, through the same client; "core"
is ``AnswerEngine.answer`` (retrieval, prompt, stream). llama.cpp reuses the KV cache of a
prompt prefix it has just seen, so before every measured request a short unrelated request
clears that advantage, and the order of the two alternates.

On two shared cores the server's own first-token time varies by hundreds of milliseconds from
one request to the next, far more than the overhead in question, so the core's overhead is
also measured exactly, inside the same core runs: the time from ``answer()`` to the request
leaving the client, plus the time from the client receiving the first token to ``answer()``
yielding it. Writes bench/results/ttft.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from contextlib import aclosing
from pathlib import Path

from bench.common import bench_settings, save, summary_ms
from bot.core import AnswerDelta, AnswerEngine
from bot.prompt import build_messages
from bot.runtime import open_runtime
from inference.client import ChatClient, ChatMessage

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "knowledge"
QUESTIONS = [
    "Who gets paged if the primary on-call does not acknowledge a page?",
    "出差住宿每晚可以报销多少钱？",
    "How many approvals does a pull request need?",
    "When does the release train leave?",
    "What do I do if my laptop is stolen?",
    "Who is my onboarding buddy?",
    "报销需要在多少天内提交？",
    "When is the team standup?",
]
FLUSH = [ChatMessage("user", "Count from one to three.")]


class TimedClient(ChatClient):
    """The real client, noting when a request leaves and when its first token arrives."""

    sent = received = 0.0

    async def stream_chat(self, messages):  # type: ignore[no-untyped-def,override]
        self.sent, self.received = time.perf_counter(), 0.0
        async for token in super().stream_chat(messages):
            if not self.received:
                self.received = time.perf_counter()
            yield token


async def first_token_direct(client: ChatClient, messages: list[ChatMessage]) -> float:
    started = time.perf_counter()
    async with aclosing(client.stream_chat(messages)) as stream:
        async for _ in stream:
            return (time.perf_counter() - started) * 1000
    raise AssertionError("no token")


async def first_token_core(engine, client: TimedClient, question: str) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """The core's first-token time, and the part of it spent outside the client's request."""
    started = time.perf_counter()
    async with aclosing(engine.answer(question)) as events:
        async for event in events:
            if isinstance(event, AnswerDelta):
                yielded = time.perf_counter()
                return (yielded - started) * 1000, ((client.sent - started) + (yielded - client.received)) * 1000
    raise AssertionError("no token")


async def flush(client: ChatClient) -> None:
    """A one-token request: replaces the prompt llama.cpp keeps cached, and stops the generation
    that a closed measurement stream may have left running, so the next measurement starts on an idle server."""
    async with aclosing(client.stream_chat(FLUSH)) as stream:
        async for _ in stream:
            pass


async def run(rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="teambot-bench-") as tmp:
        knowledge = Path(shutil.copytree(EXAMPLES, Path(tmp) / "knowledge"))
        settings = bench_settings(Path(tmp), knowledge)
        async with open_runtime(settings, with_llm=True) as runtime:
            runtime.indexer.run()
            inference = settings.inference
            client = TimedClient(runtime.endpoint, timeout_s=inference.request_timeout_s, max_retries=inference.max_retries,
                                 temperature=inference.temperature, max_tokens=inference.max_tokens)
            engine = AnswerEngine(runtime.retriever, client, settings.bot)
            flusher = ChatClient(runtime.endpoint, timeout_s=60, max_retries=0, temperature=0.0, max_tokens=1)
            core, direct, paired, inside, retrieve = [], [], [], [], []
            for round_ in range(rounds + 1):  # round 0 warms up
                for k, question in enumerate(QUESTIONS):
                    retrieval = runtime.retriever.search(question, ["default"])
                    assert retrieval.passages, f"nothing relevant for {question!r}: the LLM would not be asked"
                    messages = build_messages(question, retrieval.passages, [])
                    await flush(flusher)
                    if (round_ + k) % 2:
                        c, o = await first_token_core(engine, client, question)
                        await flush(flusher)
                        d = await first_token_direct(client, messages)
                    else:
                        d = await first_token_direct(client, messages)
                        await flush(flusher)
                        c, o = await first_token_core(engine, client, question)
                    if round_:
                        core.append(c)
                        direct.append(d)
                        paired.append(c - d)
                        inside.append(o)
                        retrieve.append(retrieval.timings_ms["total"])
    return {
        "server": "llama.cpp, SmolLM2-135M-Instruct Q4_1, KV cache q8_0",
        "questions": len(QUESTIONS),
        "rounds": rounds,
        "core_first_token_ms": summary_ms(core),
        "direct_first_token_ms": summary_ms(direct),
        "core_minus_direct_ms": summary_ms(paired),
        "core_overhead_ms": summary_ms(inside),
        "retrieval_ms": summary_ms(retrieve),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    results = asyncio.run(run(parser.parse_args().rounds))
    print(json.dumps(results, indent=2))
    print("saved", save("ttft", results))


if __name__ == "__main__":
    main()
