"""A server process teambot owns: started with its output in a log file, stopped with its children.

The process gets its own session (Ctrl-C in the terminal reaches teambot, which stops it) and,
on Linux, SIGTERM when teambot dies without stopping it. Stopping signals the whole process
group: lmdeploy starts engine workers of its own. ``wait_until_ready`` polls a starting server
until it answers, reporting progress.

The child sees only an allow-listed environment (``child_env``): never teambot's tokens, nor
anything named like a credential. Its output goes through a pipe to a thread that writes it to
the log with ``logging.handlers.RotatingFileHandler``, so the log is rotated by size while the
server runs (a server that runs for months writes for months), not only when it restarts.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import logging.handlers
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from config.errors import TeambotError

log = logging.getLogger(__name__)

Progress = Callable[[str], None]  # long work reports what it is doing, one line at a time

STOP_GRACE_S = 15.0
READY_POLL_INTERVAL_S = 0.2
_PR_SET_PDEATHSIG = 1
LOG_MAX_BYTES = 10 * 1024 * 1024  # the defaults of inference.server_log_max_bytes and server_log_backups
LOG_BACKUPS = 3
LINE_MAX_BYTES = 4096  # a longer line (or a progress bar redrawn with \r) goes to the log in pieces
TAIL_LINES = 15  # the last lines of output an exit report shows
OUTPUT_KEEP_BYTES = 1024 * 1024  # how much of one start's output ``output()`` keeps (what it reads comes early)

# What a child server may see of teambot's environment: these names, and names with these prefixes
# (locale, temp dirs, the Python and library paths, GPU, thread pools, offline model caches).
CHILD_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
    "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "XDG_CACHE_HOME", "SSL_CERT_FILE", "SSL_CERT_DIR",
})  # fmt: skip
CHILD_ENV_PREFIXES = (
    "LC_", "CUDA_", "NVIDIA_", "NCCL_", "HF_", "TRANSFORMERS_", "TORCH_", "PYTORCH_", "TRITON_",
    "OMP_", "MKL_", "OPENBLAS_", "GGML_", "LLAMA_", "LMDEPLOY_", "TM_", "XLA_", "JAX_",
)  # fmt: skip
# Never passed on, allow-listed or not: teambot's and the platforms' settings and tokens, and
# anything named like a credential (HF_TOKEN, NVIDIA_API_KEY, ...).
SECRET_ENV_NAME = re.compile(r"^(TEAMBOT_|SLACK_|DISCORD_)|TOKEN|SECRET|KEY|PASSW|CREDENTIAL", re.IGNORECASE)


def child_env(environ: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a child server gets: the allow-listed part of ``environ``, then ``extra``."""
    passed = {
        name: value for name, value in environ.items()
        if (name in CHILD_ENV_NAMES or name.startswith(CHILD_ENV_PREFIXES)) and not SECRET_ENV_NAME.search(name)
    }  # fmt: skip
    return {**passed, "PYTHONUNBUFFERED": "1", **(extra or {})}


