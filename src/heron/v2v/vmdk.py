"""VMDK descriptors: the text that says what a VMware disk is made of.

A VMDK is either a small text descriptor beside its data files (monolithicFlat,
twoGbMaxExtentSparse/Flat, the ESXi kinds vmfs, vmfsSparse, seSparse, the raw device
mappings), or a sparse file with the descriptor embedded at a sector offset given by its header
(monolithicSparse, streamOptimized). The descriptor names the extents (the data files, each
with its size in 512-byte sectors), the createType, and for a snapshot delta its parent
(parentFileNameHint): a .vmx names the newest delta, whose parent is the delta before, down to
the base. Pure: text or header bytes in, a VmdkDescriptor out; reading the files is the scan's.
"""

import re
import struct
from dataclasses import dataclass, field

from heron.v2v.common import ParseError

SECTOR = 512
SPARSE_MAGIC = b"KDMV"  # hosted sparse extents (monolithicSparse, streamOptimized, -s001)
COWD_MAGIC = b"COWD"  # ESX's vmfsSparse extents: no embedded descriptor
# parentCID of a disk without a parent.
NO_PARENT_CID = "ffffffff"
# Above this a descriptor is not a text descriptor: ESXi and Workstation write them under
# a few KiB; the embedded one of a sparse file is at most a few sectors more.
MAX_DESCRIPTOR = 1 << 20

CREATE_TYPES = {
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
    "vmfs",
    "vmfsThin",
    "vmfsSparse",
    "vmfsThinProvisioned",
    "vmfsPreallocated",
    "vmfsEagerZeroedThick",
    "seSparse",
    "vmfsRaw",
    "vmfsRawDeviceMap",
    "vmfsPassthroughRawDeviceMap",
    "fullDevice",
    "partitionedDevice",
    "custom",
}
# createTypes whose data is a host's device, not a file: nothing to copy from a datastore.
RAW_DEVICE_TYPES = {
    "vmfsRaw",
    "vmfsRawDeviceMap",
    "vmfsPassthroughRawDeviceMap",
    "fullDevice",
    "partitionedDevice",
}
EXTENT_TYPES = {"SPARSE", "FLAT", "ZERO", "VMFS", "VMFSSPARSE", "SESPARSE", "VMFSRDM", "VMFSRAW"}
RAW_DEVICE_EXTENTS = {"VMFSRDM", "VMFSRAW"}

# RW 4192256 SPARSE "disk-s001.vmdk"     RW 8388608 FLAT "disk-flat.vmdk" 0
# RDONLY 0 ZERO                           RW 2097152 VMFS "disk-flat.vmdk"
_EXTENT = re.compile(
    r"^(?P<access>RW|RDONLY|NOACCESS)\s+(?P<sectors>\d+)\s+(?P<type>[A-Z]+)"
    r'(?:\s+"(?P<file>[^"]*)"(?:\s+(?P<offset>\d+))?)?\s*$'
)
_PAIR = re.compile(r"^(?P<key>[A-Za-z0-9_.:\-]+)\s*=\s*(?P<value>.*?)\s*$")


@dataclass
class Extent:
    access: str  # RW, RDONLY or NOACCESS
    sectors: int
    type: str  # SPARSE, FLAT, ZERO, VMFS, VMFSSPARSE, SESPARSE, VMFSRDM, VMFSRAW
    file: str | None  # as written: relative to the descriptor's directory; None for ZERO
    offset: int = 0  # sectors into `file` (flat extents of a partitioned file)

    @property
    def size(self) -> int:
        return self.sectors * SECTOR


