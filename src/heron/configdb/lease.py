"""A record kept alive under an etcd lease: a node's presence, and its watchdog's.

When the keeper stops renewing (killed, hung, cut off), etcd deletes the record once the TTL
runs out: that is how the cluster learns a node, or its watchdog, is gone.
"""

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from heron.configdb.client import EtcdTls
from heron.configdb.store import ConfigDB
from heron.models.common import Record

log = logging.getLogger(__name__)

# The etcd client endpoints a node last saw, in its state directory (see agent/endpoints.py).
ENDPOINTS_FILE = "etcd-endpoints.json"

RENEW_INTERVAL = 1.0  # at most; a short TTL renews more often
# A renewal that has not come back in this time is given up and sent again (a request to a
# member that lost its raft leader waits for the next one, which may not be quick).
CALL_TIMEOUT = 1.0
RETRY = 0.1


class LeaseKeeper:
    """Keeps one record alive under a lease, on the event loop it runs in.

    `may_renew` lets the owner hold renewals back (see `Registration`); simulated nodes in
    the scale benchmark run thousands of these on one loop; the fence watchdog keeps its
    node's presence with one.
    """

    def __init__(
        self,
        db: ConfigDB,
        key: str,
        record: Record,
        ttl: int,
        on_renewed: Callable[[], None] | None = None,
        may_renew: Callable[[], bool] = lambda: True,
    ):
        self.db = db
        self.key = key
        self.record = record
        self.ttl = ttl
        self.on_renewed = on_renewed
        self.may_renew = may_renew
        self.interval = min(RENEW_INTERVAL, ttl / 6)
        self.lease = 0
        self.registered = asyncio.Event()

    async def _register(self) -> None:
        lease = await self.db.grant(self.ttl)
        await self.db.put(self.key, self.record, lease=lease)
        # Kept only once the record is under it: a put cut off by the call's timeout (etcd
        # slow to apply) must be made again, not a bare lease renewed forever without it.
        self.lease = lease
        self.registered.set()
        log.info("%s registered (lease %x, ttl %ds)", self.key, self.lease, self.ttl)

    async def run(self) -> None:
        held_back = False
        while True:
            if not self.may_renew():
                if not held_back:
                    log.error("%s: no longer renewing its lease (held back)", self.key)
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


class LeaseThread:
    """A `LeaseKeeper` on a thread and event loop of its own, with its own etcd client: a busy
    main loop (a large listing, a slow disk) must not delay the renewals."""

    def __init__(
        self,
        endpoints: Sequence[str],
        key: str,
        record: Record,
        ttl: int,
        on_renewed: Callable[[], None] | None = None,
        may_renew: Callable[[], bool] = lambda: True,
        tls: EtcdTls | None = None,
    ):
        self.endpoints = list(endpoints)
        self.tls = tls
        self.key = key
        self.record = record
        self.ttl = ttl
        self.on_renewed = on_renewed
        self.may_renew = may_renew
        self.registered = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keeper: LeaseKeeper | None = None
        self._thread = threading.Thread(target=self._main, name=f"lease {key}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def wait_registered(self) -> None:
        await asyncio.to_thread(self.registered.wait)

    async def stop(self, leave: bool) -> None:
        """Stop renewing; with `leave`, revoke the lease so the record disappears at once."""
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
            ConfigDB(self.endpoints, self.tls),
            self.key,
            self.record,
            self.ttl,
            on_renewed=self._renewed,
            may_renew=self.may_renew,
        )
        try:
            renewing = loop.create_task(self._keeper.run())
            loop.run_forever()
            renewing.cancel()
        finally:
            loop.close()


def startup_endpoints(configured: Sequence[str], state_dir: Path) -> list[str]:
    """The configured endpoints, then those last seen (members that joined since). Saved
    ones of the other kind (plain ones saved before the cluster's etcd was converted to TLS)
    are left out: the configured ones say which kind the cluster speaks now."""
    try:
        saved = json.loads((state_dir / ENDPOINTS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        saved = []
    found = [e for e in saved if isinstance(e, str)]
    if configured:
        tls = configured[0].startswith("https://")
        found = [e for e in found if e.startswith("https://") == tls]
    return list(dict.fromkeys([*configured, *found]))
