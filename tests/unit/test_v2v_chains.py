"""Reading what a layer of a Hyper-V differencing chain holds (heron.v2v.chains), sector by
sector where its bitmaps say so: a VHD laid out by hand as the VHD specification has it,
and a VHDX made by qemu-img whose BAT is then given a partially present block and its
sector bitmap (qemu-img writes whole blocks only). The merge of real chains end to end is
in tests/integration/test_v2v_import.py."""

import os
import struct
import subprocess
from pathlib import Path

import pytest

from heron.v2v import chains, hyperv
from heron.v2v.chains import Run
from heron.v2v.common import ParseError

MIB = 1 << 20


def test_bit_runs_in_both_orders() -> None:
    assert list(chains.set_bits(bytes([0b11000000, 0b10000001]), 16, msb_first=True)) == [
        (0, 2), (8, 1), (15, 1)
    ]  # fmt: skip
    assert list(chains.set_bits(bytes([0b00000011, 0b10000000]), 16, msb_first=False)) == [
        (0, 2), (15, 1)
    ]  # fmt: skip
    assert list(chains.set_bits(b"\xff", 5, msb_first=True)) == [(0, 5)]


def vhd(path: Path, size: int = 4 * MIB) -> None:
    """A differencing VHD of 2 MiB blocks: block 0 holds sectors 0-1 and 8 ('a', 'b'), block
    1 is the parent's."""
    footer = bytearray(512)
    footer[:8] = b"conectix"
    struct.pack_into(">Q", footer, 16, 512)
    struct.pack_into(">QQ", footer, 40, size, size)
    struct.pack_into(">I", footer, 60, 4)
    header = bytearray(1024)
    header[:8] = b"cxsparse"
    struct.pack_into(">QQIII", header, 8, 2**64 - 1, 1536, 0x10000, 2, 2 * MIB)
    bat = struct.pack(">II", 4, 0xFFFFFFFF).ljust(512, b"\xff")
    bitmap = bytes([0b11000000, 0b10000000]).ljust(512, b"\0")
    data = bytearray(2 * MIB)
    data[:1024] = b"a" * 1024
    data[4096:4608] = b"b" * 512
    path.write_bytes(bytes(footer) + bytes(header) + bat + bitmap + bytes(data) + bytes(footer))


def test_a_vhd_child_holds_the_sectors_its_bitmap_sets(tmp_path: Path) -> None:
    path = tmp_path / "child.vhd"
    vhd(path)
    block = 2048 + 512  # block 0's data: after its sector (4) and its bitmap
    assert chains.layer_runs(path, "vpc") == [Run(0, 1024, block), Run(4096, 512, block + 4096)]
    target = tmp_path / "merged.raw"
    target.write_bytes(b"p" * (4 * MIB))  # the parent's
    assert chains.overlay(path, "vpc", target) == 1536
    merged = target.read_bytes()
    assert merged[:1024] == b"a" * 1024 and merged[1024:4096] == b"p" * 3072
    assert merged[4096:4608] == b"b" * 512 and merged[4608:] == b"p" * (4 * MIB - 4608)


def vhdx(path: Path) -> hyperv.VhdxInfo:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vhdx", "-o", "block_size=1M,block_state_zero=off",
         str(path), "8M"],
        check=True,
    )  # fmt: skip
    subprocess.run(
        ["qemu-io", "-f", "vhdx", "-c", "write -P 0x61 0 1M", "-c", "write -P 0x62 2M 1M",
         str(path)],
        check=True, capture_output=True,
    )  # fmt: skip
    with path.open("rb") as f:
        return hyperv.read_vhdx(lambda o, n: os.pread(f.fileno(), n, o), str(path))


def bat_entry(path: Path, info: hyperv.VhdxInfo, index: int, value: int | None = None) -> int:
    assert info.bat is not None
    with path.open("r+b") as f:
        at = info.bat[0] + 8 * index
        if value is not None:
            os.pwrite(f.fileno(), struct.pack("<Q", value), at)
        return int(struct.unpack("<Q", os.pread(f.fileno(), 8, at))[0])


def test_a_vhdx_child_full_zero_and_partial_blocks(tmp_path: Path) -> None:
    path = tmp_path / "child.avhdx"
    info = vhdx(path)
    assert (info.block_size, info.sector_size, info.log_pending) == (MIB, 512, False)
    full = chains.layer_runs(path, "vhdx")
    assert [(r.offset, r.length) for r in full] == [(0, MIB), (2 * MIB, MIB)]
    # Block 2 becomes partially present (sectors 3-4 of it), block 5 a zero block; chunk 0's
    # sector bitmap (BAT entry 4096: the chunk ratio is 2^23 * 512 / 1 MiB) at the file's end.
    ratio = (1 << 23) * 512 // MIB
    block2 = bat_entry(path, info, 2)
    end = -(-path.stat().st_size // MIB) * MIB
    bitmap = bytearray(MIB)
    first = 2 * (MIB // 512) + 3  # block 2's sector 3, bit 0 of byte 0 first
    bitmap[first // 8] |= 1 << (first % 8)
    bitmap[(first + 1) // 8] |= 1 << ((first + 1) % 8)
    with path.open("r+b") as f:
        os.pwrite(f.fileno(), bytes(bitmap), end)
    bat_entry(path, info, ratio, (end >> 20) << 20 | 6)
    bat_entry(path, info, 2, (block2 >> 20) << 20 | 7)
    bat_entry(path, info, 5, 2)
    at = (block2 >> 20) << 20
    assert chains.layer_runs(path, "vhdx") == [
        Run(0, MIB, full[0].at), Run(2 * MIB + 3 * 512, 1024, at + 3 * 512), Run(5 * MIB, MIB, None)
    ]  # fmt: skip
    # Without its sector bitmap, a partially present block is an error, not the parent's.
    bat_entry(path, info, ratio, 0)
    with pytest.raises(ParseError, match="without its sector bitmap"):
        chains.layer_runs(path, "vhdx")


def test_a_vhdx_with_a_log_to_replay_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dirty.vhdx"
    vhdx(path)
    with path.open("r+b") as f:
        for at in hyperv.VHDX_HEADERS:  # a LogGuid in both headers
            os.pwrite(f.fileno(), b"\x01" * 16, at + 48)
    with pytest.raises(ParseError, match="log"):
        chains.layer_runs(path, "vhdx")
