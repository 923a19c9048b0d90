"""V2V: what a scan finds in a source (a directory, a datastore, an OVA) that Heron can
import, and what the guest fix found and changed in an imported Linux guest.

A scan reads each VM's description (a VMware .vmx with its .vmdk descriptors, an OVF envelope
or OVA archive, a Hyper-V export) and lists, per VM, the hardware it had, its disks and NICs,
and what will not carry over: `blockers` stop its import (an encrypted disk, a raw device
mapping, a missing disk file), `warnings` carry over with a change the administrator should
know of (vmxnet3 becomes virtio-net, only the current state of a snapshot chain is imported).
A source's last scan is kept with it (models/imports.py ScanResult) until the next one. The
parsers are in heron.v2v; docs/v2v.md says what each format gives and why each finding is one.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SourceKind = Literal["vmware", "hyperv", "ovf"]
Firmware = Literal["bios", "uefi"]
GuestFamily = Literal["linux", "windows", "other"]
DiskBus = Literal["scsi", "sata", "ide", "nvme"]
MacKind = Literal["generated", "static"]


class _Model(BaseModel):
    # Unknown fields are refused, so a typo in a parser or a client fails loudly.
    model_config = ConfigDict(extra="forbid")


class Finding(_Model):
    """One thing that stops an import (a blocker) or changes on the way (a warning)."""

    code: str = Field(
        description="stable identifier, e.g. encrypted-disk, rdm, pci-passthrough, "
        "missing-disk, unreadable-descriptor, multi-writer, snapshot-chain, nic-model"
    )
    message: str = Field(description="the reason, in a sentence an administrator acts on")
    device: str | None = Field(
        default=None, description="the device it concerns as the source names it (scsi0:1)"
    )


class GuestOs(_Model):
    id: str | None = Field(
        default=None,
        description="the source's own id: the .vmx guestOS (debian12-64), the OVF osType "
        "(debian12_64Guest) or its CIM number, None when the source does not say",
    )
    family: GuestFamily = "other"


class ScannedDisk(_Model):
    """A disk of a scanned VM: the file to convert and how the VM saw it."""

    device: str = Field(description="its place as the source names it: scsi0:1, ide0:0, disk1")
    file: str = Field(
        description="the image to read (the top of its chain): an absolute path on the node "
        "that scanned, or the archive's path when `member` is set"
    )
    member: str | None = Field(
        default=None, description="the file inside the archive (OVA) that holds the image"
    )
    member_offset: int | None = Field(
        default=None, ge=0, description="byte offset of `member`'s data inside the archive"
    )
    member_size: int | None = Field(default=None, ge=0, description="its size in bytes")
    format: str | None = Field(
        default=None,
        description="the format as qemu-img names it (vmdk, vhdx, vpc, raw, qcow2): give it "
        "to qemu-img explicitly (-f), never let it guess (a fixed VHD reads as raw)",
    )
    subformat: str | None = Field(
        default=None,
        description="the variant: a VMDK createType (monolithicSparse, twoGbMaxExtentFlat, "
        "streamOptimized, vmfs...), fixed/dynamic/differencing for VHD and VHDX",
    )
    capacity: int | None = Field(
        default=None, ge=0, description="virtual size in bytes, None when it could not be read"
    )
    bus: DiskBus = "scsi"
    controller: int = Field(default=0, ge=0, description="the controller's number on its bus")
    controller_model: str | None = Field(
        default=None, description="lsilogic, lsisas1068, pvscsi, buslogic, ahci, ... as given"
    )
    unit: int | None = Field(default=None, ge=0, description="its unit on the controller")
    extents: list[str] = Field(
        default_factory=list,
        description="data files of the top image besides `file` (split or flat VMDK extents)",
    )
    chain: list[str] = Field(
        default_factory=list,
        description="the images below `file`, nearest first (snapshot deltas, then the base): "
        "the import reads `file` through them, which is the VM's current state",
    )


class ScannedNic(_Model):
    device: str = Field(description="its name in the source: ethernet0, a NIC's InstanceID")
    mac: str | None = Field(default=None, description="lower-case aa:bb:cc:dd:ee:ff")
    mac_kind: MacKind | None = Field(
        default=None,
        description="generated: assigned by the hypervisor (ESXi, vCenter, Hyper-V's pool); "
        "static: set by the administrator",
    )
    network: str | None = Field(
        default=None, description="the source network: port group, switch, OVF Connection"
    )
    model: str | None = Field(
        default=None, description="as the source names it: vmxnet3, e1000e, e1000, synthetic"
    )
    connected: bool = Field(default=True, description="connected at power on")


class ScannedVm(_Model):
    kind: SourceKind
    path: str = Field(description="the description read: the .vmx, .ovf, .ova, .xml, .vmcx")
    name: str = Field(description="the VM's name in the source (not yet a Heron name)")
    vcpus: int | None = Field(default=None, ge=1, description="None: not read, ask at import")
    cores_per_socket: int | None = Field(default=None, ge=1)
    memory_mib: int | None = Field(default=None, ge=1, description="None: not read")
    firmware: Firmware | None = Field(default=None, description="None: not read")
    secure_boot: bool | None = Field(default=None, description="None: not known")
    guest_os: GuestOs = Field(default_factory=GuestOs)
    disks: list[ScannedDisk] = Field(default_factory=list)
    nics: list[ScannedNic] = Field(default_factory=list)
    blockers: list[Finding] = Field(
        default_factory=list, description="what stops the import of this VM, with reasons"
    )
    warnings: list[Finding] = Field(
        default_factory=list, description="what carries over with a change, with reasons"
    )

    @property
    def importable(self) -> bool:
        return not self.blockers

    def block(self, code: str, message: str, device: str | None = None) -> None:
        self.blockers.append(Finding(code=code, message=message, device=device))

    def warn(self, code: str, message: str, device: str | None = None) -> None:
        self.warnings.append(Finding(code=code, message=message, device=device))


class ScanFailure(_Model):
    """A file that looked like a VM's description but could not be read."""

    path: str
    reason: str = Field(description="what was wrong, naming the line or field")


