"""The peer key of real heron-io processes: a key file others may read stops heron-io from
starting, and a node holding another key is written around like an unreachable one."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import wait_for

from heron.ardfs.client import IoError, local_cluster, start
from heron.ardfs.config import Scheme, VolumeSpec
from heron.ardfs.nbdtools import qemu_io
from heron.ardfs.peerauth import new_key, write_key

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
