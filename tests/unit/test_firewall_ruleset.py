"""Security groups as a node's plan has them (network.plan, pure) and the nftables script the
firewall driver writes for them (network.firewall.ruleset, pure)."""

import pytest
from pydantic import ValidationError

from heron.models.network import Network, Rule, SecurityGroup, Subnet, Switch
from heron.models.node import Node
from heron.models.vm import VM, NicSpec, VMSpec
from heron.network.firewall import conntrack_zone, ruleset
from heron.network.plan import (
    ANYWHERE,
    FirewallRule,
    Port,
    PortFirewall,
    filtering,
    group_members,
    plan_node,
    port_firewall,
    switch_bridge,
)

WEB = SecurityGroup(
    name="web",
    rules=[
        Rule(protocol="tcp", ports="80"),
        Rule(protocol="tcp", ports="8000-8080", remote="10.0.0.0/8"),
        Rule(protocol="icmp", remote_group="web"),
    ],
    created_at=0,
)
EGRESS = SecurityGroup(
    name="egress", rules=[Rule(direction="out", protocol="udp", ports="53")], created_at=0
)
GROUPS = {"web": WEB, "egress": EGRESS}


def nic(mac: str, address: str | None, *groups: str, **rates: int) -> NicSpec:
    return NicSpec(network="lan", mac=mac, address=address, security_groups=list(groups), **rates)


def vm(vm_id: str, *nics: NicSpec, node: str = "n1") -> VM:
    return VM(id=vm_id, spec=VMSpec(name=f"vm-{vm_id}", nics=list(nics)), node=node, created_at=0)


def test_rules_are_checked_as_they_are_written() -> None:
    with pytest.raises(ValidationError, match="only for tcp and udp"):
        Rule(protocol="icmp", ports="22")
    with pytest.raises(ValidationError, match="not both"):
        Rule(remote="10.0.0.0/8", remote_group="web")
    with pytest.raises(ValidationError, match="port"):
        Rule(protocol="tcp", ports="2000-1000")
    with pytest.raises(ValidationError, match="IPv4 network"):
        Rule(remote="10.0.0.1/8")
    assert Rule(remote="10.0.0.1").remote == "10.0.0.1/32"


def test_a_nic_without_groups_is_not_filtered() -> None:
    assert port_firewall(nic("52:54:00:00:00:01", "10.1.0.5"), GROUPS, {}) == (None, [])


def test_remote_groups_become_their_members_addresses_in_the_whole_cluster() -> None:
    vms = [
        vm("a", nic("52:54:00:00:00:01", "10.1.0.5", "web")),
        vm("b", nic("52:54:00:00:00:02", "10.1.0.10", "web"), node="n2"),
        vm("c", nic("52:54:00:00:00:03", "10.1.0.9", "egress")),
    ]
    members = group_members(vms)
    assert members == {"web": ("10.1.0.5", "10.1.0.10"), "egress": ("10.1.0.9",)}
    firewall, missing = port_firewall(vms[0].spec.nics[0], GROUPS, members)
    assert missing == []
    assert firewall == PortFirewall(
        "52:54:00:00:00:01",
        "10.1.0.5",
        (
            FirewallRule("in", "tcp", (ANYWHERE,), (80, 80)),
            FirewallRule("in", "tcp", ("10.0.0.0/8",), (8000, 8080)),
            FirewallRule("in", "icmp", ("10.1.0.5/32", "10.1.0.10/32")),
        ),
        deny_out=False,
    )


def test_out_rules_deny_the_rest_and_missing_groups_give_nothing() -> None:
    firewall, missing = port_firewall(
        nic("52:54:00:00:00:01", "10.1.0.5", "egress", "gone"), GROUPS, {}
    )
    assert missing == ["gone"]
    assert firewall is not None
    assert firewall.deny_out
    assert firewall.rules == (FirewallRule("out", "udp", (ANYWHERE,), (53, 53)),)
    # A remote group without members matches nothing: its rule is left out.
    lonely = SecurityGroup(name="l", rules=[Rule(remote_group="l")], created_at=0)
    assert port_firewall(nic("52:54:00:00:00:01", None, "l"), {"l": lonely}, {})[0] == (
        PortFirewall("52:54:00:00:00:01", None, (), False)
    )


