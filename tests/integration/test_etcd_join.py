"""Joining a cluster whose etcd speaks TLS: an administrator makes a one-time join token,
the new node checks the CA's fingerprint, has its certificate signed for the token and
connects to etcd with it. A used, wrong or expired token is refused (and audited); a client
without a cluster certificate reads nothing from etcd, the CA's key least of all."""

import asyncio
import json
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aetcd.exceptions
import httpx
import pytest
from support import Api, wait_for

from heron import devcluster
from heron.agent.certificates import join_cluster, node_names
from heron.configdb import ConfigDB, keys
from heron.configdb.client import EtcdTls
from heron.configdb.etcd import EtcdMember
from heron.devcluster import DevCluster
from heron.models.cluster import ClusterAuthority
from heron.services.cluster import join_token_hash
from heron.tls import NodeCredentials, TlsError, issue, make_authority
from heron.tls.certs import make_request
from heron.util.ports import free_ports
from heron.util.proc import read_pidfile, spawn_detached, terminate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevCluster, str]]:
    with devcluster.running(tmp_path_factory.mktemp("join"), 1) as made:
        yield made


@pytest.fixture(scope="module")
def api(cluster: tuple[DevCluster, str]) -> Api:
    made, token = cluster
    return Api(made.nodes[0].url, token, made.tls())


def audit(cluster: DevCluster) -> list[dict]:
    path = Path(cluster.nodes[0].state_dir) / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_cluster_runs_etcd_over_tls(cluster) -> None:
    made, _ = cluster
    assert made.etcd_tls and all(e.startswith("https://") for e in made.endpoints)

    async def read(db: ConfigDB) -> ClusterAuthority | None:
        async with db:
            found = await db.get(ClusterAuthority, keys.CLUSTER_CA)
            return found.value if found else None

    # With a certificate of the cluster's CA, the CA (key and all) is there to read...
    found = asyncio.run(read(made.configdb()))
    assert found is not None and "PRIVATE KEY" in found.key
    # ...and without one, or with another CA's, nothing is.
    plain = [e.removeprefix("https://") for e in made.endpoints]
    with pytest.raises(aetcd.exceptions.ClientError):
        asyncio.run(read(ConfigDB(plain)))
    other = make_authority("other", time.time())
    store = NodeCredentials(Path(made.dir) / "stranger")
    store.write(issue(other, node_names("x", "127.0.0.1"), time.time()), other.certificate)
    with pytest.raises(aetcd.exceptions.ClientError):
        asyncio.run(read(ConfigDB(made.endpoints, EtcdTls.of(store))))


def test_a_node_joins_with_a_token_once(cluster, api: Api) -> None:
    made, _ = cluster
    reply = api.ok("POST", "/cluster/join", json={"ttl_seconds": 600})
    token, url, fingerprint = reply["token"], reply["api_url"], reply["ca_fingerprint"]
    assert reply["etcd_tls"] and token and reply["expires_at"] > time.time()
    assert all(token in c["command"] for c in reply["commands"])
    assert fingerprint == api.ok("GET", "/auth/ca")["fingerprint"]
    # Without an administrator's token, no join token.
    assert api.as_token(None).post("/cluster/join").status_code == 401

    node = made.add_node(
        join=["--join", url, "--join-token", token, "--ca-fingerprint", fingerprint]
    )
    wait_for(
        lambda: node.name in {n["name"] for n in api.ok("GET", "/nodes")}, 60, "node2 registered"
    )
    assert (Path(node.state_dir) / "tls" / "node-key.pem").exists()
    assert not (Path(node.state_dir) / "tls" / "pending-ca.json").exists()

    # The token is used up: a second request with it is refused, and audited.
    _, csr = make_request(["node9", "127.0.0.1"])
    again = api.as_token(None).post("/auth/join", json={"token": token, "csr": csr})
    assert again.status_code == 403, again.text
    wrong = api.as_token(None).post("/auth/join", json={"token": "x" * 43, "csr": csr})
    assert wrong.status_code == 403
    bad = api.as_token(None).post("/auth/join", json={"token": "y" * 43, "csr": "-" * 80})
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "body.csr"
    entries = audit(made)
    joins = [e for e in entries if e.get("path") == "/api/v1/auth/join"]
    assert [e["status"] for e in joins if e["method"] == "POST"][-3:] == [403, 403, 422]
    assert any(e["method"] == "JOIN" and e["result"] == "ok" for e in entries)


