"""Reading knowledge files in a child process with memory and CPU limits.

Uploads and shared folders hold files from anyone, and a parser fed a hostile one can take
gigabytes or minutes (a .docx that unpacks to far more than its size, a PDF made of 100,000
pages). PDF, .docx and HTML files are therefore parsed by a worker process
(``python -m rag.ingest.isolation``) whose address space is capped at rag.parse_memory_mb and
which gets rag.parse_cpu_s seconds of CPU per file; past either, that file fails with an error
naming the setting, and the worker is replaced. A worker serves file after file, so a normal
file costs a round trip, not a process start. The worker gets no secrets: its environment is
the interpreter's path and nothing else, and it starts without the working directory on that path
(``python -P``). Plain text formats are read in the calling process;
their cost is bounded by rag.max_file_mb.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import asdict
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rag.ingest.documents import HTML_SUFFIXES, DocumentError, ParsedDocument, ParseLimits, Part, read_document

if TYPE_CHECKING:
    from config.settings import Settings  # not imported in the worker, which needs no settings

log = logging.getLogger(__name__)

ISOLATED_SUFFIXES = frozenset({".pdf", ".docx"} | HTML_SUFFIXES)
MAX_IDLE_WORKERS = 2  # kept for the next file; more are started while several files are read at once
# Wall-clock backstop beyond the CPU limit, for a worker that stops without using CPU; generous for a loaded machine.
WALL_FACTOR = 4
WALL_EXTRA_S = 60.0
MB = 1024 * 1024


class DocumentReader:
    """Reads files as rag.ingest.documents does, the risky formats in limited worker processes. Thread-safe."""

    def __init__(self, limits: ParseLimits, memory_mb: int, cpu_s: float) -> None:
        self.limits = limits
        self._memory_mb = memory_mb
        self._cpu_s = cpu_s
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        weakref.finalize(self, _stop_all, self._idle)  # for a reader dropped without close()

    @classmethod
    def of(cls, settings: Settings) -> DocumentReader:
        rag = settings.rag
        limits = ParseLimits(max_pdf_pages=rag.max_pdf_pages, max_unpacked_bytes=int(rag.max_unpacked_mb * MB))
        return cls(limits, rag.parse_memory_mb, rag.parse_cpu_s)

    def read(self, path: Path) -> ParsedDocument:
        """The file's text; DocumentError naming the file and the limit it passed, whatever the parser did."""
        if path.suffix.lower() not in ISOLATED_SUFFIXES:
            return read_document(path, self.limits)
        worker = self._take()
        try:
            reply = worker.ask(
                {"path": str(path), "limits": asdict(self.limits), "cpu_s": self._cpu_s}, self._cpu_s * WALL_FACTOR + WALL_EXTRA_S
            )
        except _WorkerLost as exc:
            worker.stop()
            raise DocumentError(f"{path.name}: {exc}", "split the file or save it in a simpler form; or raise the limit named") from None
        if reply.get("restart"):
            worker.stop()
        else:
            self._give_back(worker)
        if "error" in reply:
            raise DocumentError(reply["error"], reply.get("hint", ""))
        return ParsedDocument(reply["title"], [Part(text, page) for text, page in reply["parts"]])

    def close(self) -> None:
        with self._lock:
            idle = self._idle[:]
            self._idle.clear()
        _stop_all(idle)

    def _take(self) -> _Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return _Worker(self._memory_mb, self._cpu_s)

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE_WORKERS:
                self._idle.append(worker)
                return
        worker.stop()


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop()


class _WorkerLost(Exception):
    """The worker died or went silent while reading a file."""


