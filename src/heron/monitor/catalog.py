"""Every metric Heron exposes (a stand-in until the collectors land: replaced by theirs)."""

from heron.monitor.series import Metric
from heron.monitor.services import SERVICE_METRICS
from heron.monitor.storage import STORAGE_METRICS

METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("node_cpu_seconds_total", "counter", "Seconds the CPUs spent in each mode."),
        Metric("node_load1", "gauge", "1-minute load average."),
        Metric(
            "libvirt_domain_info_cpu_time_seconds_total", "counter", "CPU time of the VM's QEMU."
        ),
        *STORAGE_METRICS,
        *SERVICE_METRICS,
    )
}
