"""The GPU LLM server: an lmdeploy api_server with W4A16 (AWQ) weights and an int8 KV cache.

teambot starts ``python -m lmdeploy serve api_server`` as a child process on 127.0.0.1 and a
free port, with an API key of its own (``TEAMBOT_LLM_API_KEY``, else a fresh random one), so
other local users cannot use the model. Output goes to ``<data_dir>/logs/lmdeploy-server.log``.
lmdeploy runs one of two engines: TurboMind (its fastest, CUDA 12 builds) or PyTorch;
``--backend auto`` falls back to PyTorch where TurboMind is not built or does not support the
model, and teambot reads the log to say which one runs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from config.errors import ConfigError
from config.settings import InferenceSettings, LMDeploySettings
from inference.client import Endpoint
from inference.process import Progress, ServerProcess, free_port

log = logging.getLogger(__name__)

GPU_INSTALL = "install it with `pip install -e '.[gpu]'` on a machine with a CUDA GPU"
MODEL_HINT = "run `teambot quantize` to make one, or set inference.lmdeploy.model_path to a Hugging Face-format model folder"
GGUF_MAGIC = b"GGUF"
# lmdeploy/archs.py logs this when --backend auto (or turbomind) ends up on the PyTorch engine.
FALLBACK_LINE = re.compile(r"Fallback to pytorch engine because (.*)")

Engine = Literal["turbomind", "pytorch"]


def lmdeploy_installed() -> bool:
    return importlib.util.find_spec("lmdeploy") is not None


def gpu_problem() -> str | None:
    """Why no CUDA GPU can be used here, or None when one can."""
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed"
    import torch

    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA GPU (is the NVIDIA driver installed, and is this torch a CUDA build?)"
    return None


Backend = Literal["llamacpp", "lmdeploy", "external"]


def pick_backend(setting: str, lmdeploy_present: Callable[[], bool], gpu_trouble: Callable[[], str | None]) -> Backend:
    """inference.backend, with auto decided: lmdeploy when it and a CUDA GPU are present, else llama.cpp."""
    if setting != "auto":
        return setting  # type: ignore[return-value]
    return "lmdeploy" if lmdeploy_present() and gpu_trouble() is None else "llamacpp"


def resolve_backend(settings: InferenceSettings) -> Backend:
    """The backend this machine runs (looks for a GPU only when lmdeploy is installed)."""
    return pick_backend(settings.backend, lmdeploy_installed, gpu_problem)


def check_model(path: Path, hint: str = MODEL_HINT) -> None:
    """A Hugging Face-format model folder, or a ConfigError saying what is wrong and what to do."""
    if path.is_file():
        with path.open("rb") as f:
            if f.read(4) == GGUF_MAGIC:
                raise ConfigError(f"model {path} is a GGUF file, which is for llama.cpp", f'use inference.backend = "llamacpp" with it, or {hint}')
        raise ConfigError(f"model {path} is a file; lmdeploy needs a model folder", hint)
    if not path.is_dir():
        raise ConfigError(f"model folder {path} does not exist", hint)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model folder {path} has no config.json, so it is not a Hugging Face-format model", hint)


def model_format(path: Path, setting: str) -> str:
    """awq for a model whose config.json says it was AWQ-quantized (as `teambot quantize` writes), else hf."""
    if setting != "auto":
        return setting
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path / 'config.json'} cannot be read: {exc}", "check the model folder") from exc
    quantization = config.get("quantization_config") or {}
    return "awq" if str(quantization.get("quant_method", "")).lower() == "awq" else "hf"


def server_command(settings: LMDeploySettings, model: Path, fmt: str, port: int, api_key: str) -> list[str]:
    command = [
        sys.executable, "-m", "lmdeploy", "serve", "api_server", str(model),
        "--server-name", "127.0.0.1",
        "--server-port", str(port),
        "--model-name", model.name,
        "--quant-policy", str(settings.quant_policy),
        "--cache-max-entry-count", str(settings.cache_max_entry_count),
        "--tp", str(settings.tp),
        "--api-keys", api_key,
    ]  # fmt: skip
    if fmt != "hf":  # lmdeploy reads unquantized weights without a format; its PyTorch engine refuses "hf"
        command += ["--model-format", fmt]
    if settings.engine != "auto":  # lmdeploy's own default, turbomind, already falls back to pytorch where it must
        command += ["--backend", settings.engine]
    if settings.session_len:
        command += ["--session-len", str(settings.session_len)]
    if settings.max_batch_size:
        command += ["--max-batch-size", str(settings.max_batch_size)]
    if settings.trust_remote_code:
        command.append("--trust-remote-code")
    return command + settings.extra_args


def shown_command(command: list[str]) -> str:
    """The command line for logs and messages, with the API key left out."""
    shown = list(command)
    for k, arg in enumerate(shown[:-1]):
        if arg == "--api-keys":
            shown[k + 1] = "***"
    return " ".join(shown)


def engine_in_use(requested: str, output: str) -> tuple[Engine, str]:
    """Which engine lmdeploy runs, read from its log, and why when it is not the one asked for."""
    if requested == "pytorch":
        return "pytorch", ""
    fallback = FALLBACK_LINE.search(output)
    if fallback:
        return "pytorch", fallback.group(1).strip().rstrip(".")
    return "turbomind", ""


class LMDeployServer:
    def __init__(self, settings: InferenceSettings, log_dir: Path, api_key: str | None = None) -> None:
        self._settings = settings.lmdeploy
        self._api_key = api_key or secrets.token_urlsafe(24)
        self.process = ServerProcess("lmdeploy api_server", log_dir / "lmdeploy-server.log")
        self.model_path = self._settings.model_path
        assert self.model_path is not None  # Settings fills in the default
        kv = {8: "KV cache int8", 4: "KV cache int4", 0: "KV cache unquantized"}[self._settings.quant_policy]
        self.description = f"lmdeploy with {self.model_path.name} ({kv})"
        self.engine: Engine | None = None

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    async def start(self, progress: Progress | None = None) -> Endpoint:
        if not lmdeploy_installed():
            raise ConfigError("lmdeploy is not installed", f'{GPU_INSTALL}, or set inference.backend = "llamacpp"')
        if (problem := gpu_problem()) is not None:
            raise ConfigError(f"lmdeploy needs a CUDA GPU: {problem}", 'set inference.backend = "llamacpp" to run on the CPU')
        assert self.model_path is not None
        check_model(self.model_path)
        fmt = model_format(self.model_path, self._settings.model_format)
        port = free_port()
        command = server_command(self._settings, self.model_path, fmt, port, self._api_key)
        if progress:
            progress(f"starting {self.description}, {fmt} weights (lmdeploy takes a minute or two to start)")
        base_url = f"http://127.0.0.1:{port}/v1"
        seconds = await self.process.start_until_ready(
            command, shown=shown_command(command), ready_url=f"{base_url}/models", timeout_s=self._settings.start_timeout_s,
            what="the lmdeploy server", progress=progress, headers={"Authorization": f"Bearer {self._api_key}"},
            timeout_hint="raise inference.lmdeploy.start_timeout_s, or read the server log",
        )  # fmt: skip
        self.engine, why = engine_in_use(self._settings.engine, self.process.output())
        engine_note = f"{self.engine} engine" + (f" (TurboMind not used: {why})" if why else "")
        log.info("lmdeploy server ready on port %d in %.1f s (pid %s), %s", port, seconds, self.process.pid, engine_note)
        if progress:
            progress(f"{self.description} ready in {seconds:.1f} s on the {engine_note}")
        return Endpoint(
            base_url=base_url,
            model=self.model_path.name,
            api_key=self._api_key,
            down_hint=f"the lmdeploy server stopped; its log is {self.log_path}",
        )

    async def stop(self) -> None:
        await self.process.stop()
