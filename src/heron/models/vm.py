"""A virtual machine: the spec a user asks for, and the status its node observes."""

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator

from heron.models.common import NAME_REASON, Name, Record, matching, string_schema
from heron.models.network import IPv4
from heron.models.storage import VolumeFormat

DiskBus = Literal["virtio", "scsi", "sata", "ide"]
NicModel = Literal["virtio", "e1000"]
MACHINE_PATTERN = r"^(q35|pc|pc-q35-[0-9]+\.[0-9]+|pc-i440fx-[0-9]+\.[0-9]+)$"
BOOT_DEVICE_PATTERN = r"^(disk|net)(0|[1-9][0-9]?)$"
MAC_PATTERN = r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$"
_BOOT_DEVICE = re.compile(BOOT_DEVICE_PATTERN)

Machine = Annotated[
    str,
    AfterValidator(matching(MACHINE_PATTERN, "must be q35, pc, pc-q35-X.Y or pc-i440fx-X.Y")),
    string_schema(MACHINE_PATTERN),
]
BootDevice = Annotated[
    str,
    AfterValidator(matching(BOOT_DEVICE_PATTERN, "is not diskN or netN")),
    string_schema(BOOT_DEVICE_PATTERN),
]
Mac = Annotated[
    str,
    AfterValidator(matching(MAC_PATTERN, "must look like 52:54:00:12:34:56 (lower case)")),
    string_schema(MAC_PATTERN),
]


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


DISK_SLOTS = 8  # hot-pluggable disk slots of a layout 3 VM


class DiskQoS(Record):
    """Limits on one disk's I/O (a QEMU throttle group of its own, changed live); a limit
    left out (null) is no limit. A burst lets the disk go above its limit for one second."""

    iops: int | None = Field(default=None, ge=1, le=1_000_000, description="I/O operations/s")
    iops_burst: int | None = Field(
        default=None, ge=1, le=10_000_000, description="I/O operations/s for a short burst"
    )
    mbps: int | None = Field(default=None, ge=1, le=100_000, description="MiB/s read + written")
    mbps_burst: int | None = Field(
        default=None, ge=1, le=1_000_000, description="MiB/s for a short burst"
    )

    @model_validator(mode="after")
    def _bursts(self) -> "DiskQoS":
        for limit, burst in (("iops", "iops_burst"), ("mbps", "mbps_burst")):
            value, peak = getattr(self, limit), getattr(self, burst)
            if peak is not None and (value is None or peak < value):
                raise ValueError(f"{burst} needs {limit}, and may not be below it")
        return self


class DiskSpec(Record):
    bus: DiskBus = "virtio"
    volume: str = Field(description="id of the pool volume backing this disk")
    slot: int | None = Field(
        default=None,
        ge=0,
        lt=DISK_SLOTS,
        description="its hot-pluggable PCI slot (virtio disks attached to a running VM)",
    )
    qos: DiskQoS = Field(default_factory=DiskQoS)


RATE_IN = "the most the VM receives on it, Mbit/s; none: no limit"
RATE_OUT = "the most the VM sends on it, Mbit/s; none: no limit"


class NicSpec(Record):
    model: NicModel = "virtio"
    network: Name = Field(
        default="user",
        description="a network (port group) of a switch; 'user': QEMU's NAT; 'none': no link",
    )
    mac: Mac | None = Field(
        default=None, description="lower-case aa:bb:cc:dd:ee:ff; given unique in the cluster"
    )
    address: IPv4 | None = Field(
        default=None, description="IPv4 address from the network's subnet; given if left out"
    )
    link_up: bool = Field(default=True, description="the cable plugged in")
    security_groups: list[Name] = Field(
        default_factory=list,
        max_length=8,
        description="filter its traffic (stateful, default deny inbound); empty: no filtering",
    )
    ingress_mbps: int | None = Field(default=None, ge=1, le=100_000, description=RATE_IN)
    egress_mbps: int | None = Field(default=None, ge=1, le=100_000, description=RATE_OUT)
    slot: int | None = Field(
        default=None,
        ge=0,
        lt=8,
        description="its hot-pluggable PCI slot (given by the cluster; layout 2 VMs)",
    )


