"""The LLM server teambot starts, watched: a real `teambot serve` with the real llama.cpp server
and the shipped SmolLM2 model. Killed, the server is reaped, logged and restarted, questions
asked meanwhile hear that it is restarting, and the next one is answered; when restarts keep
failing, serve exits non-zero. The child sees none of teambot's secrets, and its log is rotated."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import inference.supervisor
from config.errors import TeambotError
from config.settings import InferenceSettings, Settings
from inference.client import ChatMessage, Endpoint
from inference.llamacpp import LlamaCppServer, shipped_model_path
from inference.process import ServerProcess, child_env
from inference.supervisor import LLMGaveUp, LLMRestarting, ServerSupervisor
from tests.conftest import client_for, indexed_copy, make_settings
from tests.proc import async_wait_for, llm_child, process_env, start_serve

ADMIN_TOKEN = "supervision-test-token-5d0e"
ON_CALL_QUESTION = "Who gets paged if the primary on-call does not acknowledge a page?"
RESTARTING = "the language model is restarting"
SECRETS = {
    "TEAMBOT_ADMIN_TOKEN": ADMIN_TOKEN,
    "SLACK_SIGNING_SECRET": "signing-secret-a41c",
    "SLACK_APP_TOKEN": "xapp-1-b7e2",
    "TEAMBOT_LLM_API_KEY": "llm-key-0f3d",
    "HF_TOKEN": "hf_c2d9",
}


def test_children_get_an_allow_listed_environment_without_secrets() -> None:
    environ = {
        "PATH": "/usr/bin", "HOME": "/home/t", "LANG": "C.UTF-8", "LC_ALL": "C", "TMPDIR": "/tmp", "PYTHONPATH": "/src",
        "LD_LIBRARY_PATH": "/opt/lib", "CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "4", "HF_HUB_OFFLINE": "1",
        "TEAMBOT_ADMIN_TOKEN": "a", "TEAMBOT_DATA_DIR": "/d", "SLACK_BOT_TOKEN": "b", "SLACK_SIGNING_SECRET": "c", "DISCORD_BOT_TOKEN": "d",
        "HF_TOKEN": "e", "NVIDIA_API_KEY": "f", "OMP_PASSWORD": "g", "AWS_SECRET_ACCESS_KEY": "h", "DATABASE_URL": "i", "LD_PRELOAD": "j",
    }  # fmt: skip
    env = child_env(environ, {"EXTRA": "1"})
    assert env == {
        "PATH": "/usr/bin", "HOME": "/home/t", "LANG": "C.UTF-8", "LC_ALL": "C", "TMPDIR": "/tmp", "PYTHONPATH": "/src",
        "LD_LIBRARY_PATH": "/opt/lib", "CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "4", "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1", "EXTRA": "1",
    }  # fmt: skip


def test_a_server_log_is_rotated_while_the_child_writes(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "child.log"
    limit = 16 * 1024
    writer = "import sys\nfor n in range(20000):\n    print(f'line {n:05d} ' + 'x' * 40)\nprint('last line', flush=True)\n"
    process = ServerProcess("writer", log, log_max_bytes=limit, log_backups=2)
    process.start([sys.executable, "-c", writer], shown="writer")
    deadline = time.monotonic() + 120
    while process.exit_reason() is None:
        assert time.monotonic() < deadline, "the writer did not finish"
        time.sleep(0.05)
    asyncio.run(process.stop())
    files = sorted(log.parent.iterdir())
    assert [f.name for f in files] == ["child.log", "child.log.1", "child.log.2"]  # ~1 MB written, 2 old files kept
    assert all(f.stat().st_size <= limit for f in files), [(f.name, f.stat().st_size) for f in files]
    assert log.read_text().rstrip().endswith("last line")


async def test_the_real_llamacpp_server_sees_no_secrets_and_its_log_stays_under_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {**SECRETS, "SLACK_BOT_TOKEN": "xoxb-9a7c", "DISCORD_BOT_TOKEN": "discord-33f0"}.items():
        monkeypatch.setenv(name, value)
    limit = 16 * 1024
    settings = make_settings(
        tmp_path / "data", tmp_path / "knowledge", inference={"context_size": 512, "server_log_max_bytes": limit, "server_log_backups": 2}
    )
    server = LlamaCppServer(settings.inference, log_dir=settings.logs_dir)
    endpoint = await server.start()
    try:
        environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
        names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
        assert "PATH" in names and not names & {*SECRETS, "SLACK_BOT_TOKEN", "DISCORD_BOT_TOKEN"}, names
        async with httpx.AsyncClient(base_url=endpoint.base_url, timeout=60) as http:
            for _ in range(300):  # each request adds a line to the server's log
                assert (await http.get("/models")).status_code == 200
        client = client_for(endpoint, max_tokens=8)
        assert "".join([t async for t in client.stream_chat([ChatMessage("user", "Say hi")])]).strip()
        await client.aclose()
    finally:
        await server.stop()
    logs = sorted(settings.logs_dir.glob("llama-server.log*"))
    assert len(logs) == 3 and all(f.stat().st_size <= limit for f in logs), [(f.name, f.stat().st_size) for f in logs]


# --- the supervisor, with real processes standing in for the server ------------------------


class SleeperServer:
    """A server manager whose server is a real process that only sleeps; its first ``failing_starts`` restarts fail."""

    description = "sleeper"

    def __init__(self, log_dir: Path, failing_starts: int = 0, work: str = "import time; time.sleep(600)") -> None:
        self.process = ServerProcess("sleeper", log_dir / "sleeper.log")
        self.failing_starts = failing_starts
        self.starts = 0
        self.work = work  # the process's code: sleeping by default

    async def start(self, progress: Any = None) -> Endpoint:
        self.starts += 1
        if self.starts > 1 and self.failing_starts:
            self.failing_starts -= 1
            raise TeambotError("the sleeper cannot start")
        self.process.start([sys.executable, "-c", self.work], shown="sleeper")
        return Endpoint("http://127.0.0.1:9/v1")

    async def stop(self) -> None:
        await self.process.stop()


async def killed(server: SleeperServer) -> None:
    pid = server.process.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await async_wait_for(lambda: not server.process.running, "the sleeper to die")


async def test_the_supervisor_restarts_with_backoff_and_gives_up_after_max_restarts_failures(tmp_path: Path) -> None:
    server = SleeperServer(tmp_path, failing_starts=10)
    await server.start()
    supervisor = ServerSupervisor(server, InferenceSettings(max_restarts=3, restart_backoff_s=0.05))
    supervisor.start()
    try:
        assert supervisor.unavailable() is None and supervisor.status() is None
        await killed(server)
        assert isinstance(supervisor.unavailable(), LLMRestarting)  # at once, before the supervisor looks
        with pytest.raises(LLMGaveUp, match=r"killed by SIGKILL\) and 3 restarts in a row failed \(inference.max_restarts = 3\)"):
            await asyncio.wait_for(supervisor.wait(), 60)
        assert server.starts == 1 + 3 and supervisor.state == "failed"
    finally:
        await supervisor.stop()
        await server.stop()


async def test_a_restart_that_dies_soon_counts_as_failed_and_one_that_lasts_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = SleeperServer(tmp_path)
    await server.start()
    supervisor = ServerSupervisor(server, InferenceSettings(max_restarts=1, restart_backoff_s=0.05))
    supervisor.start()
    try:
        for n in (1, 2):  # restarts that last (STABLE_AFTER_S = 0): every death starts a new streak
            monkeypatch.setattr(inference.supervisor, "STABLE_AFTER_S", 0.0)
            await killed(server)
            await async_wait_for(lambda n=n: supervisor.restarts == n and supervisor.unavailable() is None, f"restart {n}")
            assert supervisor.status() is None and supervisor.failures == 0
        monkeypatch.setattr(inference.supervisor, "STABLE_AFTER_S", 600.0)
        await killed(server)  # dies right after its restart: the restart failed, and max_restarts = 1 is spent
        with pytest.raises(LLMGaveUp, match="1 restarts in a row failed"):
            await asyncio.wait_for(supervisor.wait(), 60)
        assert server.starts == 3
    finally:
        await supervisor.stop()
        await server.stop()


@pytest.mark.parametrize("computing", [False, True])
async def test_a_server_that_computes_without_answering_is_busy_one_that_uses_no_cpu_is_hung(tmp_path: Path, computing: bool) -> None:
    # llama.cpp reading a long prompt on a CPU sends nothing until its first token: that is not a hang.
    # Its threads (here a child of the server, as lmdeploy's engine workers are) use CPU; a hung server uses none.
    work = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'while True: pass']); time.sleep(600)"
    server = SleeperServer(tmp_path, work=work if computing else "import time; time.sleep(600)")
    await server.start()
    supervisor = ServerSupervisor(server, InferenceSettings(hang_timeout_s=2, restart_backoff_s=0.05))
    supervisor.start()
    try:
        with supervisor.activity.track():  # a request waits, and nothing comes back
            if computing:
                waited = time.monotonic()
                while time.monotonic() - waited < 4 * 2:  # four hang timeouts without a sign of life on the wire
                    assert supervisor.activity.state() == "busy" and server.starts == 1, supervisor.activity.hang_detail()
                    await asyncio.sleep(0.2)
            else:
                await async_wait_for(lambda: server.starts == 2, "the hung sleeper to be restarted", timeout=60)
                assert supervisor.last_exit.startswith("made no progress for")
    finally:
        await supervisor.stop()
        await server.stop()


# --- a real `teambot serve` ------------------------------------------------------------------


def place_model(path: Path) -> Path:
    """The shipped model at ``path``, a file of its own (settings resolve symlinks): a hard link, else a copy."""
    try:
        os.link(shipped_model_path(), path)
    except OSError:
        shutil.copyfile(shipped_model_path(), path)
    return path


def serve_env(settings: Settings, model: Path, **extra: str) -> dict[str, str]:
    return process_env(
        settings, TEAMBOT_INFERENCE__BACKEND="llamacpp", TEAMBOT_INFERENCE__MODEL_PATH=str(model), TEAMBOT_INFERENCE__CONTEXT_SIZE="2048",
        **SECRETS, **extra,
    )  # fmt: skip


async def ask(client: httpx.AsyncClient, question: str = ON_CALL_QUESTION) -> dict[str, Any]:
    """The console's last event for a question: {"done": ...} or {"error": ...}."""
    response = await client.post("/admin/api/ask", json={"question": question, "collections": ["default"]})
    assert response.status_code == 200, response.text
    return json.loads(response.text.splitlines()[-1])


