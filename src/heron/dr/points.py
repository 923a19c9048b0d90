"""Points: a VM's disks at one instant, as complete maps of chunk names.

A point is one file, `points/<vm>/<id>.point`:

    "HRNPOINT" | u32 header length | header (JSON) | each disk's map | BLAKE3 of all before

The header holds the metadata (VM, id, time, consistency, parent) and each disk's size,
chunk size, entry count and the offset of its map; a map is the disk's chunk names, 32
bytes each, in order, `ZERO` for an all-zero chunk. A map is always complete, never a list of
changes against the parent (the parent is only metadata): restoring a point reads each chunk
it needs once, however many increments came before it, and deleting any other point never
changes what this one holds (Proxmox Backup Server's fixed index, not a chain of deltas as in
qcow2 backing files or incremental backups). The map costs 8 KiB per GiB of disk at 4 MiB
chunks, written again with every point; what is new in an increment is only its chunks.

The trailer makes a damaged point file detectable; the header can be read alone (listing
points reads no maps).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from heron.dr import chunks
from heron.dr.errors import InvalidArgument, PointCorrupt

MAGIC = b"HRNPOINT"
FORMAT = 1
SUFFIX = ".point"
_LENGTH = struct.Struct("<I")
PREAMBLE = len(MAGIC) + _LENGTH.size
TRAILER = chunks.DIGEST_SIZE
MAX_HEADER = 16 << 20
# A crash-consistent point is what a disk holds at an instant (as after a power cut); an
# application-consistent one was taken with the guest's file systems frozen by its agent.
CONSISTENCIES = ("crash", "application")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_name(what: str, value: str) -> str:
    """A VM, disk or point name: it becomes a file name, so letters, digits, `_.-` only."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise InvalidArgument(
            f"{what} {value!r}: 1 to 128 letters, digits, '_', '.' or '-', not starting "
            "with a punctuation mark"
        )
    return value


@dataclass(frozen=True)
class DiskMap:
    """One disk of a point: its size and the name of each chunk (`chunks.ZERO` for zeros).
    Chunk i covers bytes [i * chunk_size, min(size, (i + 1) * chunk_size))."""

    size: int
    chunk_size: int
    table: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if self.size < 0 or self.chunk_size <= 0:
            raise InvalidArgument(f"disk size {self.size}, chunk size {self.chunk_size}")
        if len(self.table) != self.count * chunks.DIGEST_SIZE:
            raise InvalidArgument(
                f"a map of {len(self.table)} bytes for {self.count} chunks of a disk of "
                f"{self.size} bytes"
            )

    @property
    def count(self) -> int:
        return -(-self.size // self.chunk_size)

    def length(self, index: int) -> int:
        """How many bytes chunk `index` covers (the last one may be short)."""
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def name(self, index: int) -> bytes:
        if not 0 <= index < self.count:
            raise InvalidArgument(f"chunk {index} of a disk of {self.count} chunks")
        start = index * chunks.DIGEST_SIZE
        return self.table[start : start + chunks.DIGEST_SIZE]

    def entries(self) -> Iterator[tuple[int, bytes]]:
        """(index, name) of every chunk, zero ones included."""
        size = chunks.DIGEST_SIZE
        for index in range(self.count):
            yield index, self.table[index * size : (index + 1) * size]

    def stored(self) -> Iterator[tuple[int, bytes]]:
        """(index, name) of every chunk that is not all zeros."""
        return ((i, n) for i, n in self.entries() if n != chunks.ZERO)

    def changed(self, names: Mapping[int, bytes], size: int | None = None) -> DiskMap:
        """This map with the entries `names` replaced; with `size`, the disk resized first
        (chunks past the old end are zero, a cut last chunk must be among `names`)."""
        new_size = self.size if size is None else size
        resized = DiskMap(
            new_size, self.chunk_size, bytes(_count(new_size, self.chunk_size) * chunks.DIGEST_SIZE)
        )
        table = bytearray(self.table[: len(resized.table)])
        table.extend(bytes(len(resized.table) - len(table)))
        if new_size % self.chunk_size and new_size < self.size:
            last = resized.count - 1
            if last not in names:
                raise InvalidArgument(
                    f"the disk shrinks to {new_size} bytes: chunk {last} must be given anew"
                )
        for index, name in names.items():
            if not 0 <= index < resized.count:
                raise InvalidArgument(f"chunk {index} of a disk of {resized.count} chunks")
            table[index * chunks.DIGEST_SIZE : (index + 1) * chunks.DIGEST_SIZE] = name
        return DiskMap(new_size, self.chunk_size, bytes(table))


def _count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


@dataclass(frozen=True)
class PointInfo:
    """What a point's header says: enough to list, choose and describe points."""

    vm: str
    id: str
    created: float  # seconds since the epoch: the instant the disks were captured
    consistency: str
    parent: str | None
    disks: dict[str, int]  # name -> size in bytes
    # What the writer wants to find again with the point, e.g. the replication's "bitmap":
    # the name of the dirty bitmaps that hold the changes since this point.
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "id": self.id,
            "created": self.created,
            "consistency": self.consistency,
            "parent": self.parent,
            "disks": dict(self.disks),
            "labels": dict(self.labels),
        }


