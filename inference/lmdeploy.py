"""The GPU LLM server: an lmdeploy api_server with W4A16 (AWQ) weights and an int8 KV cache.

teambot starts ``lmdeploy serve api_server`` as a child process on 127.0.0.1 and a free port
(the same one again when it is restarted), with an API key of its own (``TEAMBOT_LLM_API_KEY``,
else a fresh random one), so other local users cannot use the model; the key reaches lmdeploy
through a pipe, never on its command line. Output goes to ``<data_dir>/logs/lmdeploy-server.log``.
lmdeploy runs one of two engines: TurboMind (its fastest, CUDA 12 builds) or PyTorch;
``--backend auto`` falls back to PyTorch where TurboMind is not built or does not support the
model, and teambot reads the log to say which one runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import re
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from config.errors import ConfigError
from config.settings import InferenceSettings, LMDeploySettings
from inference.client import Endpoint
from inference.model_check import check_remote_code, check_tokenizer_in_child, read_config
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
    quantization = read_config(path).get("quantization_config") or {}
    if not isinstance(quantization, dict):
        raise ConfigError(f"{path / 'config.json'}: quantization_config is {quantization!r}, not an object", 'use the config.json the model was written with, or set inference.lmdeploy.model_format')
    return "awq" if str(quantization.get("quant_method", "")).lower() == "awq" else "hf"


# The child's program: lmdeploy's own command line, with the API key read from the pipe whose file
# descriptor is its first argument. The key is on no command line (any local user can read those
# in /proc/<pid>/cmdline) and in no environment; only lmdeploy's process holds it, in memory.
# "--api-keys=KEY": a key that starts with "-" would otherwise read as an option.
KEY_LAUNCHER = (
    "import sys; key = open(int(sys.argv[1]), encoding='utf-8').read(); "
    "sys.argv = ['lmdeploy', *sys.argv[2:], '--api-keys=' + key]; "
    "from lmdeploy.cli import run; run()"
)


def server_args(settings: LMDeploySettings, model: Path, fmt: str, port: int) -> list[str]:
    """The `lmdeploy` arguments that start the server (the API key is added by KEY_LAUNCHER)."""
    args = [
        "serve", "api_server", str(model),
        "--server-name", "127.0.0.1",
        "--server-port", str(port),
        "--model-name", model.name,
        "--quant-policy", str(settings.quant_policy),
        "--cache-max-entry-count", str(settings.cache_max_entry_count),
        "--tp", str(settings.tp),
    ]  # fmt: skip
    if fmt != "hf":  # lmdeploy reads unquantized weights without a format; its PyTorch engine refuses "hf"
        args += ["--model-format", fmt]
    if settings.engine != "auto":  # lmdeploy's own default, turbomind, already falls back to pytorch where it must
        args += ["--backend", settings.engine]
    if settings.session_len:
        args += ["--session-len", str(settings.session_len)]
    if settings.max_batch_size:
        args += ["--max-batch-size", str(settings.max_batch_size)]
    if trust_remote_code(settings, model):
        args.append("--trust-remote-code")
    return args + settings.extra_args


def trust_remote_code(settings: LMDeploySettings, model: Path) -> bool:
    """Whether ``model``'s own code may run: only when inference.lmdeploy.trust_remote_code names that very folder."""
    return settings.trust_remote_code is not None and settings.trust_remote_code.resolve() == model.resolve()


def check_trusted(settings: LMDeploySettings, model: Path) -> None:
    """A ConfigError when ``model`` ships code of its own that inference.lmdeploy.trust_remote_code does not let run."""
    opt_in = f'set inference.lmdeploy.trust_remote_code = "{model}"'
    if settings.trust_remote_code is not None and not trust_remote_code(settings, model):
        opt_in += f" (it names {settings.trust_remote_code} now, which is not the model folder)"
    check_remote_code(model, trust_remote_code(settings, model), opt_in)


def launch_command(args: list[str], key_fd: int) -> list[str]:
    """The child's command line: ``args`` for lmdeploy, the API key to be read from ``key_fd``."""
    return [sys.executable, "-P", "-c", KEY_LAUNCHER, str(key_fd), *args]  # -P: nothing imported from the working directory


def key_pipe(api_key: str) -> int:
    """A pipe holding ``api_key``; returns its read end, for the child to inherit (close it after the start)."""
    read_fd, write_fd = os.pipe()  # the key is far below a pipe's buffer, so the write does not block
    with os.fdopen(write_fd, "w", encoding="utf-8") as writer:
        writer.write(api_key)
    return read_fd


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
        self.process = ServerProcess(
            "lmdeploy api_server", log_dir / "lmdeploy-server.log", log_max_bytes=settings.server_log_max_bytes, log_backups=settings.server_log_backups
        )
        self._port: int | None = None  # chosen at the first start; a restart keeps it, so the endpoint stays the same
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
        check_trusted(self._settings, self.model_path)
        fmt = model_format(self.model_path, self._settings.model_format)
        if self._port is None:  # the first start; a restart serves the same, already checked folder
            if progress:
                progress(f"checking the tokenizer of {self.model_path.name}")
            await asyncio.to_thread(check_tokenizer_in_child, self.model_path, trust_remote_code(self._settings, self.model_path))
        port = self._port = self._port or free_port()
        args = server_args(self._settings, self.model_path, fmt, port)
        if progress:
            progress(f"starting {self.description}, {fmt} weights (lmdeploy takes a minute or two to start)")
        base_url = f"http://127.0.0.1:{port}/v1"
        key_fd = key_pipe(self._api_key)
        try:
            seconds = await self.process.start_until_ready(
                launch_command(args, key_fd), shown="lmdeploy " + " ".join(args) + " (API key from a pipe)", pass_fds=[key_fd],
                ready_url=f"{base_url}/models", timeout_s=self._settings.start_timeout_s, what="the lmdeploy server", progress=progress,
                headers={"Authorization": f"Bearer {self._api_key}"}, timeout_hint="raise inference.lmdeploy.start_timeout_s, or read the server log",
            )  # fmt: skip
        finally:
            os.close(key_fd)
        self.engine, why = engine_in_use(self._settings.engine, self.process.output())
        engine_note = f"{self.engine} engine" + (f" (TurboMind not used: {why})" if why else "")
        log.info("lmdeploy server ready on port %d in %.1f s (pid %s), %s", port, seconds, self.process.pid, engine_note)
        if progress:
            progress(f"{self.description} ready in {seconds:.1f} s on the {engine_note}")
        return Endpoint(
            base_url=base_url,
            model=self.model_path.name,
            api_key=self._api_key,
            down_hint=f"read the lmdeploy server's log, {self.log_path}",
        )

    async def stop(self) -> None:
        await self.process.stop()
