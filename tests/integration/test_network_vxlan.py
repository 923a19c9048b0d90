"""VXLAN segments between two 'nodes' (namespaces joined by a veth underlay): two 'VMs' talk
across the segment, realise is idempotent, peers come and go in place, the underlay's MTU is
checked, and removal leaves the VMs' ports behind."""

import asyncio
import os
from collections.abc import Iterator
from dataclasses import replace

import pytest
from planes import address, exchange, fdb_table, link_table, links, namespaces, veth

from heron.network.dataplane import DataPlane
from heron.network.plan import Port, Segment, segment_bridge, segment_device
from heron.network.vxlan import realise_segment, remove_segment, segments

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
]

VNI = 4242
ZEROS = "00:00:00:00:00:00"


def port(tap: str) -> Port:
    return Port(tap=tap, vm=tap, nic=0, mac="02:00:00:00:00:01", mode="untagged", mtu=1450)


@pytest.fixture
def world() -> Iterator[tuple[str, str, str, str]]:
    """Nodes n1 (underlay 10.77.0.1) and n2 (10.77.0.2), and a 'VM' namespace behind each
    (10.88.0.1, 10.88.0.2) whose veth's node end is named like a tap."""
    with namespaces("n1", "n2", "vm1", "vm2") as (n1, n2, vm1, vm2):
        veth((n1, "u1"), (n2, "u2"))
        address(n1, "u1", "10.77.0.1/24")
        address(n2, "u2", "10.77.0.2/24")
        veth((n1, "ht1"), (vm1, "eth0"), mtu=1450)
        veth((n2, "ht2"), (vm2, "eth0"), mtu=1450)
        address(vm1, "eth0", "10.88.0.1/24")
        address(vm2, "eth0", "10.88.0.2/24")
        yield n1, n2, vm1, vm2


# The tests are synchronous: pyroute2's IPRoute, which the helpers use, runs its own loop.
def realise(plane: DataPlane, segment: Segment) -> list[str]:
    return asyncio.run(realise_segment(plane, segment))


def remove(plane: DataPlane, vni: int) -> None:
    asyncio.run(remove_segment(plane, vni))


def present(plane: DataPlane) -> set[int]:
    return asyncio.run(segments(plane))


def segment(local: str, peers: tuple[str, ...], *ports: Port, mtu: int = 1450) -> Segment:
    return Segment(
        "ov", "sw", VNI, segment_bridge(VNI), segment_device(VNI), local, peers, mtu, ports
    )


def test_two_vms_talk_across_the_segment_and_realise_is_idempotent(
    world: tuple[str, str, str, str],
) -> None:
    n1, n2, vm1, vm2 = world
    one = segment("10.77.0.1", ("10.77.0.2",), port("ht1"))
    two = segment("10.77.0.2", ("10.77.0.1",), port("ht2"))
    assert realise(DataPlane(n1), one) == []
    assert realise(DataPlane(n2), two) == []

    assert exchange((vm1, "10.88.0.1"), (vm2, "10.88.0.2"))
    device = links(n1)[one.device]
    data = device.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    assert (data.get_attr("IFLA_VXLAN_ID"), data.get_attr("IFLA_VXLAN_PORT")) == (VNI, 4789)
    assert (data.get_attr("IFLA_VXLAN_DF"), data.get_attr("IFLA_VXLAN_TTL")) == (1, 64)
    assert device.get_attr("IFLA_IFALIAS") == "heron"
    table = {row[0]: row for row in link_table(n1)}
    bridge_index = links(n1)[one.bridge]["index"]
    assert table[one.device][2:] == (bridge_index, 1450, 1, "heron", 1)  # isolated
    assert table["ht1"][2:] == (bridge_index, 1450, 1, None, 0)
    assert table[one.bridge][3] == 1450

    before = link_table(n1), fdb_table(n1, one.device)
    assert before[1] == {(ZEROS, "10.77.0.2")}
    assert realise(DataPlane(n1), one) == []
    assert (link_table(n1), fdb_table(n1, one.device)) == before
    assert present(DataPlane(n1)) == {VNI}


def test_peers_change_in_place(world: tuple[str, str, str, str]) -> None:
    n1, _, _, _ = world
    plane = DataPlane(n1)
    assert realise(plane, segment("10.77.0.1", ("10.77.0.2", "10.77.0.3"))) == []
    index = links(n1)[segment_device(VNI)]["index"]
    assert fdb_table(n1, segment_device(VNI)) == {(ZEROS, "10.77.0.2"), (ZEROS, "10.77.0.3")}

    assert realise(plane, segment("10.77.0.1", ("10.77.0.3", "10.77.0.4"))) == []
    assert fdb_table(n1, segment_device(VNI)) == {(ZEROS, "10.77.0.3"), (ZEROS, "10.77.0.4")}
    assert realise(plane, segment("10.77.0.1", ())) == []
    assert fdb_table(n1, segment_device(VNI)) == set()
    assert links(n1)[segment_device(VNI)]["index"] == index  # never recreated


def test_an_underlay_too_small_for_the_segment_is_reported_and_it_is_still_built(
    world: tuple[str, str, str, str],
) -> None:
    n1, _, _, _ = world
    problems = realise(DataPlane(n1), segment("10.77.0.1", ("10.77.0.2",), port("ht1"), mtu=1500))
    assert problems == [
        "network ov: underlay MTU 1500 is too small for segment mtu 1500 (needs 1550): "
        "lower the network's MTU or raise the underlay's"
    ]
    assert links(n1)[segment_device(VNI)].get_attr("IFLA_MTU") == 1500


def test_a_changed_local_address_is_changed_in_place_and_removal_keeps_the_vm_port(
    world: tuple[str, str, str, str],
) -> None:
    n1, _, _, _ = world
    plane = DataPlane(n1)
    first = segment("10.77.0.1", ("10.77.0.2",), port("ht1"))
    assert realise(plane, first) == []
    index = links(n1)[first.device]["index"]
    address(n1, "u1", "10.77.0.9/24")
    assert realise(plane, replace(first, local="10.77.0.9")) == []
    device = links(n1)[first.device]
    assert device["index"] == index
    data = device.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    assert data.get_attr("IFLA_VXLAN_LOCAL") == "10.77.0.9"

    remove(plane, VNI)
    assert present(plane) == set()
    left = links(n1)
    assert first.device not in left and first.bridge not in left
    assert left["ht1"].get_attr("IFLA_MASTER") is None
