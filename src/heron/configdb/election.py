"""Leader election on etcd, with a fencing token and sub-second failover.

The leader holds one key whose value is its token (`<candidate> <random>`) and re-writes it
every `beat` seconds. Followers watch the key; when it has not changed for `timeout` seconds
the leader is dead or hung, and a follower takes the key over with compare-and-swap on the
revision it last saw, so exactly one of them wins. Leases cannot do this: etcd's minimum lease
TTL and its expiry sweep add up to more than the one second we allow for a new leader.

Everything a leader writes carries `fence(txn)`: a comparison that the key still holds its
token. A leader that was paused, lost the key and has not noticed yet cannot write anything.
"""

import asyncio
import contextlib
import logging
import secrets

from heron.configdb.store import ConfigDB, Conflict, Txn

log = logging.getLogger(__name__)

BEAT = 0.2
TIMEOUT = 0.8


async def leader_of(db: ConfigDB, key: str) -> str | None:
    """The candidate that holds the election's key now, if any."""
    found = await db.get_raw(key)
    return found[0].decode().split(" ", 1)[0] if found else None


class Election:
    def __init__(
        self, db: ConfigDB, key: str, candidate: str, beat: float = BEAT, timeout: float = TIMEOUT
    ):
        self.db = db
        self.key = key
        self.candidate = candidate
        self.beat = beat
        self.timeout = timeout
        self.token = f"{candidate} {secrets.token_hex(8)}"
        self.leading = asyncio.Event()
        self.lost = asyncio.Event()
        self._heart: asyncio.Task[None] | None = None

    async def leader(self) -> str | None:
        return await leader_of(self.db, self.key)

    def fence(self, txn: Txn) -> Txn:
        """Make `txn` apply only while this candidate still leads."""
        return txn.require_value(self.key, self.token)

    async def campaign(self) -> None:
        """Return once this candidate leads; the lead is then kept by a heartbeat task."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                if await self._try_to_lead():
                    break
            except Conflict:
                continue  # someone else was quicker: look again
            except Exception as exc:
                # etcd unavailable (e.g. electing its own leader): keep campaigning.
                log.debug("campaign for %s: %r", self.key, exc)
                await asyncio.sleep(self.beat)  # back-off while etcd is unavailable
        self.lost.clear()
        self.leading.set()
        self._heart = loop.create_task(self._heartbeat(), name=f"heartbeat-{self.key}")
        log.info("%s leads %s", self.candidate, self.key)

    async def _try_to_lead(self) -> bool:
        found = await self.db.get_raw(self.key)
        if found is None:
            await self.db.create(self.key, self.token)
            return True
        seen = found[1]
        if await self._changed_within(seen, self.timeout):
            return False
        # Silent for `timeout`: take over, unless someone else already did (Conflict).
        await self.db.put(self.key, self.token, revision=seen)
        return True

    async def _changed_within(self, revision: int, timeout: float) -> bool:
        """True if the key changes (a heartbeat, a deletion) within `timeout` seconds."""

        async def first_event() -> None:
            async for _ in self.db.watch(self.key, revision + 1):
                return

        try:
            await asyncio.wait_for(first_event(), timeout)
        except TimeoutError:
            return False
        return True

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        last_ok = loop.time()
        while True:
            try:
                await self.db.commit(self.fence(Txn()).put(self.key, self.token))
                last_ok = loop.time()
            except Conflict:
                self._step_down("another candidate took over")
                return
            except Exception as exc:
                # etcd unreachable: after `timeout` the others may have moved on without us.
                if loop.time() - last_ok > self.timeout:
                    self._step_down(f"heartbeat failing: {exc!r}")
                    return
            await asyncio.sleep(self.beat)  # the heartbeat period

    def _step_down(self, why: str) -> None:
        log.warning("%s lost the lead of %s: %s", self.candidate, self.key, why)
        self.leading.clear()
        self.lost.set()

    async def resign(self) -> None:
        if self._heart is not None:
            self._heart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heart
            self._heart = None
        if self.leading.is_set():
            # Unreachable etcd: the key then simply goes silent and another node takes over.
            with contextlib.suppress(Exception):
                await self.db.commit(self.fence(Txn()).delete(self.key))
        self.leading.clear()
