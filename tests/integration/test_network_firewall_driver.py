"""The firewall and shaping drivers on real namespaces: a node's Linux bridge with three 'VMs'
(veths standing for taps): what a filtered port receives is what its rules allow plus replies
(stateful), what it sends is checked against its MAC and address, and the tables are replaced
whole."""

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from planes import address, exchange, index, namespaces, rtnl, veth
from pyroute2 import netns as pyroute2_netns

from heron.network.bridge import LinuxBridge
from heron.network.dataplane import DataPlane
from heron.network.firewall import Firewall
from heron.network.plan import ANYWHERE, FirewallRule, Port, PortFirewall, SwitchPlan
from heron.network.shaping import realise_shaping

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
]

MACS = {"a": "02:00:00:00:0a:01", "b": "02:00:00:00:0a:02", "c": "02:00:00:00:0a:03"}
IPS = {"a": "10.67.0.1", "b": "10.67.0.2", "c": "10.67.0.3"}
ECHO = FirewallRule("in", "tcp", ("10.67.0.0/24",), (7, 7))


def port(name: str, firewall: PortFirewall | None = None, **kwargs: object) -> Port:
    return Port(
        tap=f"htfw{name}",
        vm=f"vm-{name}",
        nic=0,
        mac=MACS[name],
        mode="untagged",
        address=IPS[name],
        firewall=firewall,
        **kwargs,  # type: ignore[arg-type]
    )


def guarded(name: str, *rules: FirewallRule, deny_out: bool = False) -> PortFirewall:
    return PortFirewall(MACS[name], IPS[name], rules, deny_out)


@pytest.fixture
def lan() -> Iterator[dict[str, str]]:
    """A node's bridge with VMs a, b and c behind the veths htfwa, htfwb, htfwc."""
    with namespaces("node", "a", "b", "c") as (node, a, b, c):
        for name, ns in (("a", a), ("b", b), ("c", c)):
            veth((node, f"htfw{name}"), (ns, "eth0"))
            with rtnl(ns) as ipr:
                ipr.link("set", index=index(ipr, "eth0"), address=MACS[name])
            address(ns, "eth0", f"{IPS[name]}/24")
        plan = SwitchPlan("sw", "bridge", "hbfwtest", None, 1500, tuple(port(n) for n in "abc"))
        assert asyncio.run(LinuxBridge(DataPlane(node)).realise(plan)) == []
        yield {"node": node, "a": a, "b": b, "c": c}


def realise(node: str, *ports: Port) -> list[str]:
    return asyncio.run(Firewall(DataPlane(node)).realise(ports, ["hbfwtest"]))


def connects(lan: dict[str, str], source: str, target: str, port: int = 7) -> bool:
    """Whether `source` opens a TCP connection to `target`'s `port` and gets bytes back."""
    server = pyroute2_netns.create_socket(lan[target], socket.AF_INET, socket.SOCK_STREAM)
    client = pyroute2_netns.create_socket(lan[source], socket.AF_INET, socket.SOCK_STREAM)
    try:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((IPS[target], port))
        server.listen()
        server.settimeout(2)
        client.settimeout(2)
        try:
            client.connect((IPS[target], port))
            peer, _ = server.accept()
            with peer:
                peer.sendall(b"hello")
                return client.recv(5) == b"hello"
        except OSError:
            return False
    finally:
        client.close()
        server.close()


def eventually_connects(lan: dict[str, str], source: str, target: str) -> bool:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if connects(lan, source, target):
            return True
    return False


