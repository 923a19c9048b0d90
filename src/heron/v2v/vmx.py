"""VMware's VM description, the .vmx file: `key = "value"` lines, read into a ScannedVm.

What is read: displayName, guestOS, numvcpus, cpuid.coresPerSocket, memsize (MiB), firmware
("efi" is UEFI) and uefi.secureBoot.enabled; disks on scsiN:M, sataN:M, ideN:M and nvmeN:M
(CD-ROMs and devices with present = "FALSE" left out, as are the devices of a controller that
is not present); the SCSI controller's model (scsiN.virtualDev); NICs (ethernetN.*) with their
MAC as VMware assigned it (addressType generated or vpx: generatedAddress) or as the
administrator set it (static: address). Keys are case-insensitive, as VMware reads them;
values are quoted, with VMware's |XX escapes (|22 is a double quote, |7C a bar). Each disk's
descriptor comes from a resolver, so this module stays pure: the scan resolves names to files.
"""

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from heron.models.v2v import DiskBus, GuestOs, MacKind, ScannedDisk, ScannedNic, ScannedVm
from heron.v2v.common import ParseError, guest_family, normalize_mac
from heron.v2v.findings import (
    chain_warning,
    controller_warning,
    hardware_warnings,
    nic_model_warning,
)
from heron.v2v.vmdk import VmdkDescriptor

# Keys VMware writes: letters, digits and . _ : - (guestinfo keys may hold more).
_LINE = re.compile(r"^(?P<key>[^\s=\"]+)\s*=\s*(?P<value>.*?)\s*$")
_ESCAPE = re.compile(rb"\|([0-9A-Fa-f]{2})")
_DEVICE = re.compile(r"^(?P<bus>scsi|sata|ide|nvme)(?P<ctrl>\d+):(?P<unit>\d+)\.(?P<attr>.+)$")
_CONTROLLER = re.compile(r"^(?P<bus>scsi|sata|ide|nvme)(?P<ctrl>\d+)\.(?P<attr>[^:]+)$")
_ETHERNET = re.compile(r"^ethernet(?P<n>\d+)\.(?P<attr>.+)$")
_PCI = re.compile(r"^pcipassthru(?P<n>\d+)\.(?P<attr>.+)$")
_CDROM_TYPES = {"cdrom-image", "atapi-cdrom", "cdrom-raw"}
# Disk device types that pass a host's device through instead of reading a file.
_PASSTHROUGH_TYPES = {"scsi-passthru", "rawdisk"}
# Longest chain followed: ESXi allows 32 snapshots deep; more means a loop of hints.
MAX_CHAIN = 255


@dataclass
class VmxValue:
    value: str
    line: int


@dataclass
class Resolved:
    """A disk's descriptor as the resolver found it, with the path it was found at."""

    path: str
    descriptor: VmdkDescriptor


# Given a disk's name (the .vmx fileName, or a parent hint joined to its child's directory),
# the descriptor; None when no file has that name; ParseError when it does not read.
DiskResolver = Callable[[str], Resolved | None]


def decode_value(raw: str) -> str:
    """A value as written (without its quotes) to its text: |XX is the byte XX."""
    data = _ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), raw.encode("utf-8"))
    return data.decode("utf-8", errors="replace")


def encode_value(text: str) -> str:
    """The text as VMware quotes it, escapes and quotes included."""
    out = []
    for char in text:
        if char in '"|#' or ord(char) < 0x20 or ord(char) == 0x7F:
            out.append("".join(f"|{byte:02X}" for byte in char.encode("utf-8")))
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def parse_pairs(text: str, path: str | None = None) -> dict[str, VmxValue]:
    """The .vmx's settings by lower-cased key (the last of a repeated key wins, as in VMware).
    Raises ParseError naming the line of anything that is not `key = value`."""
    pairs: dict[str, VmxValue] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ParseError(f"not 'key = \"value\"': {line[:80]!r}", path=path, line=number)
        key, value = match["key"], match["value"]
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"') or '"' in value[1:-1]:
                raise ParseError(
                    "unterminated or badly quoted value", path=path, line=number, field=key
                )
            value = value[1:-1]
        elif '"' in value:
            raise ParseError("badly quoted value", path=path, line=number, field=key)
        pairs[key.lower()] = VmxValue(decode_value(value), number)
    return pairs


