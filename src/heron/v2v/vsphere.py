"""The vSphere source, pure part: a VM as an ESXi host or vCenter describes it over its API
(reduced by the agent to plain data, `VmFacts`) made into a ScannedVm, and the datastore paths
and URLs its disks are read through.

The network calls (pyvmomi's SOAP session, the datastore's HTTPS file access) are the agent's
(heron.agent.vsphere); nothing here opens a socket, so all of it is tested on plain data. The
facts are what the API says of the VM's hardware: `config.hardware.device` with each device's
class name (VirtualDisk, VirtualLsiLogicController, VirtualVmxnet3, VirtualPCIPassthrough...)
and the parts of its backing that matter here. A device the mapping does not know is ignored,
as a .vmx key is.
"""

import re
from typing import Literal, TypedDict
from urllib.parse import quote, urlencode

from heron.models.v2v import DiskBus, GuestOs, ScannedDisk, ScannedNic, ScannedVm
from heron.v2v.common import ParseError, guest_family, normalize_mac
from heron.v2v.findings import (
    chain_warning,
    controller_warning,
    hardware_warnings,
    nic_model_warning,
)

# "[datastore1] folder/disk.vmdk": a datastore's name in brackets, then a path in it.
_DATASTORE_PATH = re.compile(r"^\[(?P<ds>[^\]]+)\]\s*(?P<path>.*)$")

# Controller classes → (bus, model as the .vmx would name it).
_CONTROLLERS: dict[str, tuple[DiskBus, str]] = {
    "VirtualLsiLogicController": ("scsi", "lsilogic"),
    "VirtualLsiLogicSASController": ("scsi", "lsisas1068"),
    "ParaVirtualSCSIController": ("scsi", "pvscsi"),
    "VirtualBusLogicController": ("scsi", "buslogic"),
    "VirtualAHCIController": ("sata", "ahci"),
    "VirtualIDEController": ("ide", "ide"),
    "VirtualNVMEController": ("nvme", "nvme"),
}
_NICS = {
    "VirtualVmxnet3": "vmxnet3",
    "VirtualVmxnet3Vrdma": "vmxnet3",
    "VirtualVmxnet2": "vmxnet2",
    "VirtualVmxnet": "vmxnet",
    "VirtualE1000": "e1000",
    "VirtualE1000e": "e1000e",
    "VirtualPCNet32": "vlance",
    "VirtualSriovEthernetCard": "sriov",
}
# Disk backings whose data is not a file of a datastore.
_RAW = {
    "RawDiskMappingVer1BackingInfo",
    "RawDiskVer2BackingInfo",
    "PartitionedRawDiskVer2BackingInfo",
}


class DeviceFacts(TypedDict, total=False):
    """One device of `config.hardware.device`, as the agent reduces it."""

    type: str  # the class name without its module: VirtualDisk, VirtualVmxnet3...
    key: int
    label: str  # deviceInfo.label: "Hard disk 1"
    controller_key: int | None
    unit: int | None
    bus_number: int  # a controller's busNumber
    shared_bus: str  # a SCSI controller's sharedBus: noSharing, virtualSharing...
    # disks
    capacity: int | None  # capacityInBytes (or capacityInKB * 1024)
    backing: str  # the backing's class name: FlatVer2BackingInfo, SeSparseBackingInfo...
    file: str | None  # backing.fileName: "[ds] folder/disk.vmdk"
    parents: list[str]  # backing.parent.fileName, nearest first (snapshot deltas)
    disk_mode: str  # persistent, independent_persistent...
    sharing: str  # sharingNone, sharingMultiWriter
    encrypted: bool  # backing.keyId is set
    # NICs
    mac: str | None
    address_type: str  # manual (static), generated, assigned (vCenter's)
    network: str | None  # the port group's or network's name
    connected: bool  # connectable.startConnected
    # PCI passthrough
    vgpu: str | None  # a vGPU profile (VirtualPCIPassthroughVmiopBackingInfo)


