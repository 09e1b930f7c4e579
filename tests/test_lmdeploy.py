"""The lmdeploy server manager, as far as it runs without a GPU: the command it builds, the
backend choice, and the clear errors. (It runs for real on the GPU: bench/gpu/, docs/benchmarks.md.)"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from config.errors import ConfigError
from config.settings import Settings
from inference.lmdeploy import (
    LMDeployServer,
    check_model,
    engine_in_use,
    gpu_problem,
    key_pipe,
    launch_command,
    lmdeploy_installed,
    model_format,
    pick_backend,
    resolve_backend,
    server_args,
)
from inference.process import ServerProcess, group_alive
from inference.server import make_server
from tests.conftest import make_settings

KEY = "k-5f0c1d2e3a"


def awq_model(folder: Path, quantized: bool = True) -> Path:
    folder.mkdir(parents=True)
    config = {"architectures": ["InternLM2ForCausalLM"], "hidden_size": 2048}
    if quantized:
        config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def settings_with(tmp_path: Path, **lmdeploy: object) -> Settings:
    return make_settings(tmp_path / "data", tmp_path / "knowledge", inference={"backend": "lmdeploy", "lmdeploy": lmdeploy})


def args_of(command: list[str]) -> dict[str, str]:
    """--flag value pairs of a command line (flags without a value map to "")."""
    pairs: dict[str, str] = {}
    for k, arg in enumerate(command):
        if arg.startswith("--"):
            following = command[k + 1] if k + 1 < len(command) else ""
            pairs[arg] = "" if following.startswith("--") else following
    return pairs


def test_the_default_command_serves_w4a16_with_an_int8_kv_cache_on_loopback(tmp_path: Path) -> None:
    settings = settings_with(tmp_path)
    model = awq_model(settings.inference.lmdeploy.model_path)  # type: ignore[arg-type]
    command = server_args(settings.inference.lmdeploy, model, model_format(model, "auto"), 23333)
    assert command[:3] == ["serve", "api_server", str(model)]
    args = args_of(command)
    assert args["--model-format"] == "awq" and args["--quant-policy"] == "8"
    assert args["--server-name"] == "127.0.0.1" and args["--server-port"] == "23333"
    assert "--backend" not in args  # lmdeploy's default picks TurboMind where it can, else PyTorch
    assert args["--cache-max-entry-count"] == "0.8" and args["--tp"] == "1"
    assert "--api-keys" not in args  # the key comes through a pipe
    assert "--trust-remote-code" not in args  # no auto_map: nothing in the model folder is run
    assert "--session-len" not in args and "--max-batch-size" not in args  # lmdeploy's own defaults


INTERNLM2_AUTO_MAP = {"AutoConfig": "configuration_internlm2.InternLM2Config", "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"}


@pytest.mark.parametrize(
    ("config_key", "setting", "expected"),
    [
        ("config.json", None, False),  # the default: no model's code runs
        ("tokenizer_config.json", None, False),
        ("config.json", "model", True),  # the setting names this very folder
        ("config.json", "other", False),  # a setting written for another folder is not inherited
    ],
)
def test_remote_code_is_trusted_only_for_the_folder_the_setting_names(tmp_path: Path, config_key: str, setting: str | None, expected: bool) -> None:
    named = {"model": tmp_path / "data" / "models" / "internlm2_5-1_8b-chat-w4a16", "other": tmp_path / "other"}.get(setting or "")
    settings = settings_with(tmp_path, **({"trust_remote_code": str(named)} if named else {}))  # none: the default
    model = awq_model(settings.inference.lmdeploy.model_path, quantized=False)  # type: ignore[arg-type]
    path = model / config_key
    current = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**current, "auto_map": INTERNLM2_AUTO_MAP}))
    command = server_args(settings.inference.lmdeploy, model, model_format(model, "auto"), 23333)
    assert ("--trust-remote-code" in command) is expected
    from inference.lmdeploy import check_trusted

    if expected:
        check_trusted(settings.inference.lmdeploy, model)
    else:
        with pytest.raises(ConfigError, match="ships Python code of its own") as caught:
            check_trusted(settings.inference.lmdeploy, model)
        assert str(model / config_key) in caught.value.message
        assert "teambot quantize --model" in caught.value.hint  # InternLM2: the conversion needs no code


# Stands in for lmdeploy's entry point: records the arguments it was given, then ends (as lmdeploy does on a bad model).
FAKE_LMDEPLOY_EXITS = "import json, sys\n\ndef run():\n    print('argv', json.dumps(sys.argv), flush=True)\n    sys.exit(1)\n"


@pytest.mark.parametrize("setting", [None, "other", "model"])
async def test_a_model_folders_code_runs_only_when_named_and_never_in_teambots_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None
) -> None:
    """The tokenizer check loads a tokenizer that is code: by default nothing of it runs and the start is refused
    with the setting to change; named, it runs in a child that sees none of teambot's secrets."""
    import inference.lmdeploy
    from config.errors import TeambotError
    from tests.remote_code import SECRETS, leaked, read_marker, remote_code_folder

    site = tmp_path / "site"
    (site / "lmdeploy" / "cli").mkdir(parents=True)
    (site / "lmdeploy" / "__init__.py").write_text("")
    (site / "lmdeploy" / "cli" / "__init__.py").write_text(FAKE_LMDEPLOY_EXITS)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    monkeypatch.setattr(inference.lmdeploy, "gpu_problem", lambda: None)  # this machine may have no GPU; nothing here uses one
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    model, marker = tmp_path / "model", tmp_path / "ran.json"
    remote_code_folder(model, marker)
    named = {"model": model, "other": tmp_path / "other"}.get(setting or "")
    server = make_server(settings_with(tmp_path, model_path=str(model), **({"trust_remote_code": str(named)} if named else {})))
    if setting != "model":
        with pytest.raises(ConfigError) as caught:
            await server.start()
        assert not marker.exists()  # nothing of the model's code ran
        assert f"{model / 'tokenizer_config.json'} (auto_map)" in caught.value.message
        assert f'inference.lmdeploy.trust_remote_code = "{model}"' in caught.value.hint
        assert not server.log_path.exists()  # lmdeploy was not started
        return
    with pytest.raises(TeambotError):  # the stand-in lmdeploy ends at once
        await server.start()
    ran = read_marker(marker)
    assert ran["pid"] != os.getpid() and leaked(ran["environ"]) == []
    seen = json.loads(server.process.output().split("argv", 1)[1].splitlines()[0])
    assert "--trust-remote-code" in seen