def describe_exit(returncode: int) -> str:
    """"exit code 1", or "killed by SIGKILL" for a process a signal ended."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child before exec: the server gets SIGTERM if teambot dies without stopping it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class ServerProcess:
    """One child server process and its log file (rotated at ``log_max_bytes``, ``log_backups`` old files kept)."""

    def __init__(self, name: str, log_path: Path, *, log_max_bytes: int = LOG_MAX_BYTES, log_backups: int = LOG_BACKUPS) -> None:
        self.name = name
        self.log_path = log_path
        self._log_max_bytes = log_max_bytes
        self._log_backups = log_backups
        self._log: logging.handlers.RotatingFileHandler | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None
        self._output: list[str] = []  # this start's output, up to OUTPUT_KEEP_BYTES
        self._output_bytes = 0
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def cpu_seconds(self) -> float | None:
        """CPU time used so far by the process and the rest of its process group (lmdeploy's engine
        workers), from /proc; None where that cannot be read (not running, not Linux)."""
        if not self.running or self.pid is None:
            return None
        return group_cpu_seconds(self.pid)

    @property
    def running(self) -> bool:
        """Whether the process was started and has not ended (asking reaps it once it has)."""
        return self._process is not None and self._process.poll() is None

    def start(
        self, command: Sequence[str], *, shown: str, env: Mapping[str, str] | None = None, pass_fds: Iterable[int] = ()
    ) -> None:
        """Starts ``command`` with the filtered environment plus ``env``; ``shown`` is what the log
        says was started (secrets left out); ``pass_fds`` stay open in the child."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is None:
            self._log = logging.handlers.RotatingFileHandler(
                self.log_path, maxBytes=self._log_max_bytes, backupCount=self._log_backups, encoding="utf-8"
            )
            self._log.terminator = ""  # the lines keep their own newlines
        self._output, self._output_bytes = [], 0
        self._tail.clear()
        self._write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {shown}\n")
        self._process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child_env(os.environ, env),
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        assert self._process.stdout is not None
        self._pump = threading.Thread(target=self._copy_output, args=(self._process.stdout,), name=f"{self.name} output", daemon=True)
        self._pump.start()

    def _write(self, text: str) -> None:
        if (handler := self._log) is not None:
            handler.handle(logging.makeLogRecord({"msg": text}))

    def _copy_output(self, pipe: Any) -> None:
        """Runs in a thread: the child's output, line by line, into the log (and this start's output)."""
        with pipe:
            for line in iter(lambda: pipe.readline(LINE_MAX_BYTES), b""):
                text = line.decode("utf-8", errors="replace")
                self._write(text)
                self._tail.append(text)
                if self._output_bytes < OUTPUT_KEEP_BYTES:
                    self._output.append(text)
                    self._output_bytes += len(line)

    async def start_until_ready(
        self, command: Sequence[str], *, shown: str, ready_url: str, timeout_s: float, what: str,
        progress: Progress | None = None, env: Mapping[str, str] | None = None, pass_fds: Iterable[int] = (), **ready_options: Any,
    ) -> float:  # fmt: skip
        """Starts ``command`` (``shown``, ``env`` and ``pass_fds`` as for start) and polls ``ready_url``
        until it answers (``ready_options`` go to wait_until_ready); stops the process again if it
        does not. Returns the seconds it took."""
        self.start(command, shown=shown, env=env, pass_fds=pass_fds)
        try:
            return await wait_until_ready(
                ready_url, timeout_s=timeout_s, what=f"{what} (log: {self.log_path})", still_starting=self.exit_reason,
                progress=progress, **ready_options,
            )  # fmt: skip
        except BaseException:
            await self.stop()
            raise

    def output(self) -> str:
        """What the process wrote since this start (its first OUTPUT_KEEP_BYTES)."""
        return "".join(self._output)

    def exit_reason(self) -> str | None:
        """None while the process lives; else how it ended and its last lines of output."""
        if self._process is None or self._process.poll() is None:
            return None
        if self._pump is not None:
            self._pump.join(1.0)  # the last lines, once the pipe is drained
        return f"{describe_exit(self._process.returncode)}; last lines of its log ({self.log_path}):\n{''.join(self._tail).rstrip()}"

    async def stop(self) -> None:
        """SIGTERM to the process and its children; SIGKILL to whatever is left after STOP_GRACE_S."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            _signal_group(process, signal.SIGCONT)  # a stopped (SIGSTOP, hung) process handles SIGTERM only once continued
            try:
                await asyncio.to_thread(process.wait, STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", self.name, process.pid, STOP_GRACE_S)
        # Children (lmdeploy's engine workers hold the GPU memory) may outlive the server process.
        deadline = time.monotonic() + STOP_GRACE_S
        while group_alive(process.pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if group_alive(process.pid):
            log.warning("%s: processes of group %d outlived it; killing them", self.name, process.pid)
            _signal_group(process, signal.SIGKILL)
        if process.poll() is None:
            await asyncio.to_thread(process.wait)
        deadline = time.monotonic() + STOP_GRACE_S
        while group_alive(process.pid) and time.monotonic() < deadline:  # SIGKILL takes a moment to land
            await asyncio.sleep(0.05)
        pump, self._pump = self._pump, None
        if pump is not None:
            await asyncio.to_thread(pump.join, STOP_GRACE_S)
        if self._log is not None and (pump is None or not pump.is_alive()):
            self._log.close()
            self._log = None


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies, which only wait to be reaped, do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command)": state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)  # the process leads its own session, so its group holds its children
    except ProcessLookupError:
        pass
    except PermissionError:
        process.send_signal(sig)


async def wait_until_ready(
    url: str,
    *,
    timeout_s: float,
    what: str,
    still_starting: Callable[[], str | None],
    progress: Progress | None = None,
    headers: dict[str, str] | None = None,
    timeout_hint: str = "raise inference.start_timeout_s if the model is large, or read the server log",
) -> float:
    """Polls ``url`` until it answers 200 or the deadline passes; returns the seconds it took.

    ``still_starting`` returns None while the server process lives, or why it stopped.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    last_report = started
    async with httpx.AsyncClient(timeout=2.0, headers=headers) as http:
        while True:
            failure = still_starting()
            if failure is not None:
                raise TeambotError(f"{what} stopped while starting: {failure}")
            try:
                if (await http.get(url)).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            now = time.monotonic()
            if now > deadline:
                raise TeambotError(f"{what} was not ready after {timeout_s:.0f} s", timeout_hint)
            if progress and now - last_report >= 5:
                progress(f"still waiting for {what} ({now - started:.0f} s)")
                last_report = now
            await asyncio.sleep(READY_POLL_INTERVAL_S)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def group_cpu_seconds(pgid: int) -> float | None:
    """User + system CPU seconds of every process in process group ``pgid`` (its leader's pid)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    ticks = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile, or not ours to read
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ... utime(12) stime(13)
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _CLOCK_TICKS
