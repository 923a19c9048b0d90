"""Hyper-V: its disks (VHD and VHDX headers, differencing chains) and its exported VM
configuration where it can be read.

Disks. A VHD ends with a 512-byte footer ("conectix") that says fixed, dynamic or differencing;
a differencing VHD's dynamic header names its parent. A VHDX ("vhdxfile") keeps its virtual
size, its block flags (fixed: blocks left allocated; differencing: has a parent) and a parent
locator (relative_path, absolute_win32_path, ...) in its metadata region. qemu-img does not
follow either kind of parent: it refuses a differencing VHDX, and reads a differencing VHD as
if it were a whole disk (only the blocks the child wrote), so these headers are read here and
a differencing disk is reported with its chain, which the import merges (heron.v2v.chains).

Configuration. Hyper-V 2008 R2 and 2012 export a VM as "Virtual Machines/<GUID>.xml": its name,
processor count, memory, drives under the IDE and SCSI controllers and NICs are read here.
Hyper-V 2012 R2 and later write a binary .vmcx whose format is not documented: it is not read,
the hardware is then left to the administrator (vcpus and memory None, with a warning).
Everything here is pure: bytes or a reader function in, models out.
"""

import ntpath
import posixpath
import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from xml.etree.ElementTree import Element

from heron.models.v2v import DiskBus, Firmware, GuestOs, ScannedDisk, ScannedNic, ScannedVm
from heron.v2v.common import ParseError, integer, normalize_mac, parse_xml, text
from heron.v2v.findings import hardware_warnings

VhdKind = Literal["fixed", "dynamic", "differencing"]
VHD_COOKIE = b"conectix"
VHD_DYNAMIC_COOKIE = b"cxsparse"
VHDX_SIGNATURE = b"vhdxfile"
_VHD_TYPES: dict[int, VhdKind] = {2: "fixed", 3: "dynamic", 4: "differencing"}

# VHDX (MS-VHDX): region table at 192 KiB (a copy at 256 KiB); metadata items by GUID.
VHDX_REGION_TABLE = 192 * 1024
VHDX_REGION_TABLE_COPY = 256 * 1024
_METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
_FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
_VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
_PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
_LOGICAL_SECTOR_SIZE = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
_BAT_REGION = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
VHDX_HEADERS = (64 * 1024, 128 * 1024)
_LEAVE_BLOCKS_ALLOCATED, _HAS_PARENT = 1, 2
MAX_LOCATOR = 64 * 1024

# Controllers in a Hyper-V 2008 R2/2012 configuration, by the GUID in their element's name.
_IDE_GUID = "83f8638b-8dca-4152-9eda-2ca8b33039b4"
_SCSI_GUID = "d422512d-2bf2-4752-809d-7b82b5fcb1b4"
_NUMBERED = re.compile(r"^(controller|drive)(\d+)$", re.IGNORECASE)

# read(offset, length) -> bytes: the file's bytes there (fewer at its end).
Reader = Callable[[int, int], bytes]


@dataclass
class VhdInfo:
    """A VHD's footer and, for a dynamic or differencing one, its dynamic header."""

    kind: VhdKind
    size: int  # the footer's current size: the disk's virtual size in bytes
    parent_name: str | None = None  # differencing: the parent's name, as the child saw it
    # differencing: (platform code, offset, length) of each parent locator entry
    locators: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def subformat(self) -> str:
        return self.kind


def parse_vhd_footer(footer: bytes, path: str | None = None) -> tuple[VhdKind, int, int]:
    """(kind, virtual size, offset of the dynamic header) from the 512-byte footer."""
    if len(footer) < 512 or footer[:8] != VHD_COOKIE:
        raise ParseError("not a VHD (no conectix footer)", path=path, field="footer")
    (data_offset,) = struct.unpack_from(">Q", footer, 16)
    (size,) = struct.unpack_from(">Q", footer, 48)
    (disk_type,) = struct.unpack_from(">I", footer, 60)
    if disk_type not in _VHD_TYPES:
        raise ParseError(f"unknown disk type {disk_type}", path=path, field="footer")
    return _VHD_TYPES[disk_type], size, data_offset


