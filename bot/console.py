"""The admin web console at /admin, served by teambot's own HTTP server.

One static page (bot/console.html) and a small JSON API behind a sign-in with
TEAMBOT_ADMIN_TOKEN: upload files into a collection, list and delete documents, queue a
re-index and watch its progress, ask a test question (streamed as NDJSON, with its sources
and scores), and read recent questions with their 👍/👎 votes. Without the token the console
does not start: /admin says how to turn it on.

Sessions: a random id in an HttpOnly, SameSite=Strict cookie, valid for
``console.session_hours``, kept in the state database so that any replica knows it, as a MAC keyed
by the admin token: a new token ends every session (bot.platform_state). Every request is checked
first (bot.console_guard): its Host, and for
changes its Origin and Content-Type; sign-in attempts are throttled per address.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from importlib.resources import files
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from bot.answer_log import AnswerLog
from bot.answering import AnswerFlow, AnswerRequest, error_text
from bot.console_guard import ClientAddress, Refused, RequestCheck, SignInThrottle, allowed_hosts, check_admin_token
from bot.core import AnswerDone, AnswerEvidence
from bot.http_server import Limit
from bot.platform_state import ConsoleSessions, session_key
from config.errors import ConfigError, TeambotError
from config.settings import DEFAULT_COLLECTION, SECRET_ENV, Settings, check_collection_name
from rag.operations.desk import KnowledgeDesk, UploadError
from rag.operations.scheduler import IndexScheduler

log = logging.getLogger(__name__)

COOKIE = "teambot_console"
PLATFORM = "console"
MAX_FILES_PER_UPLOAD = 20
MAX_QUESTION_CHARS = 2000
UPLOAD_PATH = "/admin/api/upload"
JSON = "application/json"
MULTIPART = "multipart/form-data"
DISABLED = (
    "The teambot admin console is off: no admin token is set.\n"
    f"Set {SECRET_ENV['admin_token']} in teambot's environment (a long random string) and restart `teambot serve`; "
    "then sign in here with it.\n"
)

Handler = Callable[[Request], Awaitable[Response]]


def console_routes(
    settings: Settings, flow: AnswerFlow, desk: KnowledgeDesk, scheduler: IndexScheduler, answers: AnswerLog, sessions: ConsoleSessions
) -> tuple[list[BaseRoute], str | None]:
    """The console's routes, and why it is off (None when it is on)."""
    if not settings.console.enabled:
        return [], None
    if settings.admin_token is None or not settings.admin_token.get_secret_value().strip():
        async def disabled(request: Request) -> Response:
            return PlainTextResponse(DISABLED, status_code=503)

        return [Route("/admin", disabled), Route("/admin/{rest:path}", disabled, methods=["GET", "POST", "DELETE"])], (
            f"the admin console is off: set {SECRET_ENV['admin_token']} to turn it on"
        )
    return Console(settings, flow, desk, scheduler, answers, sessions).routes(), None


def console_body_limits(settings: Settings) -> dict[str, Limit]:
    """The largest request bodies the console takes, by path: uploads (every file at rag.max_file_mb), the rest small."""
    file_bytes = int(settings.rag.max_file_mb * 1024 * 1024)
    return {
        "/admin": Limit(settings.console.max_request_kb * 1024, "raise console.max_request_kb (TEAMBOT_CONSOLE__MAX_REQUEST_KB)"),
        UPLOAD_PATH: Limit(
            MAX_FILES_PER_UPLOAD * file_bytes + 1024 * 1024,
            f"upload fewer or smaller files at a time ({MAX_FILES_PER_UPLOAD} files of rag.max_file_mb = {settings.rag.max_file_mb:g} MB at most)",
        ),
    }


