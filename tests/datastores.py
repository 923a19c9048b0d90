"""Datastore folders for the V2V tests, made of real formats: each VM's disk converted by
qemu-img from the bootable test guest (VMDK variants, VHD, VHDX), its `.vmx` written as
VMware writes it. A folder so laid out is what a node reads as an import source."""

import struct
import subprocess
import uuid
from pathlib import Path

from heron.v2v import hyperv

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


def make_differencing_vhdx(path: Path, parent: str) -> None:
    """Turns qemu-img's dynamic VHDX into a differencing one naming `parent` (MS-VHDX 2.6.2.6:
    the HasParent file parameter and a parent locator item in the metadata region)."""
    with open(path, "r+b") as f:

        def read(offset: int, length: int) -> bytes:
            f.seek(offset)
            return f.read(length)

        table = read(hyperv.VHDX_REGION_TABLE, 4096)
        (count,) = struct.unpack_from("<I", table, 8)
        for index in range(count):
            entry = table[16 + 32 * index : 48 + 32 * index]
            if uuid.UUID(bytes_le=entry[:16]) == uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E"):
                region, length = struct.unpack_from("<QI", entry, 16)
        metadata = bytearray(read(region, 4096))
        (items,) = struct.unpack_from("<H", metadata, 10)
        for index in range(items):
            at = 32 + 32 * index
            if uuid.UUID(bytes_le=bytes(metadata[at : at + 16])) == uuid.UUID(
                "CAA16737-FA36-4D43-B3B6-33F0AA44E76B"
            ):
                (offset,) = struct.unpack_from("<I", metadata, at + 16)
                block_size, flags = struct.unpack("<II", read(region + offset, 8))
                f.seek(region + offset)
                f.write(struct.pack("<II", block_size, flags | 2))
        pairs = {"parent_linkage": "{" + str(uuid.uuid4()) + "}", "relative_path": parent}
        pairs["absolute_win32_path"] = "C:\\Hyper-V\\Virtual Hard Disks\\" + parent
        base = 20 + 12 * len(pairs)
        entries, blobs = b"", b""
        for key, value in pairs.items():
            k, v = key.encode("utf-16-le"), value.encode("utf-16-le")
            entries += struct.pack(
                "<IIHH", base + len(blobs), base + len(blobs) + len(k), len(k), len(v)
            )
            blobs += k + v
        locator = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913").bytes_le
        locator += struct.pack("<HH", 0, len(pairs)) + entries + blobs
        locator_at = length // 2  # the region's second half is free in qemu-img's layout
        at = 32 + 32 * items
        metadata[at : at + 32] = uuid.UUID(
            "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C"
        ).bytes_le + struct.pack("<IIII", locator_at, len(locator), 6, 0)
        struct.pack_into("<H", metadata, 10, items + 1)
        f.seek(region)
        f.write(metadata)
        f.seek(region + locator_at)
        f.write(locator)


def make_differencing_vhd(path: Path, parent: str) -> None:
    """Turns qemu-img's dynamic VHD into a differencing one whose parent is `parent`."""
    data = bytearray(path.read_bytes())

    def checksum(block: bytearray, at: int) -> None:
        block[at : at + 4] = b"\0\0\0\0"
        block[at : at + 4] = struct.pack(">I", ~sum(block) & 0xFFFFFFFF)

    footer = bytearray(data[:512])
    struct.pack_into(">I", footer, 60, 4)
    checksum(footer, 64)
    data[:512] = data[-512:] = footer
    header = bytearray(data[512:1536])
    header[64 : 64 + 512] = parent.encode("utf-16-be").ljust(512, b"\0")
    checksum(header, 36)
    data[512:1536] = header
    path.write_bytes(bytes(data))
