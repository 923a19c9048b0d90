"""The Linux bridge driver's pure part: which ports a switch wants, the changes that get its
bridge there, and the AF_BRIDGE netlink messages that carry the VLANs (this kernel cannot
filter VLANs, so the messages are checked here, byte for byte through pyroute2's decoder)."""

from pyroute2 import IPBatch
from pyroute2.config import AF_BRIDGE
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_SETLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from heron.network.bridgeports import (
    NATIVE,
    PVID,
    RANGE_BEGIN,
    RANGE_END,
    UNTAGGED,
    AddVlans,
    DelVlans,
    Enslave,
    LinkState,
    Release,
    SetIsolated,
    SetMtu,
    SetUp,
    WantedPort,
    parse_vlan_entries,
    port_changes,
    switch_ports,
    vlan_entries,
)
from heron.network.links import send_vlans
from heron.network.plan import Port, SwitchPlan

BRIDGE = LinkState("hbsw", 10, "bridge", up=True, alias="heron")


def port(tap: str, mode: str = "untagged", **kwargs: object) -> Port:
    return Port(tap=tap, vm="vm1", nic=0, mac="02:00:00:00:00:01", mode=mode, **kwargs)  # type: ignore[arg-type]


def present(*names: str) -> dict[str, LinkState]:
    return {name: LinkState(name, 100 + i) for i, name in enumerate(names)}


def plan(*ports: Port, uplink: str | None = "eth1") -> SwitchPlan:
    return SwitchPlan("sw", "bridge", "hbsw", uplink, 9000, tuple(ports))