@pytest.mark.parametrize(
    ("lmdeploy", "expected"),
    [
        ({"quant_policy": 4, "engine": "pytorch"}, {"--quant-policy": "4", "--backend": "pytorch"}),
        ({"quant_policy": 0, "engine": "turbomind"}, {"--quant-policy": "0", "--backend": "turbomind"}),
        ({"cache_max_entry_count": 0.5, "session_len": 8192, "max_batch_size": 64, "tp": 2},
         {"--cache-max-entry-count": "0.5", "--session-len": "8192", "--max-batch-size": "64", "--tp": "2"}),
        ({"model_format": "hf", "extra_args": ["--eager-mode", "--log-level", "INFO"]}, {"--model-format": None, "--eager-mode": "", "--log-level": "INFO"}),
    ],
)  # fmt: skip
def test_each_setting_reaches_the_command_line(tmp_path: Path, lmdeploy: dict[str, object], expected: dict[str, str]) -> None:
    settings = settings_with(tmp_path, **lmdeploy)
    model = awq_model(tmp_path / "m")
    fmt = model_format(model, settings.inference.lmdeploy.model_format)
    args = args_of(server_args(settings.inference.lmdeploy, model, fmt, 1234))
    assert {flag: args.get(flag) for flag in expected} == expected


def test_bad_settings_are_refused_with_the_key(tmp_path: Path) -> None:
    for bad in ({"quant_policy": 6}, {"engine": "vllm"}, {"cache_max_entry_count": 1.5}, {"tp": 0}):
        with pytest.raises(ConfigError, match="inference.lmdeploy"):
            settings_with(tmp_path, **bad)


def test_the_model_format_follows_the_model(tmp_path: Path) -> None:
    assert model_format(awq_model(tmp_path / "awq"), "auto") == "awq"
    assert model_format(awq_model(tmp_path / "bf16", quantized=False), "auto") == "hf"
    assert model_format(awq_model(tmp_path / "x", quantized=False), "awq") == "awq"  # an explicit setting wins


# Stands in for lmdeploy's entry point (lmdeploy needs a GPU): shows the arguments it was given, then serves on.
FAKE_LMDEPLOY_CLI = "import json, sys, time\n\ndef run():\n    print('argv', json.dumps(sys.argv), flush=True)\n    time.sleep(600)\n"


