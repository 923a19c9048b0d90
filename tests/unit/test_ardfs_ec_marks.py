"""Erasure-coded layers asked what they hold while a disk does not answer (layered.py over
erasure.py, on real chunk stores in one process): a block whose own shard is missing is told
from the mark kept with its stripe's parity, never read as zeroes over the layer below; a
stripe written by the format without marks is asked again rather than guessed."""

from __future__ import annotations

from pathlib import Path

import pytest

from heron.ardfs.chunkstore import ChunkStore
from heron.ardfs.cluster import Cluster
from heron.ardfs.config import Scheme, VolumeSpec
from heron.ardfs.degraded import DegradedLog
from heron.ardfs.erasure import ErasureVolume
from heron.ardfs.layered import Layer, Stack
from heron.ardfs.layout import BLOCK_SIZE
from heron.ardfs.placement import Disk
from heron.ardfs.target import LocalTarget
from heron.ardfs.volume import UnavailableError

B = BLOCK_SIZE
EC = Scheme(kind="ec", data=2)
SIZE = 8 * B  # four stripes of two blocks


class Disks:
    """Three nodes' chunk stores in directories, each disk reachable or pulled (a stand-in for
    heron-io's peers: the targets are the stores themselves)."""

    def __init__(self, base: Path):
        self.base = base
        self.disks = [Disk(f"n{i}d0", f"n{i}") for i in range(1, 4)]
        self.stores = {d.id: ChunkStore(base / d.id) for d in self.disks}

    def cluster(self, pulled: str | None = None) -> Cluster:
        """This node's view with every disk, then `pulled` failed (no longer answering)."""
        targets = {d.id: LocalTarget(d.id, d.node, self.stores[d.id]) for d in self.disks}
        cluster = Cluster("n1", self.disks, targets)
        if pulled is not None:
            cluster.fail(pulled, pulled[:2], "pulled out")
        return cluster

    def as_before_marks(self, spec: VolumeSpec, chunks: list[int]) -> None:
        """Take the marks off these parity chunks, as the format before marks wrote them."""
        for disk in self.disks:
            self.stores[disk.id].close()
            for chunk in chunks:
                table = self.base / disk.id / "volumes" / spec.id / f"{chunk:016x}.sum"
                if table.exists():
                    assert table.stat().st_size == 4096 + 8  # the mark after the checksums
                    with open(table, "r+b") as handle:
                        handle.truncate(4096)
            self.stores[disk.id] = ChunkStore(self.base / disk.id)

    def volume(self, spec: VolumeSpec, cluster: Cluster) -> ErasureVolume:
        return ErasureVolume(spec, cluster, DegradedLog(self.base / f"{spec.id}.log"))


async def read(stack: Stack, offset: int, length: int) -> bytes:
    out = memoryview(bytearray(length))
    await stack.read_into(offset, out)
    return bytes(out)


async def snapshot_with_copied_up_shards(disks: Disks) -> tuple[VolumeSpec, VolumeSpec, str]:
    """A base layer full of 0x11, a top above it into which a partial write copied up data
    shard 0 of every stripe (blocks 0, 2, 4, 6); the disk of data shard 1 of stripe 0 in the
    top, whose block 1 the top never held."""
    base = VolumeSpec(name="base", size=SIZE, scheme=EC)
    top = VolumeSpec(name="top", size=SIZE, scheme=EC)
    cluster = disks.cluster()
    low, high = disks.volume(base, cluster), disks.volume(top, cluster)
    await low.write(0, memoryview(b"\x11" * SIZE), False)
    stack = Stack("v", [Layer(base.id, low), Layer(top.id, high)], SIZE)
    for block in range(0, 8, 2):
        await stack.write(block * B + 4096, memoryview(b"\x22" * 4096), False)
    await stack.flush()
    return base, top, high.shards(0)[1].disk


def stack_of(disks: Disks, base: VolumeSpec, top: VolumeSpec, cluster: Cluster) -> Stack:
    """The stack as a node that has not asked yet sees it (a new owner, a restart)."""
    layers = [
        Layer(base.id, disks.volume(base, cluster)),
        Layer(top.id, disks.volume(top, cluster)),
    ]
    return Stack("v", layers, SIZE)


