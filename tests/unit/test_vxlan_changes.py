"""The VXLAN driver's pure part: the device it wants, what can change in place, the peers'
FDB entries to add and remove, and the underlay MTU check."""

from heron.network.plan import Segment
from heron.network.vxlan import (
    Device,
    device_fix,
    peer_changes,
    underlay_problem,
    wanted_device,
)


def segment(mtu: int = 1450) -> Segment:
    return Segment("ov", "sw", 4242, "hx1092", "hv1092", "10.0.0.1", ("10.0.0.2",), mtu)


def test_the_device_floods_by_head_end_replication_with_df_and_a_fixed_ttl() -> None:
    assert wanted_device(segment()) == Device(4242, 4789, None, "10.0.0.1", True, 1, 64)


def test_local_learning_df_and_ttl_change_in_place_vni_port_and_group_do_not() -> None:
    want = wanted_device(segment())
    assert device_fix(want, want) is None
    assert device_fix(Device(4242, 4789, None, "10.0.0.9", True, 1, 64), want) == "change"
    assert device_fix(Device(4242, 4789, None, "10.0.0.1", False, 0, 0), want) == "change"
    assert device_fix(Device(4243, 4789, None, "10.0.0.1", True, 1, 64), want) == "recreate"
    assert device_fix(Device(4242, 8472, None, "10.0.0.1", True, 1, 64), want) == "recreate"
    assert device_fix(Device(4242, 4789, "239.1.1.1", "10.0.0.1", True, 1, 64), want) == (
        "recreate"
    )


def test_peers_are_added_and_removed_not_replaced() -> None:
    assert peer_changes(["10.0.0.2", "10.0.0.3"], ["10.0.0.3", "10.0.0.4"]) == (
        ["10.0.0.4"],
        ["10.0.0.2"],
    )
    assert peer_changes(["10.0.0.2"], ["10.0.0.2"]) == ([], [])


def test_the_underlay_must_carry_the_segment_mtu_and_50_bytes() -> None:
    assert underlay_problem(segment(1450), 1500) is None
    assert underlay_problem(segment(1500), 1500) == (
        "network ov: underlay MTU 1500 is too small for segment mtu 1500 (needs 1550): "
        "lower the network's MTU or raise the underlay's"
    )
    assert underlay_problem(segment(), None) == (
        "network ov: the underlay address 10.0.0.1 is on no interface of this node"
    )
