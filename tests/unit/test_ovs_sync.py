"""The Open vSwitch driver's pure parts: reading ovs-vsctl's JSON, and the commands that make
a bridge match its plan."""

import json
from dataclasses import replace

from heron.network import ovsdb
from heron.network.ovs_sync import (
    NO_VLAN,
    OFFLOAD_KEY,
    Link,
    PortConfig,
    plan_sync,
    port_config,
    transaction,
    uplink_config,
    veth_fixes,
)
from heron.network.plan import Port, SwitchPlan

OWNED = {"heron-owner": "true"}
OWNED_MAP = ["map", [["heron-owner", "true"]]]


def port(tap: str, mode: str = "access", vlan: int | None = 100, **kw: object) -> Port:
    return Port(tap=tap, vm="vm", nic=0, mac="02:00:00:00:00:01", mode=mode, vlan=vlan, **kw)  # type: ignore[arg-type]


VM = port("htvm0")
DHCP = port("hdnet", isolated=True)
TRUNK = port("httrunk", mode="trunk", vlan=None, trunk=((10, 12), (20, 20)))
PLAN = SwitchPlan("sw", "ovs", "hbsw", "eth1", 9000, (VM, DHCP, TRUNK))
LINKS = {
    name: Link(name, index, kind, up=True)
    for index, (name, kind) in enumerate(
        [("eth1", ""), ("htvm0", "tun"), ("hdnet", "veth"), ("httrunk", "tun")], start=2
    )
}


def in_sync() -> ovsdb.State:
    """The state PLAN leaves behind."""
    uplink = uplink_config(PLAN.ports)
    ports = {
        "hbsw": ovsdb.Port("hbsw", "hbsw", interfaces=("hbsw",)),
        "eth1": ovsdb.Port("eth1", "hbsw", None, uplink.trunks, "trunk", True, OWNED, ("eth1",)),
        "htvm0": ovsdb.Port("htvm0", "hbsw", 100, (), "access", False, OWNED, ("htvm0",)),
        "hdnet": ovsdb.Port("hdnet", "hbsw", 100, (), "access", True, OWNED, ("hdnet",)),
        "httrunk": ovsdb.Port(
            "httrunk", "hbsw", None, (10, 11, 12, 20), "trunk", False, OWNED, ("httrunk",)
        ),
    }
    interfaces = {
        "hbsw": ovsdb.Interface("hbsw", "internal", 1, 9000),
        "eth1": ovsdb.Interface("eth1", "", 2, 9000),
        "htvm0": ovsdb.Interface("htvm0", "", 3, 1500),
        "hdnet": ovsdb.Interface("hdnet", "", 4, 1500, {OFFLOAD_KEY: "4"}),
        "httrunk": ovsdb.Interface("httrunk", "", 5, 1500),
    }
    bridge = ovsdb.Bridge("hbsw", "netdev", OWNED, tuple(sorted(ports)), "secure")
    return ovsdb.State({"hbsw": bridge}, ports, interfaces)


def with_port(state: ovsdb.State, port: ovsdb.Port) -> ovsdb.State:
    bridge = state.bridges["hbsw"]
    names = tuple(sorted({*bridge.ports, port.name}))
    bridges = {**state.bridges, "hbsw": ovsdb.Bridge("hbsw", "netdev", OWNED, names, "secure")}
    return ovsdb.State(bridges, {**state.ports, port.name: port}, state.interfaces)


def test_port_configs() -> None:
    assert port_config(VM) == PortConfig(tag=100, vlan_mode="access")
    assert port_config(DHCP) == PortConfig(tag=100, vlan_mode="access", protected=True)
    assert port_config(TRUNK) == PortConfig(trunks=(10, 11, 12, 20), vlan_mode="trunk")
    # Untagged is VLAN 0, not "no tag": a port without tag or trunks trunks every VLAN.
    untagged = port("htu", mode="untagged", vlan=None)
    assert port_config(untagged) == PortConfig(tag=0, vlan_mode="access")


def test_the_uplink_trunks_exactly_the_vlans_in_use() -> None:
    untagged = port("htu", mode="untagged", vlan=None)
    assert uplink_config([VM, TRUNK, untagged]) == PortConfig(
        trunks=(0, 10, 11, 12, 20, 100), vlan_mode="trunk", protected=True
    )
    # No VLAN at all: a trunk of the reserved VLAN, since an empty one would carry all.
    assert uplink_config([]).trunks == (NO_VLAN,)


