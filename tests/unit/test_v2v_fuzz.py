"""Whatever a file holds, the parsers answer with a model or a ParseError: never another
exception (a traceback out of a scan)."""

import contextlib
import struct
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from heron.v2v import hyperv, vmdk
from heron.v2v.common import ParseError
from heron.v2v.ovf import parse_ovf
from heron.v2v.vmx import parse_vmx

# Lines near the real ones: keys the parsers act on, values of every shape.
vmx_keys = st.sampled_from(
    [
        "memsize", "numvcpus", "cpuid.coresPerSocket", "firmware", "guestOS", "displayName",
        "scsi0:0.fileName", "scsi0:0.present", "scsi0:0.deviceType", "scsi0.present",
        "sata0:1.fileName", "ethernet0.present", "ethernet0.address", "ethernet0.addressType",
        "ethernet0.generatedAddress", "pciPassthru0.present", "scsi0:0.mode", "x",
    ]
)  # fmt: skip
vmx_values = st.one_of(st.text(max_size=12), st.integers(-5, 1 << 40).map(str))
vmx_lines = st.one_of(
    st.tuples(vmx_keys, vmx_values).map(lambda kv: f'{kv[0]} = "{kv[1]}"'),
    st.text(max_size=30),
)


@given(st.lists(vmx_lines, max_size=12))
def test_vmx(lines: list[str]) -> None:
    with contextlib.suppress(ParseError):
        parse_vmx("\n".join(lines), "/d/f.vmx", lambda name: None)


descriptor_lines = st.one_of(
    st.sampled_from(
        [
            'createType="vmfs"', 'createType="monolithicSparse"', 'parentFileNameHint="p.vmdk"',
            'RW 8 VMFS "x"', "RW 8 ZERO", 'RDONLY 99 SPARSE "y" 3', "version=1", "CID=1",
            'ddb.adapterType = "lsilogic"', "# Disk DescriptorFile",
        ]
    ),
    st.text(max_size=30),
)  # fmt: skip


@given(st.lists(descriptor_lines, max_size=10))
def test_vmdk_descriptor(lines: list[str]) -> None:
    with contextlib.suppress(ParseError):
        vmdk.parse_descriptor("\n".join(lines), "d.vmdk")


@given(st.binary(max_size=600))
def test_sparse_header(data: bytes) -> None:
    try:
        header = vmdk.parse_sparse_header(b"KDMV" + data, "s.vmdk")
        vmdk.embedded_descriptor(b"KDMV" + data, header, "s.vmdk")
    except ParseError:
        pass


tags = st.sampled_from(
    ["Envelope", "VirtualSystem", "VirtualHardwareSection", "Item", "ResourceType",
     "VirtualQuantity", "AllocationUnits", "HostResource", "DiskSection", "Disk", "References",
     "File", "Parent", "AddressOnParent", "Connection", "Address"]
)  # fmt: skip
texts = st.sampled_from(["3", "4", "10", "17", "6", "byte * 2^20", "ovf:/disk/d", "x", ""])


def element(depth: int) -> st.SearchStrategy[str]:
    attrs = st.sampled_from(
        ["", ' ovf:id="f"', ' ovf:href="a.vmdk"', ' ovf:diskId="d" ovf:fileRef="f"',
         ' ovf:capacity="x"', ' vmw:key="firmware" vmw:value="efi"']
    )  # fmt: skip
    inner = texts if depth == 0 else st.lists(element(depth - 1), max_size=3).map("".join)
    return st.tuples(tags, attrs, inner).map(lambda t: f"<{t[0]}{t[1]}>{t[2]}</{t[0]}>")


@settings(max_examples=300)
@given(element(4))
def test_ovf(body: str) -> None:
    with contextlib.suppress(ParseError):
        parse_ovf(body, "/d/x.ovf")


@given(st.binary(max_size=2048), st.integers(0, 4096))
def test_vhd(data: bytes, size: int) -> None:
    footer = bytearray(b"conectix" + data[:504].ljust(504, b"\0"))
    blob = bytes(footer) + data
    try:
        hyperv.read_vhd(lambda o, n: blob[o : o + n], len(blob), "/d/x.vhd")
        hyperv.read_vhd(lambda o, n: data[o : o + n], size, "/d/x.vhd")
    except ParseError:
        pass


@given(st.binary(max_size=256), st.integers(0, 1 << 20), st.integers(0, 1 << 20))
def test_vhdx(noise: bytes, region_at: int, region_length: int) -> None:
    """A VHDX whose metadata region is anywhere and holds noise."""
    image = bytearray(640 * 1024)
    image[:8] = b"vhdxfile"
    table = struct.pack("<4sIII", b"regi", 0, 1, 0)
    table += uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
    table += struct.pack("<QII", region_at, region_length, 1)
    image[192 * 1024 : 192 * 1024 + len(table)] = table
    image[region_at : region_at + 8 + len(noise)] = b"metadata" + noise
    with contextlib.suppress(ParseError):
        hyperv.read_vhdx(lambda o, n: bytes(image[o : o + n]), "/d/x.vhdx")


@given(st.binary(max_size=300))
def test_vhdx_parent_locator(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        hyperv.parse_vhdx_parent_locator(data)


@given(st.text(max_size=400))
def test_hyperv_configuration(text: str) -> None:
    with contextlib.suppress(ParseError):
        hyperv.parse_legacy_config("<configuration>" + text + "</configuration>")
