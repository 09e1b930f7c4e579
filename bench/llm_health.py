"""/healthz while the LLM is busy, and when it hangs: a real `teambot serve` (admin console API).

    .venv/bin/python -m bench.llm_health [--before /tmp/before] [--parallel 10] [--crowd 50]

Busy: ``--parallel`` questions at once to the real llama.cpp server with the shipped SmolLM2, then
``--crowd`` questions at once to the fake LLM (tests/fake_llm.py: one request at a time for
/models like llama.cpp's server, 40 tokens 0.05 s apart per answer; SmolLM2 on two cores would
take many minutes for 50), /healthz asked every 0.5 s until all are answered: how many probes
answered 200 and what they said.

Hung: a question is asked and its server SIGSTOPped; /healthz is asked every 0.2 s: seconds to
the first 503 (and what it said); then SIGCONT, and seconds to /healthz 200 again. Once for the
embedded llama.cpp server (teambot restarts it when it hangs), once for a llama.cpp server run
apart (inference.backend = external: reported, not restarted). inference.hang_timeout_s is
left at its default.

``--before PATH`` measures another checkout (the code before) the same way, first; without it,
the "before" of an earlier run is kept. Writes bench/results/llm-health.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import QUESTIONS, RESULTS, bench_settings, save
from config.settings import InferenceSettings
from inference.llamacpp import LlamaCppServer
from tests.fake_llm import FakeLLM, Reply
from tests.proc import llm_child, process_env, start_serve

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "knowledge"
ADMIN_TOKEN = "bench-health-token-4b9e"
PROBE_EVERY_S = 0.5
HUNG_PROBE_EVERY_S = 0.2


async def ask(client: httpx.AsyncClient, question: str) -> str:
    try:
        response = await client.post("/admin/api/ask", json={"question": question, "collections": ["default"]})
    except httpx.HTTPError as exc:
        return f"HTTP {type(exc).__name__}"
    return next(iter(json.loads(response.text.splitlines()[-1])))  # "done" or "error"


async def health(client: httpx.AsyncClient) -> tuple[int, str]:
    """The status and the LLM check's state (the before code has none: its detail, shortened)."""
    try:
        response = await client.get("/healthz", timeout=30)
    except httpx.HTTPError as exc:
        return 0, type(exc).__name__
    llm = response.json()["checks"]["llm"]
    return response.status_code, llm.get("state") or llm["detail"][:40]


async def busy(client: httpx.AsyncClient, n: int) -> dict[str, Any]:
    started = time.monotonic()
    questions = asyncio.gather(*(ask(client, QUESTIONS[k % len(QUESTIONS)]) for k in range(n)))
    probes: collections.Counter[str] = collections.Counter()
    while True:
        code, state = await health(client)
        probes[f"{code} {state}"] += 1
        if questions.done():
            break
        await asyncio.sleep(PROBE_EVERY_S)
    outcomes = collections.Counter(await questions)
    ok = sum(v for k, v in probes.items() if k.startswith("200"))
    return {"questions": n, "seconds": round(time.monotonic() - started, 1), "outcomes": dict(outcomes),
            "probes": dict(probes), "summary": f"{ok} of {sum(probes.values())} probes 200"}  # fmt: skip


async def hung(client: httpx.AsyncClient, pid: int, deadline_s: float) -> dict[str, Any]:
    question = asyncio.create_task(ask(client, QUESTIONS[0]))
    await asyncio.sleep(0.5)  # the question reaches the LLM server
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    result: dict[str, Any] = {"detected_s": None}
    try:
        while time.monotonic() - stopped < deadline_s:
            code, state = await health(client)
            if code != 200:
                result.update(detected_s=round(time.monotonic() - stopped, 1), said=f"{code} {state}")
                break
            await asyncio.sleep(HUNG_PROBE_EVERY_S)
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    result["healthy_again_s"] = None
    while time.monotonic() - resumed < deadline_s:
        if (await health(client))[0] == 200:
            result["healthy_again_s"] = round(time.monotonic() - resumed, 1)
            break
        await asyncio.sleep(HUNG_PROBE_EVERY_S)
    result["question"] = await question
    return result


