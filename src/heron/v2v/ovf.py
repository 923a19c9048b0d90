"""OVF envelopes (.ovf) and OVA archives (a tar holding an .ovf and its disks).

An envelope lists its files (References), its disks with their capacities (DiskSection), and
one VirtualSystem per VM (several inside a VirtualSystemCollection), each with a
VirtualHardwareSection of Items by CIM ResourceType: 3 CPUs, 4 memory, 5 IDE, 6 SCSI and
20 SATA/NVMe controllers, 10 NICs, 17 disks (15/16 CD-ROMs, 14 floppies, 23 USB and the rest
are left out). VMware's extensions (vmw:Config key="firmware", vmw:CoresPerSocket,
vmw:osType) are read where present. Namespaces and prefixes are ignored: tools write both, and
some write prefixes they never declare. parse_ovf is pure; read_ova opens the archive.
"""

import posixpath
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from xml.etree.ElementTree import Element

from heron.models.v2v import DiskBus, Firmware, GuestOs, ScannedDisk, ScannedNic, ScannedVm
from heron.v2v.common import (
    ParseError,
    child,
    guest_family,
    integer,
    line_of,
    normalize_mac,
    parse_xml,
    text,
)
from heron.v2v.findings import (
    controller_warning,
    hardware_warnings,
    nic_model_warning,
)

# CIM ResourceTypes (DSP0243's CIM_ResourceAllocationSettingData).
RT_CPU, RT_MEMORY, RT_IDE, RT_SCSI, RT_NIC, RT_DISK, RT_OTHER_STORAGE = 3, 4, 5, 6, 10, 17, 20
_CONTROLLERS = {RT_IDE, RT_SCSI, RT_OTHER_STORAGE}
# byte * 2^20, byte*2^30, byte * 1024, byte
_UNITS = re.compile(r"^byte\s*(?:\*\s*(\d+)\s*(?:\^\s*(\d+))?)?$", re.IGNORECASE)
_NAMED_UNITS = {
    "bytes": 1,
    "kilobytes": 1 << 10,
    "kb": 1 << 10,
    "megabytes": 1 << 20,
    "mb": 1 << 20,
    "gigabytes": 1 << 30,
    "gb": 1 << 30,
    "terabytes": 1 << 40,
}
_FORMAT_BY_EXTENSION = {
    ".vmdk": "vmdk",
    ".vhd": "vpc",
    ".vhdx": "vhdx",
    ".qcow2": "qcow2",
    ".img": "raw",
    ".raw": "raw",
}
MAX_OVF = 16 << 20  # an envelope is a few KiB; refuse to read a huge "descriptor"


@dataclass
class Located:
    """Where a referenced file's bytes are: a file, or a member of an archive."""

    file: str
    member: str | None = None
    offset: int | None = None
    size: int | None = None


# Given a File's href, where it is; None when it is not there.
FileLocator = Callable[[str], Located | None]


def allocation_units(
    value: str | None, field: str, path: str | None = None, line: int | None = None
) -> int:
    """Bytes per unit of an OVF AllocationUnits / capacityAllocationUnits ("byte * 2^20")."""
    if value is None or not value.strip():
        return 1
    spelled = value.strip()
    if spelled.lower() in _NAMED_UNITS:
        return _NAMED_UNITS[spelled.lower()]
    match = _UNITS.match(spelled)
    if match is None:
        raise ParseError(f"unknown allocation units {spelled!r}", path=path, line=line, field=field)
    base, power = match[1], match[2]
    if base is None:
        return 1
    if power is None:
        return int(base)
    if int(power) > 80:
        raise ParseError(
            f"allocation units {spelled!r} too large", path=path, line=line, field=field
        )
    return int(base) ** int(power)


def _number(item: Element, name: str, where: str, path: str | None) -> int | None:
    """The integer in the item's child `name`, None if absent; ParseError naming its line."""
    return integer(child(item, name), path, f"{where}/{name}")


