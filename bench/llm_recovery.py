"""Time to recover from a killed LLM server: a real `teambot serve` with the real llama.cpp server
and the shipped SmolLM2 model; the llama.cpp child is SIGKILLed and a question is asked again
and again (through the admin console's API) until one is answered.

    .venv/bin/python -m bench.llm_recovery [--kills 3] [--deadline 120] [--before /work/before]

For each kill: seconds from the SIGKILL to /healthz answering 200 again (the server is back) and
to the first answered question (the server back, plus one answer's generation, also measured
with the server up), and what the questions asked meanwhile were told. ``--before PATH``
measures another checkout (e.g. the code before the supervisor) the same way, first; without
it, the "before" of an earlier run is kept. Writes bench/results/llm-recovery.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import QUESTIONS, RESULTS, bench_settings, save
from tests.proc import llm_child, process_env, start_serve

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "knowledge"
ADMIN_TOKEN = "bench-recovery-token-7c1a"
QUESTION = QUESTIONS[0]  # the on-call guide answers it, so the model is asked


async def ask(client: httpx.AsyncClient) -> dict[str, Any]:
    """The console's last event for the question: {"done": ...} or {"error": ...}."""
    try:
        response = await client.post("/admin/api/ask", json={"question": QUESTION, "collections": ["default"]})
    except httpx.HTTPError as exc:
        return {"error": f"HTTP request failed: {type(exc).__name__}"}
    return json.loads(response.text.splitlines()[-1])


async def until_answered(client: httpx.AsyncClient, since: float, deadline_s: float) -> tuple[float | None, list[str]]:
    """Seconds from ``since`` to the first answered question (None past the deadline), and what was told meanwhile."""
    told: list[str] = []
    while time.monotonic() - since < deadline_s:
        event = await ask(client)
        if "done" in event:
            return round(time.monotonic() - since, 2), told
        if event.get("error") and event["error"] not in told:
            told.append(event["error"])
        await asyncio.sleep(0.1)
    return None, told


async def until_healthy(client: httpx.AsyncClient, since: float, deadline_s: float) -> float | None:
    while time.monotonic() - since < deadline_s:
        if (await client.get("/healthz")).status_code == 200:
            return round(time.monotonic() - since, 2)
        await asyncio.sleep(0.1)
    return None


async def measure(tree: Path, work: Path, kills: int, deadline_s: float) -> dict[str, Any]:
    knowledge = Path(shutil.copytree(EXAMPLES, work / "knowledge"))
    settings = bench_settings(work, knowledge)
    env = process_env(settings, TEAMBOT_INFERENCE__BACKEND="llamacpp", TEAMBOT_ADMIN_TOKEN=ADMIN_TOKEN)
    env["PYTHONPATH"] = str(tree)
    os.chdir(work)  # `python -m bot` imports from the working directory first: there is none here
    serve, url, _ = await start_serve(env)
    results: list[dict[str, Any]] = []
    try:
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            assert (await client.post("/admin/api/login", json={"password": ADMIN_TOKEN})).status_code == 200
            warm, told = await until_answered(client, time.monotonic(), 300)  # the first index run, then a first answer
            assert warm is not None, f"{tree}: no first answer: {told}"
            started = time.monotonic()
            assert (await until_answered(client, started, 300))[0] is not None
            answer_s = round(time.monotonic() - started, 2)  # one answer with the server up, for comparison
            for _ in range(kills):
                child = llm_child(serve.pid)
                os.kill(child, signal.SIGKILL)
                killed = time.monotonic()
                healthy = asyncio.create_task(until_healthy(client, killed, deadline_s))
                answered_s, told = await until_answered(client, killed, deadline_s)
                healthy_s = await healthy
                stat = Path(f"/proc/{child}/stat")
                zombie = stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
                results.append(
                    {"answered_s": answered_s, "healthz_ok_s": healthy_s, "told_meanwhile": told, "killed_child_left_a_zombie": zombie}
                )
                print(f"{tree}: {results[-1]}", file=sys.stderr)
                if answered_s is None:
                    break  # it does not come back: the next kill has nothing to kill
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(serve.wait(), 120)
        except TimeoutError:
            serve.kill()
    answered = [r["answered_s"] for r in results if r["answered_s"] is not None]
    healthy = [r["healthz_ok_s"] for r in results if r["healthz_ok_s"] is not None]
    return {
        "tree": str(tree),
        "deadline_s": deadline_s,
        "answer_s_with_the_server_up": answer_s,
        "kills": results,
        "recovered": f"{len(answered)} of {len(results)} kills",
        "answered_s_max": max(answered) if answered else None,
        "summary": (
            f"/healthz 200 again {min(healthy):.1f}-{max(healthy):.1f} s and a question answered {min(answered):.1f}-{max(answered):.1f} s "
            f"after the SIGKILL (one answer takes {answer_s:.1f} s with the server up)"
            if len(answered) == len(results) and len(healthy) == len(results) else f"not answered within {deadline_s:g} s of the SIGKILL"
        ),
    }  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds to wait for an answer after a kill")
    parser.add_argument("--before", type=Path, help="another checkout to measure first, the same way")
    args = parser.parse_args()
    kept = RESULTS / "llm-recovery.json"
    data: dict[str, Any] = json.loads(kept.read_text()) if kept.exists() else {}  # a "before" measured earlier stays
    data.update(question=QUESTION, server="llama.cpp (llama-cpp-python) with the shipped SmolLM2-135M Q4_1")
    trees = ([("before", args.before)] if args.before else []) + [("after", REPO)]
    for label, tree in trees:
        with tempfile.TemporaryDirectory(prefix=f"bench-llm-recovery-{label}-") as work:
            data[label] = await measure(tree.resolve(), Path(work), args.kills, args.deadline)
    print(json.dumps({k: data[k]["summary"] for k in ("before", "after") if k in data}, indent=2))
    print(save("llm-recovery", {k: v for k, v in data.items() if k not in ("benchmark", "machine", "date")}))


if __name__ == "__main__":
    asyncio.run(main())