@dataclass(frozen=True)
class Point:
    info: PointInfo
    disks: dict[str, DiskMap]

    def names(self) -> set[bytes]:
        """Every chunk the point needs, once each."""
        return {name for disk in self.disks.values() for _, name in disk.stored()}


def encode(point: Point) -> bytes:
    info = point.info
    disks = []
    offset = 0
    for name, disk in point.disks.items():
        disks.append(
            {
                "name": name,
                "size": disk.size,
                "chunk_size": disk.chunk_size,
                "count": disk.count,
                "offset": offset,
            }
        )
        offset += len(disk.table)
    header = {
        "format": FORMAT,
        "vm": info.vm,
        "id": info.id,
        "created": info.created,
        "consistency": info.consistency,
        "parent": info.parent,
        "disks": disks,
    }
    if info.labels:
        header["labels"] = dict(info.labels)
    text = json.dumps(header, separators=(",", ":")).encode()
    body = b"".join(
        [MAGIC, _LENGTH.pack(len(text)), text, *(d.table for d in point.disks.values())]
    )
    return body + chunks.digest(body)


def parse_header(where: str, preamble: bytes, read: Any) -> tuple[dict[str, Any], int]:
    """The header of a point file whose first PREAMBLE bytes are `preamble`; `read(n)` gives
    the next n bytes. Returns the header and the offset of the first map."""
    if len(preamble) < PREAMBLE or preamble[: len(MAGIC)] != MAGIC:
        raise PointCorrupt(f"{where}: not a point file")
    (length,) = _LENGTH.unpack_from(preamble, len(MAGIC))
    if length > MAX_HEADER:
        raise PointCorrupt(f"{where}: a header of {length} bytes")
    text = read(length)
    try:
        header = json.loads(text)
        if header["format"] != FORMAT:
            raise PointCorrupt(f"{where}: format {header['format']}, not {FORMAT}")
    except (ValueError, KeyError, TypeError) as exc:
        raise PointCorrupt(f"{where}: header does not parse: {exc}") from None
    if not isinstance(header, dict):
        raise PointCorrupt(f"{where}: header is not an object")
    return header, PREAMBLE + length


def info_of(where: str, header: dict[str, Any]) -> PointInfo:
    try:
        return PointInfo(
            vm=str(header["vm"]),
            id=str(header["id"]),
            created=float(header["created"]),
            consistency=str(header["consistency"]),
            parent=None if header["parent"] is None else str(header["parent"]),
            disks={str(d["name"]): int(d["size"]) for d in header["disks"]},
            labels={str(k): str(v) for k, v in dict(header.get("labels") or {}).items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PointCorrupt(f"{where}: header lacks {exc}") from None


def decode(where: str, data: bytes) -> Point:
    """A point from its file's bytes, after checking the trailer; PointCorrupt otherwise."""
    if len(data) < PREAMBLE + TRAILER or chunks.digest(data[:-TRAILER]) != data[-TRAILER:]:
        raise PointCorrupt(f"{where}: checksum does not match (damaged or cut short)")
    position = PREAMBLE

    def read(n: int) -> bytes:
        nonlocal position
        position += n
        return data[position - n : position]

    header, start = parse_header(where, data[:PREAMBLE], read)
    info = info_of(where, header)
    disks = {}
    try:
        for d in header["disks"]:
            begin = start + int(d["offset"])
            end = begin + int(d["count"]) * chunks.DIGEST_SIZE
            if end > len(data) - TRAILER:
                raise PointCorrupt(f"{where}: disk {d['name']}'s map runs past the end")
            disks[str(d["name"])] = DiskMap(int(d["size"]), int(d["chunk_size"]), data[begin:end])
    except (KeyError, TypeError, ValueError) as exc:
        raise PointCorrupt(f"{where}: disk entry lacks {exc}") from None
    return Point(info, disks)
