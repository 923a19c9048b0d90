"""Looking at storage that may hang, without hanging with it.

A hard NFS mount whose server is gone (the default for VM storage, and what a pool's mount
options usually ask for) blocks `statvfs` and `stat` in the kernel until the server is back,
and no signal ends the wait. Made on the event loop, such a call would freeze the node's API
and agent; made in the default thread pool, a few of them would take every thread.

So the API's capacity and allocation figures come from `probe`: the call runs in a thread of
a small pool of its own, the caller waits at most `TIMEOUT` and otherwise gets None (shown as
unknown), and while a storage's earlier call is still stuck no new one is started for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

TIMEOUT = 2.0
_threads = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
# Any: the calls return all sorts of things; only whether they are done is asked here.
_stuck: dict[str, concurrent.futures.Future[Any]] = {}


async def probe(key: str, call: Callable[[], T], timeout: float = TIMEOUT) -> T | None:
    """call() in a thread; None if it takes longer than `timeout` or `key`'s last call (its
    storage: a pool's name) has not returned yet."""
    earlier = _stuck.get(key)
    if earlier is not None:
        if not earlier.done():
            return None
        del _stuck[key]
        log.info("storage %s answers again", key)
    future = _threads.submit(call)
    try:
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout)
    except TimeoutError:
        _stuck[key] = future
        log.warning("storage %s did not answer in %.0f s (an NFS server away?)", key, timeout)
        return None
