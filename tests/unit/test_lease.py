"""A record kept alive under a lease: a registration cut off half-way is made again."""

import asyncio

from fakes.configdb import FakeConfigDB

from heron.configdb import keys
from heron.configdb.lease import LeaseKeeper
from heron.models.node import Node
from heron.util.wait import until

NODE = Node(name="n1", address="127.0.0.1", api_url="x", cpus=1, memory_mib=1024,
            accelerator="tcg", started_at=1)  # fmt: skip


async def test_a_put_cut_off_by_the_call_timeout_is_made_again() -> None:
    """etcd slow to apply: the lease was granted, the put of the record outlived the call's
    timeout. The keeper must not renew that bare lease forever (the node would look gone
    while its keeper thinks all is well, as chaos seed 121134427 found)."""
    db = FakeConfigDB()
    committed = db.commit
    slow = [True]

    async def commit(txn):  # type: ignore[no-untyped-def]
        if slow and txn.puts:
            slow.clear()
            await asyncio.sleep(30)  # cut off by the keeper's CALL_TIMEOUT
        return await committed(txn)

    db.commit = commit  # type: ignore[method-assign]
    keeper = LeaseKeeper(db, keys.node("n1"), NODE, ttl=3)  # type: ignore[arg-type]
    running = asyncio.create_task(keeper.run())
    try:
        found = await until(lambda: db.get(Node, keys.node("n1")), 10.0, 0.05)
    finally:
        running.cancel()
    assert found is not None and found.lease == keeper.lease and not slow
