"""A replay model: an OpenAI-compatible chat server on 127.0.0.1 that answers each question
with a text written for it in advance (a question set's ``model_answers``), streamed in small
pieces the way a model streams tokens; asked for search queries (bot.rewrite), it answers with
the item's written ``model_rewrite``.

teambot talks to it as to any external server (``inference.backend = "external"``), so the
written answers go through the real answer flow: the real client, prompt, guard and fallback.
A written answer cites sources by file name (``[oncall-guide.md]``); the replay reads the
numbered passages in the prompt it receives, as a model would, and cites the numbers of the
passages from that file (``[2][3]``). A file that is not among them becomes a number past the
last passage (the model cited something it was not shown).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from bot.rewrite import REWRITE_INSTRUCTIONS

MODEL = "replay"
FILE_CITATION = re.compile(r"\[([^\[\]\s]+\.[A-Za-z0-9]{1,5})\]")  # [oncall-guide.md], [en/llm/api_server.md]
_PASSAGE_HEADER = re.compile(r"^\[(\d{1,3})\] (.*)$", re.MULTILINE)
_PIECE = re.compile(r"\s*\S+?(?=\s|$|[，。、；：？！,.;:?!\[])|\s*[，。、；：？！,.;:?!]|\s*\[[^\]]*\]|\s+", re.DOTALL)
START_TIMEOUT_S = 30.0


class ReplayModel:
    """Serves ``answer(question, text)``'s text for that question (the last user message)."""

    def __init__(self) -> None:
        self._answers: dict[str, str] = {}
        self._rewrites: dict[str, str] = {}  # the text to search -> the written search queries
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.requests = 0
        self.prompts: dict[str, str] = {}  # question -> the messages of the last request for it, as one text (their sizes are measured)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def answer(self, question: str, text: str) -> None:
        """The next request whose question is ``question`` gets ``text``."""
        with self._lock:
            self._answers[question.strip()] = text

    def rewrite(self, query: str, text: str) -> None:
        """A request for the search queries of ``query`` (bot.rewrite) gets ``text``."""
        with self._lock:
            self._rewrites[query.strip()] = text

    def __enter__(self) -> ReplayModel:
        from starlette.applications import Starlette
        from starlette.routing import Route

        app = Starlette(routes=[Route("/v1/models", self._models), Route("/v1/chat/completions", self._chat, methods=["POST"])])
        self._server, self._thread, self.port = serve_in_thread(app, "replay model")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            stop_server(self._server, self._thread)

    async def _models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "teambot"}]})

    async def _chat(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

        body = await request.json()
        messages = body.get("messages") or []
        question = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "").strip()
        prompt = "\n".join(m["content"] for m in messages if m.get("role") == "system")
        rewriting = prompt == REWRITE_INSTRUCTIONS
        with self._lock:
            self.requests += 1
            text = (self._rewrites if rewriting else self._answers).get(question)
        if text is None:
            what = "search queries" if rewriting else "an answer"
            return JSONResponse({"error": {"message": f"the replay model has no {what} written for this question"}}, status_code=400)
        if rewriting:
            return StreamingResponse(_events(text), media_type="text/event-stream")
        with self._lock:
            self.prompts[question] = "\n".join(str(m.get("content", "")) for m in messages)
        return StreamingResponse(_events(numbered(text, prompt)), media_type="text/event-stream")


def numbered(text: str, prompt: str) -> str:
    """``text`` with each ``[file]`` citation turned into the numbers of that file's passages in
    ``prompt`` (``[2][3]``), or a number past the last passage when the file is not there."""
    passages = {int(n): header for n, header in _PASSAGE_HEADER.findall(prompt)}
    missing: dict[str, int] = {}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        shown = [n for n, header in sorted(passages.items()) if f"({name}," in header or f"({name})" in header]
        if not shown:
            shown = [missing.setdefault(name, len(passages) + 1 + len(missing))]
        return "".join(f"[{n}]" for n in shown)

    return FILE_CITATION.sub(replace, text)


def pieces(text: str) -> Iterator[str]:
    """The text in word-sized pieces (a Chinese clause, a word with its space, a citation), as a model streams it."""
    position = 0
    for match in _PIECE.finditer(text):
        if match.start() > position:
            yield text[position : match.start()]
        if match.group(0):
            yield match.group(0)
        position = match.end()
    if position < len(text):
        yield text[position:]


def _events(text: str) -> Iterator[str]:
    for piece in pieces(text):
        yield _event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    yield _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    yield "data: [DONE]\n\n"


def _event(payload: dict[str, Any]) -> str:
    chunk = {"id": "chatcmpl-replay", "object": "chat.completion.chunk", "created": int(time.time()), "model": MODEL, **payload}
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


def serve_in_thread(app: Any, name: str) -> tuple[Any, threading.Thread, int]:
    """``app`` served by uvicorn on 127.0.0.1 and a free port, in a daemon thread: (server, thread, port)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (server.started and server.servers):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the {name} did not start within {START_TIMEOUT_S:g} s")
        time.sleep(0.01)
    return server, thread, server.servers[0].sockets[0].getsockname()[1]


def stop_server(server: Any, thread: threading.Thread | None) -> None:
    server.should_exit = True
    if thread is not None:
        thread.join(timeout=10)