def _format_of(url: str | None, href: str | None) -> tuple[str | None, str | None]:
    """qemu-img's format and the variant, from the Disk's format URL or the file's name."""
    lowered = (url or "").lower()
    if "vmdk" in lowered:
        variant = url.rsplit("#", 1)[1] if url and "#" in url else None
        return "vmdk", variant
    if "vhdx" in lowered:
        return "vhdx", None
    if "vhd" in lowered or "bb676673" in lowered:  # Microsoft's VHD specification page
        return "vpc", None
    if "qcow" in lowered:
        return "qcow2", None
    if "raw" in lowered:
        return "raw", None
    if href:
        return _FORMAT_BY_EXTENSION.get(posixpath.splitext(href.lower())[1]), None
    return None, None


def _strip_disk_ref(host_resource: str) -> tuple[str, str]:
    """('disk'|'file', id) from ovf:/disk/vmdisk1, /disk/vmdisk1 or ovf:/file/file1."""
    tail = host_resource.strip()
    tail = tail.split(":", 1)[1] if tail.lower().startswith("ovf:") else tail
    parts = [p for p in tail.split("/") if p]
    if len(parts) >= 2 and parts[0].lower() in ("disk", "file"):
        return parts[0].lower(), "/".join(parts[1:])
    return "disk", parts[-1] if parts else ""


def _items(section: Element) -> list[Element]:
    return [c for c in section if c.tag in ("Item", "StorageItem", "EthernetPortItem")]


def _config(section: Element) -> dict[str, str]:
    """VMware's <vmw:Config vmw:key=... vmw:value=.../> and ExtraConfig of a section."""
    found: dict[str, str] = {}
    for element in section:
        if element.tag in ("Config", "ExtraConfig") and "key" in element.attrib:
            found[element.attrib["key"]] = element.attrib.get("value", "")
    return found


def parse_ovf(data: bytes | str, path: str, locate: FileLocator | None = None) -> list[ScannedVm]:
    """The VMs an OVF envelope describes. `path`: the .ovf (or the .ova holding it); `locate`
    says where each referenced file is (default: beside the .ovf, existence not checked).
    Raises ParseError for an envelope that does not parse; a disk file that is missing or
    that the import cannot read is a blocker of its VM."""
    root = parse_xml(data, path)
    if root.tag != "Envelope":
        raise ParseError(f"the root element is {root.tag}, not Envelope", path=path)
    base_dir = posixpath.dirname(path)
    if locate is None:

        def locate(href: str) -> Located | None:
            return Located(file=posixpath.normpath(posixpath.join(base_dir, href)))

    files: dict[str, Element] = {}
    for section in root.iter("References"):
        for element in section.iter("File"):
            file_id = element.attrib.get("id")
            if not file_id or "href" not in element.attrib:
                raise ParseError(
                    "a File needs id and href",
                    path=path,
                    line=line_of(element),
                    field="References/File",
                )
            files[file_id] = element
    disks: dict[str, Element] = {}
    for section in root.iter("DiskSection"):
        for element in section.iter("Disk"):
            disk_id = element.attrib.get("diskId")
            if not disk_id:
                raise ParseError(
                    "a Disk needs a diskId",
                    path=path,
                    line=line_of(element),
                    field="DiskSection/Disk",
                )
            disks[disk_id] = element
    systems = list(root.iter("VirtualSystem"))
    if not systems:
        raise ParseError("no VirtualSystem", path=path, field="VirtualSystem")
    return [_system(system, path, files, disks, locate) for system in systems]


