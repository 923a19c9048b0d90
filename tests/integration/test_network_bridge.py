"""The Linux bridge backend on real namespaces: a switch's bridge with its uplink (a veth to a
'wire' namespace) and a 'VM' port; realise is idempotent and repairs what was undone by hand;
a VLAN port on this kernel (no bridge VLAN filtering) is a clear problem, not a leak."""

import asyncio
import os
from collections.abc import Iterator
from dataclasses import replace

import pytest
from planes import address, exchange, index, link_table, links, namespaces, rtnl, veth

from heron.network.bridge import LinuxBridge
from heron.network.bridgeports import RANGE_BEGIN, RANGE_END, AddVlans
from heron.network.dataplane import DataPlane
from heron.network.links import apply, read_links, read_vlans
from heron.network.links import netlink as links_netlink
from heron.network.plan import Port, SwitchPlan, switch_bridge

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
]

BRIDGE = switch_bridge("sw")


def port(tap: str, **kwargs: object) -> Port:
    fields: dict[str, object] = {"mode": "untagged", **kwargs}
    return Port(tap=tap, vm="vm1", nic=0, mac="02:00:00:00:00:01", **fields)  # type: ignore[arg-type]


@pytest.fixture
def world() -> Iterator[tuple[str, str, str]]:
    """A node whose uplink up0 reaches a 'wire' namespace (10.66.0.1), and a 'VM'
    (10.66.0.2) behind the veth htvm0 of the node."""
    with namespaces("node", "wire", "vm") as (node, wire, vm):
        veth((node, "up0"), (wire, "eth0"))
        address(wire, "eth0", "10.66.0.1/24")
        veth((node, "htvm0"), (vm, "eth0"))
        address(vm, "eth0", "10.66.0.2/24")
        yield node, wire, vm


# Synchronous tests: pyroute2's IPRoute, which the helpers use, runs its own event loop.
def realise(node: str, plan: SwitchPlan) -> list[str]:
    return asyncio.run(LinuxBridge(DataPlane(node)).realise(plan))


def plan(*ports: Port, uplink: str | None = "up0") -> SwitchPlan:
    return SwitchPlan("sw", "bridge", BRIDGE, uplink, 1500, ports)


def master(node: str, name: str) -> int | None:
    value = links(node)[name].get_attr("IFLA_MASTER")
    return int(value) if value else None


def test_an_untagged_switch_carries_the_vm_to_the_wire_and_realise_is_idempotent(
    world: tuple[str, str, str],
) -> None:
    node, wire, vm = world
    assert realise(node, plan(port("htvm0"))) == []
    table = {row[0]: row for row in link_table(node)}
    bridge = table[BRIDGE]
    assert bridge[4:6] == (1, "heron")
    assert table["up0"][2:] == (bridge[1], 1500, 1, None, 1)  # isolated, not marked: not ours
    assert table["htvm0"][2:] == (bridge[1], 1500, 1, None, 0)
    assert exchange((vm, "10.66.0.2"), (wire, "10.66.0.1"))

    before = link_table(node)
    assert realise(node, plan(port("htvm0"))) == []
    assert link_table(node) == before
    assert asyncio.run(LinuxBridge(DataPlane(node)).owned()) == {BRIDGE}


def test_what_is_undone_by_hand_is_redone_and_ports_follow_the_plan(
    world: tuple[str, str, str],
) -> None:
    node, _, _ = world
    assert realise(node, plan(port("htvm0"))) == []
    bridge = links(node)[BRIDGE]["index"]
    with rtnl(node) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="htvm0")[0], master=0)
    assert master(node, "htvm0") is None
    assert realise(node, plan(port("htvm0"))) == []
    assert master(node, "htvm0") == bridge

    assert realise(node, plan(port("htvm0", link_up=False, mtu=1400))) == []
    tap = links(node)["htvm0"]
    assert (tap["flags"] & 1, tap.get_attr("IFLA_MTU")) == (0, 1400)

    # A VM that left: its tap is released, not deleted; a tap not yet open is no problem.
    assert realise(node, plan(port("htnotyet"))) == []
    assert master(node, "htvm0") is None
    assert links(node)[BRIDGE]["index"] == bridge


