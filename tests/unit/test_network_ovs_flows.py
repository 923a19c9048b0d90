"""The OpenFlow flows and meters of an Open vSwitch bridge's filtered and limited ports."""

from heron.network.ovs_flows import (
    COOKIE,
    Meter,
    bridge_flows,
    conntrack_zone,
    fingerprint,
    heron_flows,
    in_vlans,
    meter_changes,
    parse_meters,
    parse_no_flood,
    port_masks,
    replacement,
    rule_matches,
)
from heron.network.plan import ANYWHERE, FirewallRule, Port, PortFirewall

MAC = "52:54:00:00:00:01"
C = f"cookie={COOKIE:#x}"


def port(tap: str = "ht1", firewall: PortFirewall | None = None, **kwargs: object) -> Port:
    fields: dict[str, object] = {"mode": "untagged", **kwargs}
    return Port(tap=tap, vm="vm", nic=0, mac=MAC, firewall=firewall, **fields)  # type: ignore[arg-type]


def guard(
    *rules: FirewallRule, address: str | None = "10.0.0.5", deny_out: bool = False
) -> PortFirewall:
    return PortFirewall(MAC, address, rules, deny_out)


def flows_of(*ports: Port, ofports: dict[str, int] | None = None) -> list[str]:
    numbers = {p.tap: i for i, p in enumerate(ports, start=3)} if ofports is None else ofports
    return list(bridge_flows("hbsw", ports, numbers).flows)


def test_port_ranges_become_exact_masks() -> None:
    assert port_masks(22, 22) == ["22"]
    assert port_masks(0, 65535) == ["0x0/0x0"]
    assert port_masks(8000, 8007) == ["0x1f40/0xfff8"]
    covered = set()
    for match in port_masks(1000, 2000):
        value, _, mask = match.partition("/")
        base, bits = int(value, 0), int(mask, 0) if mask else 0xFFFF
        covered |= {p for p in range(65536) if p & bits == base}
    assert covered == set(range(1000, 2001))


def test_rules_become_matches_like_the_nftables_rules() -> None:
    assert rule_matches(FirewallRule("in", "any", (ANYWHERE,))) == ["ip"]
    assert rule_matches(FirewallRule("in", "icmp", ("10.1.0.0/16",))) == ["icmp,nw_src=10.1.0.0/16"]
    assert rule_matches(FirewallRule("out", "udp", ("10.1.0.0/16", "10.2.0.1/32"), (53, 53))) == [
        "udp,nw_dst=10.1.0.0/16,tp_dst=53",
        "udp,nw_dst=10.2.0.1/32,tp_dst=53",
    ]
    # ANYWHERE among the remotes is anywhere
    assert rule_matches(FirewallRule("in", "tcp", ("10.1.0.0/16", ANYWHERE))) == ["tcp"]


def test_a_bridge_without_guarded_ports_only_forwards_normally() -> None:
    normal = [f"{C},table=0,priority=0,actions=NORMAL"]
    assert flows_of(port("ht1"), port("ht2")) == normal
    # a guarded port whose tap is not on the bridge yet: nothing more
    assert flows_of(port("ht1", guard()), ofports={}) == normal
    assert replacement(bridge_flows("hbsw", [], {})).splitlines() == [
        f"delete cookie={COOKIE:#x}/-1",
        f"add {normal[0]}",
    ]


def test_every_flow_is_heron_s_and_the_rest_goes_normal() -> None:
    flows = flows_of(port("ht1", guard()), port("ht2"))
    assert all(f.startswith(C + ",") for f in flows)
    assert f"{C},table=4,priority=0,actions=NORMAL" in flows
    assert f"{C},table=0,priority=10,actions=goto_table:3" in flows
    # the unguarded port's only flows say which VLAN what it sends is in
    assert [f for f in flows if "in_port=4" in f] == [
        f"{C},table=0,priority=100,in_port=4,vlan_tci=0x0000/0x1fff,"
        "actions=load:0x1000->NXM_NX_REG6[],goto_table:3",
        f"{C},table=0,priority=90,in_port=4,actions=goto_table:3",
    ]


