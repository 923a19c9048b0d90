"""The peer key of real heron-io processes: a key file others may read stops heron-io from
starting, and a node holding another key is written around like an unreachable one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from support import wait_for

from heron.ardfs.client import IoError, local_cluster, start
from heron.ardfs.config import Scheme, VolumeSpec
from heron.ardfs.nbdtools import qemu_io
from heron.ardfs.peer import OP_PING, PeerClient
from heron.ardfs.peerauth import new_key, read_key, write_key
from heron.ardfs.peertls import PeerTls
from heron.ardfs.volume import UnavailableError
from heron.tls import Authority, NodeCredentials, issue, make_authority

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def test_heron_io_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    [config] = local_cluster(tmp_path, 1, [])
    config.peer_key_file.chmod(0o644)
    with pytest.raises(IoError, match=r"readable by others \(mode 0644\): it must be 0600"):
        start(config, tmp_path / config.node)
    config.peer_key_file.unlink()
    with pytest.raises(IoError, match=r"peer key file .* does not exist"):
        start(config, tmp_path / config.node)
    assert not config.nbd_socket.exists()


def test_a_node_with_another_key_is_written_around(tmp_path: Path) -> None:
    volume = VolumeSpec(name="keyed", size=16 * MiB, scheme=Scheme(copies=2), owner="n1")
    good, stranger = local_cluster(tmp_path, 2, [volume])
    other = tmp_path / "other.key"
    write_key(other, new_key())
    stranger = stranger.model_copy(update={"peer_key_file": other})
    nodes = [start(good, tmp_path / "n1"), start(stranger, tmp_path / "n2")]
    try:
        # Every block has a copy on each node: n2's is written around, as if n2 were down.
        qemu_io(nodes[0].uri("keyed"), "write -P 0x21 0 16M", "flush", "read -P 0x21 0 16M")

        def state() -> str:
            return nodes[0].status().get("volumes", {}).get("keyed", {}).get("state", "")

        wait_for(lambda: state() == "degraded", 30, "the volume to be degraded")
        disk = stranger.me.disks[0].path
        assert disk is not None
        chunks = [p for p in (disk / "volumes").rglob("*") if len(p.name) == 16]
        assert chunks == [], "a chunk was written on the node with another key"
        refused = "n2: peer authentication failed: the peer refused our key"
        assert refused in nodes[0].log_path.read_text()
        assert "refused: wrong peer key" in nodes[1].log_path.read_text()
    finally:
        for io in nodes:
            io.kill()


# -- TLS between peers (ardfs/peertls.py) ------------------------------------------------------

CLUSTER = make_authority("c1", time.time())


def certify(directory: Path, names: list[str], issuer: Authority = CLUSTER) -> Path:
    """Node credentials for `names` under `directory`, as herond keeps them."""
    for name in names:
        node = NodeCredentials(directory / name)
        node.write(issue(issuer, [name, "127.0.0.1"], time.time()), CLUSTER.certificate)
    return directory


def test_peers_with_node_certificates_speak_tls(tmp_path: Path) -> None:
    volume = VolumeSpec(name="sealed", size=16 * MiB, scheme=Scheme(copies=2), owner="n1")
    tls = certify(tmp_path / "tls", ["n1", "n2"])
    configs = local_cluster(tmp_path, 2, [volume], tls=tls, settings={"peer_tls": "require"})
    nodes = [start(c, tmp_path / c.node) for c in configs]
    try:
        qemu_io(nodes[0].uri("sealed"), "write -P 0x5c 0 16M", "flush", "read -P 0x5c 0 16M")
        assert nodes[0].status()["volumes"]["sealed"]["state"] == "healthy"
        assert "connected to node n2 over TLSv1.3" in nodes[0].log_path.read_text()
        # n2 holds its copies: they crossed in the TLS connection.
        disk = configs[1].me.disks[0].path
        assert disk is not None
        assert [p for p in (disk / "volumes").rglob("*") if len(p.name) == 16]
    finally:
        for io in nodes:
            io.stop()


def test_a_peer_without_a_cluster_certificate_is_refused(tmp_path: Path) -> None:
    """It holds the pool key: under "require" that is not enough."""
    tls = certify(tmp_path / "tls", ["n1"])
    [config] = local_cluster(tmp_path, 1, [], tls=tls, settings={"peer_tls": "require"})
    io = start(config, tmp_path / "n1")
    host, port = config.me.host_port()
    key = read_key(config.peer_key_file)
    stranger = make_authority("c2", time.time())
    other = certify(tmp_path / "other", ["n9"], issuer=stranger)
    files = (other / "n9" / "node-key.pem", other / "n9" / "node-cert.pem")

    async def attempt(tls: PeerTls | None) -> str:
        client = PeerClient("n1", host, port, 5, key=key, tls=tls)
        try:
            await client.call(OP_PING, "0" * 32, "")
        except UnavailableError as exc:
            return str(exc)
        finally:
            await client.close()
        return "served"

    try:
        # No certificate (an older release, or someone with the key only).
        assert "requires TLS" in asyncio.run(attempt(None))
        # A certificate of another CA, trusting ours (the CA certificate is no secret).
        assert asyncio.run(attempt(PeerTls(*files, other / "n9" / "ca-cert.pem"))) != "served"
        # heron-io logs a refusal once the client has gone: wait for the lines.
        for line in ("does not speak TLS (an older release?): required", "TLS handshake failed"):
            wait_for(lambda line=line: line in io.log_path.read_text(), 30, f"log: {line}")
        # With the cluster's: served.
        mine = certify(tmp_path / "mine", ["n2"]) / "n2"
        fine = PeerTls(mine / "node-key.pem", mine / "node-cert.pem", mine / "ca-cert.pem")
        assert asyncio.run(attempt(fine)) == "served"
    finally:
        io.stop()


def test_a_node_of_an_older_release_is_talked_to_in_the_clear(tmp_path: Path) -> None:
    """While a cluster is upgraded ("prefer"): n2 has no TLS, as before; n1 writes to it."""
    volume = VolumeSpec(name="mixed", size=16 * MiB, scheme=Scheme(copies=2), owner="n1")
    tls = certify(tmp_path / "tls", ["n1", "n2"])
    new, old = local_cluster(tmp_path, 2, [volume], tls=tls)
    old = old.model_copy(update={"peer_tls_key": None, "peer_tls_cert": None, "peer_tls_ca": None})
    nodes = [start(new, tmp_path / "n1"), start(old, tmp_path / "n2")]
    try:
        qemu_io(nodes[0].uri("mixed"), "write -P 0x3e 0 16M", "flush", "read -P 0x3e 0 16M")
        assert nodes[0].status()["volumes"]["mixed"]["state"] == "healthy"
        assert "connected to node n2 in the clear" in nodes[0].log_path.read_text()
    finally:
        for io in nodes:
            io.stop()