def test_an_expired_token_is_refused(cluster, api: Api) -> None:
    made, _ = cluster
    reply = api.ok("POST", "/cluster/join", json={"ttl_seconds": 60})
    key = keys.join_token(join_token_hash(reply["token"]))

    async def expire() -> None:
        # As the lease would after a minute: the record gone.
        async with made.configdb() as db:
            assert await db.get_raw(key) is not None
            await db.delete(key)

    asyncio.run(expire())
    _, csr = make_request(["node9"])
    refused = api.as_token(None).post("/auth/join", json={"token": reply["token"], "csr": csr})
    assert refused.status_code == 403
    assert api.post("/cluster/join", json={"ttl_seconds": 5}).status_code == 422


def test_a_wrong_fingerprint_stops_the_join(cluster, api: Api, tmp_path: Path) -> None:
    reply = api.ok("POST", "/cluster/join")
    store = NodeCredentials(tmp_path / "tls")
    with pytest.raises(TlsError, match="not the"):
        asyncio.run(join_cluster(reply["api_url"], reply["token"], "AB:" * 31 + "AB", store, ["n"]))
    assert store.certificate() is None


def test_nodes_that_joined_with_tokens_host_etcd_members(tmp_path: Path) -> None:
    """etcd grows onto nodes that joined with a token: their members serve and peer over TLS
    with the certificates the join gave them."""
    with devcluster.running(tmp_path / "grow", 1, embedded=True) as (made, token):
        api = Api(made.nodes[0].url, token, made.tls())
        for _ in range(2):
            reply = api.ok("POST", "/cluster/join")
            made.add_node(
                join=["--join", reply["api_url"], "--join-token", reply["token"],
                      "--ca-fingerprint", reply["ca_fingerprint"]]
            )  # fmt: skip

        def voters() -> set[str]:
            members = api.ok("GET", "/cluster/members")
            return {m["name"] for m in members if m["name"] and not m["learner"]}

        wait_for(lambda: voters() == {"node1", "node2", "node3"}, 90, "three voters")
        members = api.ok("GET", "/cluster/members")
        assert all(u.startswith("https://") for m in members for u in m["peer_urls"])
        assert all(u.startswith("https://") for m in members for u in m["client_urls"])
        for name in ("node2", "node3"):
            assert not (Path(made.node(name).state_dir) / "tls" / "pending-ca.json").exists()


def test_a_new_single_node_makes_its_ca_before_its_etcd(tmp_path: Path) -> None:
    """What install.sh starts on a new machine: herond --embedded-etcd --etcd-tls with no CA
    given. The CA is made before etcd starts, stored in etcd once it runs, and its key is not
    left on disk."""
    api_port, client, peer = free_ports(3)
    state = tmp_path / "solo"
    state.mkdir()
    command = [
        sys.executable, "-m", "heron.herond", "--name", "solo", "--state-dir", str(state),
        "--address", "127.0.0.1", "--api-port", str(api_port), "--embedded-etcd",
        "--etcd-tls", "--etcd-client-port", str(client), "--etcd-peer-port", str(peer),
        "--admin-password-file", str(state / "admin-password"),
    ]  # fmt: skip
    pid = spawn_detached(command, state / "herond.log", state / "herond.pid")
    member = EtcdMember("solo", state / "etcd", client, peer, tls=EtcdTls.in_state_dir(state))
    try:
        ca_file = state / "tls" / "ca-cert.pem"

        def answers() -> bool:
            if not ca_file.exists():
                return False
            context = ssl.create_default_context(cafile=str(ca_file))
            url = f"https://127.0.0.1:{api_port}/api/v1/auth/ca"
            try:
                return httpx.get(url, verify=context, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, 60, "the new node's API")
        assert "--client-cert-auth" in Path(f"/proc/{member.pid()}/cmdline").read_text()

        async def stored() -> ClusterAuthority | None:
            async with ConfigDB([member.endpoint], member.tls) as db:
                found = await db.get(ClusterAuthority, keys.CLUSTER_CA)
                return found.value if found else None

        record = asyncio.run(stored())
        assert record is not None and record.certificate == ca_file.read_text()
        assert not record.provided
        wait_for(lambda: not (state / "tls" / "pending-ca.json").exists(), 30, "no CA key on disk")
    finally:
        terminate(pid, str(state))
        fence = read_pidfile(state / "fence.pid", str(state))
        if fence is not None:
            terminate(fence, str(state))
        member.stop()
