"""heron.dr.replicate (a round's chunks and point, on views held in memory), Writer.write_chunks,
and how hypervisor.qmp_replica chooses a round's kind from the store and QEMU's bitmaps."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from heron.dr.errors import InvalidArgument
from heron.dr.replicate import (
    Progress,
    chunk_indexes,
    chunk_length,
    chunk_range,
    write_round,
)
from heron.dr.store import Store
from heron.hypervisor.qmp_replica import (
    DirtyBitmap,
    NodeInfo,
    ReplicaDisk,
    ReplicationUnsupported,
    _plan,
    replicate,
)

CHUNK = 4096
VM = "vm1"


class MemoryView:
    """A disk in memory with the extents a view gives: allocated where not zero (per 512
    bytes), changed where the test says."""

    def __init__(self, data: bytes, changed: Iterable[tuple[int, int]] = ()):
        self.data = bytearray(data)
        self.marked = list(changed)
        self.reads: list[tuple[int, int]] = []

    @property
    def size(self) -> int:
        return len(self.data)

    def allocated(self) -> list[tuple[int, int]]:
        return [(o, 512) for o in range(0, len(self.data), 512) if any(self.data[o : o + 512])]

    def changed(self) -> list[tuple[int, int]]:
        return self.marked

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return bytes(self.data[offset : offset + length])

    def write(self, offset: int, data: bytes) -> None:
        self.data[offset : offset + len(data)] = data
        self.marked.append((offset, len(data)))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.create(tmp_path / "store", chunk_size=CHUNK)


def test_chunk_arithmetic() -> None:
    assert list(chunk_range(0, 1, CHUNK)) == [0]
    assert list(chunk_range(CHUNK - 1, 2, CHUNK)) == [0, 1]
    assert list(chunk_range(CHUNK, CHUNK, CHUNK)) == [1]
    assert list(chunk_range(5, 0, CHUNK)) == []
    # Extents in any order, overlapping, past the end: each chunk once, in order, cut.
    extents = [(3 * CHUNK + 10, 5), (0, 10), (CHUNK - 1, 1), (2 * CHUNK, 10 * CHUNK)]
    assert chunk_indexes(extents, CHUNK, 4 * CHUNK + 100) == [0, 2, 3, 4]
    assert chunk_length(4, CHUNK, 4 * CHUNK + 100) == 100
    assert chunk_length(1, CHUNK, 4 * CHUNK + 100) == CHUNK
    # A 64 KiB bitmap granularity against 4 MiB chunks: one dirty bit, one chunk.
    assert chunk_indexes([(4 << 20, 64 << 10)], 4 << 20, 16 << 20) == [1]


def test_full_then_incremental_rounds(store: Store, tmp_path: Path) -> None:
    size = 8 * CHUNK + 1000  # a short last chunk
    disk = bytearray(size)
    disk[10:20] = b"a" * 10
    disk[5 * CHUNK : 5 * CHUNK + 3] = b"bcd"
    view = MemoryView(bytes(disk))
    seen: list[Progress] = []
    with store.writer(VM) as writer:
        full = write_round(
            writer, {"d": view}, "full", labels={"bitmap": "b1"}, progress=seen.append
        )
    assert full.kind == "full" and full.point.parent is None
    assert full.point.labels == {"bitmap": "b1"}
    assert store.points(VM)[0].labels == {"bitmap": "b1"}
    # Only allocated chunks are read, each whole, once.
    assert view.reads == [(0, CHUNK), (5 * CHUNK, CHUNK)]
    assert (full.chunks_read, full.chunks_sent, full.chunks_written) == (2, 2, 2)
    assert [(p.chunks_done, p.chunks_total) for p in seen] == [(1, 2), (2, 2)]
    store.restore(VM, full.point.id, "d", tmp_path / "r1")
    assert (tmp_path / "r1").read_bytes() == bytes(disk)

    view.marked.clear()
    view.reads.clear()
    view.write(8 * CHUNK + 10, b"tail")  # the short last chunk
    view.write(CHUNK - 2, b"xyzw")  # across chunks 0 and 1
    with store.writer(VM) as writer:
        inc = write_round(writer, {"d": view}, "incremental", parent=full.point.id)
    assert inc.point.parent == full.point.id
    assert view.reads == [(0, CHUNK), (CHUNK, CHUNK), (8 * CHUNK, 1000)]
    assert (inc.chunks_read, inc.chunks_sent) == (3, 3)
    store.restore(VM, inc.point.id, "d", tmp_path / "r2")
    assert (tmp_path / "r2").read_bytes() == bytes(view.data)


def test_resync_sends_only_chunks_that_differ(store: Store, tmp_path: Path) -> None:
    disk = bytearray(6 * CHUNK)
    for index in range(4):
        disk[index * CHUNK : index * CHUNK + 8] = bytes([index + 1]) * 8
    view = MemoryView(bytes(disk))
    with store.writer(VM) as writer:
        full = write_round(writer, {"d": view}, "full")
    # Changed behind the bitmap's back: chunk 1 rewritten, chunk 3 zeroed, chunk 5 written.
    view.data[CHUNK : CHUNK + 8] = b"changed!"
    view.data[3 * CHUNK : 4 * CHUNK] = bytes(CHUNK)
    view.data[5 * CHUNK + 100 : 5 * CHUNK + 104] = b"new!"
    view.reads.clear()
    with store.writer(VM) as writer:
        resync = write_round(writer, {"d": view}, "resync", parent=full.point.id)
    # Every allocated chunk is read and hashed; only 1, 3 (now zeros) and 5 are sent.
    assert [offset // CHUNK for offset, _ in view.reads] == [0, 1, 2, 5]
    assert (resync.chunks_read, resync.chunks_sent) == (4, 3)
    assert resync.chunks_written == 2  # the zero chunk stores nothing
    store.restore(VM, resync.point.id, "d", tmp_path / "r")
    assert (tmp_path / "r").read_bytes() == bytes(view.data)


def test_a_failing_round_writes_no_point(store: Store) -> None:
    view = MemoryView(b"x" * (3 * CHUNK))

    def fail(progress: Progress) -> None:
        if progress.chunks_done == 2:
            raise RuntimeError("injected")

    with store.writer(VM) as writer, pytest.raises(RuntimeError, match="injected"):
        write_round(writer, {"d": view}, "full", progress=fail)
    assert store.points(VM) == []


def test_write_chunks_checks_what_it_is_given(store: Store) -> None:
    with store.writer(VM) as writer:
        with pytest.raises(InvalidArgument, match="of 10 bytes, not 4096"):
            writer.write_chunks({"d": 2 * CHUNK}, {"d": [(0, b"x" * 10)]})
        with pytest.raises(InvalidArgument, match="chunk 2 of a disk of 2"):
            writer.write_chunks({"d": 2 * CHUNK}, {"d": [(2, b"x" * CHUNK)]})
        with pytest.raises(InvalidArgument, match="not in the point"):
            writer.write_chunks({"d": CHUNK}, {"e": []})
        base = writer.write_chunks({"d": CHUNK}, {})
        with pytest.raises(InvalidArgument, match="has the disks"):
            writer.write_chunks({"d": CHUNK, "e": CHUNK}, {}, parent=base.id)
    with (
        pytest.raises(InvalidArgument, match="needs the previous point"),
        store.writer(VM) as writer,
    ):
        write_round(writer, {"d": MemoryView(bytes(CHUNK))}, "incremental")


def node(name: str, size: int, *bitmaps: DirtyBitmap) -> NodeInfo:
    return NodeInfo(name, "qcow2", size, tuple(bitmaps))


def bitmap(name: str, inconsistent: bool = False, recording: bool = True) -> DirtyBitmap:
    return DirtyBitmap(name, recording, True, False, inconsistent, 65536, 0)


def test_the_kind_of_a_round(store: Store) -> None:
    disks = [ReplicaDisk("disk0", "disk0", "q0"), ReplicaDisk("disk1", "disk1", "q1")]
    nodes = {"disk0": node("disk0", CHUNK, bitmap("b1")), "disk1": node("disk1", CHUNK)}
    assert _plan(store, VM, disks, nodes) == ("full", None, None)
    with store.writer(VM) as writer:
        point = writer.write_chunks({"disk0": CHUNK, "disk1": CHUNK}, {}, labels={"bitmap": "b1"})
    # The bitmap the last point names, on every disk, consistent and recording: incremental.
    good = {
        "disk0": node("disk0", CHUNK, bitmap("b1")),
        "disk1": node("disk1", CHUNK, bitmap("b1")),
    }
    assert _plan(store, VM, disks, good) == ("incremental", point.id, "b1")
    # Missing on one disk, inconsistent (QEMU crashed), not recording, or a disk resized.
    for changed in (
        node("disk1", CHUNK),
        node("disk1", CHUNK, bitmap("b1", inconsistent=True)),
        node("disk1", CHUNK, bitmap("b1", recording=False)),
        node("disk1", 2 * CHUNK, bitmap("b1")),
    ):
        assert _plan(store, VM, disks, {**good, "disk1": changed}) == ("resync", point.id, "b1")
    # Another set of disks: a new full point.
    assert _plan(store, VM, disks[:1], good) == ("full", None, None)


class RawDiskQemu:
    """Just enough of a QemuVM for a round to look at a VM whose disk is a raw image (an
    ARDFS volume: raw over NBD) and refuse it before touching anything."""

    def __init__(self) -> None:
        self.changed: list[str] = []

    async def block_exports(self) -> list[str]:
        return []

    async def block_nodes(self) -> dict[str, NodeInfo]:
        return {"disk0": NodeInfo("disk0", "raw", CHUNK, ())}

    async def device_roots(self) -> dict[str, str]:
        return {"q0": "disk0"}

    def __getattr__(self, name: str) -> object:
        async def refused(*args: object, **kwargs: object) -> None:
            self.changed.append(name)

        return refused


async def test_a_raw_disk_needs_tracking_in_heron_io(store: Store, tmp_path: Path) -> None:
    qemu = RawDiskQemu()
    with pytest.raises(ReplicationUnsupported, match="change tracking in heron-io"):
        await replicate(qemu, VM, [ReplicaDisk("disk0", "disk0", "q0")], store, tmp_path)
    assert qemu.changed == []
    assert store.points(VM) == []
