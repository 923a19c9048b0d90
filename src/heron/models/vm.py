"""A virtual machine: the spec a user asks for, and the status its node observes."""

import re
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from heron.models.common import Name, Record
from heron.models.storage import VolumeFormat

DiskBus = Literal["virtio", "scsi", "sata", "ide"]
NicModel = Literal["virtio", "e1000"]
_MACHINE = re.compile(r"q35|pc|pc-q35-\d+\.\d+|pc-i440fx-\d+\.\d+")
_BOOT_DEVICE = re.compile(r"(disk|net)(0|[1-9]\d?)")
_MAC = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}")


class PowerState(StrEnum):
    """What the user wants: the node's reconciler drives QEMU towards it."""

    running = "running"
    stopped = "stopped"
    paused = "paused"


class RunState(StrEnum):
    """What the node observes."""

    running = "running"
    paused = "paused"
    shutoff = "shutoff"
    crashed = "crashed"
    provisioning = "provisioning"
    pending = "pending"  # waiting for HA to find it a node
    error = "error"


class DiskSpec(Record):
    bus: DiskBus = "virtio"
    volume: str = Field(description="id of the pool volume backing this disk")


class NicSpec(Record):
    model: NicModel = "virtio"
    network: Literal["user", "none"] = "user"
    mac: str | None = Field(default=None, description="lower-case aa:bb:cc:dd:ee:ff")

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        if value is not None and not _MAC.fullmatch(value):
            raise ValueError("must look like 52:54:00:12:34:56 (lower case)")
        return value


class HAPolicy(Record):
    """What happens to the VM when its node fails."""

    enabled: bool = Field(default=False, description="restart it on another node")
    priority: int = Field(
        default=50, ge=0, le=100, description="higher restarts first when capacity is short"
    )


class Hardware(Record):
    """The VM's hardware and policies; shared by the stored spec and the create request."""

    vcpus: int = Field(default=1, ge=1, le=256)
    memory_mib: int = Field(default=512, ge=16, le=4 * 1024 * 1024)
    firmware: Literal["bios", "uefi"] = "bios"
    machine: str = "q35"
    boot_order: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="devices to boot from, e.g. ['disk0', 'net0']; empty: the first disk",
    )
    description: str = Field(default="", max_length=1024)
    ha: HAPolicy = Field(default_factory=HAPolicy)
    group: Name | None = Field(default=None, description="VM group whose placement rule applies")

    @field_validator("machine")
    @classmethod
    def _machine(cls, value: str) -> str:
        if not _MACHINE.fullmatch(value):
            raise ValueError("must be q35, pc, pc-q35-X.Y or pc-i440fx-X.Y")
        return value

    @field_validator("boot_order")
    @classmethod
    def _boot_order(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _BOOT_DEVICE.fullmatch(item):
                raise ValueError(f"{item!r} is not diskN or netN")
        if len(set(value)) != len(value):
            raise ValueError("lists a device twice")
        return value


def i440fx(machine: str) -> bool:
    """The old PC board (two IDE buses of two units); every other machine here is q35 (AHCI)."""
    return machine == "pc" or machine.startswith("pc-i440fx-")


def check_disk_buses(buses: list[str], machine: str) -> None:
    """Each bus has so many ports: AHCI six, the i440fx IDE four, q35's IDE its six AHCI."""
    limits = {"sata": 6, "ide": 4 if i440fx(machine) else 6, "scsi": 256}
    for bus, limit in limits.items():
        if buses.count(bus) > limit:
            raise ValueError(f"at most {limit} {bus} disks fit on machine {machine}")


def check_boot_order(boot_order: list[str], disks: int, nics: int) -> None:
    for item in boot_order:
        match = _BOOT_DEVICE.fullmatch(item)
        assert match
        kind, index = match.group(1), int(match.group(2))
        if index >= (disks if kind == "disk" else nics):
            raise ValueError(f"boot_order names {item}, which the VM does not have")


class VMSpec(Hardware):
    name: Name
    disks: list[DiskSpec] = Field(default_factory=list, max_length=16)
    nics: list[NicSpec] = Field(default_factory=list, max_length=8)

    @model_validator(mode="after")
    def _devices(self) -> "VMSpec":
        check_boot_order(self.boot_order, len(self.disks), len(self.nics))
        check_disk_buses([d.bus for d in self.disks], self.machine)
        return self


class VM(Record):
    """The desired state. `generation` grows whenever the node has something new to act on."""

    id: str
    spec: VMSpec
    node: Name
    power: PowerState = PowerState.stopped
    generation: int = 1
    created_at: float


class VMStatus(Record):
    """Written by the VM's node; by the leader only while no node holds it (HA pending)."""

    state: RunState
    node: Name
    observed_generation: int = 0
    pid: int | None = None
    vnc: str | None = None
    accelerator: str | None = None
    message: str = ""
    updated_at: float


# -- what users ask for ------------------------------------------------------------------


class DiskRequest(BaseModel):
    """A disk: an existing volume, or a new one (empty, or a copy of an image volume)."""

    bus: DiskBus = "virtio"
    volume: str | None = Field(default=None, description="existing volume as pool/name or id")
    pool: Name | None = Field(default=None, description="pool for a new volume")
    size: int | None = Field(default=None, gt=0, le=64 * 2**40, description="bytes")
    source: str | None = Field(default=None, description="image volume to copy, pool/name")
    format: VolumeFormat | None = Field(
        default=None, description="of a new volume: qcow2 by default; raw in rbd and ardfs pools"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> "DiskRequest":
        if self.volume is not None:
            if self.pool or self.size or self.source:
                raise ValueError("give either volume, or pool with size and/or source")
        elif self.pool is None:
            raise ValueError("give volume, or pool with size and/or source")
        elif self.size is None and self.source is None:
            raise ValueError("a new volume needs a size or a source")
        return self


class VMCreate(Hardware):
    name: Name
    disks: list[DiskRequest] = Field(default_factory=list, max_length=16)
    nics: list[NicSpec] = Field(default_factory=list, max_length=8)
    node: Name | None = Field(default=None, description="where to run it; chosen if omitted")
    start: bool = False

    @model_validator(mode="after")
    def _devices(self) -> "VMCreate":
        check_boot_order(self.boot_order, len(self.disks), len(self.nics))
        check_disk_buses([d.bus for d in self.disks], self.machine)
        return self


class VMUpdate(BaseModel):
    """Changes to a VM's hardware, applied at its next start; `revision` guards the write."""

    model_config = {"extra": "forbid"}
    revision: int | None = Field(default=None, description="write only if still at this revision")
    name: Name | None = None
    vcpus: int | None = Field(default=None, ge=1, le=256)
    memory_mib: int | None = Field(default=None, ge=16, le=4 * 1024 * 1024)
    description: str | None = Field(default=None, max_length=1024)
    boot_order: list[str] | None = Field(default=None, max_length=8)
    ha: HAPolicy | None = None


class BatchCreate(VMCreate):
    """`count` VMs named `<name>-001`, `<name>-002`, ... from one template (VDI style)."""

    name: Name = Field(description="prefix of the names")
    count: int = Field(ge=1, le=1000)
    dry_run: bool = Field(default=False, description="only say where each VM would go")
