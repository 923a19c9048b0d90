"""Leader election on etcd: one key, created under the candidate's lease.

Whoever creates `key` (compare: it does not exist) leads until its lease ends, by `resign` or
by expiry when the leader stops renewing. The others watch the key and try again the moment it
is deleted. This is etcd's own mechanism, used as etcd's election API uses it.
"""

import asyncio
import contextlib
import logging

from heron.configdb.store import ConfigDB, Conflict

log = logging.getLogger(__name__)


class Election:
    def __init__(self, db: ConfigDB, key: str, candidate: str, ttl: int = 2):
        self.db = db
        self.key = key
        self.candidate = candidate
        self.ttl = ttl
        self.lease = 0
        self.leading = asyncio.Event()
        self.lost = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None

    async def leader(self) -> str | None:
        found = await self.db.get_raw(self.key)
        return found[0].decode() if found else None

    async def campaign(self) -> None:
        """Return once this candidate leads; keeps its lease renewed in the background."""
        self.lease = await self.db.grant(self.ttl)
        self._keeper = asyncio.create_task(self._keep_alive(), name=f"lease-{self.key}")
        while True:
            try:
                await self.db.create(self.key, self.candidate, lease=self.lease)
            except Conflict:
                await self._wait_vacant()
                continue
            self.lost.clear()
            self.leading.set()
            log.info("%s leads %s", self.candidate, self.key)
            return

    async def _wait_vacant(self) -> None:
        """Wait until the key is deleted (or already is)."""
        found = await self.db.get_raw(self.key)
        if found is None:
            return
        async for event in self.db.watch(self.key, found[1] + 1):
            if event.type in ("delete", "resync"):
                return

    async def _keep_alive(self) -> None:
        interval = max(self.ttl / 3, 0.2)
        while True:
            try:
                remaining = await self.db.refresh(self.lease)
            except Exception as exc:
                log.warning("election lease renewal failed: %r", exc)
                remaining = 1  # unknown yet: etcd may be failing over; try again
            if remaining <= 0 and self.leading.is_set():
                self.leading.clear()
                self.lost.set()
                log.warning("%s lost the lead of %s", self.candidate, self.key)
                return
            await asyncio.sleep(interval)  # the renewal period

    async def resign(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        if self.lease:
            await self.db.revoke(self.lease)
        self.leading.clear()
        self.lease = 0