def test_a_vlan_port_on_this_kernel_is_a_clear_problem_and_stays_off_the_bridge(
    world: tuple[str, str, str],
) -> None:
    node, _, _ = world
    vlan_port = port("htvm0", mode="access", vlan=100)
    assert realise(node, plan(vlan_port)) == [
        "port htvm0 (VM vm1 NIC 0): this kernel's bridges cannot filter VLANs: "
        "VLAN 100 needs the ovs backend here"
    ]
    assert master(node, "htvm0") is None
    # The same tap attached untagged first, then its network became a VLAN: it is detached.
    assert realise(node, plan(replace(vlan_port, mode="untagged", vlan=None))) == []
    assert master(node, "htvm0") is not None
    assert len(realise(node, plan(vlan_port))) == 1
    assert master(node, "htvm0") is None


def test_the_vlan_messages_reach_this_kernel_which_refuses_them(
    world: tuple[str, str, str],
) -> None:
    """What runs where bridges filter VLANs, run here as far as this kernel allows: the port
    VLAN dump answers (without VLANs) and the ranged message is refused, not mangled."""
    node, _, _ = world
    assert realise(node, plan(port("htvm0"))) == []
    with links_netlink(DataPlane(node)) as ipr:
        current = read_links(ipr)
        assert read_vlans(ipr, current) == {}
        change = AddVlans("htvm0", ((RANGE_BEGIN, 100), (RANGE_END, 199)))
        assert apply(ipr, [change], current) == [
            "adding VLANs to htvm0 failed: Operation not supported"
        ]


def test_a_missing_uplink_is_a_problem_and_removal_releases_the_uplink(
    world: tuple[str, str, str],
) -> None:
    node, _, _ = world
    assert realise(node, plan(port("htvm0"), uplink="eth7")) == ["uplink eth7 does not exist"]
    assert master(node, "htvm0") is not None
    assert master(node, "up0") is None  # the former uplink is released from Heron's bridge
    assert realise(node, plan(port("htvm0"))) == []
    # The host's own bridge holds the switch's uplink: Heron leaves it there and says so.
    with rtnl(node) as ipr:
        ipr.link("add", ifname="br0", kind="bridge")
        ipr.link("set", index=ipr.link_lookup(ifname="up0")[0], master=index(ipr, "br0"))
    assert realise(node, plan(port("htvm0"))) == ["uplink up0 is a port of br0: free it first"]
    assert master(node, "up0") == links(node)["br0"]["index"]
    asyncio.run(LinuxBridge(DataPlane(node)).remove(BRIDGE))
    left = links(node)
    assert BRIDGE not in left
    assert "up0" in left and "htvm0" in left and "br0" in left
    assert asyncio.run(LinuxBridge(DataPlane(node)).owned()) == set()
    asyncio.run(LinuxBridge(DataPlane(node)).remove("br0"))  # not Heron's: left alone
    assert "br0" in links(node)


def test_an_uplink_holding_the_hosts_address_is_refused_and_the_host_still_answers(
    world: tuple[str, str, str],
) -> None:
    """The node's own address on the interface named as uplink (a management NIC chosen by
    mistake): enslaved, the node would stop answering there. Heron leaves it alone."""
    node, wire, _ = world
    address(node, "up0", "10.66.0.9/24")
    problems = realise(node, plan(port("htvm0")))
    assert problems == [
        "uplink up0 holds this host's address 10.66.0.9/24: as a port of the switch it would "
        "stop answering there; move the address off it or name another interface"
    ]
    assert master(node, "up0") is None
    assert exchange((wire, "10.66.0.1"), (node, "10.66.0.9"))