class HAPolicy(Record):
    """What happens to the VM when its node fails."""

    enabled: bool = Field(default=False, description="restart it on another node")
    priority: int = Field(
        default=50, ge=0, le=100, description="higher restarts first when capacity is short"
    )


HOSTNAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
LOGIN_PATTERN = r"^[a-z_][a-z0-9_-]{0,31}$"
SSH_KEY_PATTERN = (
    r"^(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+( [^\n]*)?$"
)
PASSWORD_HASH_PATTERN = r"^\$[0-9a-z]+\$[^\s:]+$"
Hostname = Annotated[
    str,
    AfterValidator(matching(HOSTNAME_PATTERN, "is not a hostname (a-z, 0-9, '-'; 1-63)")),
    string_schema(HOSTNAME_PATTERN, 1, 63),
]
Login = Annotated[
    str,
    AfterValidator(matching(LOGIN_PATTERN, "is not a user name (a-z, 0-9, '_', '-'; 1-32)")),
    string_schema(LOGIN_PATTERN, 1, 32),
]
SshKey = Annotated[
    str,
    AfterValidator(matching(SSH_KEY_PATTERN, "is not an OpenSSH public key line")),
    string_schema(SSH_KEY_PATTERN, 1, 16384),
]
PasswordHash = Annotated[
    str,
    AfterValidator(matching(PASSWORD_HASH_PATTERN, "is not a crypt(3) hash ($6$salt$...)")),
    string_schema(PASSWORD_HASH_PATTERN, 1, 512),
]


class CloudUser(Record):
    """A user cloud-init makes in the guest."""

    name: Login
    ssh_keys: list[SshKey] = Field(default_factory=list, max_length=16)
    password_hash: PasswordHash | None = Field(
        default=None, description="crypt(3) hash (mkpasswd -m sha-512); none: no password login"
    )
    sudo: bool = Field(default=False, description="may run anything as root without a password")


class CloudInit(Record):
    """What cloud-init in the guest is told, from a NoCloud seed Heron builds (an ISO labelled
    cidata, the VM's last disk, read-only). Each VM gets its own identity: its id is the
    instance-id, and its name the hostname unless one is given."""

    hostname: Hostname | None = Field(default=None, description="none: the VM's name")
    users: list[CloudUser] = Field(default_factory=list, max_length=16)
    user_data: str = Field(
        default="",
        max_length=65536,
        description="more user-data (#cloud-config, a script...), given to cloud-init too",
        # Lines matter (YAML, a script): the web UI's schema-driven forms give it a text area.
        json_schema_extra={"x-multiline": True},
    )
    network: bool = Field(
        default=True,
        description="network-config from the NICs' addresses on networks with a subnet "
        "(static); other NICs: DHCP",
    )


