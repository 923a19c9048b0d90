"""The ConfigDB contract on a real etcd member: what the in-memory fake is held to."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from contracts.configdb import ConfigDBContract

from heron.configdb import ConfigDB
from heron.configdb.etcd import EtcdMember
from heron.devcluster import free_ports

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    directory: Path = tmp_path_factory.mktemp("etcd-contract")
    client, peer = free_ports(2)
    member = EtcdMember("contract", directory / "data", client, peer)
    member.start()
    try:
        member.wait_healthy(30)
        yield member
    finally:
        member.stop()


class TestEtcdConfigDB(ConfigDBContract):
    @pytest.fixture
    async def db(self, etcd: EtcdMember) -> AsyncIterator[ConfigDB]:
        async with ConfigDB([etcd.endpoint]) as client:
            yield client

    @asynccontextmanager
    async def other_client(self, db: ConfigDB) -> AsyncIterator[ConfigDB]:
        async with ConfigDB(db.endpoints) as client:
            yield client

    async def compact(self, db: ConfigDB, revision: int) -> None:
        await db.client.compact(revision)

    async def pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # real time must pass for etcd's leases
