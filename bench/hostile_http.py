"""Hostile HTTP requests against `teambot serve`: its peak memory under oversized bodies, and how
100 parallel wrong sign-ins from one address are answered, and what hostile knowledge files
uploaded through the console do to it, for this tree and another (today's code before the
limits, e.g. a checkout of main at /work/before).

    .venv/bin/python -m bench.hostile_http [--before /path/to/other/checkout]

Each scenario gets a fresh `teambot serve` (console and Slack's HTTP Events API, against the
fake LLM and the fake Slack of tests/), and reads its memory from /proc/<pid>/status: VmRSS
idle, VmHWM (the peak) after the request. The bodies are made lazily (tests/raw_http.py), so
this process stays small. Uploads (each file alone, after a sign-in): a 1 MB .docx referring to
a 1 GiB part, a malformed .docx, HTML nested 5,000 deep, a 100,000-page PDF, a Markdown file with
a 119-character Chinese name; the peak is `teambot serve`'s own (the after tree parses in a worker
process of its own, capped at rag.parse_memory_mb by RLIMIT_AS). Writes bench/results/hostile-http.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.common import save, serve_tree
from tests.fake_llm import FakeLLM
from tests.fake_slack import BOT_TOKEN, FakeSlack
from tests.hostile_files import LONG_CHINESE_NAME, docx_bomb, malformed_docx, many_page_pdf, nested_html
from tests.raw_http import MiB, post_lazily, proc_status_kb

THIS_TREE = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "bench-hostile-admin-token-0c4d"
SIGNING_SECRET = "bench-hostile-signing-secret"
BODIES = [  # name, path, bytes, sent with Content-Length (else chunked)
    ("login_512mb", "/admin/api/login", 512 * MiB, True),
    ("login_512mb_chunked", "/admin/api/login", 512 * MiB, False),
    ("slack_events_256mb", "/slack/events", 256 * MiB, True),
    ("slack_events_256mb_chunked", "/slack/events", 256 * MiB, False),
]
PARALLEL_SIGN_INS = 100


async def serve(tree: Path, work: Path, fake_llm: FakeLLM, fake_slack: FakeSlack) -> tuple[asyncio.subprocess.Process, str]:
    """A fresh `teambot serve` of ``tree`` with the console and Slack's HTTP Events API on."""
    return await serve_tree(
        tree, work,
        TEAMBOT_INFERENCE__BACKEND="external",
        TEAMBOT_INFERENCE__BASE_URL=fake_llm.base_url,
        TEAMBOT_ADMIN_TOKEN=ADMIN_TOKEN,
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_API_URL=fake_slack.api_url,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
    )  # fmt: skip


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        await asyncio.wait_for(process.wait(), 120)


def peak_memory(process: asyncio.subprocess.Process, peak_before_kb: int) -> dict[str, Any]:
    """The process's peak resident memory (VmHWM) before and after a request, and whether it survived."""
    peak_kb = proc_status_kb(process.pid, "VmHWM") if process.returncode is None else None
    return {
        "peak_rss_before_mb": round(peak_before_kb / 1024, 1),
        "peak_rss_after_mb": round(peak_kb / 1024, 1) if peak_kb is not None else None,
        "peak_growth_mb": round((peak_kb - peak_before_kb) / 1024, 1) if peak_kb is not None else None,
        "still_running": process.returncode is None,
    }


async def body_scenario(tree: Path, work: Path, fakes: tuple[FakeLLM, FakeSlack], path: str, size: int, declared: bool) -> dict[str, Any]:
    process, url = await serve(tree, work, *fakes)
    try:
        idle_kb = proc_status_kb(process.pid, "VmRSS")
        peak_before_kb = proc_status_kb(process.pid, "VmHWM")
        headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "v0=00"}
        started = time.perf_counter()
        answer = await asyncio.to_thread(post_lazily, url, path, size, declared=declared, headers=headers)
        seconds = time.perf_counter() - started
        return {
            "status": answer.status,
            "bytes_sent_before_the_answer": answer.sent,
            "seconds": round(seconds, 2),
            "rss_idle_mb": round(idle_kb / 1024, 1),
            **peak_memory(process, peak_before_kb),
        }
    finally:
        await stop(process)