class Console:
    def __init__(
        self, settings: Settings, flow: AnswerFlow, desk: KnowledgeDesk, scheduler: IndexScheduler, answers: AnswerLog, sessions: ConsoleSessions
    ) -> None:
        self._settings = settings
        self._flow = flow
        self._desk = desk
        self._scheduler = scheduler
        self._answers = answers
        self._token = check_admin_token(settings)
        self._sessions = sessions  # in the state database: a browser's next request may reach any replica
        self._session_key = session_key(self._token)  # sessions signed in with another token are not valid here
        self._throttle = SignInThrottle()
        self._client = ClientAddress.trusting(settings)  # X-Forwarded-For only from console.trusted_proxies
        self._check = RequestCheck(allowed_hosts(settings))
        self._page = files("bot").joinpath("console.html").read_text(encoding="utf-8")

    def routes(self) -> list[BaseRoute]:
        api = [  # path, handler, methods, the body's media type
            ("/admin/api/session", self.session, ["GET"], None),
            ("/admin/api/documents", self.documents, ["GET"], None),
            ("/admin/api/documents", self.delete_document, ["DELETE"], None),
            (UPLOAD_PATH, self.upload, ["POST"], MULTIPART),
            ("/admin/api/reindex", self.reindex, ["POST"], None),
            ("/admin/api/runs", self.runs, ["GET"], None),
            ("/admin/api/ask", self.ask, ["POST"], JSON),
            ("/admin/api/answers", self.recent_answers, ["GET"], None),
            ("/admin/api/logout", self.logout, ["POST"], None),
        ]
        return [
            Route("/admin", self._checked(self.page, None), methods=["GET"]),
            Route("/admin/api/login", self._checked(self.login, JSON), methods=["POST"]),
            *(Route(path, self._checked(self._signed_in(handler), body), methods=methods) for path, handler, methods, body in api),
        ]

    # --- sign-in --------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return HTMLResponse(self._page, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})

    async def login(self, request: Request) -> Response:
        client = self._client.of(request)
        self._throttle.take(client)  # before the body is read
        try:
            password = str((await request.json()).get("password", ""))
        except (ValueError, AttributeError):
            return _error("send {\"password\": \"...\"} as JSON", 400)
        if not hmac.compare_digest(password.encode(), self._token):
            log.warning("console: a wrong admin token was given from %s", client)
            return _error(f"wrong admin token: use the value of {SECRET_ENV['admin_token']} that teambot was started with", 401)
        self._throttle.succeeded(client)
        try:
            session = await asyncio.to_thread(self._sessions.start, self._session_key, self._settings.console.session_hours * 3600)
        except TeambotError as exc:
            return _error(error_text(exc), 503)
        response = JSONResponse({"ok": True})
        response.set_cookie(
            COOKIE, session, max_age=int(self._settings.console.session_hours * 3600),
            httponly=True, samesite="strict", path="/admin", secure=self._client.scheme(request) == "https",
        )  # fmt: skip
        return response

    async def logout(self, request: Request) -> Response:
        await asyncio.to_thread(self._sessions.end, self._session_key, request.cookies.get(COOKIE, ""))
        response = JSONResponse({"ok": True})
        response.delete_cookie(COOKIE, path="/admin")
        return response

    def _checked(self, handler: Handler, body: str | None) -> Handler:
        """``handler`` behind the Host, Origin and Content-Type checks (``body``: the media type it reads)."""

        async def checked(request: Request) -> Response:
            try:
                self._check.check(request, body)
                return await handler(request)
            except Refused as refused:
                headers = {"Retry-After": str(math.ceil(refused.retry_after_s))} if refused.retry_after_s is not None else None
                return JSONResponse({"error": refused.message}, status_code=refused.status, headers=headers)

        return checked

    def _signed_in(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            try:
                if not await asyncio.to_thread(self._sessions.valid, self._session_key, request.cookies.get(COOKIE, "")):
                    return _error("sign in first (your session ended or was never started)", 401)
                return await handler(request)
            except (UploadError, ConfigError) as exc:  # a refused file, a bad collection name: the request's fault
                return _error(error_text(exc), 400)
            except TeambotError as exc:  # the store or the LLM is unavailable
                return _error(error_text(exc), 503)

        return guarded

    async def session(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "collections": sorted(self._settings.collection_dirs()), "max_file_mb": self._settings.rag.max_file_mb})

    # --- documents ------------------------------------------------------------------------

    async def documents(self, request: Request) -> Response:
        def gather() -> list[dict[str, Any]]:
            return [asdict(d) for name in self._desk.collections() for d in self._desk.documents(name)]

        return JSONResponse({"documents": await asyncio.to_thread(gather)})

    async def delete_document(self, request: Request) -> Response:
        collection = check_collection_name(request.query_params.get("collection", DEFAULT_COLLECTION))
        path = request.query_params.get("path", "")
        removed = await asyncio.to_thread(self._desk.remove, collection, path, f"{PLATFORM}:remove")
        return JSONResponse({"removed": asdict(removed.document), "kept": removed.kept})

    async def upload(self, request: Request) -> Response:
        desk = self._desk
        limit = desk.max_bytes
        length = int(request.headers.get("content-length") or 0)
        if length > MAX_FILES_PER_UPLOAD * limit + 1024 * 1024:
            raise UploadError(
                f"the upload is {length / 1024 / 1024:.1f} MB, more than {MAX_FILES_PER_UPLOAD} files of rag.max_file_mb = {self._settings.rag.max_file_mb:g} MB",
                "upload fewer or smaller files at a time",
            )
        form = await request.form(max_files=MAX_FILES_PER_UPLOAD)
        try:
            collection = check_collection_name(str(form.get("collection") or DEFAULT_COLLECTION).strip().lower())
            uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
            if not uploads:
                raise UploadError("no file was sent", "choose one or more files")
            results = []
            for upload in uploads:
                name = upload.filename or "(no name)"
                try:
                    await asyncio.to_thread(desk.check, name, upload.size)
                    data = await upload.read(limit + 1)
                    added = await asyncio.to_thread(desk.add, collection, name, data, f"{PLATFORM}:upload")
                except TeambotError as exc:  # refused, or failed on teambot's side: this file's result either way
                    results.append({"file": name, "ok": False, "error": error_text(exc)})
                except Exception as exc:  # never the batch's failure: the files before and after are reported
                    log.exception("console: uploading %s failed", name)
                    results.append({"file": name, "ok": False, "error": f"unexpected error ({type(exc).__name__}); it is in teambot's log"})
                else:
                    result = {"file": name, "ok": True, "name": added.name, "chunks": added.chunks, "replaced": added.replaced}
                    results.append(result | {"previous": added.previous, "not_indexed": added.not_indexed})
        finally:
            await form.close()
        return JSONResponse({"collection": collection, "results": results})

    # --- re-index -------------------------------------------------------------------------

    async def reindex(self, request: Request) -> Response:
        requested = await asyncio.to_thread(self._desk.request_reindex, PLATFORM)
        return JSONResponse({"message": requested.text()})

    async def runs(self, request: Request) -> Response:
        history = self._scheduler.history
        recent = await asyncio.to_thread(history.recent, 10)
        waiting = await asyncio.to_thread(history.waiting)
        return JSONResponse({"runs": [r.to_json() for r in recent], "waiting": len(waiting), **self._scheduler.health()})

    # --- questions ------------------------------------------------------------------------

    async def ask(self, request: Request) -> Response:
        try:
            body = await request.json()
            question = str(body.get("question", "")).strip()
            collections = body.get("collections") or [DEFAULT_COLLECTION]
            if not isinstance(collections, list):
                raise TypeError("collections must be a list")
            collections = [check_collection_name(str(c)) for c in collections]
        except (ValueError, AttributeError, TypeError):
            return _error("send {\"question\": \"...\", \"collections\": [...]} as JSON", 400)
        if not question or len(question) > MAX_QUESTION_CHARS:
            return _error(f"ask a question of 1 to {MAX_QUESTION_CHARS} characters", 400)
        asked = AnswerRequest(PLATFORM, question, tuple(collections), user="admin", channel=PLATFORM)
        return StreamingResponse(self._stream(asked), media_type="application/x-ndjson", headers={"Cache-Control": "no-store"})

    async def _stream(self, asked: AnswerRequest) -> AsyncIterator[str]:
        """The answer as NDJSON lines: {"delta"} as it is written, then {"done"} or {"error"}.
        A client that goes away cancels the answer."""
        view = _NdjsonView()

        async def answer() -> None:
            try:
                await self._flow.answer(asked, view, log_answer=False)  # admins' test questions stay out of the answer log
            finally:
                view.lines.put_nowait(None)

        task = asyncio.create_task(answer())
        try:
            while (line := await view.lines.get()) is not None:
                yield line
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def recent_answers(self, request: Request) -> Response:
        recent = await asyncio.to_thread(self._answers.recent, 50)
        return JSONResponse({"answers": [asdict(a) for a in recent]})


class _NdjsonView:
    """The console's AnswerView: each event becomes one JSON line for the streamed response."""

    platform_errors: tuple[type[Exception], ...] = ()

    def __init__(self) -> None:
        self.lines: asyncio.Queue[str | None] = asyncio.Queue()

    async def open(self) -> None:
        return None

    def evidence(self, found: AnswerEvidence) -> None:
        sources = [{"n": n, **p.to_json(), "quote": next((e.quote for e in found.evidence if e.n == n), "")} for n, p in enumerate(found.sources, 1)]
        self.lines.put_nowait(_line({"evidence": {"sources": sources}}))

    def append(self, text: str) -> None:
        self.lines.put_nowait(_line({"delta": text}))

    async def finish(self, done: AnswerDone, answer_id: str | None) -> None:
        self.lines.put_nowait(_line({"done": done.to_json()}))

    async def fail(self, message: str) -> None:
        self.lines.put_nowait(_line({"error": message}))


def _line(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False) + "\n"


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