def test_a_new_bridge_in_one_transaction() -> None:
    sync = plan_sync(PLAN, ovsdb.State(), LINKS, "netdev")
    assert sync.problems == [] and sync.links_up == [] and sync.links_down == []
    assert sync.commands == [
        ["--may-exist", "add-br", "hbsw"],
        [
            "set",
            "Bridge",
            "hbsw",
            "datapath_type=netdev",
            "fail_mode=secure",
            "external_ids:heron-owner=true",
        ],
        ["set", "Interface", "hbsw", "mtu_request=9000"],
        [
            "--may-exist",
            "add-port",
            "hbsw",
            "htvm0",
            "tag=100",
            "trunks=[]",
            "vlan_mode=access",
            "protected=false",
            "external_ids:heron-owner=true",
        ],
        ["set", "Interface", "htvm0", "mtu_request=1500"],
        [
            "--may-exist",
            "add-port",
            "hbsw",
            "hdnet",
            "tag=100",
            "trunks=[]",
            "vlan_mode=access",
            "protected=true",
            "external_ids:heron-owner=true",
        ],
        ["set", "Interface", "hdnet", "mtu_request=1500"],
        [
            "--may-exist",
            "add-port",
            "hbsw",
            "httrunk",
            "tag=[]",
            "trunks=[10,11,12,20]",
            "vlan_mode=trunk",
            "protected=false",
            "external_ids:heron-owner=true",
        ],
        ["set", "Interface", "httrunk", "mtu_request=1500"],
        [
            "--may-exist",
            "add-port",
            "hbsw",
            "eth1",
            "tag=[]",
            "trunks=[10,11,12,20,100]",
            "vlan_mode=trunk",
            "protected=true",
            "external_ids:heron-owner=true",
        ],
        ["set", "Interface", "eth1", "mtu_request=9000"],
    ]
    assert transaction([["add-br", "b"], ["set", "Bridge", "b", "x=1"]]) == [
        "--",
        "add-br",
        "b",
        "--",
        "set",
        "Bridge",
        "b",
        "x=1",
    ]


def test_a_bridge_in_sync_gets_no_command() -> None:
    sync = plan_sync(PLAN, in_sync(), LINKS, "netdev")
    assert (sync.commands, sync.links_up, sync.links_down, sync.problems) == ([], [], [], [])


def test_only_what_differs_is_changed() -> None:
    state = with_port(
        in_sync(), ovsdb.Port("htvm0", "hbsw", 200, (), "access", False, OWNED, ("htvm0",))
    )
    assert plan_sync(PLAN, state, LINKS, "netdev").commands == [["set", "Port", "htvm0", "tag=100"]]
    system = plan_sync(PLAN, in_sync(), LINKS, "system").commands
    assert system == [["set", "Bridge", "hbsw", "datapath_type=system"]]
    # A bridge made before Heron filtered on OVS becomes secure (its flows are Heron's).
    bridge = replace(in_sync().bridges["hbsw"], fail_mode=None)
    standalone = replace(in_sync(), bridges={"hbsw": bridge})
    commands = plan_sync(PLAN, standalone, LINKS, "netdev").commands
    assert commands == [["set", "Bridge", "hbsw", "fail_mode=secure"]]


def test_ports_heron_owns_that_left_the_plan_are_removed() -> None:
    state = with_port(in_sync(), ovsdb.Port("htgone", "hbsw", 100, external_ids=OWNED))
    state = with_port(state, ovsdb.Port("operators", "hbsw", 100))
    smaller = SwitchPlan("sw", "ovs", "hbsw", "eth1", 9000, (VM, DHCP))
    commands = plan_sync(smaller, state, LINKS, "netdev").commands
    assert ["del-port", "hbsw", "htgone"] in commands
    assert ["del-port", "hbsw", "httrunk"] in commands
    assert not any("operators" in c for c in commands)  # not marked: not Heron's
    assert ["set", "Port", "eth1", "trunks=[100]"] in commands  # the trunk's VLANs went too


def test_a_tap_not_made_yet_is_skipped_without_a_problem() -> None:
    links = {k: v for k, v in LINKS.items() if k != "htvm0"}
    sync = plan_sync(PLAN, ovsdb.State(), links, "netdev")
    assert sync.problems == []
    assert not any("htvm0" in c for c in sync.commands)
    # One that was attached before its VM stopped stays a port, ready for the next start.
    assert plan_sync(PLAN, in_sync(), links, "netdev").commands == []


def test_the_uplinks_problems() -> None:
    links = {k: v for k, v in LINKS.items() if k != "eth1"}
    sync = plan_sync(PLAN, ovsdb.State(), links, "netdev")
    assert sync.problems == ["uplink eth1 does not exist"]
    assert not any("eth1" in c for c in sync.commands)

    elsewhere = ovsdb.State(
        {"hbother": ovsdb.Bridge("hbother", "netdev", OWNED, ("eth1",))},
        {"eth1": ovsdb.Port("eth1", "hbother", external_ids=OWNED)},
    )
    sync = plan_sync(PLAN, elsewhere, LINKS, "netdev")
    assert sync.problems == ["uplink eth1 is already a port of bridge hbother"]
    assert not any("eth1" in c for c in sync.commands)

    # The host's own address on it: taking it could cut the node off.
    addressed = {**LINKS, "eth1": replace(LINKS["eth1"], addresses=("192.0.2.7/24",))}
    sync = plan_sync(PLAN, ovsdb.State(), addressed, "netdev")
    assert sync.problems[0].startswith("uplink eth1 holds this host's address 192.0.2.7/24")
    assert not any("eth1" in c for c in sync.commands)