def test_the_plan_gives_ports_their_firewall_and_rates() -> None:
    switches = {"sw": Switch(name="sw", backend="bridge", mtu=1500, uplinks={}, created_at=0)}
    networks = {
        "lan": Network(
            name="lan",
            switch="sw",
            kind="untagged",
            subnet=Subnet(cidr="10.1.0.0/24"),
            created_at=0,
        )
    }
    vms = [
        vm("a", nic("52:54:00:00:00:01", "10.1.0.5", "web", ingress_mbps=10, egress_mbps=20)),
        vm("b", nic("52:54:00:00:00:02", "10.1.0.6", "nope")),
    ]
    plan = plan_node("n1", switches, networks, {}, vms, GROUPS)
    a, b = (p for p in plan.switches[0].ports if p.vm)
    assert a.firewall is not None and len(a.firewall.rules) == 3
    assert (a.ingress_mbps, a.egress_mbps) == (10, 20)
    assert b.firewall == PortFirewall("52:54:00:00:00:02", "10.1.0.6", (), False)
    assert plan.problems == ("VM vm-b NIC 0: no security group nope",)
    dhcp = next(p for p in plan.switches[0].ports if not p.vm)
    assert dhcp.firewall is None


def port(tap: str, firewall: PortFirewall | None = None, **kwargs: object) -> Port:
    return Port(
        tap=tap,
        vm="v",
        nic=0,
        mac="52:54:00:00:00:01",
        mode="untagged",
        firewall=firewall,
        **kwargs,  # type: ignore[arg-type]
    )


def test_no_filtered_port_leaves_no_table() -> None:
    assert ruleset([port("ht1"), port("ht2")]) == (
        "add table bridge heron\ndelete table bridge heron\n"
        "add table inet heron\ndelete table inet heron\n"
    )


def test_the_ruleset_replaces_both_tables_in_one_script() -> None:
    guard = PortFirewall(
        "52:54:00:00:00:01",
        "10.1.0.5",
        (
            FirewallRule("in", "tcp", ("10.1.0.0/24",), (7, 7)),
            FirewallRule("in", "icmp", (ANYWHERE,)),
            FirewallRule("in", "udp", ("10.1.0.6/32", "10.1.0.7/32"), (1000, 2000)),
        ),
    )
    text = ruleset([port("ht0"), port("ht1", guard), port("ht2", egress_mbps=8)], ["hx1", "hb2"])
    lines = [line.strip() for line in text.splitlines()]
    assert lines[:4] == [
        "add table bridge heron",
        "delete table bridge heron",
        "add table inet heron",
        "delete table inet heron",
    ]
    # ht0 is unfiltered: never named.
    assert '"ht0"' not in text
    # What ht1's VM sends: its MAC, IPv4 and ARP only, its address (and DHCP discovery).
    for line in [
        'iifname "ht1" jump from_1',
        "ether saddr != 52:54:00:00:00:01 drop",
        "ether type != { ip, arp } drop",
        "arp saddr ether != 52:54:00:00:00:01 drop",
        "arp saddr ip != 10.1.0.5 drop",
        "ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept",
        "ip saddr != 10.1.0.5 drop",
        'iifname "ht1" meta mark set meta mark & 0xffff | 0x10000',
        'oifname "ht1" jump to_1',
        "meta mark set meta mark & 0xffff0000 | 0x1",
        # ht2's VM sends at most 8 Mbit/s, unfiltered otherwise
        'iifname "ht2" jump from_2',
        "limit rate over 1000000 bytes/second burst 100000 bytes drop",
        # the stateful rules of what ht1's VM receives, on Heron's bridges only
        'iifname != { "hb*", "hx*" } accept',
        "meta mark & 0xffff vmap { 0x1 : jump to_1 }",
        "ct state established,related accept",
        "udp sport 67 udp dport 68 accept",
        "ip saddr 10.1.0.0/24 tcp dport 7 accept",
        "meta nfproto ipv4 meta l4proto icmp accept",
        "ip saddr { 10.1.0.6/32, 10.1.0.7/32 } udp dport 1000-2000 accept",
        # each bridge's connections tracked apart, before conntrack sees them
        "type filter hook prerouting priority -300; policy accept;",
        f'iifname "hb2" ct zone set {conntrack_zone("hb2")}',
        f'iifname "hx1" ct zone set {conntrack_zone("hx1")}',
    ]:
        assert line in lines, line
    inbound = lines[lines.index("chain to_1 {", lines.index("table inet heron {")) :]
    assert inbound[inbound.index("}") - 1] == "drop"  # default deny, last
    assert "meta mark & 0xffff0000" not in " ".join(lines[lines.index("table inet heron {") :])


