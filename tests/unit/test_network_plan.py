"""What a node must build for the cluster's switches (network.plan, pure)."""

from heron.models.network import Network, Subnet, Switch
from heron.models.node import Node
from heron.models.vm import VM, NicSpec, VMSpec
from heron.network.links import drift
from heron.network.plan import (
    dhcp_mac,
    link_owners,
    plan_node,
    segment_bridge,
    switch_bridge,
    tap_name,
)

SWITCHES = {
    "dvs": Switch(name="dvs", backend="ovs", mtu=1500, uplinks={"n1": "eth1"}, created_at=0)
}
NETWORKS = {
    "v100": Network(
        name="v100",
        switch="dvs",
        kind="vlan",
        vlan=100,
        subnet=Subnet(cidr="10.1.0.0/24", gateway="10.1.0.1"),
        created_at=0,
    ),
    "t": Network(name="t", switch="dvs", kind="trunk", trunk=["300", "100-200"], created_at=0),
    "ov": Network(
        name="ov",
        switch="dvs",
        kind="vxlan",
        vni=5000,
        subnet=Subnet(cidr="10.2.0.0/24"),
        created_at=0,
    ),
}


def node(name: str, underlay: str | None) -> Node:
    return Node(
        name=name,
        address="127.0.0.1",
        api_url="http://x",
        cpus=1,
        memory_mib=1,
        accelerator="tcg",
        started_at=0,
        underlay=underlay,
    )


NODES = {"n1": node("n1", "10.99.0.1"), "n2": node("n2", "10.99.0.2"), "n3": node("n3", None)}


def vm(vm_id: str, where: str, *nics: tuple[str, str, str | None]) -> VM:
    spec = VMSpec(
        name=f"vm-{vm_id}",
        nics=[NicSpec(network=n, mac=m, address=a) for n, m, a in nics],
    )
    return VM(id=vm_id, spec=spec, node=where, created_at=0)


def test_kernel_names_fit_and_are_distinct() -> None:
    names = {switch_bridge("a" * 63), segment_bridge(2**24 - 1), tap_name("52:54:00:ab:cd:ef")}
    assert all(len(n) <= 15 for n in names) and len(names) == 3
    mac = dhcp_mac("v100")
    assert int(mac.split(":")[0], 16) & 0b11 == 0b10  # locally administered, unicast


def test_a_node_builds_every_switch_but_only_its_own_vms_ports() -> None:
    vms = [
        vm("a", "n1", ("v100", "52:54:00:00:00:01", "10.1.0.5"), ("t", "52:54:00:00:00:02", None)),
        vm("b", "n2", ("v100", "52:54:00:00:00:03", "10.1.0.6")),
        vm("c", "n1", ("user", "52:54:00:00:00:04", None)),
    ]
    plan = plan_node("n1", SWITCHES, NETWORKS, NODES, vms)
    (switch,) = plan.switches
    assert (switch.bridge, switch.uplink, switch.backend) == (switch_bridge("dvs"), "eth1", "ovs")
    ports = {p.tap: p for p in switch.ports}
    access, trunk = ports[tap_name("52:54:00:00:00:01")], ports[tap_name("52:54:00:00:00:02")]
    assert (access.mode, access.vlan, access.address) == ("access", 100, "10.1.0.5")
    assert (trunk.mode, trunk.trunk) == ("trunk", ((100, 200), (300, 300)))
    assert tap_name("52:54:00:00:00:03") not in ports  # n2's
    # The DHCP server of v100 answers only n1's NIC, through an isolated port in VLAN 100.
    (dhcp,) = plan.dhcp
    assert [h.mac for h in dhcp.hosts] == ["52:54:00:00:00:01"]
    assert (dhcp.address, dhcp.router, dhcp.vlan, dhcp.mtu) == (
        "10.1.0.254/24",
        "10.1.0.1",
        100,
        1500,
    )
    service = ports[dhcp.links[0]]
    assert service.isolated and service.vlan == 100 and service.mac == dhcp.mac
    # n2 has no uplink on this switch: it builds the bridge all the same.
    assert plan_node("n2", SWITCHES, NETWORKS, NODES, vms).switches[0].uplink is None


def test_vxlan_segments_reach_every_other_node_with_an_underlay() -> None:
    vms = [vm("a", "n1", ("ov", "52:54:00:00:00:01", "10.2.0.2"))]
    plan = plan_node("n1", SWITCHES, NETWORKS, NODES, vms)
    (segment,) = plan.segments
    assert (segment.vni, segment.local, segment.peers, segment.mtu) == (
        5000,
        "10.99.0.1",
        ("10.99.0.2",),  # n3 has no underlay address; n1 is itself
        1450,
    )
    assert {p.tap for p in segment.ports} == {tap_name("52:54:00:00:00:01"), plan.dhcp[0].links[0]}
    assert plan.dhcp[0].mtu == 1450 and plan.dhcp[0].bridge == segment.bridge
    # A node without VMs on the segment does not build it; one without underlay says why.
    assert plan_node("n2", SWITCHES, NETWORKS, NODES, vms).segments == ()
    moved = [v.model_copy(update={"node": "n3"}) for v in vms]
    lost = plan_node("n3", SWITCHES, NETWORKS, NODES, moved)
    assert lost.segments == () and "no underlay address" in lost.problems[0]


def test_every_link_of_the_plan_belongs_to_its_switch() -> None:
    vms = [vm("a", "n1", ("ov", "52:54:00:00:00:01", None), ("v100", "52:54:00:00:00:02", None))]
    plan = plan_node("n1", SWITCHES, NETWORKS, NODES, vms)
    owners = link_owners(plan)
    segment = plan.segments[0]
    named = [switch_bridge("dvs"), "eth1", segment.bridge, segment.device]
    named += [tap_name("52:54:00:00:00:01"), tap_name("52:54:00:00:00:02")]
    named += [name for server in plan.dhcp for name in server.links]
    assert {name: owners.get(name) for name in named} == dict.fromkeys(named, "dvs")


def test_drift_is_what_a_realise_put_back_not_what_qemu_made() -> None:
    before = {
        "hbdvs": ("bridge", None, True, 1500),
        "htaa": ("tun", None, True, 1500),  # detached by hand
        "eth1": (None, "hbdvs", False, 9000),  # downed, MTU changed by hand
    }
    after = {
        "hbdvs": ("bridge", None, True, 1500),
        "htaa": ("tun", "hbdvs", True, 1500),
        "eth1": (None, "hbdvs", True, 1500),
        "hx1388": ("bridge", None, True, 1450),  # deleted by hand, made again
        "htbb": ("tun", None, True, 1500),  # a VM started meanwhile: QEMU's, not drift
        "hbovs": ("tun", None, True, 1500),  # an OVS userspace bridge's port, deleted by hand
    }
    assert drift(before, after) == {
        "htaa": "htaa attached to hbdvs",
        "eth1": "eth1 brought up, MTU set back to 1500",
        "hx1388": "hx1388 was missing: made again",
        "hbovs": "hbovs was missing: made again",
    }
    assert drift(after, after) == {}


def test_a_nic_on_an_unknown_network_is_a_problem_not_a_crash() -> None:
    plan = plan_node(
        "n1", SWITCHES, NETWORKS, NODES, [vm("a", "n1", ("gone", "52:54:00:00:00:01", None))]
    )
    assert plan.problems == ("VM vm-a NIC 0: no network gone",)