class VmFacts(TypedDict, total=False):
    """A VM as the vSphere API describes it (config, runtime), reduced to plain data."""

    name: str
    path: str  # its inventory path: /<datacenter>/vm/<folders>/<name>
    datacenter: str
    vmx: str  # config.files.vmPathName
    template: bool
    power: str  # runtime.powerState: poweredOn, poweredOff, suspended
    vcpus: int
    cores_per_socket: int | None
    memory_mib: int
    firmware: str  # bios or efi
    secure_boot: bool | None
    guest_id: str | None  # config.guestId: debian11_64Guest
    encrypted: bool  # config.keyId is set
    cbt: bool  # config.changeTrackingEnabled
    devices: list[DeviceFacts]


def parse_datastore_path(text: str) -> tuple[str, str]:
    """'[datastore1] vm/disk.vmdk' → ('datastore1', 'vm/disk.vmdk'); refuses what is not one,
    or a path that climbs out of its datastore."""
    match = _DATASTORE_PATH.match(text.strip())
    if match is None or not match["path"]:
        raise ParseError("not a datastore path ('[datastore] folder/file')", field=text)
    path = match["path"].strip().lstrip("/")
    if ".." in path.split("/") or "\x00" in path:
        raise ParseError("a datastore path may not climb out of its datastore", field=text)
    return match["ds"], path


def sibling(datastore_path: str, name: str) -> str:
    """The datastore path of `name` as a descriptor names its extents and parents: relative
    to the descriptor's own folder (a name with '/' or '..' is refused)."""
    datastore, path = parse_datastore_path(datastore_path)
    if "/" in name or name in ("", ".", ".."):
        raise ParseError(
            "an extent or parent outside its descriptor's folder is not read over the API",
            field=name,
        )
    folder = path.rsplit("/", 1)[0] if "/" in path else ""
    return f"[{datastore}] {folder + '/' if folder else ''}{name}"


def folder_url(base: str, datastore_path: str, datacenter: str) -> str:
    """The datastore file access URL of a file: https://host/folder/<path>?dcPath=&dsName=."""
    datastore, path = parse_datastore_path(datastore_path)
    query = urlencode({"dcPath": datacenter, "dsName": datastore})
    return f"{base.rstrip('/')}/folder/{quote(path)}?{query}"


def scanned_vm(facts: VmFacts) -> ScannedVm:
    """The scan's view of one VM: hardware, disks, NICs, and what stops or changes its import."""
    guest_id = facts.get("guest_id")
    vm = ScannedVm(
        kind="vmware",
        path=facts["path"],
        name=facts["name"],
        vcpus=facts.get("vcpus") or None,
        cores_per_socket=facts.get("cores_per_socket") or None,
        memory_mib=facts.get("memory_mib") or None,
        firmware="uefi" if facts.get("firmware") == "efi" else "bios",
        secure_boot=facts.get("secure_boot"),
        guest_os=GuestOs(id=guest_id, family=guest_family(guest_id)),
    )
    hardware_warnings(vm)
    if facts.get("template"):
        vm.block("template", "a template: deploy a VM of it in vSphere, then import that VM")
    if facts.get("encrypted"):
        vm.block(
            "encrypted-vm",
            "the VM is encrypted: its disks can only be read with the key from vCenter's key "
            "server; decrypt it in vSphere before the import",
        )
    devices = facts.get("devices", [])
    controllers = {d["key"]: d for d in devices if d.get("type") in _CONTROLLERS}
    warned: set[int] = set()
    for device in devices:
        kind = device.get("type", "")
        if kind == "VirtualDisk":
            _disk(vm, device, controllers, warned)
        elif kind in _NICS:
            _nic(vm, device)
        elif kind == "VirtualPCIPassthrough":
            _passthrough(vm, device)
        elif kind == "VirtualNVDIMM":
            vm.block("nvdimm", "a virtual NVDIMM is attached: its contents are not imported")
    if facts.get("power") == "poweredOn":
        vm.warn(
            "powered-on",
            "the VM runs: it is imported once powered off (power_off powers it off first)",
        )
    if facts.get("power") == "suspended":
        vm.block(
            "suspended",
            "the VM is suspended: its memory state is not imported; power it off first",
        )
    return vm