def truthy(value: str | None, default: bool = False) -> bool:
    if value is None:
        return default
    return value.strip().lower() in {"true", "yes", "1", "on"}


class _Settings:
    def __init__(self, pairs: dict[str, VmxValue], path: str) -> None:
        self.pairs, self.path = pairs, path

    def get(self, key: str) -> str | None:
        found = self.pairs.get(key.lower())
        return None if found is None else found.value

    def number(self, key: str, low: int = 1) -> int | None:
        found = self.pairs.get(key.lower())
        if found is None or found.value.strip() == "":
            return None
        try:
            spelled = found.value.strip()
            value = int(spelled, 16) if spelled.lower().startswith("0x") else int(spelled)
        except ValueError:
            raise ParseError(
                f"not a number: {found.value!r}", path=self.path, line=found.line, field=key
            ) from None
        if value < low:
            raise ParseError(
                f"must be at least {low}, not {value}",
                path=self.path,
                line=found.line,
                field=key,
            )
        return value


def _join(base_dir: str, name: str) -> str:
    return posixpath.normpath(posixpath.join(base_dir, name.replace("\\", "/")))


def parse_vmx(text: str, path: str, resolve: DiskResolver | None = None) -> ScannedVm:
    """The VM a .vmx describes. `path`: the .vmx's path (disk names are relative to its
    directory); `resolve`: finds each disk's descriptor (None: disks are listed without
    capacity or chain). Raises ParseError for a .vmx that does not parse; a disk whose
    descriptor is missing or unreadable is a blocker of the VM instead."""
    settings = _Settings(parse_pairs(text, path), path)
    get = settings.get
    name = get("displayName") or posixpath.splitext(posixpath.basename(path))[0]
    os_id = get("guestOS")
    vm = ScannedVm(
        kind="vmware",
        path=path,
        name=name,
        vcpus=settings.number("numvcpus") or 1,
        cores_per_socket=settings.number("cpuid.coresPerSocket"),
        memory_mib=settings.number("memsize"),
        firmware="uefi" if (get("firmware") or "").lower() == "efi" else "bios",
        guest_os=GuestOs(id=os_id, family=guest_family(os_id)),
    )
    vm.secure_boot = vm.firmware == "uefi" and truthy(get("uefi.secureBoot.enabled"))
    hardware_warnings(vm)
    if vm.memory_mib is None:
        vm.warn("hardware-not-read", "memsize is not set: give the memory at import")
    if get("encryption.keySafe") is not None or get("encryption.data") is not None:
        vm.block(
            "encrypted-vm",
            "the VM is encrypted (encryption.keySafe): its disks can only be read with the key "
            "from vCenter's key server; decrypt it in vSphere before the import",
        )
    if truthy(get("vhv.enable")):
        vm.warn("nested-virtualization", "nested virtualization (vhv.enable) is not carried")
    _pci_devices(settings, vm)
    _disks(settings, vm, resolve)
    _nics(settings, vm)
    return vm


def _pci_devices(settings: _Settings, vm: ScannedVm) -> None:
    numbers = sorted({int(m["n"]) for key in settings.pairs if (m := _PCI.match(key))})
    for n in numbers:
        if not truthy(settings.get(f"pciPassthru{n}.present")):
            continue
        device = f"pciPassthru{n}"
        if settings.get(f"{device}.vgpu"):
            vm.block(
                "vgpu",
                f"a vGPU ({settings.get(f'{device}.vgpu')}) is attached: its profile and "
                "driver are the host's; remove it in vSphere before the import",
                device,
            )
        else:
            vm.block(
                "pci-passthrough",
                "a host PCI device is passed through: it is not in the datastore and Heron "
                "cannot know the matching device on its nodes; remove it before the import",
                device,
            )
    if truthy(settings.get("nvdimm0.present")):
        vm.block("nvdimm", "a virtual NVDIMM is attached: its contents are not imported")


