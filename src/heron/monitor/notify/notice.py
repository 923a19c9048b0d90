"""What every channel driver shares: the notice it sends, the context it sends in, its error.

Pure but for `tls_context` (which reads the system's CA store and an optional CA file).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
from dataclasses import dataclass, field
from typing import Any, Literal

from heron.errors import HeronError
from heron.models.alerts import Alert, Channel, Severity

# Heron has no IANA Private Enterprise Number yet. 32473 is the one RFC 5612 reserves for
# documentation: a placeholder that must be replaced by a registered PEN before 1.0 (it is
# also in HERON-MIB.txt, and the SNMP engine ID is derived from it).
HERON_PEN = 32473

TEST_RULE = "test"


class NotifyError(HeronError):
    """A channel could not deliver; the message is one line saying why."""


@dataclass(frozen=True)
class Notice:
    """One alert's news for the outside: it fires, or it is resolved."""

    alert_id: str
    rule: str
    severity: Severity
    state: Literal["firing", "resolved"]
    summary: str
    labels: dict[str, str]
    started_at: float
    resolved_at: float | None
    value: float | None
    cluster: str
    url: str | None = None
    reason: str | None = None  # why a resolved alert resolved, when not its condition

    @property
    def test(self) -> bool:
        return self.rule == TEST_RULE

    def as_json(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "rule": self.rule,
            "severity": self.severity.value,
            "state": self.state,
            "summary": self.summary,
            "labels": dict(self.labels),
            "started_at": self.started_at,
            "resolved_at": self.resolved_at,
            "value": self.value,
            "url": self.url,
            "reason": self.reason,
        }


def notice_of(alert: Alert, cluster: str, url: str | None = None) -> Notice:
    """The notice an alert's current state makes, for the cluster named `cluster`; `url`
    links to the alert in the web UI (None when no address of the UI is known). A resolved
    alert's reason (its object removed) ends its summary, so every channel says it."""
    summary = alert.summary or f"{alert.rule} {labels_text(alert.labels)}".strip()
    reason = alert.resolved_reason if alert.state == "resolved" else None
    return Notice(
        alert_id=alert.id,
        rule=alert.rule,
        severity=alert.severity,
        state=alert.state,
        summary=f"{summary} (resolved: {reason})" if reason else summary,
        labels=dict(alert.labels),
        started_at=alert.started_at,
        resolved_at=alert.resolved_at,
        value=alert.value,
        cluster=cluster,
        url=url,
        reason=reason,
    )


def probe_notice(channel_name: str, cluster: str, now: float) -> Notice:
    """The clearly marked notice `send_test` sends."""
    return Notice(
        alert_id=f"test-{int(now)}",
        rule=TEST_RULE,
        severity=Severity.info,
        state="firing",
        summary=f"TEST: a test notice from Heron to channel {channel_name}; no alert fired",
        labels={"channel": channel_name},
        started_at=now,
        resolved_at=None,
        value=None,
        cluster=cluster,
    )


def labels_text(labels: dict[str, str]) -> str:
    """`node=node2, vm=web1`: labels in a stable order, for people and for SNMP."""
    return ", ".join(f"{key}={labels[key]}" for key in sorted(labels))


def value_text(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:g}"


def utc_text(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def wants(channel: Channel, notice: Notice) -> bool:
    """Whether `channel` takes `notice`: enabled, severe enough, and a resolved one only if
    it asks for those. `deliver` sends what it is given: the caller filters with this."""
    if not channel.enabled or (notice.state == "resolved" and not channel.send_resolved):
        return False
    return notice.severity.rank >= channel.min_severity.rank


def engine_id(cluster_id: str) -> bytes:
    """The SNMP engine ID of the cluster's notification originator (RFC 3411
    SnmpEngineID): the enterprise number with its top bit set, format 5 (octets the
    enterprise defines), then 12 bytes of SHA-256 of the cluster's id. The same on every
    node, so a leader change does not change it; SNMPv3 receivers of traps key their users
    on it."""
    digest = hashlib.sha256(b"heron-snmp-engine\0" + cluster_id.encode()).digest()[:12]
    return (0x80000000 | HERON_PEN).to_bytes(4, "big") + b"\x05" + digest


def engine_id_hex(cluster_id: str) -> str:
    """The engine ID as snmptrapd's `createUser -e 0x…` and most managers take it."""
    return "0x" + engine_id(cluster_id).hex().upper()


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client context trusting the system's CAs, and those of `ca_file` when given (a
    company CA signing the mail server's or a webhook receiver's certificate)."""
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise NotifyError(f"cannot read the CA file {ca_file}: {exc}") from exc
    return context


@dataclass(frozen=True)
class Context:
    """What drivers need beyond the channel: which cluster speaks, whom to trust, how long
    to wait (each delivery ends within about `timeout` seconds)."""

    cluster_id: str
    cluster_name: str
    tls: ssl.SSLContext = field(default_factory=tls_context)
    timeout: float = 10.0

    @property
    def engine_id(self) -> bytes:
        return engine_id(self.cluster_id)
