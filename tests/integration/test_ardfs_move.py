"""Moving a volume to another placement (the rebalance after a node is lost for good): the
owner copies every block group's missing copies or shards onto the destination while the
volume stays in use, then the destination becomes the placement, the volume is fully
redundant on it (it survives losing another node), and the disks it left hold nothing of it."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_for

from heron.ardfs.client import IoProcess, io_cluster, start
from heron.ardfs.config import PlacedDisk, Scheme, VolumeSpec
from heron.ardfs.nbdtools import qemu_io
from heron.ardfs.placement import group_key, place

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
VOLUME_ID = "5e1f0c2a9b3d4e6f8a7b6c5d4e3f2a1b"

BEFORE = [f"write -P {0x30 + i} {i * 4}M 4M" for i in range(12)]  # 48 MiB, a pattern per block
DURING = ["write -P 0x71 1M 9M", "write -P 0x72 30M 1000"]  # degraded, then while moving
AFTER = ["write -P 0x73 40M 3M"]
# What no later write overwrote.
UNTOUCHED = [
    "read -P 0x30 0 1M",
    *[f"read -P {0x30 + i} {i * 4}M 4M" for i in (3, 4, 5, 6, 8, 9, 11)],
    "read -P 0x37 28M 2M",
]


def reads(writes: list[str]) -> list[str]:
    return [w.replace("write", "read") for w in writes]


def disks_of(nodes: list[IoProcess]) -> list[PlacedDisk]:
    return [
        PlacedDisk(id=d.id, node=io.config.node, site=io.config.me.site)
        for io in nodes
        for d in io.config.me.disks
    ]


def reconfigure(nodes: list[IoProcess], volume: VolumeSpec) -> None:
    for io in nodes:
        if io.alive():
            io.update(io.config.model_copy(update={"volumes": [volume]}))


def volume_status(io: IoProcess) -> dict:
    return io.status().get("volumes", {}).get("v", {})


def block_reaching(volume: VolumeSpec, node: str) -> int:
    """A block in the volume's last 16 MiB (which the other writes leave alone) whose write
    reaches `node`'s disk: a copy there, or its data or parity shard."""
    assert volume.placement is not None
    disks = [d.disk() for d in volume.placement]
    scheme = volume.scheme
    for block in range(12, 16):
        if scheme.kind == "ec":
            stripe, shard = divmod(block, scheme.data)
            shards = place(disks, group_key(volume.id, stripe), scheme.width)
            reached = {shards[shard].node, shards[-1].node}
        else:
            reached = {d.node for d in place(disks, group_key(volume.id, block), scheme.width)}
        if node in reached:
            return block
    raise AssertionError(f"no block of {volume.name} in 48-64 MiB reaches {node}")


def chunks_on(io: IoProcess, volume: VolumeSpec) -> int:
    found = 0
    for disk in io.config.me.disks:
        assert disk.path is not None
        folder = disk.path / "volumes" / volume.id
        if folder.is_dir():
            found += sum(1 for p in folder.iterdir() if len(p.name) == 16)
    return found


@pytest.mark.parametrize("scheme", [Scheme(copies=2), Scheme(kind="ec", data=2)], ids=str)
def test_a_volume_moves_off_a_lost_node_and_is_redundant_again(
    tmp_path: Path, scheme: Scheme
) -> None:
    # A fixed id: placement, and so which blocks the lost node held, is the same every run.
    spec = VolumeSpec(id=VOLUME_ID, name="v", size=64 * MiB, scheme=scheme, owner="n1")
    with io_cluster(tmp_path, 4, [], settings={"leftover_delay_s": 0}) as nodes:
        everything = disks_of(nodes)
        volume = spec.model_copy(update={"placement": everything})
        reconfigure(nodes, volume)
        wait_for(lambda: "v" in nodes[0].status().get("volumes", {}), 30, "v served")
        uri = nodes[0].uri("v")
        qemu_io(uri, *BEFORE, "flush")
        # Placed over all four disks: the fourth node holds part of the volume.
        assert chunks_on(nodes[3], volume) > 0

        # Degraded: a write that reaches the lost node's disk makes its copy there stale.
        hit = block_reaching(volume, "n4")
        nodes[3].kill()
        qemu_io(uri, f"write -P 0x74 {hit * 4 + 3}M 512k", "flush")
        wait_for(lambda: volume_status(nodes[0]).get("state") == "degraded", 30, "degraded")
        qemu_io(uri, DURING[0], "flush")

        # The leader's decision, as herond writes it: move onto the three that are left.
        remaining = disks_of(nodes[:3])
        volume = volume.model_copy(update={"moving_to": remaining})
        reconfigure(nodes, volume)
        qemu_io(uri, DURING[1], "flush")  # writes go on during the move

        def moved() -> bool:
            seen = volume_status(nodes[0])
            return seen.get("moving_to") is not None and seen.get("move_left") == 0

        wait_for(moved, 120, "every copy made on the destination")
        qemu_io(uri, *UNTOUCHED, *reads(DURING))

        # The move ends: the destination is the placement.
        volume = volume.model_copy(update={"placement": remaining, "moving_to": None})
        reconfigure(nodes, volume)

        def settled() -> bool:
            seen = volume_status(nodes[0])
            return (
                seen.get("placement") == [d.id for d in remaining]
                and seen.get("moving_to") is None
                and seen.get("state") == "healthy"
            )

        wait_for(settled, 60, "healthy on its new placement")
        qemu_io(uri, *AFTER, "flush")
        degraded = f"read -P 0x74 {hit * 4 + 3}M 512k"
        qemu_io(uri, *UNTOUCHED, *reads(DURING), *reads(AFTER), degraded)

        # Fully redundant again: losing one more node loses nothing.
        nodes[2].kill()
        qemu_io(uri, *UNTOUCHED, *reads(DURING), *reads(AFTER), degraded)


