"""The QEMU command line for a VM: pure, so it is unit-tested without starting anything."""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heron.models.vm import (
    DISK_SLOTS,
    MEMORY_SLOTS,
    NIC_SLOTS,
    VM,
    DiskBus,
    VMSpec,
    i440fx,
    reserved_memory_mib,
    reserved_vcpus,
)

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


@dataclass(frozen=True)
class RuntimePaths:
    """Where a VM's QEMU keeps its sockets and files on its node."""

    root: Path

    @property
    def qmp(self) -> Path:
        return self.root / "qmp.sock"

    @property
    def serial(self) -> Path:
        return self.root / "serial.sock"

    @property
    def guest_agent(self) -> Path:
        """The host end of the guest agent's virtio-serial port (VMs with `guest_agent`)."""
        return self.root / "qga.sock"

    @property
    def console_log(self) -> Path:
        return self.root / "console.log"

    @property
    def pidfile(self) -> Path:
        return self.root / "qemu.pid"

    @property
    def qemu_log(self) -> Path:
        return self.root / "qemu.log"

    @property
    def efivars(self) -> Path:
        return self.root / "efivars.fd"

    @property
    def hardware(self) -> Path:
        """The VM spec this QEMU was started with (what its guest has until it restarts)."""
        return self.root / "spec.json"


@dataclass(frozen=True)
class ResolvedDisk:
    """A disk of the spec with its volume found on this node."""

    bus: DiskBus
    protocol: dict[str, Any]  # QEMU's protocol node: file, iscsi, host_device, rbd, nbd
    format: str


def format_node(node: str, fmt: str, file: dict[str, Any] | str) -> dict[str, Any]:
    """A disk's format node (the one its device uses) over its protocol node `file` (given
    inline, or the name of a node that exists): for -blockdev and for blockdev-reopen."""
    return {
        "node-name": node,
        "driver": fmt,
        "discard": "unmap",
        "detect-zeroes": "unmap",
        "cache": {"direct": False, "no-flush": False},
        "file": file,
    }


def _blockdev(node: str, disk: ResolvedDisk) -> str:
    return json.dumps(format_node(node, disk.format, disk.protocol), separators=(",", ":"))


def disk_devices(
    index: int,
    slot: int,
    disk: ResolvedDisk,
    machine: str,
    bootindex: int | None,
    hot_slot: int | None = None,
) -> list[str]:
    """-device arguments for disk `index`, the `slot`-th disk on its bus; `hot_slot`: the
    hot-pluggable slot of a virtio disk that has one (layout 3)."""
    node = f"disk{index}"
    tail = f"drive={node},id={node}-dev" + (f",bootindex={bootindex}" if bootindex else "")
    if disk.bus == "virtio":
        if hot_slot is not None:
            place = ",".join("=".join(p) for p in disk_slot_place(hot_slot, machine).items())
            return ["-device", f"virtio-blk-pci,{tail},{place}"]
        return ["-device", f"virtio-blk-pci,{tail}"]
    if disk.bus == "scsi":
        return ["-device", f"scsi-hd,bus=scsi0.0,scsi-id={slot},lun=0,{tail}"]
    if disk.bus == "sata":
        return ["-device", f"ide-hd,bus=sata0.{slot},{tail}"]
    place = f"bus=ide.{slot // 2},unit={slot % 2}" if i440fx(machine) else f"bus=ide.{slot}"
    return ["-device", f"ide-hd,{place},{tail}"]


def boot_indexes(vm: VM) -> dict[str, int]:
    order = vm.spec.boot_order or (["disk0"] if vm.spec.disks else [])
    return {device: position + 1 for position, device in enumerate(order)}


# QEMU before 9.0 loses guest writes during a live migration under TCG: when a RAM block's
# size is a multiple of 256 KiB, the dirty bitmap is synced 64 pages at a time without telling
# TCG's TLB, so later stores through TLB entries already marked dirty are never tracked and the
# target gets stale pages (fixed upstream by 03bfc2188f, "physmem: Fix migration dirty bitmap
# coherency with TCG memory access", not in Debian 12's 7.2). A RAM size 8 KiB past such a
# multiple takes the page-by-page path, which does tell the TLB. See docs/architecture.md.
TCG_MIGRATION_FIXED_IN = (9, 0)
TCG_RAM_PAD_KIB = 8