def sent(command: str, index: int, entries: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    """The message `send_vlans` puts on the wire, compiled by pyroute2 (not sent) and decoded:
    its type, family, port and (flags, vid) entries."""
    batch = IPBatch()
    send_vlans(batch, command, index, entries)
    message = ifinfmsg(batch.batch)
    message.decode()
    infos = message.get_attr("IFLA_AF_SPEC").get_attrs("IFLA_BRIDGE_VLAN_INFO")
    batch.close()
    return (
        message["header"]["type"],
        message["family"],
        message["index"],
        *[(i["flags"], i["vid"]) for i in infos],
    )


def test_access_trunk_and_untagged_ports_and_the_uplink_carrying_their_vlans() -> None:
    wanted = switch_ports(
        plan(
            port("ht1", "access", vlan=100),
            port("ht2", "trunk", trunk=((200, 299), (400, 400))),
            port("ht3"),
            port("ht4", "access", vlan=7, isolated=True, mtu=1400),
        ),
        vlan_filtering=True,
        links=present("eth1", "ht1", "ht2", "ht3", "ht4"),
    )
    assert wanted.problems == ()
    by_name = {p.name: p for p in wanted.ports}
    assert by_name["ht1"].vlans == {100: NATIVE}
    assert by_name["ht2"].vlans == {**{v: 0 for v in range(200, 300)}, 400: 0}
    assert by_name["ht3"].vlans == {1: NATIVE}
    assert by_name["ht4"] == WantedPort("ht4", 1400, True, True, {7: NATIVE})
    uplink = wanted.ports[0]
    assert (uplink.name, uplink.mtu, uplink.isolated) == ("eth1", 9000, True)
    assert uplink.vlans == {1: NATIVE, 7: 0, 100: 0, **{v: 0 for v in range(200, 300)}, 400: 0}


def test_without_vlan_filtering_vlan_ports_are_problems_and_left_out() -> None:
    wanted = switch_ports(
        plan(port("ht1", "access", vlan=100), port("ht2", "trunk", trunk=((5, 9),)), port("ht3")),
        vlan_filtering=False,
        links=present("eth1", "ht1", "ht2", "ht3"),
    )
    assert [p.name for p in wanted.ports] == ["eth1", "ht3"]
    assert all(p.vlans is None for p in wanted.ports)
    assert wanted.problems == (
        "port ht1 (VM vm1 NIC 0): this kernel's bridges cannot filter VLANs: "
        "VLAN 100 needs the ovs backend here",
        "port ht2 (VM vm1 NIC 0): this kernel's bridges cannot filter VLANs: "
        "VLANs 5-9 need the ovs backend here",
    )


def test_taps_not_yet_open_are_skipped_and_a_missing_uplink_is_a_problem() -> None:
    wanted = switch_ports(plan(port("ht1")), vlan_filtering=False, links=present())
    assert wanted.ports == ()
    assert wanted.problems == ("uplink eth1 does not exist",)


def test_an_uplink_held_by_another_master_is_left_alone_with_a_problem() -> None:
    links = {
        "hbsw": BRIDGE,
        "br0": LinkState("br0", 3, "bridge"),
        "eth1": LinkState("eth1", 2, None, master=3),
    }
    wanted = switch_ports(plan(), vlan_filtering=False, links=links)
    assert wanted.ports == ()
    assert wanted.problems == ("uplink eth1 is a port of br0: free it first",)
    on_ours = {**links, "eth1": LinkState("eth1", 2, None, master=BRIDGE.index)}
    assert [p.name for p in switch_ports(plan(), False, on_ours).ports] == ["eth1"]


def test_an_uplink_holding_the_hosts_address_is_not_taken() -> None:
    """Enslaved, it would stop answering for the address: the node could cut itself off."""
    eth1 = LinkState("eth1", 2, None, addresses=("192.0.2.7/24", "2001:db8::7/64"))
    wanted = switch_ports(plan(), vlan_filtering=False, links={"hbsw": BRIDGE, "eth1": eth1})
    assert wanted.ports == ()
    assert wanted.problems == (
        "uplink eth1 holds this host's address 192.0.2.7/24, 2001:db8::7/64: as a port of the "
        "switch it would stop answering there; move the address off it or name another "
        "interface",
    )
    # Already a port of ours (an administrator's doing): left as it is, not torn out.
    ours = LinkState("eth1", 2, None, master=BRIDGE.index, addresses=eth1.addresses)
    assert [p.name for p in switch_ports(plan(), False, {"hbsw": BRIDGE, "eth1": ours}).ports] == [
        "eth1"
    ]


def test_vlan_entries_pack_runs_into_ranges_and_keep_the_pvid_alone() -> None:
    vlans = {1: NATIVE, 2: 0, 3: 0, 4: 0, 6: 0, 8: UNTAGGED, 9: UNTAGGED}
    assert vlan_entries(vlans) == (
        (NATIVE, 1),
        (RANGE_BEGIN, 2),
        (RANGE_END, 4),
        (0, 6),
        (UNTAGGED | RANGE_BEGIN, 8),
        (UNTAGGED | RANGE_END, 9),
    )
    assert parse_vlan_entries(vlan_entries(vlans)) == vlans


def test_a_full_trunk_is_one_message_of_two_entries() -> None:
    entries = vlan_entries(dict.fromkeys(range(1, 4095), 0))
    assert sent("add", 42, entries) == (
        RTM_SETLINK,
        AF_BRIDGE,
        42,
        (RANGE_BEGIN, 1),
        (RANGE_END, 4094),
    )


def test_new_access_port_is_enslaved_flagged_moved_off_vlan_1_then_brought_up() -> None:
    links = {"hbsw": BRIDGE, "ht1": LinkState("ht1", 11, "tun", mtu=1500)}
    wanted = [WantedPort("ht1", 9000, isolated=True, vlans={100: NATIVE})]
    changes = port_changes(BRIDGE, wanted, links, vlans={})
    assert changes == [
        Enslave("ht1", "hbsw"),
        SetMtu("ht1", 9000),
        SetIsolated("ht1", True),
        AddVlans("ht1", ((NATIVE, 100),)),
        DelVlans("ht1", ((0, 1),)),
        SetUp("ht1", True),
    ]
    add, delete = changes[3], changes[4]
    assert isinstance(add, AddVlans) and isinstance(delete, DelVlans)
    assert sent("add", 11, add.entries) == (RTM_SETLINK, AF_BRIDGE, 11, (PVID | UNTAGGED, 100))
    assert sent("del", 11, delete.entries) == (RTM_DELLINK, AF_BRIDGE, 11, (0, 1))


def test_a_port_that_matches_gets_no_change() -> None:
    links = {
        "hbsw": BRIDGE,
        "ht1": LinkState("ht1", 11, "tun", master=10, mtu=1500, up=True),
        "eth1": LinkState("eth1", 2, None, master=10, mtu=1500, up=True, isolated=True),
    }
    wanted = [
        WantedPort("eth1", 1500, isolated=True, vlans={1: NATIVE, 100: 0}),
        WantedPort("ht1", 1500, vlans={100: NATIVE}),
    ]
    vlans = {"eth1": {1: NATIVE, 100: 0}, "ht1": {100: NATIVE}}
    assert port_changes(BRIDGE, wanted, links, vlans) == []


def test_trunk_changes_send_only_the_difference() -> None:
    links = {"hbsw": BRIDGE, "ht1": LinkState("ht1", 11, "tun", master=10, up=True)}
    have = {v: 0 for v in range(100, 200)}
    want = {v: 0 for v in range(150, 250)}
    changes = port_changes(BRIDGE, [WantedPort("ht1", 1500, vlans=want)], links, {"ht1": have})
    assert changes == [
        AddVlans("ht1", ((RANGE_BEGIN, 200), (RANGE_END, 249))),
        DelVlans("ht1", ((RANGE_BEGIN, 100), (RANGE_END, 149))),
    ]


def test_ports_that_left_the_plan_are_released_and_link_state_follows_the_nic() -> None:
    links = {
        "hbsw": BRIDGE,
        "ht1": LinkState("ht1", 11, "tun", master=10, up=True),
        "ht2": LinkState("ht2", 12, "tun", master=10, up=True),
        "eth0": LinkState("eth0", 2, None, up=True),
    }
    changes = port_changes(BRIDGE, [WantedPort("ht1", 1500, up=False)], links)
    assert changes == [Release("ht2"), SetUp("ht1", False)]
