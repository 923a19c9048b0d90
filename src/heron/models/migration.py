"""A live migration in flight: the record both nodes use to hand a VM over."""

from enum import StrEnum

from pydantic import Field

from heron.models.common import Name, Record


class MigrationState(StrEnum):
    preparing = "preparing"  # the target is starting its incoming QEMU
    ready = "ready"  # the target listens on `uri`
    running = "running"  # disks (if local) then memory are being copied
    completed = "completed"  # the VM runs on the target; the record names it
    failed = "failed"


class Migration(Record):
    vm: str
    source: Name
    target: Name
    state: MigrationState = MigrationState.preparing
    uri: str | None = None
    mirror: list[int] = Field(
        default_factory=list, description="disks on the source's local storage, copied too"
    )
    nbd: str | None = Field(default=None, description="host:port of the target's NBD server")
    max_downtime_ms: int = Field(default=300, ge=1, le=60_000)
    auto_converge: bool = True
    max_bandwidth_mib: int = Field(default=1024, ge=1, le=100_000, description="MiB/s")
    ram_kib: int | None = Field(
        default=None,
        description="the source QEMU's RAM in KiB, which the target must match "
        "(not written by releases before it: then exactly the VM's memory)",
    )
    error: str = ""
    downtime_ms: int | None = None
    created_at: float
