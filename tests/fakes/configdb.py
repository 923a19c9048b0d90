"""An in-memory ConfigDB: the interface and the etcd semantics of heron.configdb.store.ConfigDB.

Revisions work as etcd's: one store-wide counter that every successful write transaction moves
by one, each key carrying the revision of its last change (mod_revision); a transaction that
changes nothing moves nothing. Watches replay history from a revision and then follow, and ask
for a resync when that history was compacted away. Leases expire by the clock given, or at once
through `expire`, which is what a node that lost its lease looks like to everyone else.

Every call yields to the event loop first, as a round trip to etcd would: concurrent writers
interleave, so compare-and-swap conflicts really happen.

What it does not model: several members, request timeouts, lost connections (but for a
watch: `watches_cut` breaks every watch stream for a while, as a reconnect would).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from heron.configdb.interface import ConfigStore
from heron.configdb.store import (
    ConfigDB,
    Conflict,
    Entry,
    M,
    RawEntry,
    T,
    Txn,
    WatchEvent,
    Writes,
    parse,
)


class LeaseNotFound(Exception):
    """A write named a lease that does not exist (etcd: "requested lease not found")."""


class DuplicateKey(Exception):
    """One transaction wrote the same key twice (etcd: "duplicate key given in txn request")."""


@dataclass
class _KeyValue:
    value: bytes
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class _Change:
    type: Literal["put", "delete"]
    key: str
    value: bytes
    revision: int
    lease: int


@dataclass
class _Lease:
    ttl: int
    expires_at: float
    keys: set[str] = field(default_factory=set)


class FakeConfigDB(Writes):
    """Same public methods as ConfigDB; several "clients" of one store are one object."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.endpoints: list[str] = ["fake"]
        self._clock = clock
        self._data: dict[str, _KeyValue] = {}
        self._revision = 1  # a new etcd store is at revision 1
        self._history: list[_Change] = []
        self._compacted = 0  # revisions below this are gone from the history
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 0x1000
        self._wakeups: set[asyncio.Event] = set()
        self._watched: builtins.list[str] = []  # the prefix of each live watch
        self._cut = False  # watch streams broken (see `watches_cut`)
        self._cuts = 0

    # -- connection (nothing to connect to) ----------------------------------------------

    async def use_endpoints(self, endpoints: Sequence[str]) -> bool:
        return False

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> FakeConfigDB:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def _round_trip(self) -> None:
        await asyncio.sleep(0)  # let other tasks run, as they would while etcd answers
        self._expire_due()

    # -- reads ---------------------------------------------------------------------------

    async def retrying_read(self, call: Callable[[], Awaitable[T]]) -> T:
        return await call()

    async def get_raw(self, key: str) -> tuple[bytes, int] | None:
        await self._round_trip()
        kv = self._data.get(key)
        return None if kv is None else (kv.value, kv.mod_revision)

    async def get(self, model: type[M], key: str) -> Entry[M] | None:
        await self._round_trip()
        kv = self._data.get(key)
        if kv is None:
            return None
        return Entry(key, parse(model, kv.value), kv.mod_revision, kv.lease)

    async def list(self, model: type[M], prefix: str) -> list[Entry[M]]:
        entries, _ = await self.list_at(model, prefix)
        return entries

    async def list_at(self, model: type[M], prefix: str) -> tuple[builtins.list[Entry[M]], int]:
        await self._round_trip()
        entries = [
            Entry(key, parse(model, kv.value), kv.mod_revision, kv.lease)
            for key, kv in sorted(self._data.items())
            if key.startswith(prefix)
        ]
        return entries, self._revision

    async def list_raw_at(self, prefix: str) -> tuple[builtins.list[RawEntry], int]:
        await self._round_trip()
        entries = [
            RawEntry(key, kv.value, kv.mod_revision, kv.lease)
            for key, kv in sorted(self._data.items())
            if key.startswith(prefix)
        ]
        return entries, self._revision

    async def dump(self, prefix: str = "/") -> dict[str, bytes]:
        await self._round_trip()
        return {k: kv.value for k, kv in sorted(self._data.items()) if k.startswith(prefix)}

    async def revision(self) -> int:
        await self._round_trip()
        return self._revision

    # -- writes --------------------------------------------------------------------------

    async def commit(self, txn: Txn) -> int:
        await self._round_trip()
        written = [key for key, _, _ in txn.puts] + list(txn.deletes)
        if len(set(written)) != len(written):
            raise DuplicateKey("one transaction writes a key twice")
        for _, _, lease in txn.puts:
            if lease and lease not in self._leases:
                raise LeaseNotFound(f"lease {lease:x} does not exist")
        if not all(self._holds(kind, key, expected) for kind, key, expected in txn.checks):
            raise Conflict("the record was changed by someone else; read it again")
        changes: builtins.list[_Change] = []
        revision = self._revision + 1
        for key, value, lease in txn.puts:
            changes.append(_Change("put", key, value, revision, lease))
        for key in txn.deletes:
            if key in self._data:  # deleting nothing is no change, as in etcd
                changes.append(_Change("delete", key, b"", revision, 0))
        self._apply(changes)
        return self._revision

    def _holds(self, kind: str, key: str, expected: int | bytes) -> bool:
        kv = self._data.get(key)
        if kind == "value":
            return kv is not None and kv.value == expected  # etcd: no value to compare fails
        if kind == "version":
            return (kv.version if kv else 0) == expected
        if kind == "mod":
            return (kv.mod_revision if kv else 0) == expected
        raise ValueError(f"unknown comparison {kind!r}")

    def _apply(self, changes: builtins.list[_Change]) -> None:
        if not changes:
            return
        self._revision = changes[0].revision
        for change in changes:
            old = self._data.get(change.key)
            if old is not None and old.lease in self._leases:
                self._leases[old.lease].keys.discard(change.key)
            if change.type == "delete":
                del self._data[change.key]
                continue
            version = old.version + 1 if old else 1
            self._data[change.key] = _KeyValue(change.value, change.revision, version, change.lease)
            if change.lease:
                self._leases[change.lease].keys.add(change.key)
        self._history.extend(changes)
        self._wake_watchers()

    def _wake_watchers(self) -> None:
        for wakeup in self._wakeups:
            wakeup.set()

    # -- leases --------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        await self._round_trip()
        self._next_lease += 1
        self._leases[self._next_lease] = _Lease(ttl, self._clock() + ttl)
        self._schedule_expiry(ttl)
        return self._next_lease

    async def refresh(self, lease_id: int) -> int:
        await self._round_trip()
        lease = self._leases.get(lease_id)
        if lease is None:
            return 0
        lease.expires_at = self._clock() + lease.ttl
        self._schedule_expiry(lease.ttl)
        return lease.ttl

    async def revoke(self, lease_id: int) -> None:
        await self._round_trip()
        self.expire(lease_id)

    def expire(self, lease_id: int) -> None:
        """End a lease now, as its TTL running out would: its keys go in one revision."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        revision = self._revision + 1
        self._apply([_Change("delete", key, b"", revision, 0) for key in sorted(lease.keys)])

    def _expire_due(self) -> None:
        now = self._clock()
        for lease_id in [i for i, lease in self._leases.items() if lease.expires_at <= now]:
            self.expire(lease_id)

    def _schedule_expiry(self, ttl: int) -> None:
        # Keys of a lease nobody refreshes vanish even when nobody calls in: watchers see it.
        with contextlib.suppress(RuntimeError):  # no loop running: checked on the next call
            asyncio.get_running_loop().call_later(ttl + 0.01, self._expire_due)

    # -- history -------------------------------------------------------------------------

    def compact(self, revision: int) -> None:
        """Forget the history before `revision`, as etcd's compaction does."""
        self._compacted = max(self._compacted, revision)
        self._history = [c for c in self._history if c.revision >= self._compacted]

    def watching(self, prefix: str) -> bool:
        """Whether a watch of `prefix` is open: a test waits for it before a change that
        only the watch would report."""
        return prefix in self._watched

    @contextlib.asynccontextmanager
    async def watches_cut(self) -> AsyncIterator[None]:
        """Watch streams are broken meanwhile (etcd out of their reach); then each resumes as
        ConfigDB.watch does after a reconnect: from the revision after the last event it
        delivered, with a `resync` first if that history was compacted meanwhile."""
        self._cut = True
        try:
            yield
        finally:
            self._cut = False
            self._cuts += 1
            self._wake_watchers()

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Every change under `prefix` from `start_revision` on; a `resync` first when that
        history was compacted, then from the oldest revision still kept."""
        await self._round_trip()
        next_revision = start_revision if start_revision > 0 else self._revision + 1
        resumed = -1  # a new watch is a (re)connect too
        wakeup = asyncio.Event()
        self._wakeups.add(wakeup)
        self._watched.append(prefix)
        try:
            while True:
                wakeup.clear()
                if self._cut:
                    await wakeup.wait()
                    continue
                if resumed != self._cuts:
                    resumed = self._cuts
                    # A live stream is never cut short by compaction; one that (re)starts
                    # from a compacted revision is told to list again.
                    if next_revision < self._compacted:
                        next_revision = self._compacted
                        yield WatchEvent("resync", prefix, b"", next_revision)
                pending = [
                    c
                    for c in self._history
                    if c.revision >= next_revision and c.key.startswith(prefix)
                ]
                for change in pending:
                    yield WatchEvent(
                        change.type, change.key, change.value, change.revision, change.lease
                    )
                if pending:
                    next_revision = pending[-1].revision + 1
                else:
                    await wakeup.wait()  # set by the next write
        finally:
            self._wakeups.discard(wakeup)
            self._watched.remove(prefix)


def _both_are_config_stores(fake: FakeConfigDB, real: ConfigDB) -> tuple[ConfigStore, ...]:
    """Never called: a type checker proves here that both provide the whole interface."""
    return fake, real