def _system(
    system: Element,
    path: str,
    files: dict[str, Element],
    disks: dict[str, Element],
    locate: FileLocator,
) -> ScannedVm:
    name = text(system, "Name") or system.attrib.get("id") or posixpath.basename(path)
    os_section = next(system.iter("OperatingSystemSection"), None)
    os_id = None
    if os_section is not None:
        os_id = os_section.attrib.get("osType") or os_section.attrib.get("id")
        description = text(os_section, "Description")
        family = guest_family(os_section.attrib.get("osType") or description)
    else:
        family = "other"
    hardware = next(system.iter("VirtualHardwareSection"), None)
    if hardware is None:
        raise ParseError(
            "no VirtualHardwareSection",
            path=path,
            line=line_of(system),
            field=f"VirtualSystem {name}",
        )
    config = _config(hardware)
    firmware: Firmware = "uefi" if config.get("firmware", "").lower() == "efi" else "bios"
    vm = ScannedVm(
        kind="ovf",
        path=path,
        name=name,
        firmware=firmware,
        secure_boot=firmware == "uefi"
        and config.get("uefi.secureBoot.enabled", "").lower() == "true",
        guest_os=GuestOs(id=os_id, family=family),
    )
    hardware_warnings(vm)
    items = _items(hardware)
    controllers: dict[str, tuple[DiskBus, int, str | None]] = {}
    counts: dict[str, int] = {}
    for item in items:
        where = f"Item {text(item, 'InstanceID') or text(item, 'ElementName') or '?'}"
        kind = _number(item, "ResourceType", where, path)
        if kind == RT_CPU:
            vm.vcpus = _number(item, "VirtualQuantity", where, path)
            cores = _number(item, "CoresPerSocket", where, path)
            vm.cores_per_socket = cores or None
        elif kind == RT_MEMORY:
            quantity = _number(item, "VirtualQuantity", where, path)
            units_element = child(item, "AllocationUnits")
            unit = allocation_units(
                text(units_element), f"{where}/AllocationUnits", path, line_of(units_element)
            )
            if quantity is not None:
                vm.memory_mib = max(1, quantity * unit >> 20)
        elif kind in _CONTROLLERS:
            subtype = text(item, "ResourceSubType")
            bus = cast(DiskBus, {RT_IDE: "ide", RT_SCSI: "scsi"}.get(kind, "sata"))
            if kind == RT_OTHER_STORAGE and subtype and "nvme" in subtype.lower():
                bus = "nvme"
            number = counts.get(bus, 0)
            counts[bus] = number + 1
            address = _number(item, "Address", where, path)
            if address is not None and kind == RT_IDE:
                number = address
            controllers[text(item, "InstanceID") or ""] = (bus, number, subtype)
            if bus == "scsi":
                controller_warning(vm, subtype, f"scsi{number}")
    for item in items:
        where = f"Item {text(item, 'InstanceID') or text(item, 'ElementName') or '?'}"
        kind = _number(item, "ResourceType", where, path)
        if kind == RT_DISK:
            _disk(vm, item, where, path, controllers, files, disks, locate)
        elif kind == RT_NIC:
            _nic(vm, item)
    if vm.vcpus is None or vm.memory_mib is None:
        vm.warn(
            "hardware-not-read",
            "the envelope gives no "
            + " and no ".join(
                w for w, v in (("CPU count", vm.vcpus), ("memory", vm.memory_mib)) if v is None
            )
            + ": give it at import",
        )
    return vm


