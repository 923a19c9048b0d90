"""Cluster-wide settings the administrator changes at run time."""

from pydantic import Field

from heron.models.common import Record


class DRSSettings(Record):
    """Dynamic balancing: live-migrate VMs to even out memory load across nodes."""

    enabled: bool = False
    threshold: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="act when the busiest and the idlest node differ by more than this share "
        "of their memory",
    )
    interval: float = Field(default=30, ge=0.5, le=3600, description="seconds between checks")
    hysteresis: int = Field(
        default=3, ge=1, le=100, description="checks in a row the imbalance must persist"
    )
    max_concurrent: int = Field(default=1, ge=1, le=16, description="migrations at once")


class ClusterSettings(Record):
    drs: DRSSettings = Field(default_factory=DRSSettings)
