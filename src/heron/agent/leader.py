"""The leader role: every node campaigns; the one that leads runs the cluster-wide controllers.

When the lead is lost (another node took over, or etcd is unreachable for longer than the
election timeout) the controllers are cancelled at once and the node campaigns again. Their
writes are fenced by the election's token, so a deposed leader cannot act on stale beliefs.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from heron.configdb import ConfigDB, keys
from heron.configdb.election import Election

log = logging.getLogger(__name__)

# A coroutine function, not any awaitable: each runs as its own task.
Controller = Callable[[Election], Coroutine[Any, Any, None]]


class LeaderRole:
    def __init__(self, db: ConfigDB, node: str, controllers: Sequence[Controller]):
        self.election = Election(db, keys.LEADER, node)
        self.controllers = controllers

    async def run(self) -> None:
        while True:
            await self.election.campaign()
            jobs = [asyncio.create_task(c(self.election)) for c in self.controllers]
            lost = asyncio.create_task(self.election.lost.wait())
            done, _ = await asyncio.wait([lost, *jobs], return_when=asyncio.FIRST_COMPLETED)
            for job in done:
                if job is not lost and job.exception() is not None:
                    log.error("leader controller failed: %r", job.exception())
            for job in [lost, *jobs]:
                job.cancel()
            await asyncio.gather(lost, *jobs, return_exceptions=True)
            if self.election.leading.is_set():
                # A controller failed while we still lead: hand the lead on and start over.
                await self.election.resign()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.election.resign()
