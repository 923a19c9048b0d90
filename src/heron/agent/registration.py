"""The node's presence in the cluster: its record lives under a lease renewed twice a second.

When the agent stops renewing (killed, hung, cut off), etcd deletes the record once the TTL
runs out: that is how the cluster learns a node is gone, with no home-made failure detector.

The renewals run on a thread of their own, with their own event loop and etcd client: a main
loop busy for a second (a large listing, a slow disk) must not make a healthy node look dead,
which would fence its HA VMs. A main loop that is truly stuck must still count as dead, so the
thread renews only while the main loop has pulsed within `stall_limit` seconds. SIGSTOP
stops every thread alike.
"""

import asyncio
import time
from collections.abc import Callable, Sequence

from heron.configdb import keys
from heron.configdb.client import EtcdTls
from heron.configdb.lease import LeaseThread
from heron.models.node import Node

STALL_LIMIT = 10.0
PULSE = 0.5


class Registration(LeaseThread):
    """The agent's lease: renewed on a thread of its own while the main loop pulses."""

    def __init__(
        self,
        endpoints: Sequence[str],
        node: Node,
        ttl: int,
        on_renewed: Callable[[], None] | None = None,
        stall_limit: float = STALL_LIMIT,
        tls: EtcdTls | None = None,
    ):
        super().__init__(
            endpoints, keys.node(node.name), node, ttl, on_renewed, may_renew=self._pulsed, tls=tls
        )
        self.node = node
        self.stall_limit = stall_limit
        self._pulse = time.monotonic()

    async def pulse_forever(self) -> None:
        """Runs on the main loop: proof that it still turns."""
        while True:
            self._pulse = time.monotonic()
            await asyncio.sleep(PULSE)  # the pulse period

    def _pulsed(self) -> bool:
        return time.monotonic() - self._pulse <= self.stall_limit