class _Worker:
    """One `python -m rag.ingest.isolation` process: a JSON request per line in, a JSON reply per line out."""

    def __init__(self, memory_mb: int, cpu_s: float) -> None:
        self._memory_mb = memory_mb
        self._cpu_s = cpu_s
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "LC_ALL": "C.UTF-8",
        }
        # -P: the working directory is not put on the path (a pypdf.py there would be imported
        # instead of the library). Its PYTHONPATH is this process's path.
        self._process = subprocess.Popen(
            [sys.executable, "-P", "-m", "rag.ingest.isolation", str(memory_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True,
        )  # fmt: skip

    def ask(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(json.dumps(request).encode() + b"\n")
            stdin.flush()
        except (BrokenPipeError, OSError):
            raise _WorkerLost(self._lost()) from None
        deadline = time.monotonic() + timeout_s
        line = _read_line(stdout, deadline)
        if line is None:
            raise _WorkerLost(f"reading it took longer than {timeout_s:.0f} s (rag.parse_cpu_s = {self._cpu_s:g} s of CPU)")
        if not line:
            raise _WorkerLost(self._lost())
        return json.loads(line)

    def _lost(self) -> str:
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "the parser process stopped answering"
        if code in (-signal.SIGXCPU, -signal.SIGKILL):
            return f"reading it took more than rag.parse_cpu_s = {self._cpu_s:g} s of CPU"
        return (
            f"the parser process ended (exit code {code}) while reading it; it may need more than rag.parse_memory_mb = {self._memory_mb}"
        )

    def stop(self) -> None:
        process = self._process
        if process.stdin is not None:
            try:
                process.stdin.close()
            except OSError:
                pass
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _read_line(stream: IO[bytes], deadline: float) -> bytes | None:
    """One line, b"" at end of file, None when the deadline passes first."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        # poll, not select: select() refuses descriptors past 1023, and a busy `teambot serve`
        # (or a long test run) holds more open files than that.
        poller = select.poll()
        poller.register(stream, select.POLLIN | select.POLLHUP | select.POLLERR)
        if poller.poll(max(1, int(remaining * 1000))):
            return stream.readline()


# --- the worker process -------------------------------------------------------------------


class _OutOfTime(BaseException):
    """SIGXCPU: the file's CPU time is spent. A BaseException, so parsers' `except Exception` does not swallow it."""


def _out_of_time(signum: int, frame: object) -> None:
    raise _OutOfTime


def _serve(memory_mb: int) -> None:
    logging.disable(logging.WARNING)  # parsers' warnings about odd files; the reply says what matters
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * MB, memory_mb * MB))
    signal.signal(signal.SIGXCPU, _out_of_time)
    for line in sys.stdin.buffer:
        request = json.loads(line)
        reply = _parse(Path(request["path"]), ParseLimits(**request["limits"]), request["cpu_s"], memory_mb)
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        if reply.get("restart"):
            return


def _parse(path: Path, limits: ParseLimits, cpu_s: float, memory_mb: int) -> dict[str, Any]:
    used = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (int(used.ru_utime + used.ru_stime + cpu_s) + 1, hard))
    try:
        doc = read_document(path, limits)
        return {"title": doc.title, "parts": [[part.text, part.page] for part in doc.parts]}
    except DocumentError as exc:
        return {"error": exc.message, "hint": exc.hint}
    except MemoryError:
        return {
            "error": f"{path.name}: reading it needs more memory than rag.parse_memory_mb = {memory_mb} allows",
            "hint": "split the file or save it in a simpler form, or raise rag.parse_memory_mb",
            "restart": True,
        }
    except _OutOfTime:
        return {
            "error": f"{path.name}: reading it took more than rag.parse_cpu_s = {cpu_s:g} s of CPU",
            "hint": "split the file or save it in a simpler form, or raise rag.parse_cpu_s",
            "restart": True,
        }
    except Exception as exc:  # noqa: BLE001 (a parser library's own bug: this file's failure, nothing more)
        return {
            "error": f"{path.name}: unexpected error while reading ({type(exc).__name__}: {str(exc)[:300]})",
            "hint": "check that the file opens in its usual program, then save it again",
        }
    finally:
        resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
