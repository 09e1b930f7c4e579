"""A local stand-in for the Hugging Face hub, at its HTTP API, for `teambot models pull` (chosen with HF_ENDPOINT).

It speaks the routes huggingface_hub uses for a download: ``GET /api/models/{repo}/revision/{rev}``
(``?blobs=true``: each file's size, git blob id and LFS sha256), and ``GET``/``HEAD``
``/{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit`` and ``ETag``; an LFS file (weights,
GGUF, tokenizer model) answers 302 to a CDN on another host name (``http://localhost:PORT/cdn/{sha256}``,
like the hub's signed CDN URLs: no token needed there, none must be sent) with ``X-Linked-Etag`` and
``X-Linked-Size``; the CDN serves Range requests (206, ``Content-Range``). It records every request
and can misbehave the way a network or a mirror does: cut a connection in the middle, answer 503
for a while, serve other bytes than it lists, ask for a token.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

COMMIT = "7f3c2a1b9d8e4f5061728394a5b6c7d8e9f00112"
LFS_SUFFIXES = (".safetensors", ".gguf", ".model", ".bin")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client killed or cut in the middle of a transfer is part of the tests, not an error of the stand-in.
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def _serve(answer: Callable[[BaseHTTPRequestHandler, bool], None]) -> _Server:
    """A local HTTP server in a thread that answers HEAD and GET with ``answer(handler, body)``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            answer(self, False)

        def do_GET(self) -> None:
            answer(self, True)

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class FakeHub:
    repos: dict[str, dict[str, bytes]]  # repository ID -> file path -> content
    cut_once: dict[str, int] = field(default_factory=dict)  # file -> byte at which its next download is cut
    hold_at: dict[str, int] = field(default_factory=dict)  # file -> byte at which its next download stalls until ``release`` is set
    release: threading.Event = field(default_factory=threading.Event)
    down_after_cut: bool = False  # after a cut, answer 503 to every download until ``down`` is cleared
    corrupt: set[str] = field(default_factory=set)  # files served with other bytes than the listing's checksum
    listed_size: dict[str, int] = field(default_factory=dict)  # file -> size the listing claims
    token: str | None = None  # when set, every request needs "Authorization: Bearer TOKEN"
    down: bool = False
    requests: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)  # method, path, Range, Authorization
    body_bytes: int = 0  # response body bytes sent, all requests

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = _serve(self._answer)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.cdn_url = f"http://localhost:{self._server.server_address[1]}"  # another host name, as the hub's CDN is

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def warm(self) -> None:
        """Works out every file's checksums now, so that no request waits on them (for benchmarks)."""
        for files in self.repos.values():
            for content in files.values():
                _digest(content), _digest(content, "git")

    def ranges(self, file_sha: str) -> list[str | None]:
        """The Range headers of the CDN downloads of one LFS file, in order."""
        return [r for m, p, r, _ in self.requests if m == "GET" and p == f"/cdn/{file_sha}"]

    # --- the routes ---------------------------------------------------------------------------

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(handler.path).path)
        with self._lock:
            self.requests.append((handler.command, path, handler.headers.get("Range"), handler.headers.get("Authorization")))
        if self.token and not path.startswith("/cdn/") and handler.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(
                handler, 401, b'{"error":"Access to model is restricted."}', {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"}, body
            )
        if path.startswith("/api/models/"):
            return self._info(handler, path.removeprefix("/api/models/"), body)
        if path.startswith("/cdn/"):
            return self._cdn(handler, path.removeprefix("/cdn/"), body)
        if "/resolve/" in path:
            return self._resolve(handler, path, body)
        self._send(handler, 404, b"{}", {}, body)

    def _info(self, handler: BaseHTTPRequestHandler, rest: str, body: bool) -> None:
        repo, _, _revision = rest.partition("/revision/")
        files = self.repos.get(repo)
        if files is None:
            return self._send(handler, 404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)
        siblings = []
        for name, content in sorted(files.items()):
            sibling: dict[str, object] = {
                "rfilename": name,
                "size": self.listed_size.get(name, len(content)),
                "blobId": _digest(content, "git"),
            }
            if name.endswith(LFS_SUFFIXES):
                sibling["lfs"] = {"sha256": _digest(content), "size": self.listed_size.get(name, len(content)), "pointerSize": 134}
            siblings.append(sibling)
        data = json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings}).encode()
        self._send(handler, 200, data, {"Content-Type": "application/json"}, body)

    def _find(self, path: str) -> tuple[str, bytes] | None:
        for repo, files in self.repos.items():
            prefix = f"/{repo}/resolve/"
            if path.startswith(prefix):
                name = path.removeprefix(prefix).partition("/")[2]
                if name in files:
                    return name, files[name]
        return None

    def _resolve(self, handler: BaseHTTPRequestHandler, path: str, body: bool) -> None:
        found = self._find(path)
        if found is None:
            return self._send(handler, 404, b'{"error":"Entry not found"}', {"X-Error-Code": "EntryNotFound"}, body)
        name, content = found
        headers = {"X-Repo-Commit": COMMIT}
        if name.endswith(LFS_SUFFIXES):
            digest = _digest(content)
            headers |= {
                "Location": f"{self.cdn_url}/cdn/{digest}",
                "X-Linked-Etag": f'"{digest}"',
                "X-Linked-Size": str(len(content)),
                "ETag": f'"{_digest(content, "git")}"',
            }
            return self._send(handler, 302, b"", headers, body)
        headers["ETag"] = f'"{_digest(content, "git")}"'
        self._send(handler, 200, self._served(name, content), headers, body)

    def _cdn(self, handler: BaseHTTPRequestHandler, digest: str, body: bool) -> None:
        match = [(name, content) for files in self.repos.values() for name, content in files.items() if _digest(content) == digest]
        if not match:
            return self._send(handler, 404, b"", {}, body)
        if self.down:
            return self._send(handler, 503, b"down for maintenance", {}, body)
        name, content = match[0]
        content = self._served(name, content)
        start = 0
        status, headers = 200, {"ETag": f'"{digest}"', "Accept-Ranges": "bytes"}
        wanted = handler.headers.get("Range")
        if wanted and wanted.startswith("bytes="):
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        part = content[start:]
        hold = self.hold_at.pop(name, None)
        cut = self.cut_once.pop(name, None) if hold is None else hold
        if cut is None or not body:
            return self._send(handler, status, part, headers, body)
        handler.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(part))}.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(part[: max(cut - start, 0)])
        handler.wfile.flush()
        self.body_bytes += max(cut - start, 0)
        if hold is not None:
            self.release.wait(timeout=120)  # a stalled transfer: the client is killed meanwhile
        handler.close_connection = True  # the rest never comes: a connection cut in the middle
        if self.down_after_cut:
            self.down = True

    def _served(self, name: str, content: bytes) -> bytes:
        return bytes(b ^ 0xFF for b in content) if name in self.corrupt else content

    def _send(self, handler: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        if body:
            self.body_bytes += len(data)
        _send(handler, status, data, headers, body)


def _send(handler: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
    handler.send_response(status)
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    if body:
        handler.wfile.write(data)


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(f"blob {len(content)}\0".encode() + content).hexdigest()  # noqa: S324 (git's object id)


_digests: dict[tuple[int, str], tuple[bytes, str]] = {}


def _digest(content: bytes, kind: str = "sha256") -> str:
    """A served file's sha256 or git blob id, worked out once per content (a 1.2 GB file takes seconds)."""
    known = _digests.get((id(content), kind))
    if known is None or known[0] is not content:
        known = _digests[(id(content), kind)] = (content, sha256(content) if kind == "sha256" else git_blob_id(content))
    return known[1]


@dataclass
class FakeModelScope:
    """A local stand-in for ModelScope at the part of its HTTP API modelscope's ``snapshot_download`` uses
    (chosen with MODELSCOPE_ENDPOINT): ``GET /api/v1/models/{repo}/repo/files?Revision=&Recursive=`` lists
    each file's path, size and sha256; ``GET /api/v1/models/{repo}/repo?Revision=&FilePath=`` serves it
    (Range requests too). It records every request and can serve other bytes than it lists."""

    repos: dict[str, dict[str, bytes]]
    corrupt: set[str] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)  # method, path with query

    def __post_init__(self) -> None:
        self._server = _serve(self._answer)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        parsed = urlparse(handler.path)
        path, query = unquote(parsed.path), {k: v[0] for k, v in parse_qs(parsed.query).items()}
        self.requests.append((handler.command, handler.path))
        rest = path.removeprefix("/api/v1/models/")
        repo, route = (rest.removesuffix("/repo/files"), "files") if rest.endswith("/repo/files") else (rest.removesuffix("/repo"), "repo")
        files = self.repos.get(repo)
        if not path.startswith("/api/v1/models/") or files is None:
            return _send(
                handler, 404, json.dumps({"Code": 10010205001, "Message": "model not found", "Success": False}).encode(), {}, body
            )
        if route == "files":
            listing = [
                {"Name": Path(n).name, "Path": n, "Type": "blob", "Size": len(c), "Sha256": sha256(c), "Revision": COMMIT}
                for n, c in sorted(files.items())
            ]
            data = json.dumps({"Code": 200, "Data": {"Files": listing}, "Success": True}).encode()
            return _send(handler, 200, data, {"Content-Type": "application/json"}, body)
        if route == "repo" and query.get("FilePath") in files:
            name = query["FilePath"]
            content = bytes(b ^ 0xFF for b in files[name]) if name in self.corrupt else files[name]
            status, headers, start = 200, {"Accept-Ranges": "bytes"}, 0
            if (wanted := handler.headers.get("Range")) and wanted.startswith("bytes="):
                start = int(wanted.removeprefix("bytes=").split("-")[0])
                status, headers["Content-Range"] = 206, f"bytes {start}-{len(content) - 1}/{len(content)}"
            return _send(handler, status, content[start:], headers, body)
        _send(handler, 404, json.dumps({"Code": 404, "Message": "file not found", "Success": False}).encode(), {}, body)