@dataclass
class VmdkDescriptor:
    create_type: str
    extents: list[Extent]
    cid: str | None = None
    parent_cid: str | None = None
    parent_hint: str | None = None  # parentFileNameHint: the next image down the chain
    version: int | None = None
    ddb: dict[str, str] = field(default_factory=dict)  # ddb.* (keys as written)
    # Keys outside the DDB and the header: encryption.keySafe, encryption.data, ...
    other: dict[str, str] = field(default_factory=dict)

    @property
    def capacity(self) -> int:
        """Virtual size in bytes: the sum of the extents."""
        return sum(e.size for e in self.extents)

    @property
    def adapter_type(self) -> str | None:
        return self.ddb.get("ddb.adapterType")

    @property
    def has_parent(self) -> bool:
        return self.parent_hint is not None or (
            self.parent_cid is not None and self.parent_cid.lower() != NO_PARENT_CID
        )

    @property
    def raw_device(self) -> bool:
        """A raw device mapping: the data is a LUN of the ESXi host, not in the datastore."""
        return self.create_type in RAW_DEVICE_TYPES or any(
            e.type in RAW_DEVICE_EXTENTS for e in self.extents
        )

    @property
    def encrypted(self) -> bool:
        """VM encryption: the data is encrypted with a key only vCenter's KMS gives out."""
        return any(k.lower().startswith("encryption.") for k in self.other) or any(
            k.lower().startswith("ddb.encryption") for k in self.ddb
        )

    @property
    def sparse_embedded(self) -> bool:
        """The descriptor lives inside the data file (one file is the whole disk)."""
        return self.create_type in {"monolithicSparse", "streamOptimized"}

    @property
    def data_files(self) -> list[str]:
        """The extents' files, each once, in order."""
        seen: list[str] = []
        for e in self.extents:
            if e.file is not None and e.file not in seen:
                seen.append(e.file)
        return seen

    @property
    def qemu_format(self) -> str:
        """qemu-img's name for it: every VMware variant it reads is its vmdk driver."""
        return "vmdk"


def _unquote(value: str, line: int, key: str, path: str | None) -> str:
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            raise ParseError("unterminated quoted value", path=path, line=line, field=key)
        return value[1:-1]
    return value


def parse_descriptor(text: str, path: str | None = None) -> VmdkDescriptor:
    """A VMDK text descriptor (a separate .vmdk file, or the text embedded in a sparse one).
    Raises ParseError naming the line for anything that is not a descriptor line."""
    if "\0" in text:
        text = text.split("\0", 1)[0]  # the embedded descriptor is padded with NULs
    values: dict[str, tuple[str, int]] = {}
    ddb: dict[str, str] = {}
    other: dict[str, str] = {}
    extents: list[Extent] = []
    seen_any = False
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            seen_any = seen_any or "Disk DescriptorFile" in line
            continue
        if match := _EXTENT.match(line):
            seen_any = True
            kind = match["type"]
            if kind not in EXTENT_TYPES:
                raise ParseError(
                    f"unknown extent type {kind}", path=path, line=number, field="extent"
                )
            if kind != "ZERO" and match["file"] is None:
                raise ParseError(
                    f"a {kind} extent needs a quoted file name",
                    path=path,
                    line=number,
                    field="extent",
                )
            extents.append(
                Extent(
                    access=match["access"],
                    sectors=int(match["sectors"]),
                    type=kind,
                    file=match["file"],
                    offset=int(match["offset"] or 0),
                )
            )
            continue
        if re.match(r"^(RW|RDONLY|NOACCESS)\s", line):
            raise ParseError(
                f"not an extent line: {line[:80]!r}", path=path, line=number, field="extent"
            )
        pair = _PAIR.match(line)
        if pair is None:
            raise ParseError(
                f"neither 'key = value' nor an extent: {line[:80]!r}", path=path, line=number
            )
        seen_any = True
        key = pair["key"]
        value = _unquote(pair["value"], number, key, path)
        if key.lower().startswith("ddb."):
            ddb[key] = value
        elif key in {"version", "CID", "parentCID", "createType", "parentFileNameHint"}:
            values[key] = (value, number)
        else:
            other[key] = value
    if not seen_any:
        raise ParseError("not a VMDK descriptor (empty)", path=path)
    if "createType" not in values:
        raise ParseError("missing", path=path, field="createType")
    create_type, at = values["createType"]
    if create_type not in CREATE_TYPES:
        raise ParseError(
            f"unknown createType {create_type!r}", path=path, line=at, field="createType"
        )
    if not extents:
        raise ParseError('no extent lines (RW n TYPE "file")', path=path, field="extent")
    version = None
    if "version" in values:
        raw_version, at = values["version"]
        if not raw_version.isdigit():
            raise ParseError(f"not a number: {raw_version!r}", path=path, line=at, field="version")
        version = int(raw_version)
    hint = values.get("parentFileNameHint", (None, 0))[0] or None
    return VmdkDescriptor(
        create_type=create_type,
        extents=extents,
        cid=values.get("CID", (None, 0))[0],
        parent_cid=values.get("parentCID", (None, 0))[0],
        parent_hint=hint,
        version=version,
        ddb=ddb,
        other=other,
    )