class ScanReport(_Model):
    root: str = Field(description="the directory scanned")
    vms: list[ScannedVm] = Field(default_factory=list)
    failures: list[ScanFailure] = Field(default_factory=list)
    notes: list[str] = Field(
        default_factory=list,
        description="what the scan skipped and why (depth limit, symlink loops, unreadable "
        "directories)",
    )


# -- the guest fix: what it found in an imported Linux guest and what it changed ---------

GuestFixKind = Literal[
    "device-names", "initramfs", "package-removed", "boot-file", "selinux", "nic-name"
]
InitramfsTool = Literal["update-initramfs", "dracut"]


class GuestFixChange(BaseModel):
    """One change made inside the guest."""

    model_config = ConfigDict(extra="forbid")

    kind: GuestFixKind
    # The file changed in the guest (a path on the filesystem it is on; "(partition /dev/sda1)"
    # names a filesystem the guest does not mount), or the package removed.
    path: str
    detail: str


class GuestFixReport(BaseModel):
    """What the guest fix found (distribution, kernels) and changed, with its warnings."""

    model_config = ConfigDict(extra="forbid")

    os_type: Literal["linux"] = "linux"
    distro: str = Field(description="libguestfs' name for the distribution, e.g. debian, rhel")
    product: str = Field(description="the distribution's own name and version")
    version: str = Field(description="major.minor")
    root: str = Field(description="the guest's root filesystem, as the fix's appliance names it")
    kernels: list[str] = Field(description="kernel versions installed in the guest")
    initramfs_tool: InitramfsTool | None
    boot_loaders: list[str] = Field(description="boot loader configuration files found")
    changes: list[GuestFixChange]
    warnings: list[str] = Field(description="what was not fixed or may still stop a boot")
    duration_seconds: float
