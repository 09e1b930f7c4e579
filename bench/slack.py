"""The Slack adapter's own latency, against the local fake Slack (tests/fake_slack.py) over Socket Mode.

    .venv/bin/python -m bench.slack [--mentions 100] [--real-llm-questions 10] [--burst 50]

1. Event to placeholder: a mention's envelope leaving the fake to the placeholder's
   chat.postMessage arriving there, with a scripted instant LLM (tests/fake_llm.py).
2. Event to first answer text, beside the core's own first-token time for the same answer
   (from AnswerDone.timings_ms), with the real llama.cpp server and SmolLM2.
3. A burst of mentions sent at once: all answered, each exactly once.
Writes bench/results/slack.json.
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

from bench.common import QUESTIONS, bench_settings, save, summary_ms
from bot.core import AnswerDone, AnswerEngine
from bot.runtime import knowledge_runtime, open_runtime
from bot.service import Service
from bot.slack.render import PLACEHOLDER
from inference.llamacpp import LlamaCppServer
from tests.fake_llm import FakeLLM
from tests.fake_slack import APP_TOKEN, BOT_TOKEN, BOT_USER, FakeSlack

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "knowledge"
CHANNEL = "C0BENCH"


class TimedEngine(AnswerEngine):
    """The real engine, keeping each answer's own timings for the comparison."""

    finished: list[AnswerDone]

    async def answer(self, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        async with aclosing(super().answer(*args, **kwargs)) as events:
            async for event in events:
                if isinstance(event, AnswerDone):
                    self.finished.append(event)
                yield event


def answered(fake: FakeSlack, thread: str) -> list[dict]:
    return [m for m in fake.thread(CHANNEL, thread) if any(b.get("type") == "actions" for b in m.get("blocks") or [])]


async def until(condition, timeout_s: float = 300) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the bench waited too long")
        await asyncio.sleep(0.005)


async def mention(fake: FakeSlack, text: str) -> tuple[str, float]:
    event = fake.user_message(CHANNEL, "U1", f"<@{BOT_USER}> {text}")
    sent = time.monotonic()
    await fake.send_event({**event, "type": "app_mention"})
    return event["ts"], sent


async def run_with(settings, work):  # type: ignore[no-untyped-def]
    """Runs ``work(engine)`` beside a started teambot service whose engine keeps each answer's timings."""
    async with open_runtime(settings, with_llm=True, serving=True) as runtime:
        engine = runtime.require_engine()
        engine.__class__ = TimedEngine
        engine.finished = []
        service = Service(runtime)
        await service.start()
        try:
            return await work(engine)
        finally:
            await service.stop()


async def main_async(mentions: int, real_llm_questions: int, burst: int) -> dict:
    results: dict = {"transport": "Socket Mode, local fake Slack"}
    with tempfile.TemporaryDirectory(prefix="teambot-bench-") as tmp:
        work = Path(tmp)
        knowledge = Path(shutil.copytree(EXAMPLES, work / "knowledge"))
        fake_llm = FakeLLM().start()
        llama = LlamaCppServer(bench_settings(work, knowledge).inference, log_dir=work / "logs")
        try:
            with knowledge_runtime(bench_settings(work, knowledge)) as runtime:
                runtime.indexer.run()

            def settings_for(llm_url: str, fake: FakeSlack, **bot):  # type: ignore[no-untyped-def]
                return bench_settings(work, knowledge, inference={"backend": "external", "base_url": llm_url}, bot=bot,
                                      SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN, SLACK_API_URL=fake.api_url)  # fmt: skip

            # 1. event -> placeholder, one mention at a time
            fake = await FakeSlack().start()

            async def placeholders(engine: TimedEngine) -> dict:
                latencies = []
                for k in range(mentions):
                    before = len(fake.called("chat.postMessage"))
                    thread, sent = await mention(fake, QUESTIONS[k % len(QUESTIONS)])
                    await until(lambda: answered(fake, thread))
                    post = fake.called("chat.postMessage")[before]
                    assert post.params["text"] == PLACEHOLDER
                    latencies.append((post.at - sent) * 1000)
                return {"event_to_placeholder_ms": summary_ms(latencies[5:])}  # the first few warm up

            results.update(await run_with(settings_for(fake_llm.base_url, fake), placeholders))
            await fake.stop()

            # 2. event -> first answer text, with the real model, beside the core's own first token
            endpoint = await llama.start()
            fake = await FakeSlack().start()

            async def first_text(engine: TimedEngine) -> dict:
                slack_ms, core_ms, added = [], [], []
                for k in range(real_llm_questions + 1):
                    thread, sent = await mention(fake, QUESTIONS[k % len(QUESTIONS)])
                    await until(lambda: answered(fake, thread))
                    placeholder = fake.thread(CHANNEL, thread)[0]["ts"]
                    first = next(c for c in fake.called("chat.update") if c.params["ts"] == placeholder)
                    if k:  # the first one warms up
                        slack_ms.append((first.at - sent) * 1000)
                        core_ms.append(engine.finished[-1].timings_ms["first_token"])
                        added.append(slack_ms[-1] - core_ms[-1])
                return {"event_to_first_text_ms": summary_ms(slack_ms), "core_first_token_ms": summary_ms(core_ms), "adapter_added_ms": summary_ms(added)}

            results.update(await run_with(settings_for(endpoint.base_url, fake), first_text))
            await fake.stop()

            # 3. a burst of mentions at once: all answered, each once
            fake = await FakeSlack().start()

            async def at_once(engine: TimedEngine) -> dict:
                started = time.monotonic()
                sent = await asyncio.gather(*(mention(fake, QUESTIONS[k % len(QUESTIONS)]) for k in range(burst)))
                await until(lambda: all(answered(fake, thread) for thread, _ in sent), timeout_s=900)
                total = time.monotonic() - started
                per_thread = [len(fake.thread(CHANNEL, thread)) for thread, _ in sent]
                finals = [answered(fake, thread)[0] for thread, _ in sent]
                return {"burst": {"mentions": burst, "answered": sum(1 for f in finals if f), "messages_per_thread": sorted(set(per_thread)),
                                  "llm_requests": len(fake_llm.requests) - llm_before, "seconds_until_all_answered": round(total, 2)}}  # fmt: skip

            llm_before = len(fake_llm.requests)
            results.update(await run_with(settings_for(fake_llm.base_url, fake, max_concurrent=8), at_once))
            await fake.stop()
        finally:
            await llama.stop()
            fake_llm.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mentions", type=int, default=100)
    parser.add_argument("--real-llm-questions", type=int, default=10)
    parser.add_argument("--burst", type=int, default=50)
    args = parser.parse_args()
    results = asyncio.run(main_async(args.mentions, args.real_llm_questions, args.burst))
    print(json.dumps(results, indent=2))
    print("saved", save("slack", results))


if __name__ == "__main__":
    main()