async def test_a_block_the_top_never_held_reads_from_below_with_its_shards_disk_down(
    tmp_path: Path,
) -> None:
    disks = Disks(tmp_path)
    base, top, victim = await snapshot_with_copied_up_shards(disks)
    stack = stack_of(disks, base, top, disks.cluster(pulled=victim))
    # Block 1's shard is on the pulled disk; stripe 0's parity holds block 0's new data. The
    # parity's mark says shard 1 was never written in the top: the layer below answers.
    assert await read(stack, B, B) == b"\x11" * B
    # Block 0 (its shard perhaps on the pulled disk too) is the top's, decoded if need be.
    assert await read(stack, 0, 8192) == b"\x11" * 4096 + b"\x22" * 4096
    for block in range(8):
        copied = block % 2 == 0
        expect = b"\x11" * 4096 + (b"\x22" if copied else b"\x11") * 4096
        assert await read(stack, block * B, 8192) == expect, block


async def test_a_stripe_written_without_marks_is_asked_again_not_read_as_zeroes(
    tmp_path: Path,
) -> None:
    disks = Disks(tmp_path)
    base, top, victim = await snapshot_with_copied_up_shards(disks)
    disks.as_before_marks(top, [2])  # stripe 0's parity, as the previous format wrote it
    stack = stack_of(disks, base, top, disks.cluster(pulled=victim))
    with pytest.raises(UnavailableError):
        await read(stack, B, 4096)  # an error, not the zeroes of a block never written
    # The other stripes carry their marks: read as ever.
    assert await read(stack, 3 * B, 4096) == b"\x11" * 4096
    # The disk is back: the same stack asks again and reads the layer below.
    for layer in stack.layers:
        assert isinstance(layer.volume, ErasureVolume)
        layer.volume.cluster = disks.cluster()
    assert await read(stack, B, 4096) == b"\x11" * 4096


async def test_rebuilt_shards_keep_what_the_stripe_holds(tmp_path: Path) -> None:
    """A rebuild leaves out an all-zero shard (thin), which must not turn written data into
    a hole: a parity of two equal data shards is zero but kept, with its mark; a data shard
    written with zeroes (hiding a layer below) is kept too."""
    disks = Disks(tmp_path)
    spec = VolumeSpec(name="v", size=4 * B, scheme=EC)
    volume = disks.volume(spec, disks.cluster())
    await volume.write(0, memoryview(b"\x33" * (2 * B)), False)  # stripe 0: parity all zero
    await volume.write(2 * B, memoryview(bytes(B)), False)  # stripe 1: block 2 zeroes
    await volume.write(3 * B, memoryview(b"\x44" * B), False)
    targets = [volume.shards(stripe) for stripe in (0, 1)]
    rebuilt = [(2, targets[0][2]), (3, targets[1][0])]  # stripe 0's parity, block 2's shard
    await volume.mark_stale([(chunk, target.disk) for chunk, target in rebuilt])
    for chunk, target in rebuilt:
        target.store.delete(spec.id, chunk)  # type: ignore[attr-defined]  # the disk replaced
        assert await volume.rebuild_chunk(chunk)
        assert target.store.exists(spec.id, chunk)  # type: ignore[attr-defined]
    parity = targets[0][2]
    assert await parity.marks(spec.id, 2, 1, 1) == [0b11]
    # Whichever disk is pulled now, every block reads as data, none as a hole.
    for disk in disks.disks:
        pulled = disks.volume(spec, disks.cluster(pulled=disk.id))
        assert await pulled.allocated_blocks(0, 4) == [True] * 4, disk.id


async def test_the_owner_gives_parities_written_before_marks_their_marks(tmp_path: Path) -> None:
    disks = Disks(tmp_path)
    base, top, victim = await snapshot_with_copied_up_shards(disks)
    parities = [2, 5, 8, 11]
    disks.as_before_marks(top, parities)
    # With a disk down, stripes whose shards it holds are left for later.
    assert not await disks.volume(top, disks.cluster(pulled=victim)).adopt_marks()
    volume = disks.volume(top, disks.cluster())
    assert await volume.adopt_marks()
    for stripe, chunk in enumerate(parities):
        parity = volume.shards(stripe)[2]
        assert await parity.marks(top.id, chunk, 1, 1) == [0b01]  # block 2 * stripe only
    assert await volume.adopt_marks()  # nothing left to do
    stack = stack_of(disks, base, top, disks.cluster(pulled=victim))
    assert await read(stack, B, 4096) == b"\x11" * 4096
    assert await read(stack, 0, 8192) == b"\x11" * 4096 + b"\x22" * 4096
