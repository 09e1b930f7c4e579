"""The Discord adapter's own latency, against the local fake Discord (tests/fake_discord.py).

    .venv/bin/python -m bench.discord [--asks 100] [--real-llm-questions 10] [--burst 50]

1. Interaction to defer: INTERACTION_CREATE leaving the fake to the deferral callback
   arriving there, with a scripted instant LLM (tests/fake_llm.py).
2. Interaction to first answer text (the first edit of the deferred response), beside the
   core's own first-token time for the same answer, with the real llama.cpp server and SmolLM2.
3. A burst of /ask sent at once: all deferred within Discord's 3 s, all answered.
Writes bench/results/discord.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

import discord.gateway
import discord.http

from bench.common import QUESTIONS, bench_settings, save, summary_ms
from bench.slack import EXAMPLES, TimedEngine, until
from bench.slack import run_with as service_run_with
from bot.runtime import knowledge_runtime
from inference.llamacpp import LlamaCppServer
from tests.fake_discord import APP_ID, BOT_TOKEN, GUILD_ID, MEMBER_PERMISSIONS, FakeDiscord
from tests.fake_llm import FakeLLM

USER = 310_000_000_000_000_001


def finished(fake: FakeDiscord, token: str) -> bool:
    record = fake.interaction(token)
    last = (record["followups"] or [record["original"]])[-1]
    return bool(last and last.get("components"))


async def ask(fake: FakeDiscord, text: str) -> tuple[str, float]:
    payload = await fake.slash_command("ask", [{"type": 3, "name": "question", "value": text}], user_id=USER, permissions=MEMBER_PERMISSIONS)
    return payload["token"], fake._interactions[payload["token"]].dispatched_at  # when INTERACTION_CREATE went out


def deferred_at(fake: FakeDiscord, token: str) -> float:
    return next(c.at for c in fake.calls if c.method == "POST" and c.path.endswith(f"/{token}/callback"))


def first_text_at(fake: FakeDiscord, token: str) -> float:
    edits = fake.called("PATCH", f"/webhooks/{APP_ID}/{token}/messages/@original")
    return next(c.at for c in edits if c.json.get("content", "").rstrip("▌").strip())


async def run_with(settings, work):  # type: ignore[no-untyped-def]
    """bench.slack's run_with, then discord.py pointed back where it was (the adapter points it at the fake)."""
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    try:
        return await service_run_with(settings, work)
    finally:
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


async def main_async(asks: int, real_llm_questions: int, burst: int) -> dict:
    results: dict = {"transport": "gateway + REST, local fake Discord"}
    with tempfile.TemporaryDirectory(prefix="teambot-bench-") as tmp:
        work = Path(tmp)
        knowledge = Path(shutil.copytree(EXAMPLES, work / "knowledge"))
        fake_llm = FakeLLM().start()
        llama = LlamaCppServer(bench_settings(work, knowledge).inference, log_dir=work / "logs")
        try:
            with knowledge_runtime(bench_settings(work, knowledge)) as runtime:
                runtime.indexer.run()

            def settings_for(llm_url: str, fake: FakeDiscord, **bot):  # type: ignore[no-untyped-def]
                return bench_settings(work, knowledge, inference={"backend": "external", "base_url": llm_url}, bot=bot,
                                      discord={"guild_ids": [GUILD_ID]}, DISCORD_BOT_TOKEN=BOT_TOKEN,
                                      DISCORD_API_URL=fake.api_base, DISCORD_GATEWAY_URL=fake.gateway_url)  # fmt: skip

            # 1. interaction -> defer, one /ask at a time
            fake = await FakeDiscord().start()

            async def defers(engine: TimedEngine) -> dict:
                latencies = []
                for k in range(asks):
                    token, sent = await ask(fake, QUESTIONS[k % len(QUESTIONS)])
                    await until(lambda: finished(fake, token))
                    latencies.append((deferred_at(fake, token) - sent) * 1000)
                return {"interaction_to_defer_ms": summary_ms(latencies[5:])}  # the first few warm up

            results.update(await run_with(settings_for(fake_llm.base_url, fake), defers))
            await fake.stop()

            # 2. interaction -> first answer text, with the real model, beside the core's own first token
            endpoint = await llama.start()
            fake = await FakeDiscord().start()

            async def first_text(engine: TimedEngine) -> dict:
                discord_ms, core_ms, added = [], [], []
                for k in range(real_llm_questions + 1):
                    token, sent = await ask(fake, QUESTIONS[k % len(QUESTIONS)])
                    await until(lambda: finished(fake, token))
                    if k:  # the first one warms up
                        discord_ms.append((first_text_at(fake, token) - sent) * 1000)
                        core_ms.append(engine.finished[-1].timings_ms["first_token"])
                        added.append(discord_ms[-1] - core_ms[-1])
                return {"interaction_to_first_text_ms": summary_ms(discord_ms), "core_first_token_ms": summary_ms(core_ms),
                        "adapter_added_ms": summary_ms(added)}  # fmt: skip

            results.update(await run_with(settings_for(endpoint.base_url, fake), first_text))
            await fake.stop()

            # 3. a burst of /ask at once: all deferred in time, all answered
            fake = await FakeDiscord().start()

            async def at_once(engine: TimedEngine) -> dict:
                started = time.monotonic()
                sent = await asyncio.gather(*(ask(fake, QUESTIONS[k % len(QUESTIONS)]) for k in range(burst)))
                await until(lambda: all(finished(fake, token) for token, _ in sent), timeout_s=900)
                total = time.monotonic() - started
                defer_ms = [(deferred_at(fake, token) - at) * 1000 for token, at in sent]
                return {"burst": {"asks": burst, "answered": sum(1 for token, _ in sent if finished(fake, token)),
                                  "deferred_within_3s": sum(1 for d in defer_ms if d < 3000), "defer_ms": summary_ms(defer_ms),
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
    parser.add_argument("--asks", type=int, default=100)
    parser.add_argument("--real-llm-questions", type=int, default=10)
    parser.add_argument("--burst", type=int, default=50)
    args = parser.parse_args()
    results = asyncio.run(main_async(args.asks, args.real_llm_questions, args.burst))
    print(json.dumps(results, indent=2))
    print("saved", save("discord", results))


if __name__ == "__main__":
    main()
