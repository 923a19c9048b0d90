"""etcd over TLS with client certificates, on real members: a client or peer without a
certificate of the cluster's CA is refused on both ports, and so the CA's key (kept in the
ConfigDB) is out of reach of anyone who merely reaches an etcd port."""

import asyncio
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aetcd.exceptions
import pytest

from heron.agent.certificates import node_names
from heron.configdb import ConfigDB, keys
from heron.configdb.client import EtcdTls
from heron.configdb.etcd import EtcdMember
from heron.errors import ConfigDBError
from heron.models.cluster import ClusterAuthority
from heron.tls import Authority, NodeCredentials, issue, make_authority
from heron.util.ports import free_ports

pytestmark = pytest.mark.integration


def credentials(directory: Path, authority: Authority, name: str) -> EtcdTls:
    store = NodeCredentials(directory)
    store.write(issue(authority, node_names(name, "127.0.0.1"), time.time()), authority.certificate)
    return EtcdTls.of(store)


@pytest.fixture(scope="module")
def authority() -> Authority:
    return make_authority("test", time.time())


@pytest.fixture
async def cluster(tmp_path: Path, authority: Authority) -> AsyncIterator[list[EtcdMember]]:
    names = ["t1", "t2", "t3"]
    ports = free_ports(2 * len(names))
    members = [
        EtcdMember(
            name=name,
            data_dir=tmp_path / name / "etcd",
            client_port=ports[2 * i],
            peer_port=ports[2 * i + 1],
            tls=credentials(tmp_path / name / "tls", authority, name),
        )
        for i, name in enumerate(names)
    ]
    initial = {m.name: m.peer_url for m in members}
    for member in members:
        member.initial_cluster = initial
        member.start()
    try:
        for member in members:
            await asyncio.to_thread(member.wait_healthy)
        yield members
    finally:
        for member in members:
            member.stop()


async def test_a_cluster_certificate_reads_and_writes(cluster, authority, tmp_path) -> None:
    assert all(m.endpoint.startswith("https://") for m in cluster)
    tls = credentials(tmp_path / "client", authority, "client")
    record = ClusterAuthority(
        certificate=authority.certificate, key=authority.key, created_at=1.0, provided=False
    )
    # One member, then all three through one channel (the failover target).
    async with ConfigDB([cluster[0].endpoint], tls) as db:
        await db.create(keys.CLUSTER_CA, record)
    async with ConfigDB([m.endpoint for m in cluster], tls) as db:
        found = await db.get(ClusterAuthority, keys.CLUSTER_CA)
        assert found is not None and found.value.key == authority.key


async def test_no_certificate_or_another_cas_is_refused(cluster, tmp_path) -> None:
    other = make_authority("other", time.time())
    strangers = credentials(tmp_path / "stranger", other, "stranger")
    async with ConfigDB([cluster[0].endpoint], strangers) as db:
        with pytest.raises(aetcd.exceptions.ClientError):
            await db.get(ClusterAuthority, keys.CLUSTER_CA)
    # Without TLS, a plain client gets nothing out of a TLS port either.
    async with ConfigDB([f"127.0.0.1:{cluster[0].client_port}"]) as plain:
        with pytest.raises(aetcd.exceptions.ClientError):
            await plain.get(ClusterAuthority, keys.CLUSTER_CA)
    # A https:// endpoint without credentials is refused before any connection.
    with pytest.raises(ConfigDBError, match="speaks TLS"):
        ConfigDB([cluster[0].endpoint])


def _http_get(url: str, context: ssl.SSLContext) -> bytes:
    with urllib.request.urlopen(url, timeout=5, context=context) as reply:
        return reply.read()


@pytest.mark.parametrize("port", ["client", "peer"])
async def test_both_ports_ask_for_a_cluster_certificate(cluster, authority, tmp_path, port):
    member = cluster[0]
    url = f"{member.client_url}/version" if port == "client" else f"{member.peer_url}/members"
    own = credentials(tmp_path / "own", authority, "own").ssl_context()
    assert await asyncio.to_thread(_http_get, url, own)
    # The server is checked all the same (the cluster CA), but no certificate is shown.
    bare = ssl.create_default_context(cafile=str(member.tls.ca_file))  # type: ignore[union-attr]
    stranger = credentials(tmp_path / "stranger", make_authority("x", time.time()), "s")
    foreign = ssl.create_default_context(cafile=str(member.tls.ca_file))  # type: ignore[union-attr]
    foreign.load_cert_chain(stranger.cert_file, stranger.key_file)
    for context in (bare, foreign):
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError, socket.timeout)):
            await asyncio.to_thread(_http_get, url, context)
