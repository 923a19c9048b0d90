"""The etcd members the agent talks to follow etcd's own membership.

An agent starts with the endpoints it was given (with an embedded etcd: the first node's one
member). When etcd grows to 3 and 5 voters and shrinks again, the agent's clients must reach
the members that exist: a node that only knew the first member would lose its lease, and have
its HA VMs fenced, the moment that member's node failed, although a quorum lives on. The list
is saved in the state directory, so a restarted agent starts from the cluster it last saw.
"""

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

from heron.configdb import ConfigDB
from heron.configdb.lease import ENDPOINTS_FILE
from heron.configdb.membership import client_endpoints
from heron.util.files import replace_text

log = logging.getLogger(__name__)

INTERVAL = 5.0  # membership changes take tens of seconds; a new one is picked up within this


class EndpointFollower:
    def __init__(
        self,
        db: ConfigDB,
        state_dir: Path,
        also: Callable[[list[str]], None] = lambda _: None,
    ):
        self.db = db
        self.state_dir = state_dir
        self.also = also  # e.g. the lease renewal thread's own client

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception as exc:
                log.debug("reading etcd's members: %r", exc)
            await asyncio.sleep(INTERVAL)  # the check period

    async def step(self) -> bool:
        endpoints = await client_endpoints(self.db)
        if not await self.db.use_endpoints(endpoints):
            return False
        path = self.state_dir / ENDPOINTS_FILE
        replace_text(path, json.dumps(endpoints))
        self.also(endpoints)
        log.info("etcd members now %s", ", ".join(endpoints))
        return True
