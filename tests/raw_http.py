"""HTTP requests with bodies too big to hold: made lazily (the same 1 MiB block again and again)
and sent over a plain socket, reading the answer while writing. And a process's memory."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

MiB = 1024 * 1024
BLOCK = b"x" * MiB


def proc_status_kb(pid: int, field: str) -> int:
    """A memory figure of a process, in kB: VmRSS (now) or VmHWM (its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def lazy_body(total: int, prefix: bytes = b"") -> Iterator[bytes]:
    """``total`` bytes, ``prefix`` and then filler, made as they are sent."""
    sent = len(prefix)
    if prefix:
        yield prefix
    while sent < total:
        block = BLOCK[: min(MiB, total - sent)]
        sent += len(block)
        yield block


@dataclass
class Answer:
    status: int
    body: bytes
    sent: int  # body bytes written before the answer came or the server closed the connection


def post_lazily(url: str, path: str, total: int, *, declared: bool, headers: dict[str, str], prefix: bytes = b"") -> Answer:
    """POSTs ``total`` lazily made bytes starting with ``prefix`` (with Content-Length when ``declared``, else chunked), and
    stops writing as soon as an answer is there to read, as a careful client does (a plain socket:
    asyncio's transports drop what was received when a write fails)."""
    parts = urlsplit(url)
    head_lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", *(f"{k}: {v}" for k, v in headers.items())]
    head_lines.append(f"Content-Length: {total}" if declared else "Transfer-Encoding: chunked")
    sent = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=120) as sock:
        sock.sendall(("\r\n".join(head_lines) + "\r\n\r\n").encode())
        try:
            for block in lazy_body(total, prefix):
                if select.select([sock], [], [], 0)[0]:
                    break  # the server answered (or closed the connection)
                sock.sendall(block if declared else b"%x\r\n%b\r\n" % (len(block), block))
                sent += len(block)
            if sent == total and not declared:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection: its answer is read below
        received = b""
        while b"\r\n\r\n" not in received and (data := sock.recv(65536)):
            received += data
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        answer_headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(body) < int(answer_headers.get("content-length", "0")) and (data := sock.recv(65536)):
            body += data
    return Answer(int(lines[0].split()[1]), body, sent)
