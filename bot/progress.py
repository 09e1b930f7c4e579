"""Showing a growing answer on a chat platform: the latest text, at most one edit per interval.

Edits run on their own task, so a slow one (a 429 waited out by the platform's client) never
holds up the answer: when it is done, the next edit shows whatever has arrived meanwhile.
``stop()`` lets the edit in flight finish, so nothing older can overwrite the final message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class ProgressPump:
    def __init__(self, show: Callable[[str], Awaitable[None]], interval_s: float, skippable: tuple[type[Exception], ...]) -> None:
        """``show(text)`` makes one edit; an error of a ``skippable`` type skips that edit (the final one is what counts)."""
        self._show = show
        self._interval_s = interval_s
        self._skippable = skippable
        self.text = ""  # what is shown: the lead, then the deltas
        self._dirty = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def append(self, delta: str) -> None:
        """More text after what is shown (the evidence preview first, then the answer as it grows)."""
        self.text += delta
        self._dirty.set()
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._run(), name="progress-edits")

    async def stop(self) -> None:
        """No more edits; returns once the one in flight, if any, is done."""
        self._closing = True
        self._dirty.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            if self._closing:
                return
            self._dirty.clear()
            try:
                await self._show(self.text)
            except self._skippable as exc:
                log.warning("a progress edit failed and was skipped: %s", type(exc).__name__)
            if self._closing:
                return
            await asyncio.sleep(self._interval_s)
