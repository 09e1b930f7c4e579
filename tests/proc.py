"""Running this checkout's `teambot` as a real process (`python -m bot`, so the code under test is
the one in this tree even where the installed `teambot` script points elsewhere), and polling."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar
from urllib.parse import urlsplit

from config.settings import Settings
from tests.fake_llm import FakeLLM
from tests.fake_slack import BOT_TOKEN, FakeSlack
from tests.raw_http import proc_status_kb

REPO = Path(__file__).resolve().parent.parent
TEAMBOT_CMD = [sys.executable, "-m", "bot"]
T = TypeVar("T")


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEAMBOT_", "SLACK_", "DISCORD_"))}
    env.update(
        PYTHONPATH=str(REPO),
        TEAMBOT_DATA_DIR=str(settings.data_dir),
        TEAMBOT_RAG__KNOWLEDGE_DIR=str(settings.rag.knowledge_dir),
        TEAMBOT_HTTP_PORT="0",
        **extra,
    )
    return env


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 120, every: float = 0.05) -> T:
    """Polls ``check`` until it returns something truthy; fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


async def async_wait_for(check: Callable[[], T | None], what: str, timeout: float = 120, every: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)


async def start_serve(env: dict[str, str], timeout: float = 180) -> tuple[asyncio.subprocess.Process, str, list[str]]:
    """Starts `teambot serve`; returns the process, its HTTP base URL and the stderr lines read so far
    (the rest of stderr is drained in the background, so the process never blocks on it)."""
    import re

    process = await asyncio.create_subprocess_exec(
        *TEAMBOT_CMD, "serve", env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            while not (match := re.search(r"HTTP server at (http://[\d.]+:\d+)", "".join(seen))) or "Admin console" not in "".join(seen):
                line = (await process.stderr.readline()).decode()
                if not line:
                    raise AssertionError("teambot serve ended before its HTTP server was up:\n" + "".join(seen))
                seen.append(line)
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise

    async def drain() -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            seen.append(line.decode())

    process._teambot_drain = asyncio.create_task(drain())  # type: ignore[attr-defined]
    return process, match.group(1), seen


async def stop_serve(*processes: asyncio.subprocess.Process | None) -> None:
    """Stops `teambot serve` processes still running (SIGTERM; killed after 60 s)."""
    for process in processes:
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()


def start_chroma(data: Path, log: IO[str] | int = subprocess.DEVNULL) -> tuple[subprocess.Popen[bytes], str]:
    """A real Chroma server (`chroma run`, shipped with the chromadb package) on 127.0.0.1 and a free
    port, storing into ``data``; returns the process and its URL once its heartbeat answers."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    chroma = Path(sys.executable).parent / "chroma"
    process = subprocess.Popen(
        [str(chroma), "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/api/v2/heartbeat", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"`chroma run` did not start on {url} (exit code {process.poll()})")
        time.sleep(0.1)


def llm_child(serve_pid: int) -> int:
    """The pid of the llama.cpp server `teambot serve` (``serve_pid``) runs, or 0."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == serve_pid and fields[0] != "Z" and b"llama_cpp.server" in cmdline:
            return int(stat.parent.name)
    return 0


@dataclass
class Served:
    """A running `teambot serve` (console and Slack's HTTP Events API) against the fake Slack and fake LLM."""

    process: asyncio.subprocess.Process
    url: str
    stderr: list[str]
    data_dir: Path
    fake_slack: FakeSlack
    fake_llm: FakeLLM

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80

    def peak_kb(self) -> int:
        return proc_status_kb(self.process.pid, "VmHWM")

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def log(self) -> str:
        log = self.data_dir / "logs" / "teambot.log"
        return "".join(self.stderr) + (log.read_text(errors="replace") if log.exists() else "")


@asynccontextmanager
async def serve_with_fakes(settings: Settings, **env: str) -> AsyncIterator[Served]:
    """`teambot serve` on ``settings``' folders with ``env`` added, its LLM the fake LLM and its Slack the fake Slack; stopped after."""
    fake_slack = await FakeSlack().start()
    fake_llm = FakeLLM().start()
    try:
        environment = process_env(
            settings, TEAMBOT_INFERENCE__BACKEND="external", TEAMBOT_INFERENCE__BASE_URL=fake_llm.base_url,
            SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_API_URL=fake_slack.api_url, **env,
        )  # fmt: skip
        process, url, stderr = await start_serve(environment)
        try:
            yield Served(process, url, stderr, settings.data_dir, fake_slack, fake_llm)
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), 120)
    finally:
        await fake_slack.stop()
        fake_llm.stop()
