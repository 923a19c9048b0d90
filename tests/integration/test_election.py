"""Leader election on a real etcd: one leader, fenced writes, a successor within a second."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from heron.configdb import ConfigDB, Conflict, Txn
from heron.configdb.election import Election
from heron.configdb.etcd import EtcdMember
from heron.util.ports import free_ports


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[ConfigDB]:
    client, peer = free_ports(2)
    member = EtcdMember("e1", tmp_path / "etcd", client, peer)
    member.start()
    await asyncio.to_thread(member.wait_healthy)
    async with ConfigDB([member.endpoint]) as store:
        yield store
    member.stop()


async def test_one_leader_then_a_successor_on_resign(db: ConfigDB) -> None:
    a, b = Election(db, "/heron/t1", "a"), Election(db, "/heron/t1", "b")
    await asyncio.wait_for(a.campaign(), 10)
    waiting = asyncio.create_task(b.campaign())
    # While a keeps beating, b stays a follower: several of its timeouts pass.
    done, _ = await asyncio.wait([waiting], timeout=3 * b.timeout)
    assert not done and await a.leader() == "a"
    await a.resign()
    await asyncio.wait_for(waiting, 10)
    assert await b.leader() == "b" and b.leading.is_set() and not a.leading.is_set()
    await b.resign()


async def test_a_silent_leader_is_replaced_and_fenced_out(db: ConfigDB) -> None:
    a, b = Election(db, "/heron/t2", "a"), Election(db, "/heron/t2", "b")
    await asyncio.wait_for(a.campaign(), 10)
    assert a._heart is not None
    a._heart.cancel()  # the leader hangs: no more heartbeats, but it still thinks it leads
    await asyncio.wait_for(b.campaign(), 10)
    assert await b.leader() == "b"
    # The old leader's writes are refused: its token no longer holds the key.
    with pytest.raises(Conflict):
        await db.commit(a.fence(Txn()).put("/heron/t2-data", "from a"))
    await db.commit(b.fence(Txn()).put("/heron/t2-data", "from b"))
    assert (await db.get_raw("/heron/t2-data"))[0] == b"from b"  # type: ignore[index]
    await b.resign()


async def test_a_leader_that_loses_the_key_steps_down(db: ConfigDB) -> None:
    a = Election(db, "/heron/t3", "a")
    await asyncio.wait_for(a.campaign(), 10)
    await db.put("/heron/t3", "intruder x")  # someone else's token
    await asyncio.wait_for(a.lost.wait(), 5)
    assert not a.leading.is_set()