def read_vhd(read: Reader, file_size: int, path: str | None = None) -> VhdInfo:
    """A VHD's kind, size and parent, reading the footer at its end (a copy of which begins
    dynamic disks) and a dynamic header."""
    if file_size < 512:
        raise ParseError("too short to be a VHD", path=path, field="footer")
    footer = read(file_size - 512, 512)
    if footer[:8] != VHD_COOKIE:
        # Some tools (and old Virtual PC) wrote a 511-byte footer.
        footer = read(file_size - 511, 511) + b"\0"
        if footer[:8] != VHD_COOKIE:
            footer = read(0, 512)
    kind, size, data_offset = parse_vhd_footer(footer, path)
    info = VhdInfo(kind=kind, size=size)
    if kind == "fixed":
        return info
    header = read(data_offset, 1024)
    if len(header) < 1024 or header[:8] != VHD_DYNAMIC_COOKIE:
        raise ParseError("the dynamic header is missing", path=path, field="dynamic header")
    if kind == "differencing":
        name = header[64 : 64 + 512].decode("utf-16-be", errors="replace")
        info.parent_name = name.split("\0", 1)[0] or None
        for index in range(8):
            entry = header[576 + index * 24 : 576 + (index + 1) * 24]
            code = entry[:4]
            _space, length, _reserved, offset = struct.unpack(">IIIQ", entry[4:])
            if code.strip(b"\0") and length:
                info.locators.append((code.decode("ascii", errors="replace"), offset, length))
    return info


def decode_vhd_locator(code: str, data: bytes) -> str:
    """The path a VHD parent locator entry holds: W2ru/W2ku are UTF-16LE (relative,
    absolute), Wi2r/Wi2k the legacy ANSI spellings."""
    if code in ("W2ru", "W2ku"):
        return data.decode("utf-16-le", errors="replace").split("\0", 1)[0]
    return data.decode("latin-1").split("\0", 1)[0]


@dataclass
class VhdxInfo:
    size: int
    block_size: int
    fixed: bool  # blocks left allocated: a fixed VHDX
    has_parent: bool  # a differencing VHDX
    parent: dict[str, str] = field(default_factory=dict)  # parent locator: relative_path, ...
    sector_size: int = 512  # the logical sector size: 512 or 4096
    bat: tuple[int, int] | None = None  # the BAT region: (offset, length)
    log_pending: bool = False  # the current header names a log: it may need a replay

    @property
    def subformat(self) -> str:
        return "differencing" if self.has_parent else "fixed" if self.fixed else "dynamic"


def _exact(read: Reader, offset: int, length: int, what: str, path: str | None) -> bytes:
    data = read(offset, length)
    if len(data) < length:
        raise ParseError(f"the file ends inside its {what}", path=path, field=what)
    return data


def read_vhdx(read: Reader, path: str | None = None) -> VhdxInfo:
    """A VHDX's virtual size, fixed/dynamic/differencing, and its parent locator."""
    if read(0, 8) != VHDX_SIGNATURE:
        raise ParseError("not a VHDX (no vhdxfile signature)", path=path, field="header")
    metadata, bat = None, None
    for table_at in (VHDX_REGION_TABLE, VHDX_REGION_TABLE_COPY):
        table = read(table_at, 64 * 1024)
        if len(table) < 16 or table[:4] != b"regi":
            continue
        (count,) = struct.unpack_from("<I", table, 8)
        for index in range(min(count, 2047)):
            entry = table[16 + index * 32 : 16 + (index + 1) * 32]
            if len(entry) < 32:
                break
            region = uuid.UUID(bytes_le=entry[:16])
            if region in (_METADATA_REGION, _BAT_REGION):
                offset, length = struct.unpack_from("<QI", entry, 16)
                if region == _METADATA_REGION:
                    metadata = (offset, length)
                else:
                    bat = (offset, length)
        if metadata:
            break
    if metadata is None:
        raise ParseError("no metadata region in the region table", path=path, field="regions")
    region_at, region_length = metadata
    table = read(region_at, 64 * 1024)
    if len(table) < 32 or table[:8] != b"metadata":
        raise ParseError("the metadata table is missing", path=path, field="metadata")
    (count,) = struct.unpack_from("<H", table, 10)
    items: dict[uuid.UUID, tuple[int, int]] = {}
    for index in range(min(count, 2047)):
        entry = table[32 + index * 32 : 32 + (index + 1) * 32]
        if len(entry) < 32:
            break
        offset, length = struct.unpack_from("<II", entry, 16)
        if offset + length > region_length:
            raise ParseError("a metadata item lies outside its region", path=path, field="metadata")
        items[uuid.UUID(bytes_le=entry[:16])] = (region_at + offset, length)
    for needed, name in ((_FILE_PARAMETERS, "file parameters"), (_VIRTUAL_DISK_SIZE, "size")):
        if needed not in items:
            raise ParseError(f"no {name} item", path=path, field="metadata")
    at = items[_FILE_PARAMETERS][0]
    block_size, flags = struct.unpack("<II", _exact(read, at, 8, "file parameters", path))
    (size,) = struct.unpack("<Q", _exact(read, items[_VIRTUAL_DISK_SIZE][0], 8, "size", path))
    sector_size = 512
    if _LOGICAL_SECTOR_SIZE in items:
        at = items[_LOGICAL_SECTOR_SIZE][0]
        (sector_size,) = struct.unpack("<I", _exact(read, at, 4, "sector size", path))
        if sector_size not in (512, 4096):
            raise ParseError(f"logical sector size {sector_size}", path=path, field="metadata")
    info = VhdxInfo(
        size=size,
        block_size=block_size,
        fixed=bool(flags & _LEAVE_BLOCKS_ALLOCATED),
        has_parent=bool(flags & _HAS_PARENT),
        sector_size=sector_size,
        bat=bat,
        log_pending=_log_pending(read),
    )
    if info.has_parent and _PARENT_LOCATOR in items:
        at, length = items[_PARENT_LOCATOR]
        info.parent = parse_vhdx_parent_locator(read(at, min(length, MAX_LOCATOR)), path)
    return info