def loses_writes(ram: int, accelerator: str, qemu_version: tuple[int, int]) -> bool:
    """Whether a live migration of a QEMU with `ram` KiB can lose guest writes (see above)."""
    return accelerator == "tcg" and qemu_version < TCG_MIGRATION_FIXED_IN and ram % 256 == 0


def ram_kib(memory_mib: int, accelerator: str, qemu_version: tuple[int, int]) -> int:
    """The RAM to give QEMU for `memory_mib`: exact, except where its live migration would
    lose writes with the exact size."""
    exact = memory_mib * 1024
    return exact + TCG_RAM_PAD_KIB if loses_writes(exact, accelerator, qemu_version) else exact


def base_memory_mib(spec: VMSpec) -> int:
    """The memory QEMU gets at start: all of it, but for DIMMs plugged in while it ran
    (which a QEMU receiving its migration must be given as DIMMs too)."""
    return spec.memory_mib - sum(spec.dimms_mib)


def smp(spec: VMSpec) -> str:
    if spec.layout < 3:
        return str(spec.vcpus)
    boot = spec.vcpus - len(spec.plugged_vcpus)
    return f"{boot},maxcpus={reserved_vcpus(spec)}"


def vcpu_id(props: Mapping[str, int]) -> str:
    """The device id of a vCPU plugged in at `props` (its socket, core, thread)."""
    return "cpu" + "-".join(f"{props[k]}" for k in sorted(props))


def plugged_vcpus(spec: VMSpec, accelerator: str) -> list[str]:
    """The vCPUs plugged in while the VM ran, as devices: a QEMU receiving its migration
    must have them as the source has them (devices, not boot CPUs)."""
    model = "host" if accelerator == "kvm" else "max"
    args = []
    for props in spec.plugged_vcpus:
        place = ",".join(f"{k}={v}" for k, v in sorted(props.items()))
        args += ["-device", f"{model}-x86_64-cpu,id={vcpu_id(props)},{place}"]
    return args


def memory(spec: VMSpec, ram: int | None) -> list[str]:
    """-m (boot memory `ram` KiB, by default exactly the spec's) with room to grow to
    max_memory_mib, and the DIMMs plugged in while it ran."""
    if spec.layout < 3 or (reserved_memory_mib(spec) <= spec.memory_mib and not spec.dimms_mib):
        return ["-m", str(base_memory_mib(spec)) if ram is None else f"{ram}K"]
    if ram is None:
        ram = base_memory_mib(spec) * 1024
    room = (reserved_memory_mib(spec) - base_memory_mib(spec)) * 1024
    args = ["-m", f"{ram}K,slots={MEMORY_SLOTS},maxmem={ram + room}K"]
    for index, size in enumerate(spec.dimms_mib):
        args += [
            "-object",
            f"memory-backend-ram,id={dimm_id(index)}-mem,size={size}M",
            "-device",
            f"pc-dimm,id={dimm_id(index)},memdev={dimm_id(index)}-mem",
        ]
    return args


def dimm_id(index: int) -> str:
    return f"dimm{index}"


