"""Hyper-V differencing chains, merged by Heron (docs/v2v.md, "Differencing chains").

qemu-img does not follow a VHD's or VHDX's parent: it refuses a differencing VHDX and reads a
differencing VHD as a whole disk. So the import merges a chain itself: qemu-img converts the
base of the chain (a fixed or dynamic disk, which it reads) into a raw file, then each child,
from the one next to the base up to the top, writes the sectors it holds over it. What a
child holds is read from its own tables here:

* VHD (the Virtual Hard Disk Image Format Specification): a block allocation table of
  big-endian sector numbers (0xFFFFFFFF: the block is the parent's), each allocated block
  led by a bitmap of its sectors, most significant bit first, padded to 512 bytes; a set
  bit means the child holds the sector.
* VHDX (MS-VHDX 2.4, 2.5): a BAT of 64-bit entries (state in bits 0-2, file offset in MiB
  from bit 20) where each chunk's payload blocks are followed by its sector bitmap block's
  entry; a chunk is 2^23 logical sectors. Fully present blocks are the child's, zero blocks
  read as zeroes, partially present ones have a bit per sector (bit 0 of byte 0 first) in
  their sector bitmap block; not present, undefined and unmapped blocks are the parent's.
  A VHDX whose header names a log is refused: its log may hold writes not yet applied.

Pure reading (`runs`) is separate from the writing (`overlay`); both are blocking.
"""

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from heron.v2v import hyperv
from heron.v2v.common import ParseError
from heron.v2v.hyperv import Reader

SECTOR = 512
COPY = 4 << 20
VHD_UNUSED = 0xFFFFFFFF
# VHDX payload block states (MS-VHDX 2.5.1.1)
ZERO, FULLY_PRESENT, PARTIALLY_PRESENT = 2, 6, 7
VHDX_CHUNK_SECTORS = 1 << 23
SB_BLOCK_PRESENT = 6


@dataclass(frozen=True)
class Run:
    """`length` bytes of the virtual disk at `offset` that a layer holds: read from its file
    at `at`, or zeroes when `at` is None."""

    offset: int
    length: int
    at: int | None


def set_bits(bitmap: bytes, count: int, msb_first: bool) -> Iterator[tuple[int, int]]:
    """(first, number) of each run of set bits among the first `count` bits."""
    start = None
    for index in range(count):
        byte = bitmap[index >> 3]
        bit = (byte >> (7 - (index & 7))) & 1 if msb_first else (byte >> (index & 7)) & 1
        if bit and start is None:
            start = index
        elif not bit and start is not None:
            yield start, index - start
            start = None
    if start is not None:
        yield start, count - start