def test_a_filtered_port_sends_only_from_its_mac_and_address() -> None:
    flows = flows_of(port("ht1", guard()))
    zone = conntrack_zone("hbsw", 0)
    untagged = "in_port=3,vlan_tci=0x0000/0x1fff"
    assert (
        f"{C},table=0,priority=100,{untagged},actions=load:0x1000->NXM_NX_REG6[],goto_table:1"
    ) in flows
    assert (
        f"{C},table=1,priority=100,{untagged},arp,dl_src={MAC},arp_sha={MAC},arp_spa=10.0.0.5,"
        "actions=goto_table:3"
    ) in flows
    assert (
        f"{C},table=1,priority=100,{untagged},ip,dl_src={MAC},nw_src=10.0.0.5,"
        f"actions=ct(zone={zone},table=2)"
    ) in flows
    # the DHCP client before it has its address
    assert (
        f"{C},table=1,priority=100,{untagged},udp,dl_src={MAC},nw_src=0.0.0.0,tp_src=68,"
        f"tp_dst=67,actions=ct(zone={zone},table=2)"
    ) in flows
    assert f"{C},table=1,priority=0,actions=drop" in flows
    # what it opens is committed for its replies
    assert (
        f"{C},table=3,priority=5,in_port=3,ct_state=+new+trk,ip,"
        f"actions=ct(commit,zone={zone}),goto_table:4"
    ) in flows


def test_without_an_address_only_the_mac_is_checked() -> None:
    flows = flows_of(port("ht1", guard(address=None)))
    spoof = [f for f in flows if ",table=1,priority=100," in f]
    assert not any("nw_src" in f or "arp_spa" in f for f in spoof)
    assert any(f",ip,dl_src={MAC},actions=ct(" in f for f in spoof)


def test_what_a_filtered_port_receives() -> None:
    web = FirewallRule("in", "tcp", ("10.0.0.0/24",), (80, 80))
    flows = flows_of(port("ht1", guard(web), mode="access", vlan=100))
    zone = conntrack_zone("hbsw", 100)
    deliver = "load:3->NXM_NX_REG7[],goto_table:6"
    # for its MAC in its VLAN, whether it came tagged (from the uplink) or not
    for dest in (f"dl_dst={MAC},reg6=0x1064",):
        assert f"{C},table=3,priority=100,{dest},arp,actions={deliver}" in flows
        assert (
            f"{C},table=3,priority=100,{dest},ct_state=-trk,ip,actions=ct(zone={zone},table=3)"
        ) in flows
        assert f"{C},table=3,priority=90,{dest},ct_state=+est+trk,ip,actions={deliver}" in flows
        assert f"{C},table=3,priority=85,{dest},ct_state=+inv+trk,ip,actions=drop" in flows
        assert f"{C},table=3,priority=80,{dest},udp,tp_src=67,tp_dst=68,actions={deliver}" in flows
        assert (
            f"{C},table=3,priority=80,{dest},tcp,nw_src=10.0.0.0/24,tp_dst=80,"
            f"actions=ct(commit,zone={zone}),{deliver}"
        ) in flows
    assert f"{C},table=3,priority=10,dl_dst={MAC},actions=drop" in flows
    # no out rules: no FROM_PORT check of its own
    assert not any(",table=2,priority=100," in f for f in flows)


def test_deny_out_lets_out_only_replies_dhcp_and_the_out_rules() -> None:
    dns = FirewallRule("out", "udp", ("10.0.0.53/32",), (53, 53))
    flows = flows_of(port("ht1", guard(dns, deny_out=True)))
    mine = [f for f in flows if ",table=2," in f and "in_port=3" in f]
    assert mine == [
        f"{C},table=2,priority=100,in_port=3,ct_state=+est+trk,ip,actions=goto_table:3",
        f"{C},table=2,priority=100,in_port=3,ct_state=+rel+trk,ip,actions=goto_table:3",
        f"{C},table=2,priority=100,in_port=3,udp,tp_src=68,tp_dst=67,actions=goto_table:3",
        f"{C},table=2,priority=100,in_port=3,udp,nw_dst=10.0.0.53/32,tp_dst=53,actions=goto_table:3",
        f"{C},table=2,priority=50,in_port=3,actions=drop",
    ]


