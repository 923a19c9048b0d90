"""Alerts and where they are sent: rules, alerts, silences and notification channels.

Records in the ConfigDB (small and current: an alert is one record while it fires and a
while after it resolves; the event log keeps its story). Secrets of channels (a mail
password, SNMPv3 keys, a webhook's signing key) are stored with the channel and never shown
by the API, which says only whether one is set.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from heron.models.common import MailAddress, Name, Record


class Severity(StrEnum):
    critical = "critical"
    warning = "warning"
    info = "info"

    @property
    def rank(self) -> int:
        return {"critical": 3, "warning": 2, "info": 1}[self.value]


Comparison = Literal[">", ">=", "<", "<="]
ResolvedReason = Literal["object removed"]


class AlertRule(Record):
    """A rule on a metric, checked every round on the nodes holding its series.

    `threshold`: the value compared with `value` holds for `for_seconds`; `absence`: no
    sample of a series for `for_seconds`; `rate`: the value changes faster than `value` per
    second (e.g. a filesystem filling) for `for_seconds`."""

    name: Name
    kind: Literal["threshold", "absence", "rate"] = "threshold"
    metric: str = Field(min_length=1, max_length=200)
    labels: dict[str, str] = Field(default_factory=dict, description="series to look at")
    op: Comparison = ">"
    value: float = 0.0
    for_seconds: float = Field(default=60, ge=0, le=86400)
    severity: Severity = Severity.warning
    summary: str = Field(default="", max_length=500, description="{labels} and {value} expand")
    enabled: bool = True


class Alert(Record):
    """One alert: a rule's condition on one object (its labels), firing or resolved."""

    id: str
    rule: str
    severity: Severity
    labels: dict[str, str] = Field(default_factory=dict)
    summary: str = ""
    state: Literal["firing", "resolved"] = "firing"
    value: float | None = None
    started_at: float
    resolved_at: float | None = None
    resolved_reason: ResolvedReason | None = Field(
        default=None,
        description="why it resolved when not because its condition ended: 'object removed' "
        "(the node it is about left the cluster, or the VM it is about was deleted)",
    )
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    # Set by the leader: why no notice goes out (a silence's id, or the alert inhibiting it).
    silenced_by: str | None = None
    inhibited_by: str | None = None
    notified: list[str] = Field(default_factory=list, description="notices sent: state@channel")


class Silence(Record):
    """Alerts whose labels include `matchers` (and `rule`, when given) send nothing until
    `until`; they are still listed."""

    id: str
    rule: str | None = None
    matchers: dict[str, str] = Field(default_factory=dict)
    until: float
    comment: str = Field(default="", max_length=500)
    created_by: str = ""
    created_at: float = 0.0


class SmtpSettings(Record):
    kind: Literal["smtp"] = "smtp"
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: str | None = Field(default=None, description="write-only")
    sender: MailAddress
    recipients: list[MailAddress] = Field(min_length=1, max_length=50)


class SnmpSettings(Record):
    kind: Literal["snmp"] = "snmp"
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=162, ge=1, le=65535)
    version: Literal["v2c", "v3"] = "v2c"
    inform: bool = Field(default=False, description="acknowledged informs instead of traps")
    community: str | None = Field(default=None, description="v2c; write-only")
    user: str | None = Field(default=None, description="v3 user name")
    auth_protocol: Literal["SHA", "SHA256", "SHA512", "MD5"] | None = None
    auth_key: str | None = Field(default=None, description="v3; write-only")
    priv_protocol: Literal["AES", "AES256", "DES"] | None = None
    priv_key: str | None = Field(default=None, description="v3; write-only")


class WebhookSettings(Record):
    kind: Literal["webhook"] = "webhook"
    url: str = Field(
        pattern=r"^https?://[^/?#\s]+", max_length=2000, description="http(s)://host[:port]/path"
    )
    secret: str | None = Field(
        default=None, description="write-only; signs each body (HMAC-SHA256, X-Heron-Signature)"
    )


ChannelSettings = Annotated[
    SmtpSettings | SnmpSettings | WebhookSettings, Field(discriminator="kind")
]


class Channel(Record):
    name: Name
    settings: ChannelSettings
    min_severity: Severity = Severity.warning
    send_resolved: bool = True
    enabled: bool = True


SECRET_FIELDS = ("password", "community", "auth_key", "priv_key", "secret")
