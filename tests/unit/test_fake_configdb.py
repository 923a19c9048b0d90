"""The in-memory ConfigDB against the ConfigDB contract (the same tests run on real etcd in
tests/integration/test_configdb_contract.py), plus what only the fake offers."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from contracts.configdb import ConfigDBContract
from fakes.clock import ManualClock
from fakes.configdb import FakeConfigDB


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