async def test_the_api_key_reaches_lmdeploy_through_a_pipe_not_the_command_line_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    (site / "lmdeploy" / "cli").mkdir(parents=True)
    (site / "lmdeploy" / "__init__.py").write_text("")
    (site / "lmdeploy" / "cli" / "__init__.py").write_text(FAKE_LMDEPLOY_CLI)
    secrets = {"TEAMBOT_ADMIN_TOKEN": "admin-6c1f9e0b7d2a", "SLACK_BOT_TOKEN": "xoxb-44e1", "TEAMBOT_LLM_API_KEY": KEY, "HF_TOKEN": "hf_91c"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    key = "-" + KEY  # a key that starts like an option still reaches lmdeploy as the key
    args = server_args(settings_with(tmp_path).inference.lmdeploy, awq_model(tmp_path / "m"), "awq", 23333)
    fd = key_pipe(key)
    process = ServerProcess("probe", tmp_path / "logs" / "probe.log")
    try:
        process.start(launch_command(args, fd), shown="lmdeploy " + " ".join(args), pass_fds=[fd], env={"PYTHONPATH": str(site)})
        os.close(fd)
        deadline = time.monotonic() + 60
        while "argv" not in process.output():
            assert process.exit_reason() is None, process.exit_reason()
            assert time.monotonic() < deadline, "the launcher did not reach lmdeploy's entry point"
            await asyncio.sleep(0.05)
        seen = json.loads(process.output().split("argv", 1)[1].splitlines()[0])
        assert seen == ["lmdeploy", *args, f"--api-keys={key}"]  # what lmdeploy's argparse reads
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{process.pid}/environ").read_bytes()
        assert b"serve\x00api_server" in cmdline
        for value in [key, *secrets.values()]:
            assert value.encode() not in cmdline and value.encode() not in environ
        started_line = next(line for line in process.log_path.read_text().splitlines() if "starting:" in line)
        assert "--server-port 23333" in started_line and key not in started_line
    finally:
        await process.stop()


def test_bad_model_paths_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as caught:
        check_model(tmp_path / "missing")
    assert "teambot quantize" in (caught.value.hint or "")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(16))
    with pytest.raises(ConfigError, match="GGUF file, which is for llama.cpp"):
        check_model(gguf)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        check_model(tmp_path / "empty")
    check_model(awq_model(tmp_path / "good"))


def test_engine_reported_from_the_log() -> None:
    fallback = "2026-11-25 10:00:01,123 - lmdeploy - WARNING - archs.py:40 - Fallback to pytorch engine because turbomind is not built.\n"
    assert engine_in_use("auto", fallback) == ("pytorch", "turbomind is not built")
    assert engine_in_use("turbomind", fallback)[0] == "pytorch"  # lmdeploy falls back even when TurboMind was asked for
    assert engine_in_use("auto", "INFO: Uvicorn running on http://127.0.0.1:23333\n") == ("turbomind", "")
    assert engine_in_use("pytorch", "") == ("pytorch", "")


def test_auto_picks_lmdeploy_only_with_lmdeploy_and_a_gpu() -> None:
    def yes() -> bool:
        return True

    def no() -> bool:
        return False

    assert pick_backend("auto", yes, lambda: None) == "lmdeploy"
    assert pick_backend("auto", yes, lambda: "no CUDA GPU") == "llamacpp"
    assert pick_backend("auto", no, lambda: None) == "llamacpp"
    assert pick_backend("llamacpp", yes, lambda: None) == "llamacpp"  # an explicit backend is kept
    assert pick_backend("external", no, lambda: "no GPU") == "external"


def test_auto_on_this_machine_is_what_it_has(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", tmp_path / "knowledge")
    expected = "lmdeploy" if lmdeploy_installed() and gpu_problem() is None else "llamacpp"
    assert resolve_backend(settings.inference) == expected
    assert type(make_server(settings)).__name__ == {"lmdeploy": "LMDeployServer", "llamacpp": "LlamaCppServer"}[expected]


def test_make_server_passes_the_api_key_and_describes_the_kv_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAMBOT_LLM_API_KEY", KEY)
    server = make_server(settings_with(tmp_path, quant_policy=4))
    assert isinstance(server, LMDeployServer)
    assert server.description == "lmdeploy with internlm2_5-1_8b-chat-w4a16 (KV cache int4)"
    assert server._api_key == KEY


@pytest.mark.skipif(lmdeploy_installed(), reason="lmdeploy is installed here")
async def test_start_without_lmdeploy_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lmdeploy is not installed") as caught:
        await make_server(settings_with(tmp_path)).start()
    assert ".[gpu]" in (caught.value.hint or "") and "llamacpp" in (caught.value.hint or "")


@pytest.mark.skipif(gpu_problem() is None, reason="this machine has a CUDA GPU")
async def test_start_without_a_gpu_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An importable lmdeploy package (nothing in it runs): the manager must still refuse on a machine without a GPU.
    package = tmp_path / "site" / "lmdeploy"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ConfigError, match="lmdeploy needs a CUDA GPU") as caught:
        await make_server(settings_with(tmp_path)).start()
    assert "llamacpp" in (caught.value.hint or "")


async def test_stop_ends_children_that_outlive_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lmdeploy's engine worker holds the GPU memory; it must not survive teambot stopping the server."""
    import inference.process

    monkeypatch.setattr(inference.process, "STOP_GRACE_S", 1.0)
    child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('child up', flush=True); time.sleep(600)"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(600)"
    process = ServerProcess("probe", tmp_path / "probe.log")
    process.start([sys.executable, "-c", parent], shown="probe")
    deadline = time.monotonic() + 30
    while "child up" not in process.output():
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.05)
    group = process.pid
    assert group is not None
    assert group_alive(group)
    await process.stop()
    assert not group_alive(group)  # nothing of the group runs on
