"""Whether another process holds an SQLite database locked, found without taking a lock.

Chroma keeps its data in SQLite and, when another process holds that database locked, waits
inside its Rust code for as long as the lock lasts, holding Python's GIL: the whole teambot
process would freeze. So the store asks first. SQLite (in rollback-journal mode, which Chroma
uses) locks byte ranges of the database file with POSIX advisory locks; ``F_GETLK`` asks the
kernel whether a lock would conflict with another process's, and changes no lock.

The file descriptor stays open for the life of the process on purpose: closing any descriptor
of a file drops every POSIX lock this process holds on it, Chroma's own included.
"""

from __future__ import annotations

import fcntl
import os
import struct
import sys
import time
from pathlib import Path

# SQLite's lock bytes (src/os.h): PENDING_BYTE at 1 GiB, RESERVED_BYTE after it, then the 510-byte SHARED range.
PENDING_BYTE = 0x40000000
RESERVED_BYTE = PENDING_BYTE + 1
SHARED_FIRST = PENDING_BYTE + 2
SHARED_SIZE = 510
LOCK_RANGE = (PENDING_BYTE, SHARED_FIRST + SHARED_SIZE - PENDING_BYTE)
# struct flock on Linux (x86_64 and aarch64): l_type, l_whence, l_start, l_len, l_pid.
_FLOCK = "hhqqi4x"
POLL_S = 0.02


class SqliteLockProbe:
    def __init__(self, database: Path) -> None:
        self.database = database
        self._fd: int | None = None

    def holder(self, writing: bool) -> int | None:
        """The pid of another process whose lock would block a read (or a write), or None."""
        if not sys.platform.startswith("linux"):
            return None  # the flock layout above is Linux's; elsewhere, no probe
        if self._fd is None:
            if not self.database.exists():
                return None
            self._fd = os.open(self.database, os.O_RDONLY | os.O_CLOEXEC)
        if writing:  # a writer waits for any other lock: readers' SHARED, a writer's RESERVED, PENDING
            return self._conflict(fcntl.F_WRLCK, *LOCK_RANGE)
        # a reader waits for a writer that holds PENDING or EXCLUSIVE
        return self._conflict(fcntl.F_RDLCK, PENDING_BYTE, 1) or self._conflict(fcntl.F_RDLCK, SHARED_FIRST, SHARED_SIZE)

    def wait(self, writing: bool, timeout_s: float) -> int | None:
        """Waits (polling) while another process's lock would block; returns its pid if it still does at the deadline."""
        deadline = time.monotonic() + timeout_s
        while (pid := self.holder(writing)) is not None:
            if time.monotonic() >= deadline:
                return pid
            time.sleep(POLL_S)
        return None

    def _conflict(self, kind: int, start: int, length: int) -> int | None:
        assert self._fd is not None
        answer = fcntl.fcntl(self._fd, fcntl.F_GETLK, struct.pack(_FLOCK, kind, os.SEEK_SET, start, length, 0))
        l_type, _, _, _, pid = struct.unpack(_FLOCK, answer)
        return None if l_type == fcntl.F_UNLCK else pid
