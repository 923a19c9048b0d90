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
# A renewal that has not come back in this time is given up and sent again (a request to a
# member that lost its raft leader waits for the next one, which may not be quick).
CALL_TIMEOUT = 1.0
RETRY = 0.1


class LeaseKeeper:
    """Keeps one node record alive under a lease, on the event loop it runs in.

    `may_renew` lets the owner hold renewals back (see `Registration`); simulated nodes in
    the scale benchmark run thousands of these on one loop.
    """

    def __init__(
        self,
        db: ConfigDB,
        node: Node,
        ttl: int,
        on_renewed: Callable[[], None] | None = None,
        may_renew: Callable[[], bool] = lambda: True,
    ):
        self.db = db
        self.node = node
        self.ttl = ttl
        self.on_renewed = on_renewed
        self.may_renew = may_renew
        self.interval = min(RENEW_INTERVAL, ttl / 6)
        self.lease = 0
        self.registered = asyncio.Event()

    async def _register(self) -> None:
        self.lease = await self.db.grant(self.ttl)
        await self.db.put(keys.node(self.node.name), self.node, lease=self.lease)
        self.registered.set()
        log.info("node %s registered (lease %x, ttl %ds)", self.node.name, self.lease, self.ttl)

    async def run(self) -> None:
        held_back = False
        while True:
            if not self.may_renew():
                if not held_back:
                    log.error("the agent's main loop is stuck: no longer renewing the lease")
                held_back = True
            else:
                held_back = False
                try:
                    await asyncio.wait_for(self._renew(), CALL_TIMEOUT)
                except Exception as exc:
                    # e.g. etcd electing a new raft leader: try again at once, the fence
                    # deadline is counting.
                    log.warning("lease renewal failed: %r", exc)
                    await asyncio.sleep(RETRY)  # a short pause between attempts
                    continue
            await asyncio.sleep(self.interval)  # the renewal period itself

    async def _renew(self) -> None:
        if not self.lease or await self.db.refresh(self.lease) <= 0:
            await self._register()
        if self.on_renewed is not None:
            self.on_renewed()

    async def leave(self) -> None:
        """Revoke the lease so the node disappears at once."""
        if self.lease:
            await self.db.revoke(self.lease)


class Registration:
    """The agent's lease, kept by a `LeaseKeeper` on a thread and event loop of its own."""

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
        self.registered = threading.Event()
        self._pulse = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keeper: LeaseKeeper | None = None
        self._thread = threading.Thread(target=self._main, name="registration", daemon=True)

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
        loop, keeper = self._loop, self._keeper
        if loop is None or keeper is None:
            return
        if leave:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(keeper.leave(), loop))
        loop.call_soon_threadsafe(loop.stop)

    def use_endpoints(self, endpoints: list[str]) -> None:
        """Callable from any thread: renew through these etcd members from now on."""
        loop, keeper = self._loop, self._keeper
        if loop is not None and keeper is not None:
            asyncio.run_coroutine_threadsafe(keeper.db.use_endpoints(endpoints), loop)

    def _renewed(self) -> None:
        self.registered.set()
        if self.on_renewed is not None:
            self.on_renewed()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._keeper = LeaseKeeper(
            ConfigDB(self.endpoints),
            self.node,
            self.ttl,
            on_renewed=self._renewed,
            may_renew=lambda: time.monotonic() - self._pulse <= self.stall_limit,
        )
        try:
            renewing = loop.create_task(self._keeper.run())
            loop.run_forever()
            renewing.cancel()
        finally:
            loop.close()