def test_rate_limits_are_meters_named_after_the_port() -> None:
    limited = bridge_flows(
        "hbsw",
        [port("ht1", egress_mbps=10), port("ht2", guard(), ingress_mbps=20), port("ht3")],
        {"ht1": 3, "ht2": 4, "ht3": 5},
    )
    assert limited.meters == (Meter(7, 10_000, 1000), Meter(8, 20_000, 2000))
    assert (
        f"{C},table=0,priority=100,in_port=3,vlan_tci=0x0000/0x1fff,"
        "actions=meter:7,load:0x1000->NXM_NX_REG6[],goto_table:3"
    ) in limited.flows
    # what the filtered port receives, through its meter, unicast or flooded
    assert f"{C},table=6,priority=90,reg7=4,actions=meter:8,output:4" in limited.flows
    received = bridge_flows("hbsw", [port("ht1", ingress_mbps=20)], {"ht1": 3})
    assert f"{C},table=4,priority=100,dl_dst={MAC},actions=meter:6,NORMAL" in received.flows
    # a small rate still gets a burst TCP can live with (64 KiB, as nftables polices)
    small = bridge_flows("hbsw", [port("ht1", egress_mbps=1)], {"ht1": 3})
    assert small.meters == (Meter(7, 1000, 524),)
    assert small.meters[0].spec() == "meter=7,kbps,burst,band=type=drop,rate=1000,burst_size=524"


def test_meters_are_read_back_and_changed_where_they_differ() -> None:
    dump = (
        "OFPST_METER_CONFIG reply (OF1.4) (xid=0x2):\n"
        "meter=7 kbps burst bands=\ntype=drop rate=10000 burst_size=1000\n"
        "meter=9 kbps burst bands=\ntype=drop rate=5000 burst_size=524\n"
    )
    present = parse_meters(dump)
    assert present == {7: Meter(7, 10_000, 1000), 9: Meter(9, 5000, 524)}
    add, modify, delete = meter_changes([Meter(7, 20_000, 2000), Meter(8, 1000, 524)], present)
    assert (add, modify, delete) == ([Meter(8, 1000, 524)], [Meter(7, 20_000, 2000)], [9])
    assert meter_changes(present.values(), present) == ([], [], [])


def test_the_replacement_is_one_bundle_of_heron_s_cookie() -> None:
    wanted = bridge_flows("hbsw", [port("ht1", guard())], {"ht1": 3})
    lines = replacement(wanted).splitlines()
    assert lines[0] == f"delete cookie={COOKIE:#x}/-1"
    assert lines[1:] == [f"add {f}" for f in wanted.flows]


def test_only_heron_s_flows_are_read_back_sorted() -> None:
    dump = (
        f" {C}, table=1, priority=0 actions=drop\n"
        " priority=0 actions=NORMAL\n"
        " cookie=0x5, priority=7 actions=drop\n"
        f" {C}, priority=10 actions=goto_table:3\n"
    )
    assert heron_flows(dump) == [
        f"{C}, priority=10 actions=goto_table:3",
        f"{C}, table=1, priority=0 actions=drop",
    ]


def test_zones_differ_by_vlan_and_are_stable() -> None:
    assert conntrack_zone("hbsw", 100) == conntrack_zone("hbsw", 100)
    zones = {conntrack_zone("hbsw", vlan) for vlan in range(4095)}
    assert all(1 <= z <= 0xFFFF for z in zones) and len(zones) > 3900


def test_the_fingerprint_changes_with_what_is_wanted_or_what_the_switch_shows() -> None:
    wanted = bridge_flows("hbsw", [port("ht1", guard(), egress_mbps=5)], {"ht1": 3})
    shown = [f"{C}, priority=10 actions=goto_table:3"]
    meters = {m.id: m for m in wanted.meters}
    same = fingerprint(wanted, shown, meters)
    assert same == fingerprint(wanted, list(shown), dict(meters))
    other = bridge_flows("hbsw", [port("ht1", guard(), egress_mbps=6)], {"ht1": 3})
    assert fingerprint(other, shown, meters) != same
    assert fingerprint(wanted, [], meters) != same  # the flows lost
    assert fingerprint(wanted, shown, {}) != same  # a meter lost
    assert fingerprint(wanted, shown, meters, {3}) != same  # NO_FLOOD set...
    with_it = fingerprint(wanted, shown, meters, {3})
    assert fingerprint(wanted, shown, meters, set()) != with_it  # ...and lost (a restart)