async def serving(tree: Path, work: Path, **env: str) -> tuple[Any, httpx.AsyncClient]:
    knowledge = Path(shutil.copytree(EXAMPLES, work / "knowledge"))
    settings = bench_settings(work, knowledge)
    environ = process_env(settings, TEAMBOT_ADMIN_TOKEN=ADMIN_TOKEN, **env)
    environ["PYTHONPATH"] = str(tree)
    os.chdir(work)  # `python -m bot` imports from the working directory first: there is none here
    serve, url, _ = await start_serve(environ)
    client = httpx.AsyncClient(base_url=url, timeout=600)
    assert (await client.post("/admin/api/login", json={"password": ADMIN_TOKEN})).status_code == 200
    deadline = time.monotonic() + 300
    while await ask(client, QUESTIONS[0]) != "done":  # the first index run, then a first answer
        assert time.monotonic() < deadline, f"{tree}: no first answer within 300 s"
        await asyncio.sleep(0.5)
    return serve, client


async def stop(serve: Any, client: httpx.AsyncClient) -> None:
    await client.aclose()
    serve.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(serve.wait(), 120)
    except TimeoutError:
        serve.kill()


async def measure(tree: Path, work: Path, parallel: int, crowd: int, deadline_s: float) -> dict[str, Any]:
    results: dict[str, Any] = {"tree": str(tree)}
    serve, client = await serving(tree, work / "embedded", TEAMBOT_INFERENCE__BACKEND="llamacpp")
    try:
        results[f"{parallel}_parallel_llamacpp"] = await busy(client, parallel)
        results["hung_llamacpp_embedded"] = await hung(client, llm_child(serve.pid), deadline_s)
    finally:
        await stop(serve, client)
    print(results, flush=True)

    fake = FakeLLM().start()
    fake.one_at_a_time = True
    fake.script.extend(Reply(tokens=[" word"] * 40, token_delay_s=0.05) for _ in range(crowd + 5))
    serve, client = await serving(tree, work / "fake", TEAMBOT_INFERENCE__BACKEND="external", TEAMBOT_INFERENCE__BASE_URL=fake.base_url)
    try:
        results[f"{crowd}_parallel_fake"] = await busy(client, crowd)
    finally:
        await stop(serve, client)
        fake.stop()
    print(results, flush=True)

    server = LlamaCppServer(InferenceSettings(context_size=2048), work / "external-logs")
    endpoint = await server.start()
    try:
        env = {"TEAMBOT_INFERENCE__BACKEND": "external", "TEAMBOT_INFERENCE__BASE_URL": endpoint.base_url}
        serve, client = await serving(tree, work / "external", **env)
        try:
            results["hung_llamacpp_external"] = await hung(client, server.process.pid or 0, deadline_s)
        finally:
            await stop(serve, client)
    finally:
        await server.stop()
    print(results, flush=True)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parallel", type=int, default=10)
    parser.add_argument("--crowd", type=int, default=50)
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds to wait for a hang to be seen, and for health after SIGCONT")
    parser.add_argument("--before", type=Path, help="another checkout to measure first, the same way")
    args = parser.parse_args()
    kept = RESULTS / "llm-health.json"
    data: dict[str, Any] = json.loads(kept.read_text()) if kept.exists() else {}  # a "before" measured earlier stays
    data.update(server="llama.cpp (llama-cpp-python) with the shipped SmolLM2-135M Q4_1; the fake LLM for the crowd")
    trees = ([("before", args.before)] if args.before else []) + [("after", REPO)]
    for label, tree in trees:
        with tempfile.TemporaryDirectory(prefix=f"bench-llm-health-{label}-") as work:
            data[label] = await measure(tree.resolve(), Path(work), args.parallel, args.crowd, args.deadline)
    print(save("llm-health", {k: v for k, v in data.items() if k not in ("benchmark", "machine", "date")}))


if __name__ == "__main__":
    asyncio.run(main())