class Hardware(Record):
    """The VM's hardware and policies; shared by the stored spec and the create request."""

    vcpus: int = Field(default=1, ge=1, le=256)
    memory_mib: int = Field(default=512, ge=16, le=4 * 1024 * 1024)
    firmware: Literal["bios", "uefi"] = "bios"
    machine: Machine = "q35"
    boot_order: list[BootDevice] = Field(
        default_factory=list,
        max_length=8,
        description="devices to boot from, e.g. ['disk0', 'net0']; empty: the first disk",
    )
    description: str = Field(default="", max_length=1024)
    ha: HAPolicy = Field(default_factory=HAPolicy)
    group: Name | None = Field(default=None, description="VM group whose placement rule applies")
    # Off for records written before the field existed: a device added to their QEMU would
    # break a live migration from the previous release. New VMs get it (VMCreate).
    guest_agent: bool = Field(
        default=False,
        description="a virtio-serial channel for the QEMU guest agent (qemu-ga) in the guest",
    )
    max_vcpus: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="vCPUs it may grow to while running (reserved on its node); none: vcpus",
    )
    max_memory_mib: int | None = Field(
        default=None,
        ge=16,
        le=4 * 1024 * 1024,
        description="memory it may grow to while running (reserved on its node); none: memory",
    )
    cpu_weight: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="its share of contended CPU time against other VMs (100: normal)",
    )
    cpu_limit: int | None = Field(
        default=None,
        ge=1,
        le=25_600,
        description="the most CPU time it may use, percent of one host CPU; none: no limit",
    )
    memory_limit_mib: int | None = Field(
        default=None,
        ge=16,
        le=8 * 1024 * 1024,
        description="the most host memory its QEMU may use (RAM and overhead); none: no limit",
    )

    cloud_init: CloudInit | None = Field(
        default=None, description="give the guest a cloud-init NoCloud seed; none: no seed"
    )

    @field_validator("boot_order")
    @classmethod
    def _boot_order(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a device twice")
        return value

    @model_validator(mode="after")
    def _maxima(self) -> "Hardware":
        if self.max_vcpus is not None and self.max_vcpus < self.vcpus:
            raise ValueError(f"max_vcpus {self.max_vcpus} is below vcpus {self.vcpus}")
        if self.max_memory_mib is not None and self.max_memory_mib < self.memory_mib:
            raise ValueError(
                f"max_memory_mib {self.max_memory_mib} is below memory_mib {self.memory_mib}"
            )
        return self


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


NIC_SLOTS = 8
MEMORY_SLOTS = 8  # DIMMs a layout 3 VM can take while running
MEMORY_BLOCK_MIB = 128  # the guest onlines memory in blocks of this size (x86)
# How QEMU's devices are laid out. 1: as the first releases did (NICs where QEMU puts them);
# 2: each NIC in a slot of its own that can take one while the VM runs; 3: also room to grow
# (vCPUs up to max_vcpus, DIMM slots up to max_memory_mib, hot-pluggable disk slots). A VM
# keeps its layout until it starts again, so a live migration between releases finds the same
# devices on both sides.
Layout = Literal[1, 2, 3]
LAYOUT: Layout = 3


class VMSpec(Hardware):
    name: Name
    disks: list[DiskSpec] = Field(default_factory=list, max_length=16)
    nics: list[NicSpec] = Field(default_factory=list, max_length=NIC_SLOTS)
    layout: Layout = Field(default=1, description="QEMU's device layout (see LAYOUT)")
    dimms_mib: list[int] = Field(
        default_factory=list,
        max_length=MEMORY_SLOTS,
        description="of a running QEMU: the memory plugged in as DIMMs since it started "
        "(part of memory_mib; a start gives it all as boot memory)",
    )

    plugged_vcpus: list[dict[str, int]] = Field(
        default_factory=list,
        max_length=256,
        description="of a running QEMU: where each vCPU plugged in since it started sits "
        "(socket-id, core-id, thread-id); part of vcpus",
    )

    @model_validator(mode="after")
    def _devices(self) -> "VMSpec":
        check_boot_order(self.boot_order, len(self.disks), len(self.nics))
        check_disk_buses([d.bus for d in self.disks], self.machine)
        slots = [n.slot for n in self.nics if n.slot is not None]
        if len(set(slots)) != len(slots):
            raise ValueError("two NICs share a slot")
        disk_slots = [d.slot for d in self.disks if d.slot is not None]
        if len(set(disk_slots)) != len(disk_slots):
            raise ValueError("two disks share a slot")
        return self


def reserved_memory_mib(spec: Hardware) -> int:
    """The memory a node keeps for the VM: what it may grow to while running."""
    return max(spec.memory_mib, spec.max_memory_mib or 0)


def reserved_vcpus(spec: Hardware) -> int:
    return max(spec.vcpus, spec.max_vcpus or 0)


def free_disk_slot(disks: list[DiskSpec]) -> int | None:
    taken = {d.slot for d in disks}
    return next((slot for slot in range(DISK_SLOTS) if slot not in taken), None)


def free_slot(nics: list[NicSpec]) -> int | None:
    """The lowest NIC slot no NIC has."""
    taken = {n.slot for n in nics}
    return next((slot for slot in range(NIC_SLOTS) if slot not in taken), None)


class VM(Record):
    """The desired state. `generation` grows whenever the node has something new to act on."""

    id: str
    spec: VMSpec
    node: Name
    power: PowerState = PowerState.stopped
    generation: int = 1
    created_at: float
    template: bool = Field(
        default=False,
        description="a template: it never starts or migrates; VMs are cloned from it",
    )


class GuestAgentStatus(Record):
    """The guest agent as the VM's node last found it (probed now and then, not per request)."""

    connected: bool = Field(description="qemu-ga answered the last probe")
    version: str | None = Field(default=None, description="qemu-ga's version, once it answered")


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
    hardware: VMSpec | None = Field(
        default=None, description="the spec the running QEMU was started with"
    )
    guest_agent: GuestAgentStatus | None = Field(
        default=None, description="null: the running QEMU has no guest agent channel"
    )


# What a running QEMU takes only when it starts again, unless `hotplug.plan_live` finds a
# way to give it at once (the rest applies at once).
RESTART_FIELDS = (
    "vcpus",
    "max_vcpus",
    "memory_mib",
    "max_memory_mib",
    "firmware",
    "machine",
    "boot_order",
    "disks",
    "nics",
    "guest_agent",
    "cpu_weight",
    "cpu_limit",
    "memory_limit_mib",
    "cloud_init",
)


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
    guest_agent: bool = Field(
        default=True,
        description="a virtio-serial channel for the QEMU guest agent (qemu-ga) in the guest",
    )
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
    boot_order: list[BootDevice] | None = Field(default=None, max_length=8)
    ha: HAPolicy | None = None
    group: Name | None = Field(
        default=None, description="VM group to join; null (given explicitly) leaves its group"
    )
    guest_agent: bool | None = Field(
        default=None, description="give it the guest agent's channel (from its next start)"
    )
    cloud_init: CloudInit | None = Field(
        default=None, description="its cloud-init seed (next start); null given: none"
    )
    max_vcpus: int | None = Field(default=None, ge=1, le=256)
    max_memory_mib: int | None = Field(default=None, ge=16, le=4 * 1024 * 1024)
    cpu_weight: int | None = Field(default=None, ge=1, le=10_000)
    cpu_limit: int | None = Field(
        default=None, ge=1, le=25_600, description="percent of one host CPU"
    )
    memory_limit_mib: int | None = Field(default=None, ge=16, le=8 * 1024 * 1024)


class DiskUpdate(BaseModel):
    """A disk's I/O limits, applied at once to a running VM; the limits given replace all
    of its previous ones (an empty qos: no limits)."""

    model_config = {"extra": "forbid"}
    qos: DiskQoS
    revision: int | None = Field(default=None, description="write only if still at this revision")


class DiskAttach(BaseModel):
    """An existing volume to give a VM as its next disk: plugged into it at once if it runs
    (layout 3, virtio), else at its next start."""

    model_config = {"extra": "forbid"}
    volume: str = Field(description="the volume as pool/name or id; ready and not in use")
    bus: DiskBus = "virtio"
    qos: DiskQoS = Field(default_factory=DiskQoS)
    revision: int | None = Field(default=None, description="write only if still at this revision")


class NicAttach(BaseModel):
    """A NIC to give a VM: plugged into it at once if it runs (layout 2), else at its start."""

    model_config = {"extra": "forbid"}
    network: Name = Field(description="a network (port group); 'user': QEMU's NAT")
    model: NicModel = "virtio"
    mac: Mac | None = Field(default=None, description="given unique in the cluster if left out")
    address: IPv4 | None = Field(default=None, description="from the network's subnet")
    link_up: bool = True
    security_groups: list[Name] = Field(default_factory=list, max_length=8)
    ingress_mbps: int | None = Field(default=None, ge=1, le=100_000, description=RATE_IN)
    egress_mbps: int | None = Field(default=None, ge=1, le=100_000, description=RATE_OUT)
    revision: int | None = Field(default=None, description="write only if still at this revision")


class NicUpdate(BaseModel):
    """Changes to one NIC, applied at once to a running VM (layout 2): its network (the tap
    moves to the other port group), its address, its cable, its security groups and rate
    limits (a rate given as null removes the limit)."""

    model_config = {"extra": "forbid"}
    network: Name | None = None
    address: IPv4 | None = None
    link_up: bool | None = None
    security_groups: list[Name] | None = Field(default=None, max_length=8)
    ingress_mbps: int | None = Field(default=None, ge=1, le=100_000, description=RATE_IN)
    egress_mbps: int | None = Field(default=None, ge=1, le=100_000, description=RATE_OUT)
    revision: int | None = Field(default=None, description="write only if still at this revision")


# A Name short enough for the longest suffix ("-1000") to leave a valid name.
_PREFIX_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,56}[a-z0-9])?$"
NamePrefix = Annotated[
    str,
    AfterValidator(matching(_PREFIX_PATTERN, NAME_REASON.replace("1-63", "1-58"))),
    string_schema(_PREFIX_PATTERN, 1, 58),
]


