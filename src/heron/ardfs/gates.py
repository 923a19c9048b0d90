"""Per-block gates: writes to a block share it, a repair or rebuild of the block has it alone.

A rebuild copies a whole chunk from a healthy copy to a stale one; a write landing between
its read and its write would be lost on the rebuilt copy, so the two must not overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator


class BlockGates:
    def __init__(self) -> None:
        self._writers: Counter[int] = Counter()
        self._closed: dict[int, asyncio.Event] = {}  # block -> set when its exclusive user leaves
        self._idle: dict[int, asyncio.Event] = {}  # block -> set when its last writer leaves

    def try_enter(self, block: int) -> bool:
        """Share the block at once if nobody has it alone (for writes that do not suspend)."""
        if block in self._closed:
            return False
        self._writers[block] += 1
        return True

    def leave(self, block: int) -> None:
        self._writers[block] -= 1
        if not self._writers[block]:
            del self._writers[block]
            idle = self._idle.pop(block, None)
            if idle is not None:
                idle.set()

    @contextlib.asynccontextmanager
    async def shared(self, block: int) -> AsyncIterator[None]:
        while (closed := self._closed.get(block)) is not None:
            await closed.wait()
        self._writers[block] += 1
        try:
            yield
        finally:
            self.leave(block)

    @contextlib.asynccontextmanager
    async def exclusive(self, block: int) -> AsyncIterator[None]:
        while (closed := self._closed.get(block)) is not None:
            await closed.wait()
        mine = asyncio.Event()
        self._closed[block] = mine
        try:
            while self._writers.get(block):
                idle = self._idle.setdefault(block, asyncio.Event())
                await idle.wait()
            yield
        finally:
            del self._closed[block]
            mine.set()
