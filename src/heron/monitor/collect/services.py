"""The node's own services as samples: its certificates' time left, the ConfigDB's latency,
the tasks it ended; and, from the node that leads, the cluster's nodes and VMs."""

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


def task_samples(ended: Mapping[tuple[str, str], int]) -> list[Sample]:
    """Tasks this node ended since its agent started, by kind and end state."""
    return [
        Sample("heron_tasks_ended_total", labels_of(kind=kind, state=state), float(count))
        for (kind, state), count in sorted(ended.items())
    ]


def cluster_samples(
    leads: bool, nodes_up: int, vm_states: Mapping[str, int] | None
) -> list[Sample]:
    """Whether this node leads; the leader alone counts the live nodes and the VMs by state
    (so that a sum over nodes counts them once)."""
    samples = [Sample("heron_leader", (), 1.0 if leads else 0.0)]
    if leads and vm_states is not None:
        samples.append(Sample("heron_cluster_nodes_up", (), float(nodes_up)))
        samples += [
            Sample("heron_cluster_vms", labels_of(state=state), float(count))
            for state, count in sorted(vm_states.items())
        ]
    return samples


SERVICE_METRICS = [
    Metric(
        "heron_certificate_expiry_seconds",
        "gauge",
        "Seconds until the node's certificate (or the cluster CA's) expires.",
    ),
    Metric("heron_configdb_up", "gauge", "1 when this node's last read of the ConfigDB worked."),
    Metric("heron_configdb_read_seconds", "gauge", "How long this node's last ConfigDB read took."),
    Metric(
        "heron_tasks_ended_total",
        "counter",
        "Tasks this node ended since its agent started, by kind and state (succeeded, failed, "
        "cancelled): their rates are task rates and failures.",
    ),
    Metric("heron_leader", "gauge", "1 on the node that leads the cluster, 0 on the others."),
    Metric("heron_cluster_nodes_up", "gauge", "Live nodes, as the leader sees them (leader only)."),
    Metric(
        "heron_cluster_vms",
        "gauge",
        "VMs by run state, as the leader sees them (leader only; not-running VMs as stopped).",
    ),
]
