"""Datastore folders for the V2V tests, made of real formats: each VM's disk converted by
qemu-img from the bootable test guest (VMDK variants, VHD, VHDX), its `.vmx` written as
VMware writes it. A folder so laid out is what a node reads as an import source."""

import subprocess
from pathlib import Path

VMX = """.encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
displayName = "{name}"
guestOS = "debian12-64"
numvcpus = "1"
memsize = "128"
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "{disk}"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.networkName = "{network}"
ethernet0.addressType = "{kind}"
ethernet0.{key} = "{mac}"
"""


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def write_vmx(folder: Path, name: str, disk: str, mac: str, network: str = "VM Network") -> Path:
    """`name`'s .vmx in `folder` (its display name in title case), its disk `disk`; a MAC of
    VMware's static range (00:50:56:0x) is written as set by hand, others as generated."""
    kind, key = ("static", "address") if mac.startswith("00:50:56:0") else (
        "generated", "generatedAddress")  # fmt: skip
    text = VMX.format(name=name.title(), disk=disk, kind=kind, key=key, mac=mac, network=network)
    path = folder / f"{name}.vmx"
    path.write_text(text)
    return path


def vmware_vm(
    ds: Path,
    name: str,
    guest: Path,
    subformat: str,
    mac: str,
    network: str = "VM Network",
    guest_format: str = "raw",
) -> None:
    """A VMware VM's folder: its .vmx and its disk in the VMDK variant `subformat`."""
    folder = ds / name
    folder.mkdir()
    disk = folder / f"{name}.vmdk"
    qemu_img("convert", "-f", guest_format, "-O", "vmdk", "-o", f"subformat={subformat}",
             str(guest), str(disk))  # fmt: skip
    write_vmx(folder, name, disk.name, mac, network)


def vmware_vm_without_disk(ds: Path, name: str, mac: str) -> None:
    """A VMware VM whose .vmx names a disk that is not in its folder: a scan blocks it."""
    folder = ds / name
    folder.mkdir()
    write_vmx(folder, name, f"{name}.vmdk", mac)


def hyperv_disk(ds: Path, name: str, guest: Path) -> None:
    """A Hyper-V VM as its disk alone (a VHDX in `Virtual Hard Disks`): no configuration, so
    its vCPUs and memory are the administrator's to give."""
    folder = ds / name / "Virtual Hard Disks"
    folder.mkdir(parents=True)
    qemu_img("convert", "-f", "raw", "-O", "vhdx", str(guest), str(folder / f"{name}.vhdx"))


def fixed_vhd(ds: Path, name: str, guest: Path) -> None:
    """A fixed VHD beside the folders (its footer follows the data: read as raw, 512 bytes
    too large)."""
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed",
             str(guest), str(ds / f"{name}.vhd"))  # fmt: skip
