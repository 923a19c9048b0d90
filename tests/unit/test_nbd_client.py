"""heron.nbd.client against real servers: qemu-nbd on a Unix socket, exporting a qcow2 image
with data, holes, zeroes and a persistent dirty bitmap (what QEMU's own server gives the DR
replication); and heron-io's own server, in this process."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.running import short_directory

from heron.ardfs.nbd import Connection, ExportTable
from heron.ardfs.volume import Extent as VolumeExtent
from heron.nbd import proto
from heron.nbd.client import Extent, NBDClient, NBDError
from heron.util.wait import until_sync

MiB = 1024**2
BITMAP = "qemu:dirty-bitmap:b1"


def qemu_io(image: Path, *commands: str) -> None:
    args = ["qemu-io", "-f", "qcow2"]
    for command in commands:
        args += ["-c", command]
    subprocess.run([*args, str(image)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def socket_path() -> Iterator[Path]:
    if shutil.which("qemu-nbd") is None or shutil.which("qemu-io") is None:
        pytest.skip("qemu-nbd and qemu-io are not installed")
    with short_directory() as root:
        image = root / "disk.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(16 * MiB)], check=True
        )
        qemu_io(image, "write -P 0x5d 0 64k", "write -z 4M 64k")
        subprocess.run(["qemu-img", "bitmap", "--add", str(image), "b1"], check=True)
        # Written after the bitmap was added: what it marks dirty.
        qemu_io(image, "write -P 0x11 8M 128k", "write -P 0x22 15M 1M")
        path = root / "nbd.sock"
        server = subprocess.Popen(
            ["qemu-nbd", "-r", "-f", "qcow2", "-B", "b1", "-x", "disk", "-t", "-e", "4", "-k",
             str(path), str(image)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert until_sync(path.exists, 10, 0.02), "qemu-nbd did not listen"
            yield path
        finally:
            server.terminate()
            server.wait(10)


def connect(path: Path, *contexts: str) -> NBDClient:
    return NBDClient.unix(str(path), "disk", contexts)


def test_negotiation_gives_size_flags_and_contexts(socket_path: Path) -> None:
    with connect(socket_path, proto.BASE_ALLOCATION, BITMAP, "nobody:knows") as client:
        assert client.size == 16 * MiB
        assert client.flags & proto.FLAG_READ_ONLY
        assert set(client.contexts) == {proto.BASE_ALLOCATION, BITMAP}


def test_allocation_extents_cover_the_disk(socket_path: Path) -> None:
    with connect(socket_path, proto.BASE_ALLOCATION) as client:
        extents = list(client.extents(proto.BASE_ALLOCATION))
        assert extents[0] == Extent(0, 64 * 1024, 0)  # data
        assert sum(e.length for e in extents) == 16 * MiB
        assert all(a.end == b.offset for a, b in itertools.pairwise(extents))
        data = [(e.offset, e.length) for e in extents if not e.flags & proto.STATE_ZERO]
        assert data == [(0, 64 * 1024), (8 * MiB, 128 * 1024), (15 * MiB, MiB)]
        # A window of the disk: extents cut at its end.
        window = list(client.extents(proto.BASE_ALLOCATION, 8 * MiB + 4096, 8192))
        assert window == [Extent(8 * MiB + 4096, 8192, 0)]


def test_dirty_bitmap_extents(socket_path: Path) -> None:
    with connect(socket_path, BITMAP) as client:
        dirty = [
            (e.offset, e.length) for e in client.extents(BITMAP) if e.flags & proto.STATE_DIRTY
        ]
        assert dirty == [(8 * MiB, 128 * 1024), (15 * MiB, MiB)]
        with pytest.raises(NBDError, match="was not negotiated"):
            client.block_status(proto.BASE_ALLOCATION, 0, 4096)


def test_reads_data_and_holes(socket_path: Path) -> None:
    with connect(socket_path) as client:
        assert client.read(0, 64 * 1024) == b"\x5d" * 64 * 1024
        # Across data and a hole, and a large read (several reply chunks).
        assert client.read(8 * MiB + 64 * 1024, 128 * 1024) == b"\x11" * 64 * 1024 + bytes(
            64 * 1024
        )
        whole = client.read(0, 16 * MiB)
        assert whole[15 * MiB :] == b"\x22" * MiB
        assert whole[4 * MiB : 4 * MiB + 64 * 1024] == bytes(64 * 1024)
        with pytest.raises(NBDError, match="the export has"):
            client.read(16 * MiB - 10, 20)
        # The connection is still usable after a refused request.
        assert client.read(15 * MiB, 4) == b"\x22" * 4


def test_an_unknown_export_is_refused(socket_path: Path) -> None:
    with pytest.raises(NBDError, match=r"unknown export|export 'other'"):
        NBDClient.unix(str(socket_path), "other")


def test_not_a_server(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        NBDClient.unix(str(tmp_path / "none.sock"), "disk")


class HalfHoles:
    """A heron-io volume in memory: the first half data, the second half a hole."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.data[: size // 2] = bytes(range(256)) * (size // 512)

    @property
    def size(self) -> int:
        return len(self.data)

    async def read_into(self, offset: int, view: memoryview) -> None:
        view[:] = self.data[offset : offset + len(view)]

    async def extents(self, offset: int, length: int) -> list[VolumeExtent]:
        half = self.size // 2
        if offset >= half:
            return [VolumeExtent(length, True)]
        data = min(length, half - offset)
        rest = [VolumeExtent(length - data, True)] if length > data else []
        return [VolumeExtent(data, False), *rest]


async def test_against_heron_ios_own_server() -> None:
    """The client and heron-io's server (heron.ardfs.nbd) agree: one process, a socketpair."""
    volume = HalfHoles(2 * MiB)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    table = ExportTable(lambda name: volume if name == "disk" else None, lambda: ["disk"])
    server = asyncio.create_task(Connection(ours, table).run())  # type: ignore[arg-type]

    def read() -> tuple[int, list[Extent], bytes]:
        theirs.settimeout(10)
        with NBDClient(theirs, "disk", [proto.BASE_ALLOCATION]) as client:
            extents = list(client.extents(proto.BASE_ALLOCATION))
            return client.size, extents, client.read(MiB - 4096, 8192)

    try:
        size, extents, data = await asyncio.to_thread(read)
    finally:
        await asyncio.wait_for(server, 10)
    assert size == 2 * MiB
    hole = proto.STATE_HOLE | proto.STATE_ZERO
    assert extents == [Extent(0, MiB, 0), Extent(MiB, MiB, hole)]
    assert data == bytes(volume.data[MiB - 4096 : MiB]) + bytes(4096)
