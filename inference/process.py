"""A server process teambot owns: started with its output in a log file, stopped with its children.

The process gets its own session (Ctrl-C in the terminal reaches teambot, which stops it) and,
on Linux, SIGTERM when teambot dies without stopping it. Stopping signals the whole process
group: lmdeploy starts engine workers of its own. ``wait_until_ready`` polls a starting server
until it answers, reporting progress.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from config.errors import TeambotError

log = logging.getLogger(__name__)

Progress = Callable[[str], None]  # long work reports what it is doing, one line at a time

STOP_GRACE_S = 15.0
READY_POLL_INTERVAL_S = 0.2
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read the log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    """Runs in the child before exec: the server gets SIGTERM if teambot dies without stopping it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class ServerProcess:
    """One child server process and its log file."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self.log_offset = 0  # where this start's output begins in the log

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, command: Sequence[str], *, shown: str, env: Mapping[str, str] | None = None) -> None:
        """Starts ``command``; ``shown`` is what the log says was started (secrets left out)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {shown}\n".encode())
            log_file.flush()
            self.log_offset = log_file.tell()
            self._process = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    async def start_until_ready(
        self, command: Sequence[str], *, shown: str, ready_url: str, timeout_s: float, what: str,
        progress: Progress | None = None, **ready_options: Any,
    ) -> float:  # fmt: skip
        """Starts ``command`` and polls ``ready_url`` until it answers (``ready_options`` go to
        wait_until_ready); stops the process again if it does not. Returns the seconds it took."""
        self.start(command, shown=shown)
        try:
            return await wait_until_ready(
                ready_url, timeout_s=timeout_s, what=f"{what} (log: {self.log_path})", still_starting=self.exit_reason,
                progress=progress, **ready_options,
            )  # fmt: skip
        except BaseException:
            await self.stop()
            raise

    def output(self) -> str:
        """What the process wrote since this start."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self.log_offset)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def exit_reason(self) -> str | None:
        """None while the process lives; else its exit code and the end of its log."""
        if self._process is None or self._process.poll() is None:
            return None
        return f"exit code {self._process.returncode}; last lines of {self.log_path}:\n{tail(self.log_path)}"

    async def stop(self) -> None:
        """SIGTERM to the process and its children; SIGKILL to whatever is left after STOP_GRACE_S."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
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