def vhd_runs(read: Reader, file_size: int, path: str | None = None) -> list[Run]:
    """The sectors a dynamic or differencing VHD holds."""
    kind, size, data_offset = hyperv.parse_vhd_footer(read(file_size - 512, 512), path)
    if kind == "fixed":
        return [Run(0, size, 0)]
    header = read(data_offset, 1024)
    if len(header) < 1024 or header[:8] != hyperv.VHD_DYNAMIC_COOKIE:
        raise ParseError("the dynamic header is missing", path=path, field="dynamic header")
    table, _version, entries, block_size = struct.unpack_from(">QIII", header, 16)
    if block_size % SECTOR or not block_size or entries * block_size < size:
        raise ParseError(
            f"{entries} blocks of {block_size} bytes do not hold {size}", path=path, field="BAT"
        )
    sectors = block_size // SECTOR
    bitmap_size = -(-sectors // 8 // SECTOR) * SECTOR or SECTOR
    bat = read(table, 4 * entries)
    if len(bat) < 4 * entries:
        raise ParseError("the file ends inside its BAT", path=path, field="BAT")
    runs = []
    for block, (sector,) in enumerate(struct.iter_unpack(">I", bat)):
        if sector == VHD_UNUSED:
            continue
        start = sector * SECTOR
        bitmap = read(start, bitmap_size)
        for first, count in set_bits(bitmap, sectors, msb_first=True):
            offset = block * block_size + first * SECTOR
            runs.append(Run(offset, count * SECTOR, start + bitmap_size + first * SECTOR))
    return _clipped(runs, size)


def vhdx_runs(read: Reader, path: str | None = None) -> list[Run]:
    """The sectors a dynamic or differencing VHDX holds (zero blocks as zero runs)."""
    info = hyperv.read_vhdx(read, path)
    hyperv.refuse_pending_log(info, path)
    if info.bat is None:
        raise ParseError("no BAT region in the region table", path=path, field="regions")
    block_size, sector = info.block_size, info.sector_size
    if block_size < 1 << 20 or block_size & (block_size - 1):
        raise ParseError(f"block size {block_size}", path=path, field="metadata")
    ratio = VHDX_CHUNK_SECTORS * sector // block_size
    blocks = -(-info.size // block_size)
    bat_at, bat_length = info.bat
    table = read(bat_at, bat_length)
    runs = []
    bitmaps: dict[int, bytes] = {}
    for block in range(blocks):
        index = block + block // ratio
        if 8 * index + 8 > len(table):
            raise ParseError("the BAT is shorter than the disk", path=path, field="BAT")
        (entry,) = struct.unpack_from("<Q", table, 8 * index)
        state, at = entry & 7, (entry >> 20) << 20
        offset = block * block_size
        if state == FULLY_PRESENT:
            runs.append(Run(offset, block_size, at))
        elif state == ZERO:
            runs.append(Run(offset, block_size, None))
        elif state == PARTIALLY_PRESENT:
            chunk = block // ratio
            if chunk not in bitmaps:
                bitmaps[chunk] = _sector_bitmap(read, table, chunk, ratio, path)
            per_block = block_size // sector
            first_bit = (block % ratio) * per_block
            bits = bitmaps[chunk][first_bit // 8 : (first_bit + per_block) // 8]
            for first, count in set_bits(bits, per_block, msb_first=False):
                runs.append(Run(offset + first * sector, count * sector, at + first * sector))
    return _clipped(runs, info.size)


def _sector_bitmap(read: Reader, table: bytes, chunk: int, ratio: int, path: str | None) -> bytes:
    index = chunk * (ratio + 1) + ratio
    if 8 * index + 8 > len(table):
        raise ParseError("the BAT has no sector bitmap for a chunk", path=path, field="BAT")
    (entry,) = struct.unpack_from("<Q", table, 8 * index)
    if entry & 7 != SB_BLOCK_PRESENT:
        raise ParseError(
            "a partially present block without its sector bitmap", path=path, field="BAT"
        )
    bitmap = read((entry >> 20) << 20, 1 << 20)
    if len(bitmap) < 1 << 20:
        raise ParseError("the file ends inside a sector bitmap", path=path, field="BAT")
    return bitmap


def _clipped(runs: list[Run], size: int) -> list[Run]:
    """The runs inside the virtual disk (its last block may reach past its end)."""
    return [Run(r.offset, min(r.length, size - r.offset), r.at) for r in runs if r.offset < size]


def layer_runs(path: Path, fmt: str) -> list[Run]:
    """What one layer of a chain holds; `fmt` is qemu-img's name: vpc or vhdx."""
    with path.open("rb") as f:

        def read(offset: int, length: int) -> bytes:
            return os.pread(f.fileno(), length, offset)

        if fmt == "vpc":
            return vhd_runs(read, os.fstat(f.fileno()).st_size, str(path))
        if fmt == "vhdx":
            return vhdx_runs(read, str(path))
    raise ParseError(f"a chain of {fmt} images is not merged here", path=str(path), field="format")


def overlay(layer: Path, fmt: str, target: Path) -> int:
    """Write what `layer` holds over the raw file `target`; bytes written."""
    runs = layer_runs(layer, fmt)
    written = 0
    zeroes = bytes(COPY)
    with layer.open("rb") as source, target.open("r+b") as out:
        for run in runs:
            done = 0
            while done < run.length:
                n = min(COPY, run.length - done)
                if run.at is None:
                    data = zeroes[:n]
                else:
                    data = os.pread(source.fileno(), n, run.at + done)
                    if len(data) != n:
                        raise ParseError(
                            f"the file ends inside its data at {run.at + done}",
                            path=str(layer),
                            field="data",
                        )
                os.pwrite(out.fileno(), data, run.offset + done)
                done += n
            written += run.length
        os.fsync(out.fileno())
    return written
