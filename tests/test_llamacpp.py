"""The embedded llama.cpp server manager, with the real server and the shipped SmolLM2 model."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from pathlib import Path

import pytest

from config.errors import ConfigError, TeambotError
from config.settings import InferenceSettings
from inference.client import Endpoint
from inference.llamacpp import SHIPPED_MODEL_NOTICE, LlamaCppServer, server_command, shipped_model_path
from inference.server import make_server
from tests.conftest import client_for, make_settings

# SmolLM2-135M's attention shape (from its GGUF metadata): 30 layers, 3 KV heads of 64 dims.
SMOLLM2_LAYERS, SMOLLM2_KV_HEADS, SMOLLM2_HEAD_DIM = 30, 3, 64
# ggml's q8_0 stores blocks of 32 int8 values with one fp16 scale: 34 bytes per 32 values.
Q8_0_BYTES_PER_VALUE = 34 / 32


def test_command_asks_for_an_int8_kv_cache_on_loopback() -> None:
    command = server_command(InferenceSettings(threads=3, context_size=2048), Path("/m/model.gguf"), 5555)
    args = dict(zip(command[4::2], command[5::2]))
    assert command[1:4] == ["-P", "-m", "llama_cpp.server"]
    assert args["--host"] == "127.0.0.1" and args["--port"] == "5555"
    assert args["--type_k"] == args["--type_v"] == "8"  # GGML_TYPE_Q8_0
    assert args["--flash_attn"] == "true"
    assert args["--n_threads"] == "3" and args["--n_ctx"] == "2048"
    f16 = dict(zip(*[iter(server_command(InferenceSettings(kv_cache_type="f16"), Path("/m.gguf"), 1)[4:])] * 2))
    assert f16["--type_k"] == "1"


def test_only_the_shipped_model_comes_with_the_notice_that_answers_will_be_quotes(tmp_path: Path) -> None:
    shipped = LlamaCppServer(InferenceSettings(), log_dir=tmp_path)
    assert shipped.model_notice == SHIPPED_MODEL_NOTICE and "teambot models pull internlm2_5-1_8b-chat-q4_k_m" in SHIPPED_MODEL_NOTICE
    assert LlamaCppServer(InferenceSettings(model_path=tmp_path / "m.gguf"), log_dir=tmp_path).model_notice is None
    # As `teambot serve` builds it: model_path names resolved to the file first (nothing set, or the shipped model's name).
    for model_path in ({}, {"model_path": "smollm2-135m"}, {"model_path": str(tmp_path / "m.gguf")}):
        settings = make_settings(tmp_path / "data", tmp_path, inference={"backend": "llamacpp", **model_path})
        served = make_server(settings)
        assert isinstance(served, LlamaCppServer)
        assert (served.model_notice == SHIPPED_MODEL_NOTICE) == (model_path.get("model_path") != str(tmp_path / "m.gguf")), model_path


def test_shipped_model_is_a_4bit_gguf() -> None:
    path = shipped_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes()[:4] == b"GGUF"


async def test_the_running_server_holds_its_kv_cache_in_int8(llamacpp_server) -> None:  # type: ignore[no-untyped-def]
    server, endpoint = llamacpp_server
    log = server.log_path.read_text()
    kv_mib = float(re.search(r"KV buffer size =\s+([\d.]+) MiB", log).group(1))
    values = 4096 * SMOLLM2_LAYERS * SMOLLM2_KV_HEADS * SMOLLM2_HEAD_DIM * 2  # K and V, default context
    assert kv_mib == pytest.approx(values * Q8_0_BYTES_PER_VALUE / 2**20, rel=0.01)
    client = client_for(endpoint, max_tokens=8)
    assert "".join([t async for t in client.stream_chat([_user("Say hi")])]).strip()
    await client.aclose()


async def test_a_configured_gguf_replaces_the_default_and_stop_frees_the_port(tmp_path: Path) -> None:
    custom = tmp_path / "team-model.gguf"
    custom.symlink_to(shipped_model_path())
    server = LlamaCppServer(InferenceSettings(context_size=512, model_path=custom), log_dir=tmp_path)
    messages: list[str] = []
    endpoint = await server.start(messages.append)
    assert any("team-model.gguf" in m and "ready in" in m for m in messages)
    assert endpoint.model == "team-model"
    assert f"--model {custom}" in server.log_path.read_text()
    pid = server.process.pid
    await server.stop()
    assert pid is not None and not _alive(pid)
    with pytest.raises(OSError):
        socket.create_connection(_host_port(endpoint), timeout=1).close()


async def test_missing_or_wrong_model_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        await LlamaCppServer(InferenceSettings(model_path=tmp_path / "none.gguf"), log_dir=tmp_path).start()
    not_gguf = tmp_path / "model.bin"
    not_gguf.write_bytes(b"PK\x03\x04 something else")
    with pytest.raises(ConfigError, match="is not a GGUF file"):
        await LlamaCppServer(InferenceSettings(model_path=not_gguf), log_dir=tmp_path).start()


async def test_a_server_that_dies_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(TeambotError) as caught:
        await LlamaCppServer(InferenceSettings(model_path=broken), log_dir=tmp_path).start()
    assert "stopped while starting" in str(caught.value) and "llama-server.log" in str(caught.value)


def _user(text: str):  # type: ignore[no-untyped-def]
    from inference.client import ChatMessage

    return ChatMessage("user", text)


def _host_port(endpoint: Endpoint) -> tuple[str, int]:
    host, port = endpoint.base_url.split("//")[1].split("/")[0].split(":")
    return host, int(port)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_the_server_does_not_import_modules_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `python -m llama_cpp.server` put serve's working directory first on the import path: a
    # llama_cpp package there ran in place of the library (as the parser worker's pypdf.py did).
    planted = tmp_path / "cwd" / "llama_cpp"
    planted.mkdir(parents=True)
    marker = tmp_path / "planted-code-ran"
    (planted / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (planted / "server.py").write_text("raise SystemExit('the planted llama_cpp.server ran')\n")
    monkeypatch.chdir(planted.parent)
    server = LlamaCppServer(InferenceSettings(context_size=512), log_dir=tmp_path)
    try:
        await server.start(lambda _: None)
        assert not marker.exists()
    finally:
        await server.stop()


async def test_a_second_request_does_not_cut_a_streaming_answer_short(llamacpp_server) -> None:  # type: ignore[no-untyped-def]
    # llama-cpp-python's server ends a streaming answer with [DONE] (no finish_reason) as soon as
    # another request waits (interrupt_requests, on by default): with bot.max_concurrent questions at
    # once, users read answers cut in the middle as if they were whole.
    import json

    import httpx

    _, endpoint = llamacpp_server
    long_answer = {"model": endpoint.model, "stream": True, "max_tokens": 200, "temperature": 0,
                   "messages": [{"role": "user", "content": "Count from 1 to 100, one number per line."}]}  # fmt: skip
    other = {"model": endpoint.model, "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi"}]}
    async with httpx.AsyncClient(base_url=endpoint.base_url, timeout=600) as http:
        async with http.stream("POST", "/chat/completions", json=long_answer) as stream:
            finish_reasons, second = [], None
            async for line in stream.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                finish_reasons += [c["finish_reason"] for c in chunk["choices"] if c.get("finish_reason")]
                if second is None:  # the first chunk is out: a second question arrives while it streams
                    second = asyncio.create_task(http.post("/chat/completions", json=other))
        assert finish_reasons in (["length"], ["stop"]), f"the answer ended without a finish_reason: {finish_reasons}"
        assert second is not None and (await second).status_code == 200
