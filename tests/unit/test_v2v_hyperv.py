"""Hyper-V: the 2008 R2/2012 exported configuration, and the VHD and VHDX headers that say a
disk's size, kind and parent."""

import struct
import uuid
from collections.abc import Callable

import pytest

from heron.models.v2v import ScannedDisk
from heron.v2v.common import ParseError
from heron.v2v.hyperv import (
    decode_vhd_locator,
    parent_candidates,
    parse_legacy_config,
    parse_vhd_footer,
    parse_vhdx_parent_locator,
    read_vhd,
    read_vhdx,
    vm_from_config,
    vm_without_config,
)

IDE = "_83f8638b-8dca-4152-9eda-2ca8b33039b4_"
SCSI = "_d422512d-2bf2-4752-809d-7b82b5fcb1b4_"

# A Hyper-V 2012 export: a generation 2 VM with secure boot, an IDE disk (generation 1 VMs
# boot from it), a SCSI data disk, a DVD with an ISO, one NIC with a dynamic MAC and one static.
LEGACY = f"""<?xml version="1.0" encoding="UTF-16" standalone="yes"?>
<configuration>
  <properties>
    <creation_time type="bytes">AAAAAAAAAAA=</creation_time>
    <global_id type="string">7F3A1C2E-4B5D-4E6F-8A9B-0C1D2E3F4A5B</global_id>
    <name type="string">fileserver</name>
    <subtype type="integer">1</subtype>
    <type_id type="string">Virtual Machines</type_id>
    <version type="integer">1280</version>
  </properties>
  <settings>
    <processors>
      <count type="integer">2</count>
      <limit type="integer">100000</limit>
    </processors>
    <memory>
      <bank>
        <dynamic_memory_enabled type="bool">True</dynamic_memory_enabled>
        <limit type="integer">1048576</limit>
        <reservation type="integer">512</reservation>
        <size type="integer">2048</size>
      </bank>
    </memory>
    <secure_boot_enabled type="bool">True</secure_boot_enabled>
  </settings>
  <{IDE}0_>
    <controller0>
      <drive0>
        <pathname type="string">C:\\VMs\\fileserver\\Virtual Hard Disks\\fileserver.vhdx</pathname>
        <type type="string">VHD</type>
      </drive0>
      <drive1>
        <pathname type="string">D:\\ISO\\WindowsServer2012.iso</pathname>
        <type type="string">ISO</type>
      </drive1>
    </controller0>
  </{IDE}0_>
  <{SCSI}0_>
    <controller0>
      <drive3>
        <pathname type="string">C:\\Hyper-V\\fileserver\\Virtual Hard Disks\\data.vhd</pathname>
        <type type="string">VHD</type>
      </drive3>
      <drive4>
        <pathname type="string"></pathname>
        <type type="string">NONE</type>
      </drive4>
    </controller0>
  </{SCSI}0_>
  <_8922da15-e4d1-4b1c-a10f-ef0ffc4cd3c8_>
    <ChannelInstanceGuid type="string">{{A1B2C3D4-0000-0000-0000-00000001}}</ChannelInstanceGuid>
    <friendly_name type="string">Network Adapter</friendly_name>
    <address type="string">00155D0A0B0C</address>
    <is_static_address type="bool">False</is_static_address>
    <connection>
      <AltPortName type="string">Dynamic Ethernet Switch Port</AltPortName>
      <AltSwitchName type="string">External LAN</AltSwitchName>
    </connection>
  </_8922da15-e4d1-4b1c-a10f-ef0ffc4cd3c8_>
  <_8922da15-e4d1-4b1c-a10f-ef0ffc4cd3c8_1>
    <friendly_name type="string">Backup NIC</friendly_name>
    <address type="string">00-15-5D-01-02-03</address>
    <is_static_address type="bool">True</is_static_address>
  </_8922da15-e4d1-4b1c-a10f-ef0ffc4cd3c8_1>
</configuration>
"""


def test_legacy_configuration_in_utf16() -> None:
    config = parse_legacy_config(LEGACY.encode("utf-16"), "/e/Virtual Machines/7F3A.xml")
    assert (config.name, config.vcpus, config.memory_mib, config.generation) == (
        "fileserver",
        2,
        2048,
        2,
    )
    assert config.dynamic_memory and config.secure_boot
    assert [(d.bus, d.controller, d.unit, d.path.rsplit("\\", 1)[1]) for d in config.drives] == [
        ("ide", 0, 0, "fileserver.vhdx"),
        ("scsi", 0, 3, "data.vhd"),
    ]
    assert [(n.mac, n.static, n.switch, n.name) for n in config.nics] == [
        ("00:15:5d:0a:0b:0c", False, "External LAN", "Network Adapter"),
        ("00:15:5d:01:02:03", True, None, "Backup NIC"),
    ]