async def sign_in_scenario(tree: Path, work: Path, fakes: tuple[FakeLLM, FakeSlack]) -> dict[str, Any]:
    process, url = await serve(tree, work, *fakes)
    try:
        limits = httpx.Limits(max_connections=PARALLEL_SIGN_INS)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
            started = time.perf_counter()
            answers = await asyncio.gather(
                *(client.post("/admin/api/login", json={"password": f"guess-{n:04d}"}) for n in range(PARALLEL_SIGN_INS))
            )
            seconds = time.perf_counter() - started
        statuses = Counter(a.status_code for a in answers)
        return {"attempts": PARALLEL_SIGN_INS, "seconds": round(seconds, 2), "statuses": {str(k): v for k, v in sorted(statuses.items())}}
    finally:
        await stop(process)


def hostile_uploads(folder: Path) -> list[tuple[str, str, bytes]]:
    """(scenario, file name, content): written once to ``folder``, sent to both trees."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        ("upload_docx_bomb_1gib", "bomb.docx", docx_bomb(folder / "bomb.docx", 1024).read_bytes()),
        ("upload_malformed_docx", "broken.docx", malformed_docx(folder / "broken.docx").read_bytes()),
        ("upload_nested_html", "deep.html", nested_html(folder / "deep.html").read_bytes()),
        ("upload_pdf_100000_pages", "manual.pdf", many_page_pdf(folder / "manual.pdf", 100_000).read_bytes()),
        ("upload_long_chinese_name", LONG_CHINESE_NAME, "# 住宿标准\n\n每晚六百元。\n".encode()),
    ]


async def upload_scenario(tree: Path, work: Path, fakes: tuple[FakeLLM, FakeSlack], name: str, data: bytes) -> dict[str, Any]:
    process, url = await serve(tree, work, *fakes)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            signed_in = await client.post("/admin/api/login", json={"password": ADMIN_TOKEN})
            assert signed_in.status_code == 200, signed_in.text
            peak_before_kb = proc_status_kb(process.pid, "VmHWM")
            started = time.perf_counter()
            answer = await client.post(
                "/admin/api/upload", data={"collection": "default"}, files=[("files", (name, data, "application/octet-stream"))]
            )
            seconds = time.perf_counter() - started
        try:
            body: Any = answer.json()
        except ValueError:
            body = answer.text[:200]
        return {
            "status": answer.status_code,
            "answer": body,
            "seconds": round(seconds, 2),
            **peak_memory(process, peak_before_kb),
        }
    finally:
        await stop(process)


async def measure(tree: Path, work: Path, fakes: tuple[FakeLLM, FakeSlack], uploads: list[tuple[str, str, bytes]]) -> dict[str, Any]:
    results: dict[str, Any] = {"tree": str(tree)}
    for name, path, size, declared in BODIES:
        results[name] = await body_scenario(tree, work, fakes, path, size, declared)
        print(f"{tree.name}: {name}: {results[name]}", flush=True)
    results["parallel_wrong_sign_ins"] = await sign_in_scenario(tree, work, fakes)
    print(f"{tree.name}: parallel_wrong_sign_ins: {results['parallel_wrong_sign_ins']}", flush=True)
    for scenario, name, data in uploads:
        results[scenario] = await upload_scenario(tree, work, fakes, name, data)
        print(f"{tree.name}: {scenario}: {results[scenario]}", flush=True)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="another checkout to measure beside this one (e.g. main before the limits)")
    args = parser.parse_args()
    fake_llm, fake_slack = FakeLLM().start(), await FakeSlack().start()
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
            os.chdir(tmp)
            uploads = hostile_uploads(Path(tmp) / "files")
            if args.before:
                results["before"] = await measure(args.before.resolve(), Path(tmp) / "before", (fake_llm, fake_slack), uploads)
            results["after"] = await measure(THIS_TREE, Path(tmp) / "after", (fake_llm, fake_slack), uploads)
    finally:
        await fake_slack.stop()
        fake_llm.stop()
    print(save("hostile-http", results))


if __name__ == "__main__":
    asyncio.run(main())
