"""ConfigDB: typed records in etcd.

Every write that depends on what was read is a compare-and-swap on the key's mod_revision, so
two writers never silently overwrite each other; a failed comparison raises `Conflict`.
Watches resume from the last revision they delivered after a reconnect, so a watcher sees
every change exactly once, or is told to re-list when etcd has compacted that history.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.rtypes
import aetcd.watcher
from pydantic import BaseModel, ValidationError

from heron.configdb import cas

# Conflict is defined with the retry that handles it; callers have always imported it here.
from heron.configdb.cas import Conflict as Conflict
from heron.configdb.client import REQUEST_TIMEOUT, Client, EtcdTls, make_client

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

READ_ATTEMPTS = 3
_RETRYABLE = (
    aetcd.exceptions.ConnectionFailedError,
    aetcd.exceptions.ConnectionTimeoutError,
    aetcd.exceptions.InternalError,
    aetcd.exceptions.WatchTimeoutError,
)
# What a request raises while etcd cannot be reached (no quorum, cut off, members down).
UNREACHABLE = _RETRYABLE


# What a member that was just removed from the cluster answers: its raft has stopped, so
# nothing sent to it was applied and the request may go to another member.
_REMOVED_MEMBER = ("raft: stopped", "server stopped", "permanently removed")


def member_removed(message: str) -> bool:
    """Whether an etcd error says the member asked has been removed (or is stopping)."""
    return any(sign in message for sign in _REMOVED_MEMBER)


def _member_removed(exc: BaseException) -> bool:
    return isinstance(exc, aetcd.exceptions.ClientError) and member_removed(str(exc))


@dataclass(frozen=True)
class Entry(Generic[M]):
    key: str
    value: M
    revision: int  # the key's mod_revision: pass it back to write only if nothing changed
    lease: int = 0


@dataclass(frozen=True)
class RawEntry:
    """A record as stored, not parsed: for readers that skip the ones they cannot read."""

    key: str
    value: bytes
    revision: int
    lease: int = 0


@dataclass(frozen=True)
class WatchEvent:
    """One change under a watched prefix. `resync` means history was lost: list again."""

    type: Literal["put", "delete", "resync"]
    key: str
    value: bytes
    revision: int
    lease: int = 0


def parse(model: type[M], raw: bytes) -> M:
    """A stored record, ignoring fields this version does not know.

    Records refuse unknown fields so that a typo in an API request fails loudly; but a record
    written by a newer node during a rolling upgrade may carry fields an older node has never
    heard of, and it must still read the rest.
    """
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        unknown = [e["loc"] for e in exc.errors() if e["type"] == "extra_forbidden"]
        if not unknown or len(unknown) != len(exc.errors()):
            raise
    data = json.loads(raw)
    for location in unknown:
        holder = data
        for part in location[:-1]:
            holder = holder[part]
        holder.pop(location[-1], None)
    return model.model_validate(data)


def _encode(value: BaseModel | str) -> bytes:
    if isinstance(value, BaseModel):
        return value.model_dump_json().encode()
    return value.encode()


@dataclass
class Txn:
    """An atomic group of checks and writes; build with the methods, run with `ConfigDB.commit`."""

    checks: list[tuple[str, str, int | bytes]] = field(default_factory=list)
    puts: list[tuple[str, bytes, int]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)

    def require_absent(self, key: str) -> Txn:
        self.checks.append(("version", key, 0))
        return self

    def require_revision(self, key: str, revision: int) -> Txn:
        """The key must still be at `revision` (0: must not exist)."""
        self.checks.append(("mod", key, revision))
        return self

    def require_value(self, key: str, value: str) -> Txn:
        """The key must hold exactly `value` (e.g. a leader's fencing token)."""
        self.checks.append(("value", key, value.encode()))
        return self

    def put(self, key: str, value: BaseModel | str, lease: int = 0) -> Txn:
        self.puts.append((key, _encode(value), lease))
        return self

    def delete(self, key: str) -> Txn:
        self.deletes.append(key)
        return self

    def merge(self, other: Txn) -> Txn:
        """Add `other`'s checks and writes to this transaction."""
        self.checks += other.checks
        self.puts += other.puts
        self.deletes += other.deletes
        return self


class Writes(abc.ABC):
    """The ConfigDB's writes of one record, all made of `commit` and `get` (so the tests'
    in-memory ConfigDB, which provides those two, writes exactly the same way)."""

    @abc.abstractmethod
    async def commit(self, txn: Txn) -> int: ...

    @abc.abstractmethod
    async def get(self, model: type[M], key: str) -> Entry[M] | None: ...

    async def put(
        self, key: str, value: BaseModel | str, *, revision: int | None = None, lease: int = 0
    ) -> int:
        """Write one record; with `revision`, only if the key is still at it (0: absent)."""
        txn = Txn().put(key, value, lease)
        if revision is not None:
            txn.require_revision(key, revision)
        return await self.commit(txn)

    async def create(self, key: str, value: BaseModel | str, *, lease: int = 0) -> int:
        return await self.commit(Txn().require_absent(key).put(key, value, lease))

    async def delete(self, key: str, *, revision: int | None = None) -> int:
        txn = Txn().delete(key)
        if revision is not None:
            txn.require_revision(key, revision)
        return await self.commit(txn)

    async def update(
        self, model: type[M], key: str, change: Callable[[M], M], attempts: int = cas.ATTEMPTS
    ) -> Entry[M]:
        """Read-modify-write with CAS, retried when another writer got in between."""

        async def attempt() -> Entry[M]:
            entry = await self.get(model, key)
            if entry is None:
                raise KeyError(key)
            value = change(entry.value.model_copy(deep=True))
            revision = await self.put(key, value, revision=entry.revision, lease=entry.lease)
            return Entry(key, value, revision, entry.lease)

        return await cas.retry(attempt, key, attempts)


class ConfigDB(Writes):
    def __init__(self, endpoints: Sequence[str], tls: EtcdTls | None = None):
        """`endpoints`: host:port, or https://host:port for an etcd that speaks TLS (then
        `tls` says what to show and trust)."""
        self.endpoints = list(endpoints)
        self.tls = tls
        self.client = make_client(self.endpoints, tls)
        # Clients of earlier endpoint lists: watches opened on them carry on until they
        # break and resume on the current client; closed with this ConfigDB.
        self._retired: list[Client] = []

    async def use_endpoints(self, endpoints: Sequence[str]) -> bool:
        """Talk to these members from now on (etcd grew or shrank); False if unchanged."""
        if not endpoints or set(endpoints) == set(self.endpoints):
            return False
        client = make_client(endpoints, self.tls)
        await client.connect()
        self._retired.append(self.client)
        self.client, self.endpoints = client, list(endpoints)
        return True

    async def connect(self) -> None:
        await self.client.connect()

    async def close(self) -> None:
        for client in [*self._retired, self.client]:
            with contextlib.suppress(Exception):
                await client.close()

    async def __aenter__(self) -> ConfigDB:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- reads ---------------------------------------------------------------------------

    async def retrying_read(self, call: Callable[[], Awaitable[T]]) -> T:
        """A read, tried again on another member when the one it went to has just gone
        (a removed or killed member resets its streams). Reads are idempotent; writes are
        never retried here."""
        for attempt in range(READ_ATTEMPTS):
            try:
                return await call()
            except aetcd.exceptions.ClientError as exc:
                gone = isinstance(exc, aetcd.exceptions.ConnectionFailedError)
                if not (gone or _member_removed(exc)) or attempt == READ_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))  # a moment for the channel to move on
        raise AssertionError("unreachable")

    async def get_raw(self, key: str) -> tuple[bytes, int] | None:
        result = await self.retrying_read(lambda: self.client.get(key.encode()))
        if result is None:
            return None
        return result.value, result.mod_revision

    async def get(self, model: type[M], key: str) -> Entry[M] | None:
        result = await self.retrying_read(lambda: self.client.get(key.encode()))
        if result is None:
            return None
        return Entry(key, parse(model, result.value), result.mod_revision, result.lease)

    async def list(self, model: type[M], prefix: str) -> list[Entry[M]]:
        entries, _ = await self.list_at(model, prefix)
        return entries

    # builtins.list: inside the class, `list` is the method above.
    async def list_at(self, model: type[M], prefix: str) -> tuple[builtins.list[Entry[M]], int]:
        """The records under `prefix` and the store revision they were read at."""
        result = await self.retrying_read(lambda: self.client.get_prefix(prefix.encode()))
        entries = [
            Entry(kv.key.decode(), parse(model, kv.value), kv.mod_revision, kv.lease)
            for kv in result
        ]
        return entries, result.header.revision

    async def list_raw_at(self, prefix: str) -> tuple[builtins.list[RawEntry], int]:
        """The records under `prefix` unparsed, and the store revision they were read at."""
        result = await self.retrying_read(lambda: self.client.get_prefix(prefix.encode()))
        entries = [RawEntry(kv.key.decode(), kv.value, kv.mod_revision, kv.lease) for kv in result]
        return entries, result.header.revision

    async def dump(self, prefix: str = "/") -> dict[str, bytes]:
        """Every key and value under `prefix`: for tests and diagnostics."""
        result = await self.retrying_read(lambda: self.client.get_prefix(prefix.encode()))
        return {kv.key.decode(): kv.value for kv in result}

    async def revision(self) -> int:
        """The store's current revision (read as the header of a one-key range)."""
        reply = await self.retrying_read(
            lambda: self.client.kvstub.Range(
                aetcd.rpc.RangeRequest(key=b"/heron/.revision", keys_only=True),
                timeout=REQUEST_TIMEOUT,
                metadata=self.client.metadata,
            )
        )
        return int(reply.header.revision)

    # -- writes --------------------------------------------------------------------------

    async def commit(self, txn: Txn) -> int:
        """Run the transaction; returns the new store revision or raises `Conflict`."""
        tx = self.client.transactions
        compare = []
        targets = {"version": tx.version, "mod": tx.mod, "value": tx.value}
        for kind, key, value in txn.checks:
            compare.append(targets[kind](key.encode()) == value)
        success = [tx.put(k.encode(), v, lease=lease or None) for k, v, lease in txn.puts]
        success += [tx.delete(k.encode()) for k in txn.deletes]
        for attempt in range(READ_ATTEMPTS):
            try:
                ok, responses = await self.client.transaction(
                    compare=compare, success=success, failure=[]
                )
                break
            except aetcd.exceptions.ClientError as exc:
                # Only a removed member's refusal is safe to send again: it applied nothing.
                if not _member_removed(exc) or attempt == READ_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        if not ok:
            raise Conflict("the record was changed by someone else; read it again")
        for response in responses:
            if response.WhichOneof("response") == "response_put":
                return int(response.response_put.header.revision)
            return int(response.response_delete_range.header.revision)
        return await self.revision()

    # -- leases --------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        lease = await self.client.lease(ttl)
        return int(lease.id)

    async def refresh(self, lease_id: int) -> int:
        """Renew a lease; returns its remaining TTL (<= 0 when it has already expired)."""
        reply = await self.client.refresh_lease(lease_id)
        return int(reply.TTL) if reply is not None else 0

    async def revoke(self, lease_id: int) -> None:
        with contextlib.suppress(Exception):
            await self.client.revoke_lease(lease_id)

    # -- watches -------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Every change under `prefix` from `start_revision` on, across reconnects.

        After a broken stream the watch is re-created from the revision after the last event
        delivered, so nothing is missed or repeated. If etcd compacted that history away, a
        `resync` event is yielded and the watch continues from the oldest revision etcd still
        has: the consumer lists the prefix again (and may see some changes twice).
        """
        next_revision = start_revision
        backoff = 0.05
        while True:
            try:
                watch = await self.client.watch_prefix(
                    prefix.encode(), start_revision=next_revision
                )
            except aetcd.exceptions.RevisionCompactedError as exc:
                next_revision = exc.compacted_revision
                yield WatchEvent("resync", prefix, b"", next_revision)
                continue
            except _RETRYABLE as exc:
                log.debug("watch %s: %r, retrying", prefix, exc)
                await asyncio.sleep(backoff)  # back-off between reconnect attempts
                backoff = min(backoff * 2, 1.0)
                continue
            try:
                async for event in watch:
                    backoff = 0.05
                    kv = event.kv
                    next_revision = kv.mod_revision + 1
                    kind: Literal["put", "delete"] = (
                        "delete" if event.kind == aetcd.rtypes.EventKind.DELETE else "put"
                    )
                    yield WatchEvent(kind, kv.key.decode(), kv.value, kv.mod_revision, kv.lease)
            except aetcd.exceptions.RevisionCompactedError as exc:
                next_revision = exc.compacted_revision
                yield WatchEvent("resync", prefix, b"", next_revision)
            except _RETRYABLE as exc:
                log.debug("watch %s broke: %r, resuming at %d", prefix, exc, next_revision)
                await asyncio.sleep(backoff)  # back-off between reconnect attempts
                backoff = min(backoff * 2, 1.0)
            finally:
                with contextlib.suppress(Exception):
                    await watch.cancel()