@dataclass
class SparseHeader:
    """The header of a hosted sparse extent (KDMV): where its embedded descriptor is."""

    version: int
    flags: int
    capacity_sectors: int
    grain_sectors: int
    descriptor_offset: int  # in sectors; 0 when there is none (the -s001 extents of a split disk)
    descriptor_sectors: int
    compress_algorithm: int  # 1: deflate, as streamOptimized uses

    @property
    def capacity(self) -> int:
        return self.capacity_sectors * SECTOR


def parse_sparse_header(head: bytes, path: str | None = None) -> SparseHeader:
    """The first sector of a KDMV sparse extent."""
    if len(head) < 79 or head[:4] != SPARSE_MAGIC:
        raise ParseError("not a VMDK sparse extent (no KDMV magic)", path=path, field="header")
    version, flags, capacity, grain, desc_offset, desc_size = struct.unpack_from("<IIQQQQ", head, 4)
    (compress,) = struct.unpack_from("<H", head, 77)
    if desc_offset and not 0 < desc_size <= MAX_DESCRIPTOR // SECTOR:
        raise ParseError(
            f"descriptor size {desc_size} sectors is out of range", path=path, field="header"
        )
    return SparseHeader(version, flags, capacity, grain, desc_offset, desc_size, compress)


def embedded_descriptor(data: bytes, header: SparseHeader, path: str | None = None) -> str:
    """The descriptor text inside a sparse file, from `data` = the file's bytes from its start
    to at least the descriptor's end."""
    if not header.descriptor_offset:
        raise ParseError(
            "this sparse extent has no embedded descriptor (a part of a split disk: open its "
            "descriptor file)",
            path=path,
            field="header",
        )
    start = header.descriptor_offset * SECTOR
    return descriptor_sectors(data[start:], header, path)


def descriptor_sectors(blob: bytes, header: SparseHeader, path: str | None = None) -> str:
    """The descriptor text from `blob` = the file's bytes from the descriptor's first sector
    (read there by the caller, without the data before it)."""
    if not header.descriptor_offset:
        raise ParseError(
            "this sparse extent has no embedded descriptor (a part of a split disk: open its "
            "descriptor file)",
            path=path,
            field="header",
        )
    size = header.descriptor_sectors * SECTOR
    if len(blob) < size:
        raise ParseError(
            "the file ends before its embedded descriptor", path=path, field="descriptor"
        )
    return blob[:size].split(b"\0", 1)[0].decode("utf-8", errors="replace")


def looks_like_text_descriptor(head: bytes) -> bool:
    """Whether the file's first bytes are a text descriptor (not a data extent)."""
    if head[:4] in (SPARSE_MAGIC, COWD_MAGIC):
        return False
    # qemu-img pads the descriptors it writes to a whole sector with NULs.
    sample = head[:1024].rstrip(b"\0")
    return b"\0" not in sample and (b"Disk DescriptorFile" in sample or b"createType" in sample)