def _controllers(settings: _Settings) -> dict[tuple[str, int], dict[str, str]]:
    found: dict[tuple[str, int], dict[str, str]] = {}
    for key, entry in settings.pairs.items():
        if match := _CONTROLLER.match(key):
            found.setdefault((match["bus"], int(match["ctrl"])), {})[match["attr"]] = entry.value
    return found


def _disks(settings: _Settings, vm: ScannedVm, resolve: DiskResolver | None) -> None:
    controllers = _controllers(settings)
    devices: dict[tuple[str, int, int], dict[str, str]] = {}
    for key, entry in settings.pairs.items():
        if match := _DEVICE.match(key):
            slot = (match["bus"], int(match["ctrl"]), int(match["unit"]))
            devices.setdefault(slot, {})[match["attr"]] = entry.value
    base_dir = posixpath.dirname(path) if (path := vm.path) else ""
    warned_models: set[str | None] = set()
    for (bus, ctrl, unit), attrs in sorted(devices.items()):
        controller = controllers.get((bus, ctrl), {})
        # A controller VMware lists as absent takes its devices with it; ide has no
        # present key of its own in most files.
        if bus != "ide" and not truthy(controller.get("present"), default=True):
            continue
        if not truthy(attrs.get("present"), default="filename" in attrs):
            continue
        device_type = (attrs.get("devicetype") or "").lower()
        file_name = attrs.get("filename")
        if device_type in _CDROM_TYPES or (
            file_name is not None and file_name.lower().endswith(".iso") and not device_type
        ):
            continue
        if device_type == "floppy" or (device_type and "cdrom" in device_type):
            continue
        device = f"{bus}{ctrl}:{unit}"
        model = _controller_model(bus, controller)
        if device_type in _PASSTHROUGH_TYPES:
            vm.block(
                "scsi-passthrough",
                f"a host device is passed through ({device_type}): nothing in the datastore "
                "to import",
                device,
            )
            continue
        disk = ScannedDisk(
            device=device,
            file=_join(base_dir, file_name) if file_name else "",
            format="vmdk",
            bus=cast(DiskBus, bus),  # the regex allows the four buses only
            controller=ctrl,
            controller_model=model,
            unit=unit,
        )
        _disk_modes(attrs, controller, vm, device)
        if bus == "scsi" and model not in warned_models:
            warned_models.add(model)
            controller_warning(vm, model, f"{bus}{ctrl}")
        if not file_name:
            vm.block("missing-disk", "the disk has no fileName", device)
            vm.disks.append(disk)
            continue
        if resolve is not None:
            _follow_chain(disk, resolve, vm)
        vm.disks.append(disk)


def _controller_model(bus: DiskBus | str, controller: dict[str, str]) -> str | None:
    if bus == "scsi":
        return controller.get("virtualdev")
    return {"sata": "ahci", "nvme": "nvme"}.get(bus)


def _disk_modes(
    attrs: dict[str, str], controller: dict[str, str], vm: ScannedVm, device: str
) -> None:
    mode = (attrs.get("mode") or "").lower()
    if mode.startswith("independent"):
        vm.warn(
            "independent-disk",
            f"the disk is {mode}: VMware leaves it out of snapshots"
            + (" and drops its changes at power off" if "nonpersistent" in mode else "")
            + "; it is imported as its file holds it now",
            device,
        )
    if (attrs.get("sharing") or "").lower() == "multi-writer":
        vm.block(
            "multi-writer",
            "the disk is shared with other VMs (multi-writer): import it with one VM only, "
            "after the others release it",
            device,
        )
    shared_bus = (controller.get("sharedbus") or "none").lower()
    if shared_bus not in ("none", ""):
        vm.block(
            "shared-bus",
            f"the SCSI bus is shared ({shared_bus}) for a guest cluster: its disks belong to "
            "several VMs",
            device,
        )