async def answered(client: httpx.AsyncClient) -> dict[str, Any] | None:
    """The answer, when the model was asked and answered (in auto mode a failing model gives way to quotes: not that)."""
    done = (await ask(client)).get("done")
    return done if done and "the model failed" not in done["reason"] else None


async def stop_serve(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 120)
        except TimeoutError:
            process.kill()
    return await process.wait()


async def test_serve_restarts_a_killed_llamacpp_server_and_answers_again(indexed_settings: Settings, tmp_path: Path) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    settings = make_settings(data, knowledge)
    model = place_model(tmp_path / "model.gguf")
    serve, url, stderr = await start_serve(serve_env(settings, model))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=180) as client:
            assert (await client.post("/admin/api/login", json={"password": ADMIN_TOKEN})).status_code == 200
            assert await answered(client)
            first = llm_child(serve.pid)
            assert first
            environ = Path(f"/proc/{first}/environ").read_bytes()
            assert not [name for name, value in SECRETS.items() if value.encode() in environ or name.encode() + b"=" in environ]

            model.unlink()  # restarts fail until it is back: the restarting state lasts as long as the test needs
            os.kill(first, signal.SIGKILL)
            log = settings.logs_dir / "teambot.log"
            await async_wait_for(lambda: "restart 1 of" in log.read_text(), "a failed restart in teambot.log")
            assert not Path(f"/proc/{first}").exists()  # reaped: no zombie left
            quoted = (await ask(client))["done"]  # auto: the quotes, and why
            assert quoted["mode"] == "extractive" and RESTARTING in quoted["reason"] and "secondary on-call engineer" in quoted["answer"]
            health = await client.get("/healthz")
            assert health.status_code == 503 and "restarting" in health.json()["checks"]["llm"]["detail"]

            place_model(model)
            killed = time.monotonic()
            while not (done := await answered(client)):
                assert time.monotonic() - killed < 120, "no answer within 120 s of the model's return"
                await asyncio.sleep(0.2)
            assert done["found"] and done["sources"][0]["path"] == "oncall-guide.md"
            assert (await client.get("/healthz")).status_code == 200
            assert llm_child(serve.pid) not in (0, first)
            text = log.read_text()
            assert "stopped after" in text and "killed by SIGKILL" in text and "restarted in" in text
            assert ADMIN_TOKEN not in text and SECRETS["TEAMBOT_LLM_API_KEY"] not in text
    finally:
        code = await stop_serve(serve)
    assert code == 0, "".join(stderr)