def tables(node: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", node, "nft", "list", "tables"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_inbound_is_denied_but_for_rules_and_replies(lan: dict[str, str]) -> None:
    node = lan["node"]
    assert realise(node, port("a", guarded("a", ECHO)), port("b"), port("c")) == []
    assert eventually_connects(lan, "b", "a")  # the rule: tcp 7 from the subnet
    assert not connects(lan, "b", "a", 8)  # no rule: denied
    assert eventually_connects(lan, "a", "b")  # a's own connection: the replies come back

    # The rule taken away: b no longer reaches a; given back: it does again.
    assert realise(node, port("a", guarded("a")), port("b"), port("c")) == []
    assert not connects(lan, "b", "a")
    assert realise(node, port("a", guarded("a", ECHO)), port("b"), port("c")) == []
    assert eventually_connects(lan, "b", "a")


def test_a_udp_exchange_started_by_the_filtered_port_is_answered(lan: dict[str, str]) -> None:
    node = lan["node"]
    assert realise(node, port("a", guarded("a")), port("b"), port("c")) == []
    # Started by b, to a, which has no rule for it: never arrives.
    assert not exchange((lan["b"], IPS["b"]), (lan["a"], IPS["a"]), timeout=3)
    # exchange() sends from a first, then b answers: a reply, let in; and from then on
    # the flow (the same ports) is established both ways.
    assert exchange((lan["a"], IPS["a"]), (lan["b"], IPS["b"]))
    assert exchange((lan["b"], IPS["b"]), (lan["a"], IPS["a"]))


def test_out_rules_deny_the_rest_of_what_the_port_sends(lan: dict[str, str]) -> None:
    node = lan["node"]
    to_b = FirewallRule("out", "tcp", (f"{IPS['b']}/32",), (7, 7))
    assert realise(node, port("a", guarded("a", to_b, deny_out=True)), port("b"), port("c")) == []
    assert eventually_connects(lan, "a", "b")
    assert not connects(lan, "a", "c")


def test_both_ends_filtered_needs_both_to_allow(lan: dict[str, str]) -> None:
    node = lan["node"]
    out_any = FirewallRule("out", "any", (ANYWHERE,))
    a = port("a", guarded("a", out_any, deny_out=True))
    assert realise(node, a, port("b"), port("c", guarded("c"))) == []
    assert not connects(lan, "a", "c")  # a may send it, c does not let it in
    c_allows = guarded("c", FirewallRule("in", "tcp", (f"{IPS['a']}/32",), (7, 7)))
    assert realise(node, a, port("b"), port("c", c_allows)) == []
    assert eventually_connects(lan, "a", "c")


def test_a_port_sends_only_from_its_own_address_and_mac(lan: dict[str, str]) -> None:
    node = lan["node"]
    assert realise(node, port("a", guarded("a")), port("b"), port("c")) == []
    assert exchange((lan["a"], IPS["a"]), (lan["b"], IPS["b"]))
    address(lan["a"], "eth0", "10.67.0.99/24")
    assert not exchange((lan["a"], "10.67.0.99"), (lan["b"], IPS["b"]), timeout=3)
    with rtnl(lan["a"]) as ipr:
        ipr.link("set", index=index(ipr, "eth0"), address="02:00:00:00:0a:99")
    assert not exchange((lan["a"], IPS["a"]), (lan["b"], IPS["b"]), timeout=3)
    # b, unfiltered, may do as it likes
    address(lan["b"], "eth0", "10.67.0.98/24")
    assert exchange((lan["b"], "10.67.0.98"), (lan["c"], IPS["c"]))


def test_tables_are_heron_s_own_and_go_when_nothing_is_filtered(lan: dict[str, str]) -> None:
    node = lan["node"]
    subprocess.run(
        ["ip", "netns", "exec", node, "nft", "add", "table", "inet", "other"], check=True
    )
    assert realise(node, port("a", guarded("a")), port("b")) == []
    assert "table bridge heron" in tables(node)
    assert "table inet heron" in tables(node)
    assert realise(node, port("a"), port("b")) == []
    listed = tables(node)
    assert "heron" not in listed
    assert "table inet other" in listed


def test_receive_rates_become_a_tbf_on_the_tap_and_go_again(lan: dict[str, str]) -> None:
    node = lan["node"]
    plane = DataPlane(node)
    limited = replace(port("a"), ingress_mbps=20)
    assert asyncio.run(realise_shaping(plane, [limited, port("b")])) == []

    def root_kinds(tap: str) -> list[tuple[str, int]]:
        with rtnl(node) as ipr:
            return [
                (
                    q.get_attr("TCA_KIND"),
                    q.get_nested("TCA_OPTIONS", "TCA_TBF_PARMS")["rate"]
                    if q.get_attr("TCA_KIND") == "tbf"
                    else 0,
                )
                for q in ipr.get_qdiscs(index=index(ipr, tap))
                if q["parent"] == 0xFFFFFFFF
            ]

    assert root_kinds("htfwa") == [("tbf", 2_500_000)]
    assert all(kind != "tbf" for kind, _ in root_kinds("htfwb"))
    assert asyncio.run(realise_shaping(plane, [replace(limited, ingress_mbps=40)])) == []
    assert root_kinds("htfwa") == [("tbf", 5_000_000)]
    assert asyncio.run(realise_shaping(plane, [port("a")])) == []
    assert all(kind != "tbf" for kind, _ in root_kinds("htfwa"))
