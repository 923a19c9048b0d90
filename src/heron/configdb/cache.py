"""A live, in-memory copy of the records under one prefix, kept current by a watch.

Controllers that look at the whole cluster every step (failover, balancing) and placement,
which weighs every VM for each create, would otherwise list and validate every record each
time: with 10 000 VMs that is most of a second of CPU per step. A `Cache` lists the prefix
once, then applies each change as it arrives, so a step costs what changed since the last.

What a cache holds may be a few milliseconds behind etcd. Writes based on it stay safe
because they compare-and-swap on the revision they read; after its own write a caller can
wait until the cache has caught up with it (`wait_for`), so it reads what it wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Generic

from pydantic import ValidationError

from heron.configdb.interface import ConfigStore
from heron.configdb.store import UNREACHABLE, Entry, M, parse

log = logging.getLogger(__name__)

# How long `wait_for` waits for its write to come back through the watch before it gives up
# and lets the caller go on with what it has.
CATCH_UP = 5.0


class Cache(Generic[M]):
    def __init__(self, db: ConfigStore, model: type[M], prefix: str):
        self.db = db
        self.model = model
        self.prefix = prefix
        self.revision = 0  # the store revision the copy is known to be current at
        self._entries: dict[str, Entry[M]] = {}  # by the key's last part (an id or a name)
        self._changed = asyncio.Condition()
        self._listeners: list[asyncio.Event] = []
        self._follower: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()

    async def start(self) -> None:
        """List the prefix and follow it; returns once the copy is complete. Idempotent."""
        if self._follower is None:
            self._follower = asyncio.create_task(self._follow(), name=f"cache {self.prefix}")
        synced = asyncio.create_task(self._synced.wait())
        done, _ = await asyncio.wait([synced, self._follower], return_when="FIRST_COMPLETED")
        if synced not in done:
            synced.cancel()
            self._follower.result()  # the follower failed before the first list: say why

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._follower

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry[M]]:
        return iter(list(self._entries.values()))

    def items(self) -> list[tuple[str, Entry[M]]]:
        return list(self._entries.items())

    def values(self) -> list[M]:
        return [e.value for e in self._entries.values()]

    def get(self, name: str) -> Entry[M] | None:
        return self._entries.get(name)

    def listen(self) -> asyncio.Event:
        """An event set on every change from now on; the listener clears it."""
        event = asyncio.Event()
        self._listeners.append(event)
        return event

    async def wait_for(self, revision: int, timeout: float = CATCH_UP) -> bool:
        """Wait until the copy includes a write made at `revision` under this prefix."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.revision >= revision), timeout
                )
        return self.revision >= revision

    async def _follow(self) -> None:
        delay = 0.5
        while True:  # the first list waits for etcd: a slow or cut-off start is no failure
            try:
                await self._load()
                break
            except UNREACHABLE as exc:
                log.warning("cache %s: etcd cannot be reached (%r); again in %g s",
                            self.prefix, exc, delay)  # fmt: skip
                await asyncio.sleep(delay)  # etcd's return is not announced
                delay = min(delay * 2, 15.0)
        self._synced.set()
        while True:
            try:
                await self._apply_changes()
            except Exception as exc:  # e.g. the re-list after a resync failed: start over
                log.warning("cache %s: %r; listing again", self.prefix, exc)
                await asyncio.sleep(0.5)  # back-off before the next attempt
                with contextlib.suppress(Exception):
                    await self._load()
                    await self._announce()

    async def _apply_changes(self) -> None:
        async for event in self.db.watch(self.prefix, self.revision + 1):
            if event.type == "resync":
                await self._load()
            else:
                name = event.key[len(self.prefix) :]
                held = self._entries.get(name)
                if held is not None and held.revision >= event.revision:
                    pass  # replayed after a resync: the list already had something newer
                elif event.type == "delete":
                    self._entries.pop(name, None)
                else:
                    self._put(event.key, name, event.value, event.revision, event.lease)
                self.revision = max(self.revision, event.revision)
            await self._announce()

    async def _load(self) -> int:
        stored, revision = await self.db.list_raw_at(self.prefix)
        self._entries = {}
        for raw in stored:
            self._put(raw.key, raw.key[len(self.prefix) :], raw.value, raw.revision, raw.lease)
        self.revision = revision
        return self.revision

    def _put(self, key: str, name: str, raw: bytes, revision: int, lease: int = 0) -> None:
        try:
            value = parse(self.model, raw)
        except ValidationError as exc:
            # A record nobody can use is left out rather than stopping every reader.
            log.warning("cache %s: skipping invalid record %s: %s", self.prefix, key, exc)
            self._entries.pop(name, None)
            return
        self._entries[name] = Entry(key, value, revision, lease)

    async def _announce(self) -> None:
        for listener in self._listeners:
            listener.set()
        async with self._changed:
            self._changed.notify_all()