class BatchCreate(VMCreate):
    """`count` VMs named `<name>-001`, `<name>-002`, ... from one template (VDI style)."""

    name: NamePrefix = Field(description="prefix of the names")
    count: int = Field(ge=1, le=1000)
    dry_run: bool = Field(default=False, description="only say where each VM would go")
    template: Name | None = Field(
        default=None,
        description="clone each VM from this template VM (its hardware, disks and NICs; "
        "fresh MACs and addresses); `disks` and the hardware fields are then not given",
    )
    linked: bool = Field(
        default=True, description="with `template`: linked clones (copy-on-write) of its disks"
    )
    pool: Name | None = Field(
        default=None, description="with `template`: pool for full clones (default: the source's)"
    )


class TemplateSet(BaseModel):
    """Make a stopped VM a template (it cannot start or migrate), or a template a VM again."""

    model_config = {"extra": "forbid"}
    template: bool
    revision: int | None = Field(default=None, description="write only if still at this revision")


class CloneRequest(BaseModel):
    """A new VM with copies of a VM's (or a template's, or a snapshot's) disks and its
    hardware; its NICs get fresh MACs and addresses."""

    model_config = {"extra": "forbid"}
    name: Name = Field(description="the new VM's name")
    snapshot: Name | None = Field(
        default=None, description="clone this snapshot of the source (id or name), not its disks"
    )
    linked: bool = Field(
        default=False,
        description="share the source's blocks copy-on-write (a template's disks, or a snapshot "
        "on a pool that clones snapshots itself); the source then cannot be deleted",
    )
    full_if_unlinked: bool = Field(
        default=False,
        description="with `linked`: make a full copy of a disk whose pool cannot link one, "
        "instead of refusing",
    )
    pool: Name | None = Field(
        default=None, description="pool for full copies (default: each source volume's pool)"
    )
    node: Name | None = Field(default=None, description="where the clone runs; chosen if omitted")
    description: str | None = Field(default=None, max_length=1024)
    cloud_init: CloudInit | None = Field(
        default=None, description="its own cloud-init seed; none: the source's (own hostname)"
    )
    start: bool = False