async def test_serve_restarts_a_hung_llamacpp_server_and_never_says_it_stopped(indexed_settings: Settings, tmp_path: Path) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    settings = make_settings(data, knowledge)
    model = place_model(tmp_path / "model.gguf")
    serve, url, stderr = await start_serve(serve_env(settings, model, TEAMBOT_INFERENCE__HANG_TIMEOUT_S="15"))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=180) as client:
            assert (await client.post("/admin/api/login", json={"password": ADMIN_TOKEN})).status_code == 200
            health = await client.get("/healthz")
            assert health.status_code == 200 and health.json()["checks"]["llm"]["state"] == "idle", health.text
            first = llm_child(serve.pid)
            assert first
            os.kill(first, signal.SIGSTOP)  # alive, listening, answering nothing
            question = asyncio.create_task(ask(client))  # waits on it
            log = settings.logs_dir / "teambot.log"
            await async_wait_for(lambda: "is alive but made no progress" in log.read_text(), "the hang in teambot.log", timeout=120)
            await async_wait_for(lambda: llm_child(serve.pid) not in (0, first), "a new llama.cpp server", timeout=120)
            assert not Path(f"/proc/{first}").exists()  # the stopped one was ended (SIGTERM, SIGCONT) and reaped
            assert "done" in await question  # the quotes, or the answer when the restart came in time for a retry
            deadline = time.monotonic() + 120
            while not (done := await answered(client)):
                assert time.monotonic() < deadline, "no answer within 120 s of the restart"
                await asyncio.sleep(0.2)
            assert done["found"]
            assert (await client.get("/healthz")).status_code == 200
            text = log.read_text()
            assert text.count("is alive but made no progress") == 1 and "inference.hang_timeout_s = 15" in text and "restarted in" in text
            assert "stopped after" not in text and "server stopped" not in text
    finally:
        code = await stop_serve(serve)
    assert code == 0, "".join(stderr)


async def test_serve_exits_non_zero_when_restarts_keep_failing(indexed_settings: Settings, tmp_path: Path) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    settings = make_settings(data, knowledge)
    model = place_model(tmp_path / "model.gguf")
    env = serve_env(settings, model, TEAMBOT_INFERENCE__MAX_RESTARTS="2", TEAMBOT_INFERENCE__RESTART_BACKOFF_S="0.1")
    serve, _, stderr = await start_serve(env)
    try:
        child = await async_wait_for(lambda: llm_child(serve.pid), "the llama.cpp server")
        model.unlink()
        model.write_bytes(b"GGUF" + bytes(64))  # a model llama.cpp cannot load: each restart dies at once
        os.kill(child, signal.SIGKILL)
        code = await asyncio.wait_for(serve.wait(), 180)
    finally:
        await stop_serve(serve)
    await serve._teambot_drain  # type: ignore[attr-defined]
    output = "".join(stderr)
    assert code == 1, output
    assert "2 restarts in a row failed (inference.max_restarts = 2)" in output
    assert "stopped while starting" in (settings.logs_dir / "teambot.log").read_text()
    assert not llm_child(serve.pid)
