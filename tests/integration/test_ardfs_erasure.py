"""Erasure-coded ARDFS volumes (2+1, 3+1) across heron-io processes: partial-stripe writes,
any one shard lost (killed node or corrupt chunk), degraded writes, rebuild of a shard."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import wait_for

from heron.ardfs.checksum import CHUNK_SIZE
from heron.ardfs.client import IoProcess, io_cluster
from heron.ardfs.config import Scheme, VolumeSpec
from heron.ardfs.degraded import DegradedLog
from heron.ardfs.layout import ec_chunk
from heron.ardfs.nbdtools import extents, fio, qemu_io
from heron.ardfs.placement import group_key, place

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def shard_node(nodes: list[IoProcess], volume: VolumeSpec, stripe: int, shard: int) -> IoProcess:
    disks = place(
        nodes[0].config.placement_disks(), group_key(volume.id, stripe), volume.scheme.width
    )
    return next(io for io in nodes if io.config.node == disks[shard].node)


def shard_path(io: IoProcess, volume: VolumeSpec, chunk: int) -> Path:
    disk = io.config.me.disks[0]
    assert disk.path is not None
    return disk.path / "volumes" / volume.id / f"{chunk:016x}"


def stale(io: IoProcess, volume: VolumeSpec) -> int:
    log = DegradedLog.read(io.config.state_dir / "degraded" / f"{volume.id}.log")
    return sum(len(disks) for disks in log.values())


# A known, non-uniform content: every 4 KiB sector of the first 24 MiB has its own pattern.
WRITES = [f"write -P {(i * 37 + 11) % 251 + 1} {i * 1536}k 1536k" for i in range(16)]
READS = [c.replace("write", "read") for c in WRITES]
# Partial-stripe updates: unaligned, inside one shard, across shard and stripe boundaries.
UPDATES = [
    "write -P 0xee 1000 3000",
    f"write -P 0xdd {CHUNK_SIZE - 4096} 12288",
    f"write -P 0xcc {2 * CHUNK_SIZE + 777} 5M",
]


def check_updates(uri: str) -> None:
    qemu_io(
        uri,
        "read -P 0xee 1000 3000",
        f"read -P 0xdd {CHUNK_SIZE - 4096} 12288",
        f"read -P 0xcc {2 * CHUNK_SIZE + 777} 5M",
    )


@pytest.mark.parametrize("data", [2, 3])
def test_partial_stripe_writes_and_any_lost_shard(tmp_path: Path, data: int) -> None:
    volume = VolumeSpec(name="ec", size=64 * MiB, scheme=Scheme(kind="ec", data=data))
    with io_cluster(tmp_path, data + 2, [volume]) as nodes:
        uri = nodes[0].uri("ec")
        qemu_io(uri, *WRITES, "flush")
        qemu_io(uri, *UPDATES, "flush")
        check_updates(uri)
        # Lose each shard of stripe 0 in turn (its chunk file damaged): the data still reads.
        for shard in range(data + 1):
            chunk = ec_chunk(0, shard, data)
            io = shard_node(nodes, volume, 0, shard)
            path = shard_path(io, volume, chunk)
            saved = path.read_bytes()
            with open(path, "r+b") as handle:
                handle.write(os.urandom(CHUNK_SIZE))
            check_updates(uri)
            with open(path, "r+b") as handle:
                handle.write(saved)  # put it back, and let the owner rebuild what it marked
            wait_for(lambda: stale(nodes[0], volume) == 0, 60, "the damaged shard rebuilt")
        # what the updates left alone
        pattern = (5 * 37 + 11) % 251 + 1
        qemu_io(uri, READS[1], READS[4], f"read -P {pattern} 7680k {512 * 1024 + 777}")


@pytest.mark.parametrize("data", [2, 3])
def test_a_killed_node_loses_one_shard_of_every_stripe_it_held(tmp_path: Path, data: int) -> None:
    volume = VolumeSpec(name="ec", size=64 * MiB, scheme=Scheme(kind="ec", data=data))
    half = VolumeSpec(name="half", size=24 * MiB, scheme=volume.scheme)
    with io_cluster(tmp_path, data + 1, [volume, half]) as nodes:
        uri = nodes[0].uri("ec")
        qemu_io(uri, "write -P 0x4e 0 64M", "flush")
        stripe = data * 4 * MiB
        qemu_io(nodes[0].uri("half"), f"write -P 0x4d 0 {stripe}", "flush")
        nodes[-1].kill()  # with k+1 nodes, every stripe loses exactly one shard
        qemu_io(uri, "read -P 0x4e 0 64M")
        # What holds data is still told apart from holes (a snapshot's layer relies on it): a
        # stripe without parity was never written, whichever of its shards is away.
        kinds = [(e["offset"], e["length"], e["type"]) for e in extents(nodes[0].uri("half"))]
        assert kinds == [(0, stripe, 0), (stripe, 24 * MiB - stripe, 3)], kinds
        # writes go on, degraded (reconstruct-write or parity-less), and read back
        qemu_io(uri, "write -P 0x4f 3M 10M", "write -P 0x50 33M 1000", "flush")
        qemu_io(uri, "read -P 0x4e 0 3M", "read -P 0x4f 3M 10M", "read -P 0x50 33M 1000")
        qemu_io(uri, "read -P 0x4e 13M 20M", "read -P 0x4e 34604008 32504856")


def test_fio_verifies_random_writes_on_ec(tmp_path: Path) -> None:
    volume = VolumeSpec(name="ec", size=64 * MiB, scheme=Scheme(kind="ec", data=2))
    with io_cluster(tmp_path, 3, [volume]) as nodes:
        report = fio(
            nodes[1].uri("ec"),
            "--rw=randwrite",
            "--bs=4k",
            "--size=16M",
            "--iodepth=16",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
        )
        assert report["jobs"][0]["error"] == 0


def test_a_corrupt_shard_is_rebuilt(tmp_path: Path) -> None:
    volume = VolumeSpec(name="ec", size=32 * MiB, scheme=Scheme(kind="ec", data=2))
    with io_cluster(tmp_path, 3, [volume]) as nodes:
        uri = nodes[0].uri("ec")
        qemu_io(uri, "write -P 0x21 0 32M", "flush")
        io = shard_node(nodes, volume, 1, 0)
        path = shard_path(io, volume, ec_chunk(1, 0, 2))
        with open(path, "r+b") as handle:
            handle.seek(12345)
            handle.write(b"rot")
        qemu_io(uri, f"read -P 0x21 {2 * CHUNK_SIZE} 4M")
        wait_for(lambda: path.read_bytes() == b"\x21" * CHUNK_SIZE, 60, "the shard rebuilt")
