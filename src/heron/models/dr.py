"""Disaster recovery inside one cluster (issue 19): which VMs are protected and how, and what
their replication rounds achieved.

A VM's `Protection` is written by the API (protect/unprotect); its `DRStatus` by the agent of
the node that runs its rounds, after each round: the points its replica store holds, the last
round's numbers and error. The store lives on that node (`DRSettings.store`) until DR sites
replace it.
"""

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from heron.models.common import Name, Record

# Kept small: the status record lists every point, and etcd holds small, current state.
MAX_RETENTION = 100
MAX_POINTS = 200
MAX_INTERVAL_S = 7 * 86400
DEFAULT_MIN_INTERVAL_S = 60

PointKind = Literal["full", "incremental", "resync"]


class DRSettings(Record):
    """Where the replicas are kept and how often rounds may run."""

    store: str | None = Field(
        default=None,
        max_length=4096,
        pattern=r"^/[^\x00-\x1f]*[^/\x00-\x1f]$",
        description="absolute path of the replica store on the node that runs a protected VM "
        "(made when missing); none: <the node's state directory>/dr-store",
    )
    min_interval_seconds: int = Field(
        default=DEFAULT_MIN_INTERVAL_S,
        ge=1,
        le=MAX_INTERVAL_S,
        description="the shortest interval a protection policy may ask for (60 in production; "
        "tests lower it)",
    )

    @field_validator("store")
    @classmethod
    def _plain_path(cls, value: str | None) -> str | None:
        if value is not None and any(part in (".", "..") for part in value.split("/")):
            raise ValueError("is a path with . or .. in it: give the directory itself")
        return value


class ProtectionPolicy(Record):
    interval_seconds: int = Field(
        default=300,
        ge=1,
        le=MAX_INTERVAL_S,
        description="a round starts this long after the last one started (at least the "
        "cluster's dr.min_interval_seconds)",
    )
    retention: int = Field(
        default=24,
        ge=1,
        le=MAX_RETENTION,
        description="how many of the newest points are kept, whatever their age",
    )
    hourly: int = Field(
        default=0,
        ge=0,
        le=MAX_RETENTION,
        description="besides: the newest point of each of the last N hours (UTC) that have one",
    )
    daily: int = Field(
        default=0, ge=0, le=MAX_RETENTION, description="besides: the newest point of N days"
    )
    monthly: int = Field(
        default=0, ge=0, le=MAX_RETENTION, description="besides: the newest point of N months"
    )

    @model_validator(mode="after")
    def _bounded(self) -> "ProtectionPolicy":
        kept = self.retention + self.hourly + self.daily + self.monthly
        if kept > MAX_POINTS:
            raise ValueError(
                f"retention, hourly, daily and monthly keep up to {kept} points: at most "
                f"{MAX_POINTS} (the status record lists them all)"
            )
        return self


class Protection(Record):
    vm: str = Field(description="id of the VM")
    policy: ProtectionPolicy
    since: float = Field(description="when it was protected")
    user: str = Field(description="who protected it")


class DRPoint(Record):
    id: str
    created: float = Field(description="the instant its disks were captured")
    kind: PointKind
    parent: str | None = None
    disks: dict[str, int] = Field(description="disk name -> size in bytes")
    bytes_read: int | None = Field(default=None, description="read from the VM by its round")
    chunks_sent: int | None = Field(default=None, description="chunks its round stored as new")
    bytes_written: int | None = Field(
        default=None, description="bytes the store did not have (after dedup, compressed)"
    )


class DRStatus(Record):
    """What the rounds of one VM achieved, written by the agent that runs them."""

    vm: str
    name: str = Field(default="", description="the VM's name at its last round")
    node: str = Field(description="the node whose replica store holds the points")
    store: str = Field(description="the store's path on that node")
    last_attempt: float | None = Field(default=None, description="when the last round started")
    last_ended: float | None = None
    last_error: str | None = Field(default=None, description="why the last round failed")
    last_kind: PointKind | None = None
    last_bytes_read: int | None = None
    last_bytes_written: int | None = None
    last_chunks_sent: int | None = None
    points: list[DRPoint] = Field(default_factory=list, description="oldest first")
    hardware: dict[str, Any] | None = Field(
        default=None, description="the VM's hardware at its last round: a restore's"
    )
    buses: list[str] = Field(default_factory=list, description="its disks' buses, disk0 first")


class ProtectRequest(ProtectionPolicy):
    """Protect a VM (or change its policy)."""


class RestoreRequest(Record):
    name: Name = Field(description="name of the new VM")
    pool: Name = Field(description="pool for its disks")
