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
import logging
import threading
import time
from collections.abc import Callable, Sequence

from heron.configdb import ConfigDB, keys
from heron.models.node import Node

log = logging.getLogger(__name__)

RENEW_INTERVAL = 1.0  # at most; a short TTL renews more often
STALL_LIMIT = 10.0
PULSE = 0.5


class Registration:
    def __init__(
        self,
        endpoints: Sequence[str],
        node: Node,
        ttl: int,
        on_renewed: Callable[[], None] | None = None,
        stall_limit: float = STALL_LIMIT,
    ):
        self.endpoints = list(endpoints)
        self.node = node
        self.ttl = ttl
        self.on_renewed = on_renewed
        self.stall_limit = stall_limit
        self.interval = min(RENEW_INTERVAL, ttl / 6)
        self.lease = 0
        self.registered = threading.Event()
        self._pulse = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._db: ConfigDB | None = None
        self._thread = threading.Thread(target=self._main, name="registration", daemon=True)

    # -- the main loop's side ------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    async def pulse_forever(self) -> None:
        """Runs on the main loop: proof that it still turns."""
        while True:
            self._pulse = time.monotonic()
            await asyncio.sleep(PULSE)  # the pulse period

    async def wait_registered(self) -> None:
        await asyncio.to_thread(self.registered.wait)

    async def stop(self, leave: bool) -> None:
        """Stop renewing; with `leave`, revoke the lease so the node disappears at once."""
        loop = self._loop
        if loop is None:
            return
        if leave:
            done = asyncio.run_coroutine_threadsafe(self._leave(), loop)
            await asyncio.wrap_future(done)
        loop.call_soon_threadsafe(loop.stop)

    # -- the thread's side ---------------------------------------------------------------

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            renewing = loop.create_task(self._renew_forever())
            loop.run_forever()
            renewing.cancel()
        finally:
            loop.close()

    async def _register(self, db: ConfigDB) -> None:
        self.lease = await db.grant(self.ttl)
        await db.put(keys.node(self.node.name), self.node, lease=self.lease)
        self.registered.set()
        log.info("node %s registered (lease %x, ttl %ds)", self.node.name, self.lease, self.ttl)

    async def _renew_forever(self) -> None:
        self._db = db = ConfigDB(self.endpoints)
        stalled = False
        while True:
            if time.monotonic() - self._pulse > self.stall_limit:
                if not stalled:
                    log.error("the agent's main loop is stuck: no longer renewing the lease")
                stalled = True
            else:
                stalled = False
                try:
                    if not self.lease or await db.refresh(self.lease) <= 0:
                        await self._register(db)
                    if self.on_renewed is not None:
                        self.on_renewed()
                except Exception as exc:
                    log.warning("lease renewal failed: %r", exc)
            await asyncio.sleep(self.interval)  # the renewal period itself

    async def _leave(self) -> None:
        if self.lease and self._db is not None:
            await self._db.revoke(self.lease)
