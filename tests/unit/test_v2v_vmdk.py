"""VMDK descriptors as ESXi, Workstation and qemu-img write them, and the sparse header that
holds an embedded one."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heron.v2v.common import ParseError
from heron.v2v.vmdk import (
    SECTOR,
    embedded_descriptor,
    looks_like_text_descriptor,
    parse_descriptor,
    parse_sparse_header,
)

# Workstation's split disk: 2 GB sparse extents, the last one shorter.
SPLIT_SPARSE = """# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=a1b2c3d4
parentCID=ffffffff
isNativeSnapshot="no"
createType="twoGbMaxExtentSparse"

# Extent description
RW 8323072 SPARSE "Ubuntu 64-bit-s001.vmdk"
RW 8323072 SPARSE "Ubuntu 64-bit-s002.vmdk"
RW 1048576 SPARSE "Ubuntu 64-bit-s003.vmdk"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.geometry.cylinders = "1305"
ddb.geometry.heads = "255"
ddb.geometry.sectors = "63"
ddb.longContentID = "0123456789abcdef0123456789abcdef"
ddb.uuid = "60 00 C2 9a 7d 5e 4f 3a-1b 2c 3d 4e 5f 60 71 82"
ddb.virtualHWVersion = "19"
"""

# ESXi thin disk: a descriptor and a -flat extent of type VMFS.
ESXI_THIN = """# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=fffffffe
parentCID=ffffffff
createType="vmfs"

# Extent description
RW 83886080 VMFS "app01-flat.vmdk"

# The Disk Data Base
#DDB

ddb.adapterType = "pvscsi"
ddb.thinProvisioned = "1"
ddb.deletable = "true"
"""

# An ESXi snapshot delta (vmfsSparse, before seSparse) and a seSparse one (VMFS 6, > 2 TB).
ESXI_DELTA = """# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=6d7e8f90
parentCID=fffffffe
createType="vmfsSparse"
parentFileNameHint="app01.vmdk"
# Extent description
RW 83886080 VMFSSPARSE "app01-000001-delta.vmdk"

# The Disk Data Base
#DDB

ddb.longContentID = "abcdef"
"""

SE_SPARSE = """# Disk DescriptorFile
version=1
CID=01020304
parentCID=0a0b0c0d
createType="seSparse"
parentFileNameHint="/vmfs/volumes/5e8f-11/big/big.vmdk"
RW 6442450944 SESPARSE "big-000003-sesparse.vmdk"
"""

RDM_PHYSICAL = """# Disk DescriptorFile
version=1
CID=deadbeef
parentCID=ffffffff
createType="vmfsPassthroughRawDeviceMap"

# Extent description
RW 1073741824 VMFSRDM "sql01_2-rdmp.vmdk"