def _disk(
    vm: ScannedVm,
    device: DeviceFacts,
    controllers: dict[int, DeviceFacts],
    warned: set[int],
) -> None:
    controller = controllers.get(device.get("controller_key") or -1)
    bus: DiskBus = "scsi"
    model: str | None = None
    if controller is not None:
        bus, model = _CONTROLLERS[controller.get("type", "")]
    number = controller.get("bus_number", 0) if controller else 0
    unit = device.get("unit")
    name = f"{bus}{number}:{unit if unit is not None else 0}"
    file = device.get("file") or ""
    parents = list(device.get("parents", []))
    disk = ScannedDisk(
        device=name,
        file=file,
        format="vmdk",
        capacity=device.get("capacity"),
        bus=bus,
        controller=number,
        controller_model=model,
        unit=unit,
        chain=parents,
    )
    vm.disks.append(disk)
    backing = device.get("backing", "")
    if backing in _RAW:
        vm.block(
            "rdm",
            "a raw device mapping: the data is a LUN of the ESXi host, not a file of its "
            "datastore; migrate it to a virtual disk (Storage vMotion) or copy it apart",
            name,
        )
    elif not file:
        vm.block("missing-disk", "the disk has no file", name)
    else:
        try:
            parse_datastore_path(file)
            for parent in parents:
                parse_datastore_path(parent)
        except ParseError as exc:
            vm.block("unreadable-descriptor", f"its file is not read over the API: {exc}", name)
    if device.get("encrypted"):
        vm.block(
            "encrypted-disk",
            "the disk is encrypted: only vCenter's key server can give its key; decrypt it in "
            "vSphere before the import",
            name,
        )
    if device.get("sharing") == "sharingMultiWriter":
        vm.block(
            "multi-writer",
            "the disk is shared with other VMs (multi-writer): import it with one VM only, "
            "after the others release it",
            name,
        )
    if controller is not None and controller.get("shared_bus", "noSharing") != "noSharing":
        vm.block(
            "shared-bus",
            f"the SCSI bus is shared ({controller.get('shared_bus')}) for a guest cluster: its "
            "disks belong to several VMs",
            name,
        )
    if disk.capacity is None:
        vm.block("unknown-capacity", "the API does not give the disk's size", name)
    mode = device.get("disk_mode", "persistent")
    if mode.startswith("independent"):
        vm.warn(
            "independent-disk",
            f"the disk is {mode}: VMware leaves it out of snapshots; it is imported as its file "
            "holds it now",
            name,
        )
    chain_warning(vm, len(parents), name)
    if controller is not None and bus == "scsi" and controller["key"] not in warned:
        warned.add(controller["key"])
        controller_warning(vm, model, f"scsi{number}")


def _nic(vm: ScannedVm, device: DeviceFacts) -> None:
    model = _NICS[device.get("type", "")]
    name = f"ethernet{len(vm.nics)}"  # as the .vmx numbers them
    if model == "sriov":
        vm.block(
            "sriov",
            "an SR-IOV NIC is a host's PCI function: it is not carried; replace it with a "
            "virtual NIC before the import",
            name,
        )
        return
    mac = device.get("mac")
    kind: Literal["generated", "static"] = (
        "static" if device.get("address_type") == "manual" else "generated"
    )
    vm.nics.append(
        ScannedNic(
            device=name,
            mac=normalize_mac(mac) if mac else None,
            mac_kind=kind if mac else None,
            network=device.get("network"),
            model=model,
            connected=device.get("connected", True),
        )
    )
    nic_model_warning(vm, model, name)


def _passthrough(vm: ScannedVm, device: DeviceFacts) -> None:
    name = device.get("label") or f"pci{device.get('key')}"
    if device.get("vgpu"):
        vm.block(
            "vgpu",
            f"a vGPU ({device.get('vgpu')}) is attached: its profile and driver are the host's; "
            "remove it in vSphere before the import",
            name,
        )
    else:
        vm.block(
            "pci-passthrough",
            "a host PCI device is passed through: Heron cannot know the matching device on its "
            "nodes; remove it before the import",
            name,
        )
