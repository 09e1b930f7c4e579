"""Is the LLM server making progress? Busy is not dead; silence while requests wait is hung.

Whoever sends the server a request (the chat client, /healthz's probe) marks it with ``track()``
and marks each sign of life it sees with ``progressed()``: a response, every streamed chunk. Any
request's progress counts for all: a request queued behind another's generation is no evidence
of anything while that generation streams. The server is

- ``idle``: nothing in flight;
- ``busy``: requests in flight and a sign of life within ``inference.hang_timeout_s`` (the clock
  starts when the first request of a busy spell is sent);
- ``hung``: requests in flight and no sign of life for ``inference.hang_timeout_s`` (a deadlocked
  or SIGSTOPped process: alive, listening, answering nothing).

For a server teambot started, its supervisor adds one more sign of life (``computing()``): its
process uses CPU. A long prompt on a CPU sends nothing until the first token (a 1,000-token
prompt takes about 20 s for internlm2_5-1_8b-chat on 2 cores, longer than that on one), and must
not be taken for a hang; a deadlocked or stopped process uses none.

Whether the process lives is the supervisor's to say; this only watches the traffic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

log = logging.getLogger(__name__)

State = Literal["idle", "busy", "hung"]


class LLMActivity:
    def __init__(self, hang_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.hang_timeout_s = hang_timeout_s
        self.in_flight = 0
        self._clock = clock
        self._since = clock()  # the last sign of life, or the start of this busy spell
        self._hang_reported = False

    @contextmanager
    def track(self) -> Iterator[None]:
        """Around one request to the server, from sending it until its answer ends or it is abandoned."""
        if self.in_flight == 0:
            self._since = self._clock()
            self._hang_reported = False
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def progressed(self) -> None:
        """The server answered or streamed something."""
        now = self._clock()
        if self._hang_reported:
            log.warning("the LLM server made progress again after %.0f s without any", now - self._since)
            self._hang_reported = False
        self._since = now

    def computing(self) -> None:
        """The server's process is working (its CPU time grows) while requests wait: reading a long prompt."""
        if self.in_flight:
            self.progressed()

    def restarted(self) -> None:
        """The server was started again: the requests still in flight wait on a new process."""
        self._since = self._clock()
        self._hang_reported = False

    def silent_s(self) -> float:
        """Seconds requests have waited without a sign of life (0 when none waits)."""
        return self._clock() - self._since if self.in_flight else 0.0

    def state(self) -> State:
        if not self.in_flight:
            return "idle"
        return "hung" if self.silent_s() >= self.hang_timeout_s else "busy"

    def report_hang(self) -> bool:
        """True the first time it is asked during a hang: the caller logs it (once) and acts."""
        if self.state() != "hung" or self._hang_reported:
            return False
        self._hang_reported = True
        return True

    def hang_detail(self) -> str:
        return (
            f"made no progress for {self.silent_s():.0f} s while {self.in_flight} requests waited "
            f"(inference.hang_timeout_s = {self.hang_timeout_s:g})"
        )
