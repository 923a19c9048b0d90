"""The node's services, the cluster as its leader sees it, and the switches' ports, as
samples."""

from test_monitor_vm_parts import NET_DEV

from heron.monitor.collect.node import parse_net_dev
from heron.monitor.collect.services import cluster_samples, task_samples
from heron.monitor.collect.switch import port_samples
from heron.monitor.series import labels_of


def values(samples: list) -> dict[str, float]:  # type: ignore[type-arg]
    return {s.key: s.value for s in samples}


def test_only_the_leader_counts_the_cluster() -> None:
    assert values(cluster_samples(False, 0, None)) == {"heron_leader": 0.0}
    leader = values(cluster_samples(True, 3, {"running": 2, "stopped": 1}))
    assert leader == {
        "heron_leader": 1.0,
        "heron_cluster_nodes_up": 3.0,
        'heron_cluster_vms{state="running"}': 2.0,
        'heron_cluster_vms{state="stopped"}': 1.0,
    }


def test_tasks_ended_by_kind_and_state() -> None:
    found = values(task_samples({("vm.migrate", "failed"): 2, ("vm.start", "succeeded"): 5}))
    assert found == {
        'heron_tasks_ended_total{kind="vm.migrate",state="failed"}': 2.0,
        'heron_tasks_ended_total{kind="vm.start",state="succeeded"}': 5.0,
    }


def test_a_switch_port_is_counted_from_the_hosts_side() -> None:
    """Unlike a tap (the guest's view), an uplink's receive is what came in from the wire."""
    interfaces = parse_net_dev(NET_DEV)
    samples = port_samples(
        [("dvs", "ht525400123456", "uplink"), ("dvs", "vx100", "vxlan")], interfaces
    )
    labels = labels_of(switch="dvs", port="ht525400123456", kind="uplink")
    by_name = {s.name: s.value for s in samples if s.labels == labels}
    assert by_name["heron_switch_port_receive_bytes_total"] == 7000
    assert by_name["heron_switch_port_transmit_bytes_total"] == 8000
    assert by_name["heron_switch_port_receive_drops_total"] == 2
    assert len(samples) == 8  # the VXLAN device is not there: nothing for it
