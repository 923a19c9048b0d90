"""The node's presence in the cluster: its record lives under a lease renewed every second.

When the agent stops renewing (killed, hung, cut off), etcd deletes the record once the TTL
runs out: that is how the cluster learns a node is gone, with no home-made failure detector.
"""

import asyncio
import logging
from collections.abc import Callable

from heron.configdb import ConfigDB, keys
from heron.models.node import Node

log = logging.getLogger(__name__)

RENEW_INTERVAL = 1.0  # at most; a short TTL renews more often


class Registration:
    def __init__(
        self, db: ConfigDB, node: Node, ttl: int, on_renewed: Callable[[], None] | None = None
    ):
        self.db = db
        self.node = node
        self.ttl = ttl
        self.on_renewed = on_renewed
        self.interval = min(RENEW_INTERVAL, ttl / 6)
        self.lease = 0
        self.registered = asyncio.Event()

    async def _register(self) -> None:
        self.lease = await self.db.grant(self.ttl)
        await self.db.put(keys.node(self.node.name), self.node, lease=self.lease)
        self.registered.set()
        log.info("node %s registered (lease %x, ttl %ds)", self.node.name, self.lease, self.ttl)

    async def update(self, node: Node) -> None:
        self.node = node
        await self.db.put(keys.node(node.name), node, lease=self.lease)

    async def run(self) -> None:
        while True:
            try:
                if not self.lease or await self.db.refresh(self.lease) <= 0:
                    await self._register()
                if self.on_renewed is not None:
                    self.on_renewed()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lease renewal failed: %r", exc)
                self.lease = 0 if isinstance(exc, KeyError) else self.lease
            await asyncio.sleep(self.interval)  # the renewal period itself

    async def leave(self) -> None:
        """A clean stop: revoke the lease so the node disappears at once."""
        if self.lease:
            await self.db.revoke(self.lease)
