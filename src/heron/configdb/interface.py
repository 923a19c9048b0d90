"""What the rest of Heron may ask of the ConfigDB, as a type.

`ConfigDB` (etcd) provides it, and so does the tests' in-memory fake
(tests/fakes/configdb.py), which is held to etcd's behaviour by a contract test. Code that
takes a `ConfigStore` rather than a `ConfigDB` can be unit-tested on the fake; code that
reaches past it (`ConfigDB.client`, the aetcd client: etcd's membership, compaction) cannot,
and says so by asking for a `ConfigDB`.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

from pydantic import BaseModel

from heron.configdb.store import Entry, M, RawEntry, T, Txn, WatchEvent


class ConfigStore(Protocol):
    async def use_endpoints(self, endpoints: Sequence[str]) -> bool: ...

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    # -- reads ---------------------------------------------------------------------------

    async def retrying_read(self, call: Callable[[], Awaitable[T]]) -> T: ...

    async def get_raw(self, key: str) -> tuple[bytes, int] | None: ...

    async def get(self, model: type[M], key: str) -> Entry[M] | None: ...

    async def list(self, model: type[M], prefix: str) -> list[Entry[M]]: ...

    async def list_at(self, model: type[M], prefix: str) -> tuple[builtins.list[Entry[M]], int]: ...

    async def list_raw_at(self, prefix: str) -> tuple[builtins.list[RawEntry], int]: ...

    async def dump(self, prefix: str = "/") -> dict[str, bytes]: ...

    async def revision(self) -> int: ...

    # -- writes (all raise `Conflict` when a comparison fails) ---------------------------

    async def commit(self, txn: Txn) -> int: ...

    async def put(
        self, key: str, value: BaseModel | str, *, revision: int | None = None, lease: int = 0
    ) -> int: ...

    async def create(self, key: str, value: BaseModel | str, *, lease: int = 0) -> int: ...

    async def delete(self, key: str, *, revision: int | None = None) -> int: ...

    async def update(
        self, model: type[M], key: str, change: Callable[[M], M], attempts: int = 20
    ) -> Entry[M]: ...

    # -- leases --------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int: ...

    async def refresh(self, lease_id: int) -> int: ...

    async def revoke(self, lease_id: int) -> None: ...

    # -- watches -------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]: ...
