"""Leader election on a real etcd: one leader, and a successor when it goes."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from heron.configdb import ConfigDB
from heron.configdb.election import Election
from heron.configdb.etcd import EtcdMember
from heron.devcluster import free_ports


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[ConfigDB]:
    client, peer = free_ports(2)
    member = EtcdMember("e1", tmp_path / "etcd", client, peer)
    member.start()
    await asyncio.to_thread(member.wait_healthy)
    async with ConfigDB([member.endpoint]) as store:
        yield store
    member.stop()


async def test_one_leader_then_a_successor(db: ConfigDB) -> None:
    a, b = Election(db, "/heron/test-leader", "a"), Election(db, "/heron/test-leader", "b")
    await asyncio.wait_for(a.campaign(), 10)
    waiting = asyncio.create_task(b.campaign())
    done, _ = await asyncio.wait([waiting], timeout=0.5)
    assert not done and await a.leader() == "a"  # b cannot lead while a does
    await a.resign()
    await asyncio.wait_for(waiting, 10)
    assert await b.leader() == "b" and b.leading.is_set() and not a.leading.is_set()
    await b.resign()


async def test_a_leader_that_stops_renewing_is_replaced_after_its_ttl(db: ConfigDB) -> None:
    a, b = (
        Election(db, "/heron/test-leader2", "a", ttl=1),
        Election(db, "/heron/test-leader2", "b", ttl=1),
    )
    await asyncio.wait_for(a.campaign(), 10)
    assert a._keeper is not None
    a._keeper.cancel()  # the leader hangs: its lease is no longer renewed
    await asyncio.wait_for(b.campaign(), 10)
    assert await b.leader() == "b"
    await b.resign()