def build(
    vm: VM,
    disks: list[ResolvedDisk],
    paths: RuntimePaths,
    accelerator: str,
    binary: str = "qemu-system-x86_64",
    *,
    ram: int | None = None,
    taps: Mapping[int, int] | None = None,
    vhost: bool = False,
    seed: Path | None = None,
) -> list[str]:
    """QEMU's arguments for `vm`; `ram` in KiB, by default exactly the spec's memory; `taps`:
    the open tap (its fd, inherited by QEMU) of each NIC on a network, by NIC index; `vhost`:
    the host has vhost-net (QEMU aborts asking for it where it has not)."""
    spec = vm.spec
    boot = boot_indexes(vm)
    args = [
        binary,
        "-name",
        f"{spec.name},debug-threads=on",
        "-uuid",
        vm.id,
        "-machine",
        f"{spec.machine},accel={accelerator}",
        "-cpu",
        "host" if accelerator == "kvm" else "max",
        "-smp",
        smp(spec),
        *memory(spec, ram),
        *plugged_vcpus(spec, accelerator),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-device",
        "VGA",
        # QEMU picks the first free display from 5900 on; the node reads it back over QMP.
        "-vnc",
        "127.0.0.1:0,to=2000",
        "-chardev",
        f"socket,id=serial0,path={paths.serial},server=on,wait=off,"
        f"logfile={paths.console_log},logappend=on",
        "-serial",
        "chardev:serial0",
        "-chardev",
        f"socket,id=qmp,path={paths.qmp},server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
        "-pidfile",
        str(paths.pidfile),
        "-daemonize",
    ]
    if spec.firmware == "uefi":
        args += [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={paths.efivars}",
        ]
    if spec.layout >= 2 and not i440fx(spec.machine):
        # One PCIe root port per NIC slot, at fixed addresses before any device placed by
        # QEMU: a NIC plugged in later goes into its slot's port.
        for slot in range(NIC_SLOTS):
            args += [
                "-device",
                f"pcie-root-port,id={nic_port(slot)},chassis={slot + 1},bus=pcie.0,"
                f"addr={NIC_ADDR + slot:#x}",
            ]
    if spec.layout >= 3 and not i440fx(spec.machine):
        # The disk slots: one multifunction PCI slot of root ports, after the NICs'.
        for slot in range(DISK_SLOTS):
            args += [
                "-device",
                f"pcie-root-port,id={disk_port(slot)},chassis={NIC_SLOTS + slot + 1},"
                f"bus=pcie.0,addr={DISK_ADDR:#x}.{slot:#x}"
                + (",multifunction=on" if slot == 0 else ""),
            ]
    buses = {d.bus for d in disks}
    if "scsi" in buses:
        args += ["-device", "virtio-scsi-pci,id=scsi0"]
    if "sata" in buses:
        args += ["-device", "ahci,id=sata0"]
    for index, disk in enumerate(disks):
        args += ["-blockdev", _blockdev(f"disk{index}", disk)]
        slot = sum(1 for other in disks[:index] if other.bus == disk.bus)
        hot_slot = spec.disks[index].slot if spec.layout >= 3 else None
        args += disk_devices(
            index, slot, disk, spec.machine, boot.get(f"disk{index}"), hot_slot=hot_slot
        )
    for index, nic in enumerate(spec.nics):
        if nic.network == "none":
            continue
        netdev_id = nic_ids(vm, index)[0]
        if nic.network == "user":
            netdev = f"user,id={netdev_id}"
        elif taps and index in taps:
            netdev = f"tap,id={netdev_id},fd={taps[index]},vhost={'on' if vhost else 'off'}"
        else:
            raise ValueError(f"NIC {index} on network {nic.network} has no tap")
        device = nic_device(vm, index, boot.get(f"net{index}"))
        driver = device.pop("driver")
        args += ["-netdev", netdev, "-device", ",".join([driver, *map("=".join, device.items())])]
    if spec.guest_agent:
        # Last: QEMU places it in the first free slot, so turning it on moves no other device.
        args += guest_agent_devices(paths)
    if seed is not None:
        # cloud-init's seed (an ISO labelled cidata) after everything else, for the same
        # reason; read-only, so a guest cannot change what the next boot is told.
        args += seed_devices(seed)
    return args


def seed_devices(seed: Path) -> list[str]:
    """The cloud-init seed ISO as a read-only virtio disk, never booted from."""
    node = {
        "node-name": "cidata",
        "driver": "raw",
        "read-only": True,
        "file": {"driver": "file", "filename": str(seed), "read-only": True},
    }
    return [
        "-blockdev",
        json.dumps(node, separators=(",", ":")),
        "-device",
        "virtio-blk-pci,drive=cidata,id=cidata-dev",
    ]


