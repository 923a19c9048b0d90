"""Cluster-wide settings the administrator changes at run time."""

from typing import Any, Literal

from pydantic import Field, model_validator

from heron.models.common import MailAddress, Name, Record
from heron.models.dr import DRSettings
from heron.models.imports import ImportSettings

DRSMode = Literal["off", "advise", "automatic"]
DRSBasis = Literal["demand", "allocated"]


class DRSSettings(Record):
    """Dynamic balancing: live-migrate VMs to even out the load across nodes — the CPU and
    memory their VMs were measured to use (basis `demand`), or the memory they were given
    (basis `allocated`).

    `mode` is what the administrator chooses, as vSphere's manual and fully automated DRS:
    `advise` only proposes moves (GET /cluster/drs), an administrator applies them;
    `automatic` makes them. `enabled` is `mode == "automatic"`, always stored with it: records
    and clients of releases before `mode` set only `enabled`, and older agents read only it.
    """

    mode: DRSMode = Field(
        default="off",
        description="off; advise: propose moves only; automatic: make them",
    )
    enabled: bool = Field(
        default=False,
        description='the same as mode "automatic" (given alone, it sets the mode: on is '
        "automatic, off is off)",
    )
    basis: DRSBasis = Field(
        default="demand",
        description="demand: the CPU (used and waited for) and resident memory the VMs were "
        "measured to use over the last minute; allocated: the memory the VMs were given",
    )
    threshold: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="act when the busiest and the idlest node differ by more than this share "
        "of their cores or memory",
    )
    interval: float = Field(default=30, ge=0.5, le=3600, description="seconds between checks")
    hysteresis: int = Field(
        default=3, ge=1, le=100, description="checks in a row the imbalance must persist"
    )
    max_concurrent: int = Field(default=1, ge=1, le=16, description="migrations at once")

    @model_validator(mode="before")
    @classmethod
    def _mode_and_enabled(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        mode, enabled = data.get("mode"), data.get("enabled")
        if mode is None and isinstance(enabled, bool):
            return {**data, "mode": "automatic" if enabled else "off"}
        if isinstance(mode, str) and enabled is None:
            return {**data, "enabled": mode == "automatic"}
        if isinstance(mode, str) and isinstance(enabled, bool) and enabled != (mode == "automatic"):
            raise ValueError(
                f'enabled {str(enabled).lower()} contradicts mode "{mode}": enabled means '
                'mode "automatic"; give the mode alone'
            )
        return data


class HASettings(Record):
    """How long a node's agent may be away before its HA VMs are restarted elsewhere.

    A node whose agent stops (killed, restarted for an upgrade, hung) but whose fence watchdog
    still renews the node's presence keeps its VMs for `agent_grace` seconds: an agent back in
    time changes nothing. A node that is gone whole (power, network, kernel) loses its agent's
    lease and its watchdog's presence together and fails over after the lease TTL, whatever
    the grace.
    """

    agent_grace: float = Field(
        default=30,
        ge=2,
        le=3600,
        description="seconds a node's agent may be silent while its watchdog answers before "
        "its HA VMs are fenced and restarted elsewhere",
    )


class LoginSettings(Record):
    """Login protection and password rules, read by every node at each login.

    Failures are counted per user name and per client address in the ConfigDB, so a guesser
    gains nothing by spreading its attempts over the nodes. A lock refuses every login of the
    name (or from the address) until it expires or an administrator lifts it; the right
    password does not open a locked name, or the lock would only slow a guesser down.
    """

    max_failures: int = Field(
        default=5, ge=1, le=1000, description="failed logins of one user name that lock it"
    )
    max_failures_per_address: int = Field(
        default=20,
        ge=1,
        le=100000,
        description="failed logins from one client address that lock it (many users may "
        "share one address behind a proxy)",
    )
    window: float = Field(
        default=900,
        ge=10,
        le=86400,
        description="seconds over which failures count: older ones are forgotten",
    )
    lockout: float = Field(
        default=900, ge=10, le=86400, description="seconds a lock lasts unless lifted"
    )
    min_password_length: int = Field(
        default=8, ge=8, le=256, description="shortest password accepted for a user"
    )
    refuse_user_name: bool = Field(
        default=True, description="refuse a password equal to the user name (in any case)"
    )


class SupportSettings(Record):
    """Where diagnostic bundles (`/support/bundles`) are mailed, and whether the leader
    mails one by itself when a critical alert fires (at most once an hour)."""

    address: MailAddress | None = Field(
        default=None, description="the support team's mail address; none: bundles are not mailed"
    )
    channel: Name | None = Field(
        default=None,
        description="the SMTP notification channel whose server and sender the mail goes "
        "through (its own recipients are not used)",
    )
    on_critical: bool = Field(
        default=False,
        description="build and mail a bundle when a critical alert fires (at most once an hour)",
    )


class ClusterSettings(Record):
    drs: DRSSettings = Field(default_factory=DRSSettings)
    ha: HASettings = Field(default_factory=HASettings)
    login: LoginSettings = Field(default_factory=LoginSettings)
    support: SupportSettings = Field(default_factory=SupportSettings)
    imports: ImportSettings = Field(default_factory=ImportSettings)
    dr: DRSettings = Field(default_factory=DRSettings)


class ClusterSettingsUpdate(Record):
    """A change of the cluster settings: each section given replaces that section; a section
    left out (or null) keeps what is stored, so a client that knows only some sections (an
    older CLI, a script for DRS) never resets the others to their defaults."""

    drs: DRSSettings | None = None
    ha: HASettings | None = None
    login: LoginSettings | None = None
    support: SupportSettings | None = None
    imports: ImportSettings | None = None
    dr: DRSettings | None = None
