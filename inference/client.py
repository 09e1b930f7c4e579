"""The one client teambot uses for any OpenAI-compatible chat server (llama.cpp, lmdeploy, a proxy).

The openai SDK does the HTTP work: streaming, timeouts, and retries with exponential backoff
on connection errors, 408/409/429 and 5xx. This module turns what can go wrong into
errors that say which server failed and what to do.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import openai

from config.errors import TeambotError
from inference.activity import LLMActivity

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0


class LLMUnavailable(TeambotError):
    """The LLM server cannot be reached or stopped answering."""


class LLMRequestError(TeambotError):
    """The LLM server answered, but refused the request."""


@dataclass(frozen=True)
class Endpoint:
    """Where a running chat server listens, and how to talk to it."""

    base_url: str
    model: str | None = None
    api_key: str | None = None
    down_hint: str = "check that the LLM server runs and that inference.base_url points to it"


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system", "user" or "assistant"
    content: str


class ChatClient:
    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout_s: float,
        max_retries: int,
        temperature: float,
        max_tokens: int,
        unavailable: Callable[[], TeambotError | None] | None = None,
        activity: LLMActivity | None = None,
    ) -> None:
        """``unavailable`` says why the server cannot answer now (e.g. it is being restarted), or None;
        ``activity`` is told of each request and each sign of life (so that busy is not taken for hung)."""
        self.endpoint = endpoint
        self._activity = activity
        self._unavailable = unavailable
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._max_retries = max_retries
        self._model = endpoint.model
        self._client = openai.AsyncOpenAI(
            base_url=endpoint.base_url,
            api_key=endpoint.api_key or "not-needed",
            timeout=openai.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
            max_retries=max_retries,
        )

    async def model(self) -> str:
        """The model to ask for: the configured one, else the server's first."""
        self._check_available()
        if self._model is None:
            try:
                with self._track():
                    models = await self._client.models.list()
                    self._progressed()
            except openai.OpenAIError as exc:
                raise self._translate(exc) from None
            if not models.data:
                raise LLMRequestError(f"the LLM server at {self.endpoint.base_url} serves no model", "set inference.model")
            self._model = models.data[0].id
        return self._model

    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        """Yields the answer's text as it is generated."""
        model = await self.model()
        try:
            with self._track():
                stream = await self._client.chat.completions.create(
                    model=model,
                    messages=[{"role": m.role, "content": m.content} for m in messages],
                    stream=True,
                    temperature=self._temperature,
                    max_tokens=self._max_tokens,
                )
                self._progressed()
                finished = False
                async with stream:
                    async for chunk in stream:
                        self._progressed()
                        if not chunk.choices:
                            continue
                        choice = chunk.choices[0]
                        if choice.delta.content:
                            yield choice.delta.content
                        finished = finished or choice.finish_reason is not None
        except openai.OpenAIError as exc:
            raise self._translate(exc) from None
        if not finished:
            # A server that drops a stream (llama-cpp-python's interrupt_requests did, on a second request)
            # ends it with [DONE] and no finish_reason: the text so far is a cut answer, not a whole one.
            raise LLMUnavailable(
                f"the LLM server at {self.endpoint.base_url} ended the answer before it was finished (the stream closed without a finish_reason)",
                self.endpoint.down_hint,
            )

    async def aclose(self) -> None:
        await self._client.close()

    def _track(self) -> AbstractContextManager[None]:
        return self._activity.track() if self._activity is not None else nullcontext()

    def _progressed(self) -> None:
        if self._activity is not None:
            self._activity.progressed()

    def _check_available(self) -> None:
        if self._unavailable is not None and (problem := self._unavailable()) is not None:
            raise problem

    def _translate(self, exc: openai.OpenAIError) -> TeambotError:
        if self._unavailable is not None and (problem := self._unavailable()) is not None:
            return problem  # the server died under the request: say that, not what the request saw
        url = self.endpoint.base_url
        if isinstance(exc, openai.APITimeoutError):
            return LLMUnavailable(f"the LLM server at {url} did not answer in time", "raise inference.request_timeout_s, or " + self.endpoint.down_hint)
        if isinstance(exc, openai.APIConnectionError):
            reason = _root_cause(exc)
            return LLMUnavailable(
                f"the LLM server at {url} is not reachable ({reason}); tried {self._max_retries + 1} times",
                self.endpoint.down_hint,
            )
        if isinstance(exc, openai.AuthenticationError):
            return LLMRequestError(f"the LLM server at {url} refused the API key (401)", "set TEAMBOT_LLM_API_KEY to a key the server accepts")
        if isinstance(exc, openai.APIStatusError):
            if exc.status_code >= 500:
                return LLMUnavailable(f"the LLM server at {url} failed with HTTP {exc.status_code}; tried {self._max_retries + 1} times", self.endpoint.down_hint)
            return LLMRequestError(f"the LLM server at {url} rejected the request: HTTP {exc.status_code} {_short(exc.message)}", "check inference.model and inference.max_tokens against what the server supports")
        return LLMUnavailable(f"the LLM server at {url} failed: {_short(str(exc))}", self.endpoint.down_hint)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower():
        return "connection refused"
    return _short(text)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