def test_vm_from_configuration() -> None:
    config = parse_legacy_config(LEGACY, "/e/x.xml")
    disk = ScannedDisk(device="ide0:0", file="/e/Virtual Hard Disks/fileserver.vhdx", bus="ide")
    vm = vm_from_config(config, "/e/x.xml", [disk])
    assert (vm.kind, vm.firmware, vm.secure_boot, vm.vcpus, vm.memory_mib) == (
        "hyperv",
        "uefi",
        True,
        2,
        2048,
    )
    assert [(n.mac_kind, n.model) for n in vm.nics] == [
        ("generated", "synthetic"),
        ("static", "synthetic"),
    ]
    assert {"dynamic-memory", "guest-os-unknown", "uefi-variables"} <= {w.code for w in vm.warnings}
    assert vm.importable


def test_generation_1_is_bios() -> None:
    config = parse_legacy_config(LEGACY.replace('"integer">1</subtype>', '"integer">0</subtype>'))
    assert config.generation == 1
    assert vm_from_config(config, "/e/x.xml", []).firmware == "bios"


def test_vmcx_hardware_is_left_to_the_administrator() -> None:
    vm = vm_without_config("web", "/e/Virtual Machines/x.vmcx", [], "a binary .vmcx")
    assert vm.vcpus is None and vm.memory_mib is None and vm.firmware is None
    (warning,) = vm.warnings
    assert warning.code == "hardware-not-read"
    assert warning.message.startswith("hardware not read: give it at import")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<configuration><properties></properties></configuration>", "properties/name: missing"),
        ("<vm/>", "the root element is vm"),
        ("<configuration>", "not well-formed XML"),
        (
            LEGACY.replace('"integer">2</count>', '"integer">two</count>'),
            "c.xml:13: processors/count: not a number",
        ),
    ],
)
def test_bad_configurations(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_legacy_config(text, "/e/c.xml")


def checksum(data: bytearray, at: int) -> None:
    data[at : at + 4] = b"\0\0\0\0"
    data[at : at + 4] = struct.pack(">I", ~sum(data) & 0xFFFFFFFF)


def vhd(kind: int, size: int, parent: str = "", locator: str = "") -> bytes:
    """A VHD as its specification lays it out: footer copy, dynamic header, locator data, BAT
    (left empty), footer."""
    footer = bytearray(512)
    struct.pack_into(
        ">8sIIQ", footer, 0, b"conectix", 2, 0x10000, 512 if kind != 2 else ~0 & (2**64 - 1)
    )
    struct.pack_into(">QQ", footer, 40, size, size)
    struct.pack_into(">I", footer, 60, kind)
    checksum(footer, 64)
    if kind == 2:
        return bytes(size) + bytes(footer)
    header = bytearray(1024)
    struct.pack_into(">8sQQII", header, 0, b"cxsparse", ~0 & (2**64 - 1), 4096, 0x10000, 1)
    header[64 : 64 + 512] = parent.encode("utf-16-be").ljust(512, b"\0")
    data = locator.encode("utf-16-le")
    if locator:
        struct.pack_into(">4sIIIQ", header, 576, b"W2ru", 512, len(data), 0, 2048)
    checksum(header, 36)
    body = bytearray(4096)
    body[:512], body[512:1536] = footer, header
    body[2048 : 2048 + len(data)] = data
    return bytes(body) + bytes(footer)


def reader(data: bytes) -> Callable[[int, int], bytes]:
    return lambda offset, length: data[offset : offset + length]


@pytest.mark.parametrize(("kind", "name"), [(2, "fixed"), (3, "dynamic")])
def test_vhd_fixed_and_dynamic(kind: int, name: str) -> None:
    data = vhd(kind, 8 << 20)
    info = read_vhd(reader(data), len(data))
    assert (info.kind, info.size, info.parent_name) == (name, 8 << 20, None)
    assert parse_vhd_footer(data[-512:])[:2] == (name, 8 << 20)


def test_vhd_differencing_names_its_parent() -> None:
    data = vhd(4, 1 << 30, parent="base.vhd", locator="..\\base\\base.vhd")
    info = read_vhd(reader(data), len(data))
    assert (info.kind, info.parent_name) == ("differencing", "base.vhd")
    ((code, offset, length),) = info.locators
    assert decode_vhd_locator(code, data[offset : offset + length]) == "..\\base\\base.vhd"


def test_vhd_errors() -> None:
    with pytest.raises(ParseError, match="too short"):
        read_vhd(reader(b"x"), 1, "/d/a.vhd")
    junk = b"\0" * 4096
    with pytest.raises(ParseError, match="no conectix footer"):
        read_vhd(reader(junk), len(junk), "/d/a.vhd")
    data = bytearray(vhd(3, 1 << 20))
    data[512:520] = b"garbage!"
    with pytest.raises(ParseError, match="dynamic header is missing"):
        read_vhd(reader(bytes(data)), len(data))


def locator(pairs: dict[str, str]) -> bytes:
    entries, blobs = b"", b""
    base = 20 + 12 * len(pairs)
    for key, value in pairs.items():
        k, v = key.encode("utf-16-le"), value.encode("utf-16-le")
        entries += struct.pack(
            "<IIHH", base + len(blobs), base + len(blobs) + len(k), len(k), len(v)
        )
        blobs += k + v
    head = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913").bytes_le
    return head + struct.pack("<HH", 0, len(pairs)) + entries + blobs


def vhdx(size: int, flags: int, parent: dict[str, str] | None = None) -> bytes:
    """The header, region table and metadata of a VHDX (MS-VHDX), without data blocks."""
    data = bytearray(2 << 20)
    data[0:8] = b"vhdxfile"
    metadata_at, metadata_length = 1 << 20, 64 << 10
    table = struct.pack("<4sIII", b"regi", 0, 1, 0)
    table += uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
    table += struct.pack("<QII", metadata_at, metadata_length, 1)
    data[192 << 10 : (192 << 10) + len(table)] = table
    items = [
        ("CAA16737-FA36-4D43-B3B6-33F0AA44E76B", struct.pack("<II", 32 << 20, flags)),
        ("2FA54224-CD1B-4876-B211-5DBED83BF4B8", struct.pack("<Q", size)),
    ]
    if parent is not None:
        items.append(("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C", locator(parent)))
    header = struct.pack("<8sHH20x", b"metadata", 0, len(items))
    offset = 4096
    for index, (guid, blob) in enumerate(items):
        header += uuid.UUID(guid).bytes_le + struct.pack("<IIII", offset, len(blob), 4, 0)
        data[metadata_at + offset : metadata_at + offset + len(blob)] = blob
        offset += 4096 * (index + 1)
    data[metadata_at : metadata_at + len(header)] = header
    return bytes(data)


@pytest.mark.parametrize(("flags", "kind"), [(0, "dynamic"), (1, "fixed")])
def test_vhdx_fixed_and_dynamic(flags: int, kind: str) -> None:
    info = read_vhdx(reader(vhdx(10 << 30, flags)))
    assert (info.size, info.block_size, info.subformat, info.parent) == (
        10 << 30,
        32 << 20,
        kind,
        {},
    )


def test_vhdx_differencing_names_its_parent() -> None:
    pairs = {
        "parent_linkage": "{0a1b2c3d-0000-0000-0000-000000000000}",
        "relative_path": "..\\base.vhdx",
        "absolute_win32_path": "\\\\?\\C:\\VMs\\base.vhdx",
    }
    info = read_vhdx(reader(vhdx(1 << 30, 2, pairs)))
    assert info.has_parent and info.subformat == "differencing"
    assert info.parent == pairs


def test_vhdx_errors() -> None:
    with pytest.raises(ParseError, match="no vhdxfile signature"):
        read_vhdx(reader(b"\0" * 1024), "/d/x.vhdx")
    no_table = bytearray(vhdx(1 << 20, 0))
    no_table[192 << 10 : (192 << 10) + 4] = b"\0\0\0\0"
    with pytest.raises(ParseError, match="no metadata region"):
        read_vhdx(reader(bytes(no_table)))
    with pytest.raises(ParseError, match="truncated"):
        parse_vhdx_parent_locator(b"\0" * 10)
    bad = bytearray(locator({"relative_path": "x"}))
    struct.pack_into("<I", bad, 24, 10_000)
    with pytest.raises(ParseError, match="lies outside it"):
        parse_vhdx_parent_locator(bytes(bad))


@pytest.mark.parametrize("cut", [8, 1000, 196 * 1024, (1 << 20) + 40, (1 << 20) + 4100])
def test_a_truncated_vhdx_is_a_parse_error(cut: int) -> None:
    data = vhdx(1 << 30, 2, {"relative_path": "p.vhdx"})[:cut]
    with pytest.raises(ParseError):
        read_vhdx(reader(data), "/d/t.vhdx")


def test_parent_candidates() -> None:
    found = parent_candidates(
        "/ds/vm/Virtual Hard Disks",
        ["..\\base\\base.vhdx", "C:\\Hyper-V\\vm\\Virtual Hard Disks\\base.vhdx"],
    )
    assert found == [
        "/ds/vm/base/base.vhdx",
        "/ds/vm/Virtual Hard Disks/base.vhdx",
    ]
