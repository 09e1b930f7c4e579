"""Idle connections against `teambot serve` under systemd's default open-file limit (1,024): its
descriptors, memory, log and `/healthz` while 1,100 connections each send a request line and one
header and then nothing, for this tree and another (e.g. a checkout of main before the limits).

    .venv/bin/python -m bench.idle_connections [--before /path/to/other/checkout]

Each tree gets a fresh `teambot serve` (against the fake LLM of tests/), its RLIMIT_NOFILE set to
1,024 once it is up (as `LimitNOFILE=1024` would). Then the idle connections are opened, and for
HOLD_S seconds `/healthz` is asked every PROBE_EVERY_S seconds (each probe may take PROBE_TIMEOUT_S);
serve's open descriptors (/proc/<pid>/fd) and resident memory are read as it goes. Last, the idle
connections are closed and `/healthz` asked once more. Writes bench/results/idle-connections.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.common import save, serve_tree
from tests.fake_llm import FakeLLM
from tests.raw_http import proc_status_kb

THIS_TREE = Path(__file__).resolve().parent.parent
IDLE_CONNECTIONS = 1100
OPEN_FILES = 1024
HOLD_S = 45.0
PROBE_EVERY_S = 3.0
PROBE_TIMEOUT_S = 10.0


Idle = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def idle_connection(host: str, port: int) -> Idle | None:
    """A connection that sends a request line and one header, and then nothing; None if it could not be opened."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (OSError, TimeoutError):
        return None
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: teambot\r\n")
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server has closed this connection (what it sent is read up to the end)."""
    try:
        await asyncio.wait_for(reader.read(), 2)
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


async def probe(client: httpx.AsyncClient) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        answer = await client.get("/healthz", timeout=PROBE_TIMEOUT_S)
        return {"status": answer.status_code, "ms": round((time.perf_counter() - started) * 1000, 1)}
    except httpx.HTTPError as exc:
        return {"status": type(exc).__name__, "ms": round((time.perf_counter() - started) * 1000, 1)}


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def log_facts(work: Path) -> dict[str, Any]:
    logs = sorted((work / "data" / "logs").glob("teambot.log*"))
    text = "".join(path.read_text(errors="replace") for path in logs)
    return {
        "log_files": len(logs),
        "log_bytes": sum(path.stat().st_size for path in logs),
        "too_many_open_files_lines": text.count("Too many open files"),
        "tracebacks": text.count("Traceback"),
    }


async def measure(tree: Path, work: Path, fake_llm: FakeLLM) -> dict[str, Any]:
    process, url = await serve_tree(
        tree, work, TEAMBOT_INFERENCE__BACKEND="external", TEAMBOT_INFERENCE__BASE_URL=fake_llm.base_url, TEAMBOT_ADMIN_TOKEN="bench-idle-admin-token-5d1c"
    )
    parts = urlsplit(url)
    idle: list[Idle] = []
    try:
        resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))
        before = {"descriptors": descriptors(process.pid), "rss_mb": round(proc_status_kb(process.pid, "VmRSS") / 1024, 1)}
        opened = await asyncio.gather(*(idle_connection(parts.hostname or "127.0.0.1", parts.port or 80) for _ in range(IDLE_CONNECTIONS)))
        idle = [c for c in opened if c is not None]
        probes, peak_fds, peak_rss = [], 0, 0
        async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            started = time.monotonic()
            while time.monotonic() - started < HOLD_S:
                answer = await probe(client)
                answer["at_s"] = round(time.monotonic() - started, 1)
                probes.append(answer)
                peak_fds = max(peak_fds, descriptors(process.pid))
                peak_rss = max(peak_rss, proc_status_kb(process.pid, "VmRSS"))
                await asyncio.sleep(PROBE_EVERY_S)
            closed = await asyncio.gather(*(closed_by_server(reader) for reader, _ in idle))
            for _, writer in idle:
                writer.close()
            deadline = time.monotonic() + 60
            after = await probe(client)
            while after["status"] != 200 and time.monotonic() < deadline:
                await asyncio.sleep(1)
                after = await probe(client)
        answered = [p for p in probes if p["status"] == 200]
        return {
            "tree": str(tree),
            "idle_connections_opened": len(idle),
            "idle_connections_closed_by_serve": sum(closed),
            "before": before,
            "peak_descriptors": peak_fds,
            "peak_rss_mb": round(peak_rss / 1024, 1),
            "probes": probes,
            "probes_answered_200": f"{len(answered)} of {len(probes)}",
            "probe_ms_max_answered": max((p["ms"] for p in answered), default=None),
            "healthz_after_closing": after,
            "still_running": process.returncode is None,
            **log_facts(work),
        }
    finally:
        for _, writer in idle:
            writer.close()
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 120)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="another checkout to measure beside this one (e.g. main before the limits)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * IDLE_CONNECTIONS)), hard))  # this process holds the idle ones
    fake_llm = FakeLLM().start()
    results: dict[str, Any] = {"idle_connections": IDLE_CONNECTIONS, "serve_open_files_limit": OPEN_FILES, "hold_s": HOLD_S}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
            os.chdir(tmp)
            if args.before:
                results["before"] = await measure(args.before.resolve(), Path(tmp) / "before", fake_llm)
                print(f"before: {results['before']}", flush=True)
            results["after"] = await measure(THIS_TREE, Path(tmp) / "after", fake_llm)
            print(f"after: {results['after']}", flush=True)
    finally:
        fake_llm.stop()
    print(save("idle-connections", results))


if __name__ == "__main__":
    asyncio.run(main())
