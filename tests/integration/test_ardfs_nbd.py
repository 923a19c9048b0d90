"""ARDFS volumes served by a real heron-io process to real NBD clients not written here:
qemu-img, qemu-io, nbdinfo, nbdcopy, fio's nbd engine, and QEMU booting the test guest."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import serial_lines, wait_for

from heron.ardfs.checksum import CHUNK_SIZE
from heron.ardfs.client import IoProcess, io_cluster, start
from heron.ardfs.config import Scheme, VolumeSpec
from heron.ardfs.nbdtools import ToolError, extents, fio, qemu_io, run

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
NAMES = ["img", "pattern", "map", "fio", "copy", "boot", "corrupt", "grow"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IoProcess]:
    """One heron-io on one node: volumes with a single copy on its chunk store."""
    base = tmp_path_factory.mktemp("ardfs")
    volumes = [VolumeSpec(name=n, size=256 * MiB, scheme=Scheme(copies=1)) for n in NAMES]
    with io_cluster(base, 1, volumes) as (io,):
        yield io


def store_root(io: IoProcess) -> Path:
    path = io.config.me.disks[0].path
    assert path is not None
    return path


def test_qemu_img_sees_the_volume_and_converts_onto_it(
    node: IoProcess, testguest: Path, tmp_path: Path
) -> None:
    info = run("qemu-img", "info", "--output=json", node.uri("img"))
    assert '"virtual-size": 268435456' in info
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(testguest), node.uri("img"))
    # compare checks every byte, and that the rest of the volume reads as zeroes
    size = testguest.stat().st_size
    copy = tmp_path / "copy.raw"
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", node.uri("img"), str(copy))
    assert copy.stat().st_size == 256 * MiB
    with open(copy, "rb") as got, open(testguest, "rb") as want:
        assert got.read(size) == want.read()
        assert got.read() == bytes(256 * MiB - size)


def test_qemu_io_patterns_zeroes_discard_and_unaligned_writes(node: IoProcess) -> None:
    uri = node.uri("pattern")
    qemu_io(uri, "write -P 0xab 0 12M", "read -P 0xab 0 12M")
    qemu_io(uri, "write -z 1M 1M", "read -P 0 1M 1M", "read -P 0xab 0 1M", "read -P 0xab 2M 2M")
    qemu_io(uri, "discard 4M 4M", "read -P 0 4M 4M", "read -P 0xab 8M 4M")
    # unaligned: parts of sectors, across a block boundary
    qemu_io(uri, "write -P 0x5c 4194000 1000", "read -P 0x5c 4194000 1000")
    qemu_io(uri, "read -P 0xab 2M 2096848", "read -P 0 4195000 1000", "read -P 0 1M 1M")
    # FUA and flush go through (durability itself is the chunk store's fdatasync)
    qemu_io(uri, "write -f -P 0x77 16M 64k", "flush", "read -P 0x77 16M 64k")
    # a pattern check that must fail: the verification is real
    with pytest.raises(ToolError):
        qemu_io(uri, "read -P 0x12 0 4k")


def test_block_status_reports_holes_and_data(node: IoProcess) -> None:
    uri = node.uri("map")
    assert extents(uri) == [
        {"offset": 0, "length": 256 * MiB, "type": 3, "description": "hole,zero"}
    ]
    qemu_io(uri, "write -P 1 0 4k", "write -P 2 12M 8M")
    kinds = [(e["offset"], e["length"], e["type"]) for e in extents(uri)]
    assert kinds == [
        (0, 4 * MiB, 0),
        (4 * MiB, 8 * MiB, 3),
        (12 * MiB, 8 * MiB, 0),
        (20 * MiB, 236 * MiB, 3),
    ]
    qemu_io(uri, "discard 12M 4M")
    kinds = [(e["offset"], e["length"], e["type"]) for e in extents(uri)]
    assert kinds[1:3] == [(4 * MiB, 12 * MiB, 3), (16 * MiB, 4 * MiB, 0)]


def test_fio_nbd_engine_verifies_random_writes(node: IoProcess) -> None:
    report = fio(
        node.uri("fio"),
        "--rw=randwrite",
        "--bs=4k",
        "--size=32M",
        "--iodepth=16",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
    )
    job = report["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["total_ios"] == 32 * MiB // 4096
    assert job["read"]["io_bytes"] == 32 * MiB  # the verification pass read it all back


def test_nbdcopy_round_trip(node: IoProcess, tmp_path: Path) -> None:
    source = tmp_path / "source.raw"
    data = os.urandom(20 * MiB) + bytes(8 * MiB) + os.urandom(3 * MiB + 512)
    source.write_bytes(data.ljust(256 * MiB, b"\0"))
    run("nbdcopy", str(source), node.uri("copy"))
    back = tmp_path / "back.raw"
    run("nbdcopy", node.uri("copy"), str(back))
    assert back.read_bytes() == source.read_bytes()


def test_guest_boots_from_an_ardfs_volume(node: IoProcess, testguest: Path, tmp_path: Path) -> None:
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(testguest), node.uri("boot"))
    console = tmp_path / "console.log"
    drive = (
        "driver=raw,file.driver=nbd,file.server.type=unix,"
        f"file.server.path={node.socket},file.export=boot,if=virtio,cache=writeback"
    )
    qemu = subprocess.Popen(
        [
            "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nodefaults", "-no-user-config",
            "-display", "none", "-drive", drive, "-serial", f"file:{console}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(
            lambda: serial_lines(console, "HERON-GUEST-READY") or qemu.poll() is not None,
            300,
            "the guest's READY line",
        )
        assert qemu.poll() is None, qemu.stderr.read() if qemu.stderr else ""
        assert serial_lines(console, "HERON-GUEST-READY")
    finally:
        qemu.kill()
        qemu.wait()


def test_flipped_bytes_are_never_returned(node: IoProcess) -> None:
    uri = node.uri("corrupt")
    qemu_io(uri, "write -P 0x3c 0 8M", "flush")
    volume = next(v for v in node.config.volumes if v.name == "corrupt")
    block = store_root(node) / "volumes" / volume.id / f"{1:016x}"
    with open(block, "r+b") as handle:
        handle.seek(123_456)
        handle.write(b"\x00\xff\x00")
        handle.flush()
        os.fsync(handle.fileno())
    # A single copy cannot be repaired: the read fails rather than return the flipped bytes.
    with pytest.raises(ToolError, match="Input/output error"):
        qemu_io(uri, f"read -P 0x3c {CHUNK_SIZE} 4M")
    # The untouched block and the untouched sectors of the damaged one still read.
    qemu_io(uri, "read -P 0x3c 0 4M", f"read -P 0x3c {CHUNK_SIZE + 128 * 1024} 1M")


def test_online_resize_through_a_config_reload(node: IoProcess) -> None:
    uri = node.uri("grow")
    qemu_io(uri, "write -P 0x42 0 1M")
    config = node.config.model_copy(deep=True)
    for volume in config.volumes:
        if volume.name == "grow":
            volume.size = 512 * MiB
    node.update(config)
    wait_for(
        lambda: '"virtual-size": 536870912' in run("qemu-img", "info", "--output=json", uri),
        30,
        "the new size",
    )
    qemu_io(uri, "read -P 0x42 0 1M", "write -P 0x43 500M 1M", "read -P 0x43 500M 1M")


def test_data_survives_a_restart(tmp_path: Path) -> None:
    volumes = [VolumeSpec(name="keep", size=64 * MiB, scheme=Scheme(copies=1))]
    with io_cluster(tmp_path, 1, volumes) as (io,):
        qemu_io(io.uri("keep"), "write -P 0x99 0 6M", "flush")
        io.kill()
        again = start(io.config, tmp_path / io.config.node)
        try:
            qemu_io(again.uri("keep"), "read -P 0x99 0 6M", "read -P 0 6M 58M")
        finally:
            again.stop()


def test_export_list_and_unknown_exports(node: IoProcess) -> None:
    listed = run("nbdinfo", "--list", "--json", f"nbd+unix://?socket={node.socket}")
    assert sorted(e["export-name"] for e in json.loads(listed)["exports"]) == sorted(NAMES)
    with pytest.raises(ToolError, match="nope"):
        run("nbdinfo", f"nbd+unix:///nope?socket={node.socket}")
    # the server is still there for everyone else
    assert '"virtual-size"' in run("qemu-img", "info", "--output=json", node.uri("img"))


def test_several_connections_at_once_see_each_others_writes(node: IoProcess) -> None:
    """Multi-conn: nbdcopy uses several connections when the server allows it."""
    info = run("nbdinfo", "--json", node.uri("pattern"))
    assert json.loads(info)["exports"][0]["can_multi_conn"] is True
    writers = [
        subprocess.Popen(
            [
                "qemu-io",
                "-f",
                "raw",
                "-c",
                f"write -P {0x30 + i} {64 + i * 8}M 8M",
                node.uri("pattern"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(4)
    ]
    for writer in writers:
        out, _ = writer.communicate(timeout=120)
        assert writer.returncode == 0 and b"failed" not in out, out
    qemu_io(node.uri("pattern"), *[f"read -P {0x30 + i} {64 + i * 8}M 8M" for i in range(4)])