def test_out_rules_return_so_the_receiver_still_decides() -> None:
    guard = PortFirewall(
        "52:54:00:00:00:01",
        None,
        (FirewallRule("out", "any", ("10.9.0.0/16",)),),
        deny_out=True,
    )
    lines = [line.strip() for line in ruleset([port("ht1", guard)]).splitlines()]
    assert "meta mark & 0xffff0000 vmap { 0x10000 : jump from_1 }" in lines
    assert "ct state established,related return" in lines
    assert "ip daddr 10.9.0.0/16 return" in lines
    # without an address: no IPv4 source check, the MAC's still
    assert not any(line.startswith("ip saddr !=") for line in lines)
    assert "ether saddr != 52:54:00:00:00:01 drop" in lines


def test_conntrack_zones_are_stable_and_never_the_default() -> None:
    zones = {conntrack_zone(f"hx{vni:x}") for vni in range(1, 2000)}
    assert 0 not in zones and all(1 <= z <= 0xFFFF for z in zones)
    assert conntrack_zone("hb0123456789") == conntrack_zone("hb0123456789")
    assert len(zones) > 1900  # a collision only shares a zone, as without zones


def test_only_linux_bridges_are_filtered_here_and_ovs_reports_what_it_cannot() -> None:
    switches = {
        "sw": Switch(name="sw", backend="bridge", mtu=1500, uplinks={}, created_at=0),
        "dvs": Switch(name="dvs", backend="ovs", mtu=1500, uplinks={}, created_at=0),
    }
    networks = {
        "lan": Network(name="lan", switch="sw", kind="untagged", created_at=0),
        "v": Network(name="v", switch="dvs", kind="untagged", created_at=0),
        "ov": Network(name="ov", switch="dvs", kind="vxlan", vni=7, created_at=0),
    }
    vms = [
        vm("a", nic("52:54:00:00:00:01", None, "web")),
        vm(
            "b",
            NicSpec(network="v", mac="52:54:00:00:00:02", egress_mbps=5),
            NicSpec(network="v", mac="52:54:00:00:00:03", security_groups=["web"]),
            NicSpec(network="ov", mac="52:54:00:00:00:04", security_groups=["web"]),
        ),
    ]
    nodes = {"n1": node_with_underlay()}
    where = filtering(plan_node("n1", switches, networks, nodes, vms, GROUPS))
    assert [p.tap for p in where.ports["sw"]] == ["ht525400000001"]
    # a VXLAN segment is a Linux bridge whatever its switch's backend: filtered
    assert [p.tap for p in where.ports["dvs"]] == ["ht525400000004"]
    assert set(where.bridges) == {"hx7", switch_bridge("sw")}  # OVS filters its own ports


def node_with_underlay() -> Node:
    return Node(
        name="n1",
        address="127.0.0.1",
        api_url="http://x",
        cpus=1,
        memory_mib=1,
        accelerator="tcg",
        started_at=0,
        underlay="10.99.0.1",
    )
