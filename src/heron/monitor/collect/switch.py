"""The node's ports of the distributed switches that are not a VM's: each switch's uplink and
each VXLAN segment's device, their counters as /proc/net/dev of the data plane has them.
(A VM's port is its tap: `libvirt_domain_interface_stats_*`, from the guest's side.)"""

from __future__ import annotations

from collections.abc import Iterable

from heron.monitor.series import Metric, Sample, labels_of

# /proc/net/dev's columns, from the host's side.
COLUMNS = {
    "receive_bytes": 0,
    "receive_packets": 1,
    "receive_errors": 2,
    "receive_drops": 3,
    "transmit_bytes": 8,
    "transmit_packets": 9,
    "transmit_errors": 10,
    "transmit_drops": 11,
}


def port_samples(
    ports: Iterable[tuple[str, str, str]], interfaces: dict[str, list[int]]
) -> list[Sample]:
    """`ports`: (switch, link name, kind: uplink or vxlan); `interfaces`: parsed
    /proc/net/dev. A port not (yet, or any more) there gives nothing."""
    samples = []
    for switch, port, kind in ports:
        counters = interfaces.get(port)
        if counters is None:
            continue
        labels = labels_of(switch=switch, port=port, kind=kind)
        samples += [
            Sample(f"heron_switch_port_{what}_total", labels, float(counters[column]))
            for what, column in COLUMNS.items()
        ]
    return samples


_HELP = {"bytes": "Bytes", "packets": "Packets", "errors": "Errors", "drops": "Packets dropped"}
_VERB = {"receive": "received", "transmit": "transmitted"}

SWITCH_METRICS = [
    Metric(
        f"heron_switch_port_{what}_total",
        "counter",
        f"{_HELP[what.split('_')[1]]} {_VERB[what.split('_')[0]]} by a switch's port on this "
        "node (kind: uplink, or vxlan for a segment's device).",
    )
    for what in COLUMNS
]