def refuse_pending_log(info: VhdxInfo, path: str | None) -> None:
    """A VHDX whose log may hold writes not yet applied is not read: its data may be stale."""
    if info.log_pending:
        raise ParseError(
            "its header names a log that may hold writes not yet applied: attach it once in "
            "Hyper-V (or Mount-VHD) to replay the log, and scan again",
            path=path,
            field="log",
        )


def _log_pending(read: Reader) -> bool:
    """Whether the current header (of the two, the valid one with the higher sequence number)
    names a log (LogGuid not zero): its entries may still have to be replayed."""
    current: tuple[int, bytes] | None = None
    for at in VHDX_HEADERS:
        header = read(at, 4096)
        if len(header) < 4096 or header[:4] != b"head":
            continue
        (sequence,) = struct.unpack_from("<Q", header, 8)
        if current is None or sequence > current[0]:
            current = (sequence, header[48:64])
    return current is not None and current[1] != bytes(16)


def parse_vhdx_parent_locator(data: bytes, path: str | None = None) -> dict[str, str]:
    """The key-value pairs of a VHDX parent locator item (UTF-16LE strings)."""
    if len(data) < 20:
        raise ParseError("the parent locator is truncated", path=path, field="parent locator")
    (count,) = struct.unpack_from("<H", data, 18)
    pairs: dict[str, str] = {}
    for index in range(count):
        at = 20 + index * 12
        if at + 12 > len(data):
            raise ParseError("the parent locator is truncated", path=path, field="parent locator")
        key_at, value_at, key_len, value_len = struct.unpack_from("<IIHH", data, at)
        if key_at + key_len > len(data) or value_at + value_len > len(data):
            raise ParseError(
                "a parent locator entry lies outside it", path=path, field="parent locator"
            )
        key = data[key_at : key_at + key_len].decode("utf-16-le", errors="replace")
        pairs[key] = data[value_at : value_at + value_len].decode("utf-16-le", errors="replace")
    return pairs


def parent_candidates(child_dir: str, names: list[str]) -> list[str]:
    """Where a parent may be, nearest guess first: Windows paths as the child recorded them
    (relative ones against the child's directory, then every path's file name beside the
    child: an export keeps a chain in one folder, its absolute paths from the source host)."""
    found: list[str] = []
    for name in names:
        if not name:
            continue
        spelled = name.replace("\\", "/")
        if not ntpath.isabs(name) and not spelled.startswith("/"):
            found.append(posixpath.normpath(posixpath.join(child_dir, spelled)))
    for name in names:
        if name:
            found.append(posixpath.join(child_dir, ntpath.basename(name)))
    return list(dict.fromkeys(found))


@dataclass
class HyperVDrive:
    path: str  # as Hyper-V recorded it: C:\Hyper-V\web01\Virtual Hard Disks\web01.vhdx
    bus: DiskBus
    controller: int
    unit: int


@dataclass
class HyperVNic:
    mac: str | None
    static: bool
    switch: str | None
    name: str | None


@dataclass
class HyperVConfig:
    name: str
    vcpus: int | None = None
    memory_mib: int | None = None
    dynamic_memory: bool = False
    generation: int = 1
    secure_boot: bool | None = None
    drives: list[HyperVDrive] = field(default_factory=list)
    nics: list[HyperVNic] = field(default_factory=list)


def _find(root: Element, *names: str) -> Element | None:
    element: Element | None = root
    for name in names:
        element = next((c for c in element if c.tag.lower() == name), None) if element else None
    return element


def _bool(element: Element | None) -> bool | None:
    value = text(element)
    return None if value is None else value.lower() in ("true", "1")