def test_filtered_ports_leave_floods_to_their_own_flows() -> None:
    a = port("ht1", guard(FirewallRule("in", "udp", (ANYWHERE,), (5353, 5353))))
    a = Port(**{**a.__dict__, "mode": "access", "vlan": 100})
    other = port("ht2", mode="access", vlan=100)
    wanted = bridge_flows("hbsw", [a, other], {"ht1": 3, "ht2": 4, "eth1": 1}, "eth1")
    assert (wanted.no_flood, wanted.flood) == ((3,), (1, 4))
    flows = wanted.flows
    # every flood gets a copy for each filtered port, then NORMAL floods to the others
    assert (
        f"{C},table=4,priority=50,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00,"
        "actions=clone(load:3->NXM_NX_REG7[],resubmit(,5)),NORMAL"
    ) in flows
    # which it may receive in its VLAN: ARP, DHCP server replies, what its rules allow
    mine = [f for f in flows if ",table=5," in f]
    assert mine == [
        f"{C},table=5,priority=100,reg7=3,reg6=0x1064,arp,actions=goto_table:6",
        f"{C},table=5,priority=100,reg7=3,reg6=0x1064,udp,tp_src=67,tp_dst=68,actions=goto_table:6",
        f"{C},table=5,priority=100,reg7=3,reg6=0x1064,udp,tp_dst=5353,actions=goto_table:6",
        f"{C},table=5,priority=0,actions=drop",
    ]
    # delivered untagged to the access port
    tagged = "vlan_tci=0x1000/0x1000"
    assert f"{C},table=6,priority=100,reg7=3,{tagged},actions=strip_vlan,output:3" in flows
    assert f"{C},table=6,priority=90,reg7=3,actions=output:3" in flows
    # the VLAN of what comes in: the access port's own, the uplink's tag if it carries it
    assert (
        f"{C},table=0,priority=100,in_port=4,vlan_tci=0x0000/0x1fff,"
        "actions=load:0x1064->NXM_NX_REG6[],goto_table:3"
    ) in flows
    assert (
        f"{C},table=0,priority=100,in_port=1,dl_vlan=100,"
        "actions=move:NXM_OF_VLAN_TCI[0..12]->NXM_NX_REG6[0..12],goto_table:3"
    ) in flows
    assert f"{C},table=0,priority=90,in_port=1,actions=goto_table:3" in flows
    # no filtered port any more: every port floods again
    assert bridge_flows("hbsw", [other], {"ht2": 4, "eth1": 1}, "eth1").flood == (1, 4)


def test_a_filtered_trunk_port_gets_the_frames_of_its_vlans_tagged() -> None:
    trunk = Port(**{**port("ht1", guard()).__dict__, "mode": "trunk", "trunk": ((100, 103),)})
    access = port("ht2", mode="access", vlan=101)
    flows = bridge_flows("hbsw", [trunk, access], {"ht1": 3, "ht2": 4, "eth1": 1}, "eth1").flows
    assert f"{C},table=5,priority=100,reg7=3,reg6=0x1064/0x1ffc,arp,actions=goto_table:6" in flows
    assert (
        f"{C},table=6,priority=90,reg7=3,actions=push_vlan:0x8100,"
        "move:NXM_NX_REG6[0..11]->NXM_OF_VLAN_TCI[0..11],output:3"
    ) in flows
    assert f"{C},table=6,priority=100,reg7=3,vlan_tci=0x1000/0x1000,actions=output:3" in flows
    # what it sends is in the VLAN of its tag, if it carries it
    assert (
        f"{C},table=0,priority=100,in_port=3,vlan_tci=0x1064/0x1ffc,"
        "actions=move:NXM_OF_VLAN_TCI[0..12]->NXM_NX_REG6[0..12],goto_table:1"
    ) in flows


def test_vlan_matches_cover_exactly_the_ranges() -> None:
    assert in_vlans([(0, 0)]) == ["reg6=0x1000"]
    covered = set()
    for match in in_vlans([(5, 300), (4000, 4094)]):
        value, _, mask = match.removeprefix("reg6=").partition("/")
        base, bits = int(value, 0), int(mask, 0) if mask else 0x1FFF
        covered |= {v for v in range(4096) if (0x1000 | v) & bits == base}
    assert covered == set(range(5, 301)) | set(range(4000, 4095))


def test_no_flood_ports_are_read_back() -> None:
    dump = (
        "OFPST_PORT_DESC reply (xid=0x2):\n"
        " 1(htofb): addr:26:42:55:4b:49:ca\n     config:     0\n     state:      LIVE\n"
        " 2(htofa): addr:26:70:1f:51:0b:bf\n     config:     NO_FLOOD\n"
        " LOCAL(hbovsfwtest): addr:22:bb:eb:b1:51:40\n     config:     PORT_DOWN NO_FLOOD\n"
    )
    assert parse_no_flood(dump) == {2}