ddb.adapterType = "lsilogic"
"""

RDM_VIRTUAL = RDM_PHYSICAL.replace("vmfsPassthroughRawDeviceMap", "vmfsRawDeviceMap").replace(
    "VMFSRDM", "VMFSRAW"
)

MONOLITHIC_FLAT_WITH_ZERO = """# Disk DescriptorFile
version=1
CID=12345678
parentCID=ffffffff
createType="monolithicFlat"
RW 204800 FLAT "disk-flat.vmdk" 0
RDONLY 2048 ZERO
"""

ENCRYPTED = ESXI_THIN + 'encryption.keySafe = "vmware:key/list/(pair/(fqid/<VMWARE-EMPTY>/xyz))"\n'
ENCRYPTED += 'encryption.data = "AAAAAAAAAAAAAAAA"\n'


def test_split_sparse_disk() -> None:
    d = parse_descriptor(SPLIT_SPARSE)
    assert d.create_type == "twoGbMaxExtentSparse"
    assert d.capacity == (8323072 * 2 + 1048576) * SECTOR
    assert d.data_files == [f"Ubuntu 64-bit-s00{i}.vmdk" for i in (1, 2, 3)]
    assert d.adapter_type == "lsilogic"
    assert (d.cid, d.parent_cid, d.version) == ("a1b2c3d4", "ffffffff", 1)
    assert not d.has_parent and not d.raw_device and not d.encrypted
    assert d.qemu_format == "vmdk"


def test_esxi_thin_disk() -> None:
    d = parse_descriptor(ESXI_THIN)
    assert (d.create_type, d.capacity) == ("vmfs", 40 << 30)
    assert [(e.access, e.type, e.file) for e in d.extents] == [("RW", "VMFS", "app01-flat.vmdk")]
    assert d.adapter_type == "pvscsi"


def test_snapshot_deltas_name_their_parent() -> None:
    delta = parse_descriptor(ESXI_DELTA)
    assert delta.has_parent and delta.parent_hint == "app01.vmdk"
    assert delta.extents[0].type == "VMFSSPARSE" and delta.capacity == 40 << 30
    se = parse_descriptor(SE_SPARSE)
    assert se.create_type == "seSparse" and se.capacity == 3 << 40
    assert se.parent_hint == "/vmfs/volumes/5e8f-11/big/big.vmdk"


@pytest.mark.parametrize("text", [RDM_PHYSICAL, RDM_VIRTUAL])
def test_raw_device_mappings(text: str) -> None:
    d = parse_descriptor(text)
    assert d.raw_device and d.capacity == 512 << 30


def test_flat_extent_offsets_and_zero_extents() -> None:
    d = parse_descriptor(MONOLITHIC_FLAT_WITH_ZERO)
    assert [(e.type, e.file, e.offset) for e in d.extents] == [
        ("FLAT", "disk-flat.vmdk", 0),
        ("ZERO", None, 0),
    ]
    assert d.capacity == (204800 + 2048) * SECTOR
    assert d.data_files == ["disk-flat.vmdk"]


def test_encryption_keys_mark_the_disk_encrypted() -> None:
    d = parse_descriptor(ENCRYPTED)
    assert d.encrypted
    assert "encryption.keySafe" in d.other


def test_qemu_img_descriptor_with_crlf_line_ends() -> None:
    text = (
        "# Disk DescriptorFile\r\nversion=1\r\nCID=3019fe93\r\nparentCID=ffffffff\r\n"
        'createType="monolithicFlat"\r\n\r\nRW 131072 FLAT "m-flat.vmdk" 0\r\n'
        'ddb.adapterType = "ide"\r\n'
    )
    d = parse_descriptor(text)
    assert d.capacity == 64 << 20 and d.adapter_type == "ide"


def sparse_file(descriptor: str, capacity_sectors: int, *, offset: int = 1) -> bytes:
    """The start of a KDMV sparse extent with its descriptor at sector `offset`."""
    size_sectors = 20
    header = struct.pack(
        "<4sIIQQQQ", b"KDMV", 1, 3, capacity_sectors, 128, offset, size_sectors
    ).ljust(SECTOR, b"\0")
    header = header[:77] + struct.pack("<H", 0) + header[79:]
    body = descriptor.encode().ljust(size_sectors * SECTOR, b"\0")
    return header + b"\0" * ((offset - 1) * SECTOR) + body


def test_embedded_descriptor_of_a_monolithic_sparse_file() -> None:
    text = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n"
    text += 'createType="monolithicSparse"\nRW 2097152 SPARSE "disk.vmdk"\n'
    data = sparse_file(text, 2097152)
    header = parse_sparse_header(data[:SECTOR])
    assert (header.capacity, header.descriptor_offset, header.grain_sectors) == (1 << 30, 1, 128)
    d = parse_descriptor(embedded_descriptor(data, header))
    assert d.create_type == "monolithicSparse" and d.capacity == header.capacity
    assert not looks_like_text_descriptor(data)


def test_sparse_header_errors() -> None:
    with pytest.raises(ParseError, match="no KDMV magic"):
        parse_sparse_header(b"COWD" + b"\0" * 508, "x.vmdk")
    data = sparse_file('createType="monolithicSparse"\n', 8)
    with pytest.raises(ParseError, match="ends before"):
        embedded_descriptor(data[:1024], parse_sparse_header(data))
    no_descriptor = struct.pack("<4sIIQQQQ", b"KDMV", 1, 3, 8, 128, 0, 0).ljust(SECTOR, b"\0")
    with pytest.raises(ParseError, match="split disk"):
        embedded_descriptor(no_descriptor, parse_sparse_header(no_descriptor))
    huge = struct.pack("<4sIIQQQQ", b"KDMV", 1, 3, 8, 128, 1, 1 << 40).ljust(SECTOR, b"\0")
    with pytest.raises(ParseError, match="out of range"):
        parse_sparse_header(huge)


def test_text_descriptor_detection() -> None:
    assert looks_like_text_descriptor(ESXI_THIN.encode())
    assert not looks_like_text_descriptor(b"\0" * 512)
    # qemu-img pads the descriptors it writes (convert -o subformat=monolithicFlat) to 512.
    assert looks_like_text_descriptor(ESXI_THIN.encode()[:400].ljust(512, b"\0"))
    assert not looks_like_text_descriptor(b"COWD" + b"\0" * 100)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ('# Disk DescriptorFile\nRW 8 FLAT "a" 0\n', "createType: missing"),
        ('createType="monolithicBanana"\nRW 8 FLAT "a"\n', ":1: createType: unknown createType"),
        ('createType="vmfs"\n', "no extent lines"),
        ('createType="vmfs"\nRW 8 VMFS\n', ":2: extent: a VMFS extent needs"),
        ('createType="vmfs"\nRW 8 WOBBLY "x"\n', ":2: extent: unknown extent type"),
        ('createType="vmfs"\nRW lots VMFS "x"\n', ":2: extent: not an extent line"),
        ('createType="vmfs"\nRW 8 VMFS "x"\nwhat is this\n', ":3: neither"),
        ('createType="vmfs\nRW 8 VMFS "x"\n', ":1: createType: unterminated"),
        ('version=one\ncreateType="vmfs"\nRW 8 VMFS "x"\n', ":1: version: not a number"),
    ],
)
def test_bad_descriptors_name_line_and_field(text: str, message: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_descriptor(text, "d.vmdk")
    assert message in str(caught.value)
    assert str(caught.value).startswith("d.vmdk")


extent = st.tuples(
    st.sampled_from(["SPARSE", "FLAT", "VMFS"]),
    st.integers(min_value=0, max_value=1 << 40),
    st.from_regex(r"[A-Za-z0-9 _.-]{1,30}", fullmatch=True),
)


@given(st.lists(extent, min_size=1, max_size=8), st.sampled_from(["vmfs", "monolithicFlat"]))
def test_written_descriptors_read_back(extents: list[tuple[str, int, str]], kind: str) -> None:
    lines = ["# Disk DescriptorFile", "version=1", f'createType="{kind}"']
    lines += [f'RW {sectors} {t} "{name}"' for t, sectors, name in extents]
    d = parse_descriptor("\n".join(lines))
    assert d.create_type == kind
    assert d.capacity == sum(sectors for _, sectors, _ in extents) * SECTOR
    assert [(e.type, e.sectors, e.file) for e in d.extents] == extents
