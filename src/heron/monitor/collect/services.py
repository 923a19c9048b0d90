"""The node's own services as samples: its certificates' time left, the ConfigDB's latency."""

from __future__ import annotations

from collections.abc import Mapping

from heron.monitor.series import Metric, Sample, labels_of
from heron.tls import TlsError, expires_at


def certificate_samples(certificates: Mapping[str, str | None], now: float) -> list[Sample]:
    """Seconds until each certificate (PEM; None: not there) expires."""
    samples = []
    for name, pem in certificates.items():
        if pem is None:
            continue
        try:
            left = expires_at(pem) - now
        except TlsError:
            continue
        samples.append(
            Sample("heron_certificate_expiry_seconds", labels_of(certificate=name), left)
        )
    return samples


def configdb_samples(read_seconds: float | None) -> list[Sample]:
    """How long one read of the ConfigDB took (absent: it failed)."""
    if read_seconds is None:
        return [Sample("heron_configdb_up", (), 0.0)]
    return [
        Sample("heron_configdb_up", (), 1.0),
        Sample("heron_configdb_read_seconds", (), read_seconds),
    ]


SERVICE_METRICS = [
    Metric(
        "heron_certificate_expiry_seconds",
        "gauge",
        "Seconds until the node's certificate (or the cluster CA's) expires.",
    ),
    Metric("heron_configdb_up", "gauge", "1 when this node's last read of the ConfigDB worked."),
    Metric("heron_configdb_read_seconds", "gauge", "How long this node's last ConfigDB read took."),
]