def test_a_new_owner_finishes_a_move_it_did_not_start(tmp_path: Path) -> None:
    spec = VolumeSpec(name="v", size=48 * MiB, scheme=Scheme(copies=2), owner="n1")
    settings = {"leftover_delay_s": 0, "rebuild_mb_s": 10}
    with io_cluster(tmp_path, 4, [], settings=settings) as nodes:
        volume = spec.model_copy(update={"placement": disks_of(nodes)})
        reconfigure(nodes, volume)
        wait_for(lambda: "v" in nodes[0].status().get("volumes", {}), 30, "v served")
        qemu_io(nodes[0].uri("v"), *BEFORE, "flush")
        nodes[3].kill()
        # Slow enough that the handover comes in the middle of the copying.
        remaining = disks_of(nodes[:3])
        volume = volume.model_copy(update={"moving_to": remaining})
        reconfigure(nodes, volume)
        qemu_io(nodes[0].uri("v"), DURING[0], "flush")
        volume = volume.model_copy(update={"owner": "n2", "epoch": 2})
        reconfigure(nodes, volume)
        uri = nodes[1].uri("v")
        wait_for(lambda: volume_status(nodes[1]).get("owned"), 30, "n2 owns v")
        qemu_io(uri, DURING[1], "flush")

        def moved() -> bool:
            seen = volume_status(nodes[1])
            return seen.get("moving_to") is not None and seen.get("move_left") == 0

        wait_for(moved, 120, "the new owner made every copy")
        volume = volume.model_copy(update={"placement": remaining, "moving_to": None})
        reconfigure(nodes, volume)
        wait_for(lambda: volume_status(nodes[1]).get("state") == "healthy", 60, "healthy")
        # Once the chunks on the disks it left are gone, everything still reads.
        wait_for(
            lambda: (
                chunks_on(nodes[0], volume)
                + chunks_on(nodes[1], volume)
                + chunks_on(nodes[2], volume)
                <= 2 * 12
            ),
            60,
            "leftovers removed",
        )
        nodes[0].kill()
        qemu_io(uri, *UNTOUCHED, *reads(DURING))


def test_a_disk_whose_filesystem_is_gone_is_not_read_as_zeroes(tmp_path: Path) -> None:
    """An unmounted disk leaves an empty directory where its chunks were: heron-io must not
    serve it (its chunks would read as zeroes), and says why in its status."""
    volume = VolumeSpec(id=VOLUME_ID, name="v", size=48 * MiB, scheme=Scheme(copies=2))
    with io_cluster(tmp_path, 3, [volume]) as nodes:
        qemu_io(nodes[0].uri("v"), *BEFORE, "flush")
        victim = nodes[1]
        disk = victim.config.me.disks[0]
        assert disk.path is not None and chunks_on(victim, volume) > 0
        victim.stop()
        disk.path.rename(disk.path.with_name("unmounted"))
        disk.path.mkdir()  # the mount point, without its filesystem
        nodes[1] = victim = start(victim.config, tmp_path / victim.config.node)
        seen = wait_for(lambda: victim.status().get("disks"), 30, "its status")
        assert "not mounted" in seen[disk.id]["error"], seen
        # Read through that node: its own copies are not served, the others' are.
        qemu_io(victim.uri("v"), *reads(BEFORE))


EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2  # as when the device dies: nothing more reaches it


@pytest.fixture
def ext4_disk(tmp_path: Path) -> Iterator[Path]:
    """An ext4 filesystem on a loop device, mounted where io_cluster puts node n2's disk."""
    image, mount_point = tmp_path / "n2-disk.img", tmp_path / "n2" / "disk0"
    with open(image, "wb") as handle:
        handle.truncate(256 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mount_point.mkdir(parents=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_a_disk_that_dies_while_served_is_taken_out_and_reported(
    tmp_path: Path, ext4_disk: Path
) -> None:
    """A filesystem shut down by errors still answers statvfs; only its I/O fails. heron-io
    stops serving it within a disk check, reports it (so the leader moves its copies after the
    grace), and the volume is read and written through every node meanwhile."""
    volume = VolumeSpec(id=VOLUME_ID, name="v", size=48 * MiB, scheme=Scheme(copies=2))
    with io_cluster(tmp_path, 3, [volume]) as nodes:
        victim = nodes[1]
        disk = victim.config.me.disks[0]
        assert disk.path == ext4_disk
        qemu_io(nodes[0].uri("v"), *BEFORE, "flush")
        assert chunks_on(victim, volume) > 0
        assert "error" not in victim.status()["disks"][disk.id]

        fd = os.open(ext4_disk, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)
        os.statvfs(ext4_disk)  # what the status used to rely on: it still answers

        def reported() -> str:
            return victim.status()["disks"][disk.id].get("error", "")

        assert "Input/output error" in wait_for(reported, 30, "the failed disk reported")
        # Its copies are read elsewhere, through the node that holds it too.
        qemu_io(victim.uri("v"), *reads(BEFORE))
        # Writes go on degraded: the copies it should hold are recorded stale.
        qemu_io(nodes[0].uri("v"), *DURING, "flush")
        wait_for(lambda: volume_status(nodes[0])["state"] == "degraded", 10, "stale copies")
        qemu_io(victim.uri("v"), *UNTOUCHED, *reads(DURING))