def test_a_nic_moved_from_another_switch() -> None:
    state = ovsdb.State(
        {"hbother": ovsdb.Bridge("hbother", "netdev", OWNED, ("htvm0",))},
        {"htvm0": ovsdb.Port("htvm0", "hbother", 5, (), "access", False, OWNED)},
    )
    commands = plan_sync(PLAN, state, LINKS, "netdev").commands
    moved = commands.index(["--if-exists", "del-port", "htvm0"])
    assert commands[moved + 1][:4] == ["--may-exist", "add-port", "hbsw", "htvm0"]


def test_link_state() -> None:
    links = {**LINKS, "eth1": Link("eth1", 2, up=False)}
    plan = SwitchPlan("sw", "ovs", "hbsw", "eth1", 9000, (port("htvm0", link_up=False), DHCP))
    sync = plan_sync(plan, in_sync(), links, "netdev")
    assert sync.links_down == ["htvm0"] and sync.links_up == ["eth1"]


def test_checksum_offload_of_veth_peers_in_the_userspace_datapath() -> None:
    assert veth_fixes(PLAN, ovsdb.State(), LINKS, "netdev") == ["hdnet"]
    assert veth_fixes(PLAN, in_sync(), LINKS, "netdev") == []  # marked with its ifindex
    remade = {**LINKS, "hdnet": Link("hdnet", 40, "veth", True)}
    assert veth_fixes(PLAN, in_sync(), remade, "netdev") == ["hdnet"]
    assert veth_fixes(PLAN, ovsdb.State(), LINKS, "system") == []
    devcluster = {**LINKS, "eth1": Link("eth1", 2, "veth", True)}  # an uplink into a fabric
    assert veth_fixes(PLAN, ovsdb.State(), devcluster, "netdev") == ["hdnet", "eth1"]
    commands = plan_sync(PLAN, in_sync(), remade, "netdev", {"hdnet": 40}).commands
    assert commands == [["set", "Interface", "hdnet", f"external_ids:{OFFLOAD_KEY}=40"]]


def test_parse_ovs_vsctl_json() -> None:
    bridge = {
        "headings": ["_uuid", "name", "ports", "datapath_type", "external_ids"],
        "data": [
            [
                ["uuid", "b1"],
                "hbsw",
                ["set", [["uuid", "p1"], ["uuid", "p2"]]],
                "netdev",
                ["map", [["heron-owner", "true"]]],
            ],
            [["uuid", "b2"], "br0", ["uuid", "p3"], "", ["map", []]],
        ],
    }
    ports = {
        "headings": [
            "_uuid",
            "name",
            "interfaces",
            "tag",
            "trunks",
            "vlan_mode",
            "protected",
            "external_ids",
        ],
        "data": [
            [["uuid", "p1"], "htvm0", ["uuid", "i1"], 100, ["set", []], "access", False, OWNED_MAP],
            [
                ["uuid", "p2"],
                "eth1",
                ["uuid", "i2"],
                ["set", []],
                ["set", [200, 100]],
                "trunk",
                True,
                OWNED_MAP,
            ],
            [
                ["uuid", "p3"],
                "other",
                ["uuid", "i3"],
                ["set", []],
                7,
                ["set", []],
                False,
                ["map", []],
            ],
        ],
    }
    interfaces = {
        "headings": ["_uuid", "name", "type", "ifindex", "ofport", "mtu_request", "external_ids"],
        "data": [
            [["uuid", "i1"], "htvm0", "", 7, 3, 1500, ["map", [[OFFLOAD_KEY, "7"]]]],
            [["uuid", "i2"], "eth1", "", ["set", []], ["set", []], ["set", []], ["map", []]],
        ],
    }
    text = "\n".join(json.dumps(d) for d in (bridge, ports, interfaces)) + "\n"
    state = ovsdb.parse_state(text)
    assert state.bridges["hbsw"] == ovsdb.Bridge("hbsw", "netdev", OWNED, ("eth1", "htvm0"))
    assert state.bridges["hbsw"].owned and not state.bridges["br0"].owned
    assert state.ports["htvm0"] == ovsdb.Port(
        "htvm0", "hbsw", 100, (), "access", False, OWNED, ("htvm0",)
    )
    assert state.ports["eth1"].trunks == (100, 200) and state.ports["eth1"].tag is None
    assert state.ports["other"].trunks == (7,) and state.ports["other"].bridge == "br0"
    assert state.interfaces["htvm0"] == ovsdb.Interface("htvm0", "", 7, 1500, {OFFLOAD_KEY: "7"}, 3)
    assert state.interfaces["eth1"].ifindex is None and state.interfaces["eth1"].ofport is None
    assert ovsdb.READ_STATE[:2] == ["--format=json", "--"]