GUEST_AGENT_PORT = "org.qemu.guest_agent.0"  # the name qemu-ga's udev rule waits for


def guest_agent_devices(paths: RuntimePaths) -> list[str]:
    """The guest agent's channel: a virtio-serial port whose host end is a unix socket that
    QEMU serves without waiting for a client (the guest boots whether anyone listens)."""
    return [
        "-device",
        "virtio-serial-pci,id=vser0",
        "-chardev",
        f"socket,id=qga0,path={paths.guest_agent},server=on,wait=off",
        "-device",
        f"virtserialport,bus=vser0.0,nr=1,chardev=qga0,id=qga0-port,name={GUEST_AGENT_PORT}",
    ]


NIC_ADDR = 0x10  # the PCI slot of NIC slot 0 (layout 2): clear of what QEMU places itself


def disk_backend(index: int, bus: DiskBus) -> str:
    """The qdev path of the device holding disk `index`'s block backend (what I/O limits are
    set on): a virtio-blk-pci proxies a virtio-blk device of its own."""
    device = f"disk{index}-dev"
    return f"/machine/peripheral/{device}/virtio-backend" if bus == "virtio" else device


DISK_ADDR = 0x18  # the PCI slot of the disk slots' root ports (layout 3)


def disk_port(slot: int) -> str:
    return f"diskslot{slot}"


def disk_slot_place(slot: int, machine: str) -> dict[str, str]:
    """Where the virtio disk in hot-pluggable slot `slot` goes: its root port (q35), or a
    slot of the PCI bus itself (i440fx, whose bus takes devices while running)."""
    if i440fx(machine):
        return {"bus": "pci.0", "addr": f"{DISK_ADDR + slot:#x}"}
    return {"bus": disk_port(slot)}


def disk_device(vm: VM, index: int) -> dict[str, str]:
    """The properties of a hot-pluggable disk's device, plugged into the running VM."""
    disk = vm.spec.disks[index]
    assert disk.slot is not None and disk.bus == "virtio"
    return {
        "driver": "virtio-blk-pci",
        "drive": f"disk{index}",
        "id": f"disk{index}-dev",
        **disk_slot_place(disk.slot, vm.spec.machine),
    }


def nic_port(slot: int) -> str:
    return f"nicslot{slot}"


def nic_ids(vm: VM, index: int) -> tuple[str, str]:
    """The netdev id and device id of `vm`'s NIC `index`."""
    slot = vm.spec.nics[index].slot
    if vm.spec.layout < 2 or slot is None:
        return f"net{index}", f"net{index}-dev"
    return f"nic{slot}", f"nic{slot}-dev"


def nic_device(vm: VM, index: int, bootindex: int | None = None) -> dict[str, str]:
    """The properties of `vm`'s NIC `index` as a device (the driver first): the same on the
    command line and when it is plugged in while the VM runs."""
    nic = vm.spec.nics[index]
    netdev_id, device_id = nic_ids(vm, index)
    props = {
        "driver": "virtio-net-pci" if nic.model == "virtio" else "e1000",
        "netdev": netdev_id,
        "mac": nic.mac or mac_for(vm.id, index),
        "id": device_id,
    }
    if vm.spec.layout >= 2 and nic.slot is not None:
        if i440fx(vm.spec.machine):
            props |= {"bus": "pci.0", "addr": f"{NIC_ADDR + nic.slot:#x}"}
        else:
            props["bus"] = nic_port(nic.slot)
    # Without a boot index the option ROM is only dead weight in guest memory.
    if bootindex:
        props["bootindex"] = str(bootindex)
    else:
        props["romfile"] = ""
    return props


def mac_for(vm_id: str, index: int) -> str:
    """A stable MAC from the VM id; 52:54 keeps it unicast and locally administered."""
    digits = vm_id.replace("-", "")
    return f"52:54:{digits[0:2]}:{digits[2:4]}:{digits[4:6]}:{index:02x}"