def _follow_chain(disk: ScannedDisk, resolve: DiskResolver, vm: ScannedVm) -> None:
    """Reads the disk's descriptor and the chain below it through `resolve`."""
    device, name = disk.device, disk.file
    chain: list[Resolved] = []
    while True:
        try:
            found = resolve(name)
        except ParseError as e:
            code = "unreadable-descriptor"
            vm.block(code, f"a descriptor does not read: {e}", device)
            break
        if found is None:
            what = "disk file" if not chain else "snapshot parent"
            vm.block("missing-disk", f"the {what} {name} is not there", device)
            break
        if any(r.path == found.path for r in chain) or len(chain) >= MAX_CHAIN:
            vm.block("chain-loop", f"the chain of {disk.file} loops at {name}", device)
            break
        chain.append(found)
        descriptor = found.descriptor
        if descriptor.raw_device:
            vm.block(
                "rdm",
                f"a raw device mapping ({descriptor.create_type}): the data is a LUN of the "
                "ESXi host, not a file in the datastore; copy it to a virtual disk in vSphere "
                "or attach the LUN to Heron directly",
                device,
            )
        if descriptor.encrypted:
            vm.block(
                "encrypted-disk",
                "the disk is encrypted: its data reads only with the key from vCenter's key server",
                device,
            )
        if descriptor.parent_hint is None:
            break
        name = _join(posixpath.dirname(found.path), descriptor.parent_hint)
    if not chain:
        return
    top = chain[0]
    disk.file = top.path
    disk.subformat = top.descriptor.create_type
    disk.capacity = top.descriptor.capacity
    disk.extents = [
        e
        for e in (_join(posixpath.dirname(top.path), f) for f in top.descriptor.data_files)
        if e != top.path
    ]
    disk.chain = [r.path for r in chain[1:]]
    chain_warning(vm, len(disk.chain), device)


def _nics(settings: _Settings, vm: ScannedVm) -> None:
    numbers = sorted({int(m["n"]) for key in settings.pairs if (m := _ETHERNET.match(key))})
    for n in numbers:
        prefix = f"ethernet{n}"
        if not truthy(settings.get(f"{prefix}.present")):
            continue
        address_type = (settings.get(f"{prefix}.addressType") or "").lower()
        static_address = settings.get(f"{prefix}.address")
        if address_type == "static" or (not address_type and static_address):
            raw_mac, kind = static_address, "static"
        else:
            raw_mac, kind = settings.get(f"{prefix}.generatedAddress"), "generated"
        mac = normalize_mac(raw_mac) if raw_mac else None
        model = settings.get(f"{prefix}.virtualDev")
        network = (
            settings.get(f"{prefix}.networkName")
            or settings.get(f"{prefix}.dvs.portgroupId")
            or settings.get(f"{prefix}.vnet")
            or settings.get(f"{prefix}.connectionType")
        )
        nic = ScannedNic(
            device=prefix,
            mac=mac,
            mac_kind=cast(MacKind, kind),
            network=network,
            model=model,
            connected=truthy(settings.get(f"{prefix}.startConnected"), default=True),
        )
        vm.nics.append(nic)
        if raw_mac and mac is None:
            vm.warn("mac-unreadable", f"the MAC {raw_mac!r} is not a MAC address", prefix)
        elif mac is None:
            vm.warn(
                "mac-unknown",
                "the NIC has no MAC yet (VMware assigns a generated one at power on): a new "
                "one is made",
                prefix,
            )
        nic_model_warning(vm, model, prefix)
