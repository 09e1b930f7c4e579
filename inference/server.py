"""The LLM server managers behind one interface, and the choice between them.

A manager's ``start()`` makes a server ready (starting one where teambot owns it) and returns
its Endpoint; ``stop()`` undoes what ``start()`` did.
"""

from __future__ import annotations

from typing import Protocol

from config.settings import Settings
from inference.client import Endpoint
from inference.process import Progress


class LLMServer(Protocol):
    description: str

    async def start(self, progress: Progress | None = None) -> Endpoint: ...

    async def stop(self) -> None: ...


class ExternalServer:
    """A server someone else runs (an lmdeploy api_server, lmdeploy's proxy, any OpenAI-compatible API)."""

    def __init__(self, base_url: str, model: str | None, api_key: str | None) -> None:
        self.description = f"external server at {base_url}"
        self._endpoint = Endpoint(
            base_url=base_url,
            model=model,
            api_key=api_key,
            down_hint=f"start the server at {base_url} (e.g. `lmdeploy serve api_server ...`) or fix inference.base_url",
        )

    async def start(self, progress: Progress | None = None) -> Endpoint:
        return self._endpoint

    async def stop(self) -> None:
        return None


def make_server(settings: Settings) -> LLMServer:
    from inference.lmdeploy import LMDeployServer, resolve_backend

    inference = settings.inference
    api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    backend = resolve_backend(inference)
    if backend == "external":
        assert inference.base_url is not None  # enforced by InferenceSettings
        return ExternalServer(inference.base_url, inference.model, api_key)
    if backend == "lmdeploy":
        return LMDeployServer(inference, log_dir=settings.logs_dir, api_key=api_key)
    from inference.llamacpp import LlamaCppServer
    from inference.model_catalog import llamacpp_model

    model = llamacpp_model(inference.model_path, settings.models_dir)  # a short name: the pulled GGUF
    return LlamaCppServer(inference.model_copy(update={"model_path": model}), log_dir=settings.logs_dir)
