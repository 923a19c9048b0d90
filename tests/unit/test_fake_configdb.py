"""The in-memory ConfigDB against the ConfigDB contract (the same tests run on real etcd in
tests/integration/test_configdb_contract.py), plus what only the fake offers."""

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from contracts.configdb import ConfigDBContract
from fakes.clock import ManualClock
from fakes.configdb import FakeConfigDB

from heron.configdb import ConfigDB
from heron.configdb.interface import ConfigStore


class TestFakeConfigDB(ConfigDBContract):
    @pytest.fixture
    def db(self) -> FakeConfigDB:
        self.clock = ManualClock()
        return FakeConfigDB(clock=self.clock)

    @asynccontextmanager
    async def other_client(self, db: FakeConfigDB) -> AsyncIterator[FakeConfigDB]:
        yield db  # clients of one store share everything but their connection

    async def compact(self, db: FakeConfigDB, revision: int) -> None:
        db.compact(revision)

    async def pause(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await asyncio.sleep(0)  # let the watchers and writers run


async def test_expire_ends_a_lease_at_once_and_watchers_see_it() -> None:
    db = FakeConfigDB(clock=ManualClock())
    lease = await db.grant(3600)
    written = await db.put("/heron/nodes/n1", "alive", lease=lease)
    seen = []

    async def follow() -> None:
        async for event in db.watch("/heron/nodes/", written + 1):
            seen.append(event)
            return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0)
    db.expire(lease)
    await asyncio.wait_for(follower, 5)
    assert [(e.type, e.key, e.revision) for e in seen] == [
        ("delete", "/heron/nodes/n1", written + 1)
    ]
    assert await db.refresh(lease) == 0


def _public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    return {
        name: member
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def _shape(method: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """Parameter names, kinds and defaults (annotations are strings, spelled differently)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]


def test_the_interface_covers_configdb_and_the_fake_has_all_of_it() -> None:
    real, fake = _public_methods(ConfigDB), _public_methods(FakeConfigDB)
    interface = _public_methods(ConfigStore)  # type: ignore[type-abstract]
    assert set(real) == set(interface), "a ConfigDB method is missing from ConfigStore"
    for name in interface:
        assert name in fake, f"the fake has no {name}"
        assert _shape(fake[name]) == _shape(real[name]) == _shape(interface[name]), name
        assert inspect.iscoroutinefunction(fake[name]) == inspect.iscoroutinefunction(real[name])
        assert inspect.isasyncgenfunction(fake[name]) == inspect.isasyncgenfunction(real[name])
