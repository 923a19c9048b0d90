"""The node's lease on a real etcd: kept through a busy main loop, dropped when it is stuck."""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support import eventually

from heron.agent.registration import Registration
from heron.configdb import ConfigDB, keys
from heron.configdb.etcd import EtcdMember
from heron.models.node import Node
from heron.util.ports import free_ports


@pytest.fixture
async def member(tmp_path: Path) -> AsyncIterator[EtcdMember]:
    client, peer = free_ports(2)
    etcd = EtcdMember("e1", tmp_path / "etcd", client, peer)
    etcd.start()
    await asyncio.to_thread(etcd.wait_healthy)
    yield etcd
    etcd.stop()


def node(name: str) -> Node:
    return Node(
        name=name,
        address="127.0.0.1",
        api_url="http://127.0.0.1:1",
        cpus=1,
        memory_mib=1024,
        accelerator="tcg",
        started_at=time.time(),
    )


async def test_a_busy_main_loop_keeps_its_lease_a_stuck_one_loses_it(member) -> None:
    beats: list[float] = []
    registration = Registration(
        [member.endpoint],
        node("busy"),
        ttl=2,
        on_renewed=lambda: beats.append(time.monotonic()),
        stall_limit=4.0,
    )
    pulse = asyncio.create_task(registration.pulse_forever())
    registration.start()
    await registration.wait_registered()
    async with ConfigDB([member.endpoint]) as db:
        # The main loop blocks for longer than the lease TTL: renewals go on regardless.
        renewed = len(beats)
        time.sleep(2.5)  # noqa: ASYNC251 - the blocking work being simulated
        assert await db.get(Node, keys.node("busy")) is not None
        assert len(beats) > renewed  # renewed while the main loop was blocked
        # The main loop stops turning for good: after the stall limit, the lease runs out.
        pulse.cancel()

        async def expired() -> bool:  # polling etcd for the record's expiry
            return await db.get(Node, keys.node("busy")) is None

        await eventually(expired, 4.0 + 2 + 5, "the lease of a stuck agent to run out")
    await registration.stop(leave=False)
