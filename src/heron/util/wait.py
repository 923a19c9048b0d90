"""Waiting for a condition with a deadline: the one poll loop of Heron.

Polling is for what nothing notifies us of: a record another node writes, a process that is
not our child, a port that starts to listen. `check` runs at once, then every `interval`,
and a last time at the deadline; its first truthy result is returned, or None when time ran
out, so each caller says in its own terms (its own error, a log line) what did not happen.
An exception from `check` ends the wait: it is the caller's to raise.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def until(
    check: Callable[[], Awaitable[T | None]], timeout: float, interval: float = 0.1
) -> T | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        left = deadline - loop.time()
        if left <= 0:
            return None
        await asyncio.sleep(min(interval, left))


def until_sync(check: Callable[[], T | None], timeout: float, interval: float = 0.1) -> T | None:
    """`until` for code without an event loop (tools, tests): it blocks the thread."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(interval, left))


async def any_set(events: list[asyncio.Event], timeout: float) -> None:
    """Wait until one of `events` is set, or `timeout` seconds; then clear them all (a
    controller's wake-up: a change it listens to, or its periodic look)."""
    waiting = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiting:
            task.cancel()
    for event in events:
        event.clear()