def _disk(
    vm: ScannedVm,
    item: Element,
    where: str,
    path: str,
    controllers: dict[str, tuple[DiskBus, int, str | None]],
    files: dict[str, Element],
    disks: dict[str, Element],
    locate: FileLocator,
) -> None:
    host = text(item, "HostResource")
    if not host:
        raise ParseError(
            "a disk Item needs a HostResource", path=path, line=line_of(item), field=where
        )
    bus, number, model = controllers.get(text(item, "Parent") or "", ("scsi", 0, None))
    unit = _number(item, "AddressOnParent", where, path)
    device = f"{bus}{number}:{unit if unit is not None else len(vm.disks)}"
    kind, ref = _strip_disk_ref(host)
    disk_element = disks.get(ref) if kind == "disk" else None
    if kind == "disk" and disk_element is None:
        raise ParseError(
            f"HostResource {host} names no Disk of the DiskSection",
            path=path,
            line=line_of(item),
            field=where,
        )
    file_id = disk_element.attrib.get("fileRef") if disk_element is not None else ref
    disk = ScannedDisk(
        device=device,
        file="",
        bus=bus,
        controller=number,
        controller_model=model,
        unit=unit,
    )
    vm.disks.append(disk)
    href = None
    if disk_element is not None:
        units = allocation_units(
            disk_element.attrib.get("capacityAllocationUnits"),
            f"Disk {ref}/capacityAllocationUnits",
            path,
            line_of(disk_element),
        )
        capacity = disk_element.attrib.get("capacity", "")
        if capacity.isdigit():
            disk.capacity = int(capacity) * units
        else:
            vm.warn(
                "capacity-unknown",
                f"the disk's capacity is {capacity!r} (a property): it is read from the image",
                device,
            )
    if file_id is None:
        vm.warn("empty-disk", "the disk has no file: it is made empty at import", device)
        return
    reference = files.get(file_id)
    if reference is None:
        vm.block("missing-disk", f"the file {file_id} is not in References", device)
        return
    href = reference.attrib["href"]
    url = disk_element.attrib.get("format") if disk_element is not None else None
    disk.format, disk.subformat = _format_of(url, href)
    if reference.attrib.get("compression"):
        vm.block(
            "compressed-file",
            f"{href} is {reference.attrib['compression']}-compressed: decompress it first",
            device,
        )
    if reference.attrib.get("chunkSize"):
        vm.block("chunked-file", f"{href} is split in chunks: join them first", device)
    if "://" in href:
        vm.block("remote-file", f"{href} is a URL: download it beside the envelope", device)
        return
    found = locate(href)
    if found is None:
        disk.file = posixpath.normpath(posixpath.join(posixpath.dirname(path), href))
        vm.block("missing-disk", f"the disk file {href} is not there", device)
        return
    disk.file = found.file
    disk.member, disk.member_offset, disk.member_size = found.member, found.offset, found.size


def _nic(vm: ScannedVm, item: Element) -> None:
    device = text(item, "ElementName") or f"ethernet{len(vm.nics)}"
    model = text(item, "ResourceSubType")
    raw_mac = text(item, "Address")
    mac = normalize_mac(raw_mac) if raw_mac else None
    connected = (text(item, "AutomaticAllocation") or "true").lower() != "false"
    vm.nics.append(
        ScannedNic(
            device=device,
            mac=mac,
            mac_kind="static" if mac else None,
            network=text(item, "Connection"),
            model=model,
            connected=connected,
        )
    )
    nic_model_warning(vm, model, device)


def read_ova(path: Path) -> list[ScannedVm]:
    """The VMs of an OVA: the tar's .ovf (the first member by the standard, found by name
    if not), its disks located as members of the tar (file = the .ova, member, offset and
    size of the member's data, which qemu-img reads through a raw offset). Raises ParseError
    for an archive without a readable envelope."""
    where = str(path)
    try:
        with tarfile.open(path, mode="r:") as archive:
            members = {posixpath.normpath(m.name): m for m in archive.getmembers() if m.isfile()}
            envelopes = [m for n, m in members.items() if n.lower().endswith(".ovf")]
            if not envelopes:
                raise ParseError("the archive holds no .ovf", path=where)
            envelope = envelopes[0]
            if envelope.size > MAX_OVF:
                raise ParseError("the .ovf is too large to be an envelope", path=where)
            stream = archive.extractfile(envelope)
            assert stream is not None  # a regular file
            data = stream.read()
    except (tarfile.TarError, OSError) as e:
        raise ParseError(f"not a readable tar archive ({e})", path=where) from None
    base = posixpath.dirname(posixpath.normpath(envelope.name))

    def locate(href: str) -> Located | None:
        member = members.get(posixpath.normpath(posixpath.join(base, href)))
        if member is None:
            return None
        return Located(file=where, member=member.name, offset=member.offset_data, size=member.size)

    return parse_ovf(data, f"{where}", locate)