def parse_legacy_config(data: bytes | str, path: str | None = None) -> HyperVConfig:
    """A Hyper-V 2008 R2/2012 exported configuration (Virtual Machines/<GUID>.xml, UTF-16
    or UTF-8). Elements are found by name where the versions moved them."""
    root = parse_xml(data, path)
    if root.tag.lower() != "configuration":
        raise ParseError(f"the root element is {root.tag}, not configuration", path=path)
    name = text(_find(root, "properties", "name"))
    if not name:
        raise ParseError("missing", path=path, field="properties/name")
    config = HyperVConfig(name=name)
    config.vcpus = integer(_find(root, "settings", "processors", "count"), path, "processors/count")
    config.memory_mib = integer(
        _find(root, "settings", "memory", "bank", "size"), path, "memory/size"
    )
    config.dynamic_memory = bool(
        _bool(_find(root, "settings", "memory", "bank", "dynamic_memory_enabled"))
    )
    subtype = integer(_find(root, "properties", "subtype"), path, "properties/subtype")
    config.generation = 2 if subtype == 1 else 1
    for element in root.iter():
        if element.tag.lower() == "secure_boot_enabled":
            config.secure_boot = _bool(element)
    _walk(root, [], config)
    return config


def _walk(element: Element, trail: list[str], config: HyperVConfig) -> None:
    for child in element:
        tag = child.tag.lower()
        names = {c.tag.lower() for c in child}
        if {"pathname", "type"} <= names:
            _drive(child, [*trail, tag], config)
        elif "address" in names and (
            names & {"is_static_address", "altswitchname", "switch_name", "channelinstanceguid"}
        ):
            static = bool(_bool(_find(child, "is_static_address")))
            raw = text(_find(child, "address"))
            switch = next(
                (
                    text(c)
                    for c in child.iter()
                    if c.tag.lower() in ("altswitchname", "switch_name") and text(c)
                ),
                None,
            )
            config.nics.append(
                HyperVNic(
                    mac=normalize_mac(raw) if raw else None,
                    static=static,
                    switch=switch,
                    name=text(_find(child, "friendly_name")),
                )
            )
        else:
            _walk(child, [*trail, tag], config)


def _drive(element: Element, trail: list[str], config: HyperVConfig) -> None:
    kind = (text(_find(element, "type")) or "").upper()
    pathname = text(_find(element, "pathname"))
    if not pathname or kind not in ("VHD", "VHDX", "DISK"):
        return  # an empty drive, a DVD (ISO) or a passthrough disk has no file to import
    bus: DiskBus = "scsi" if any(_SCSI_GUID in t for t in trail) else "ide"
    controller = unit = 0
    for tag in trail:
        if match := _NUMBERED.match(tag):
            if match[1].lower() == "controller":
                controller = int(match[2])
            else:
                unit = int(match[2])
        elif (numbered := re.search(r"_(\d+)_$", tag)) and (_IDE_GUID in tag or _SCSI_GUID in tag):
            controller = int(numbered[1])
    config.drives.append(HyperVDrive(path=pathname, bus=bus, controller=controller, unit=unit))


def vm_from_config(config: HyperVConfig, path: str, disks: list[ScannedDisk]) -> ScannedVm:
    """The VM of a read configuration, with its disks as the scan found them."""
    firmware: Firmware = "uefi" if config.generation == 2 else "bios"
    vm = ScannedVm(
        kind="hyperv",
        path=path,
        name=config.name,
        vcpus=config.vcpus,
        memory_mib=config.memory_mib,
        firmware=firmware,
        secure_boot=config.secure_boot if firmware == "uefi" else False,
        guest_os=GuestOs(),
        disks=disks,
    )
    hardware_warnings(vm)
    vm.warn(
        "guest-os-unknown",
        "Hyper-V's configuration does not say the guest OS: say whether it is Windows at "
        "import (virtio drivers)",
    )
    if config.dynamic_memory:
        vm.warn(
            "dynamic-memory",
            "the VM used dynamic memory: it is imported with its startup memory",
        )
    for index, nic in enumerate(config.nics):
        vm.nics.append(
            ScannedNic(
                device=nic.name or f"nic{index}",
                mac=nic.mac,
                mac_kind=None if nic.mac is None else "static" if nic.static else "generated",
                network=nic.switch,
                model="synthetic",
            )
        )
    return vm


def vm_without_config(name: str, path: str, disks: list[ScannedDisk], why: str) -> ScannedVm:
    """A Hyper-V VM whose hardware could not be read (a .vmcx, or loose disks): its disks
    only, the rest to be given at import."""
    vm = ScannedVm(kind="hyperv", path=path, name=name, disks=disks)
    vm.warn("hardware-not-read", f"hardware not read: give it at import ({why})")
    return vm
