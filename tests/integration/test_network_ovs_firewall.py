"""Security groups, anti-spoofing and rate limits on an Open vSwitch bridge with real daemons
(userspace datapath): a node's namespace with its own ovsdb-server and ovs-vswitchd, three
'VMs' (veths standing for taps). The same cases as the nftables driver's
(test_network_firewall_driver.py), plus the rate limits, which there are tc's."""

import asyncio
import ipaddress
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from planes import address, exchange, index, namespaces, rtnl, veth
from pyroute2 import netns as pyroute2_netns
from support import wait_for

from heron.network.dataplane import DataPlane
from heron.network.dhcp import DhcpServers
from heron.network.ovs import OpenVSwitch
from heron.network.ovs_flows import COOKIE
from heron.network.ovs_runtime import OvsRuntime
from heron.network.plan import (
    ANYWHERE,
    DhcpHost,
    DhcpServer,
    FirewallRule,
    Port,
    PortFirewall,
    SwitchPlan,
    dhcp_link,
    dhcp_mac,
    dhcp_namespace,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
]

BRIDGE = "hbovsfwtest"
MACS = {"a": "02:00:00:00:0b:01", "b": "02:00:00:00:0b:02", "c": "02:00:00:00:0b:03"}
IPS = {"a": "10.68.0.1", "b": "10.68.0.2", "c": "10.68.0.3"}
ECHO = FirewallRule("in", "tcp", ("10.68.0.0/24",), (7, 7))


def port(name: str, firewall: PortFirewall | None = None, **kwargs: object) -> Port:
    return Port(
        tap=f"htof{name}",
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


@dataclass
class Lan:
    ns: dict[str, str]
    runtime: OvsRuntime
    switch: OpenVSwitch

    def realise(self, *ports: Port) -> list[str]:
        plan = SwitchPlan("sw", "ovs", BRIDGE, None, 1500, ports)
        return asyncio.run(self.switch.realise(plan))

    def ofctl(self, verb: str, *args: str) -> str:
        target = self.runtime.ofctl_target(BRIDGE)
        command = ["ovs-ofctl", "-O", "OpenFlow14", "--no-stats", verb, target, *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def ofctl_10(self, verb: str) -> str:
        """`verb` in OpenFlow 1.0, the only version with a port's NO_FLOOD."""
        target = self.runtime.ofctl_target(BRIDGE)
        command = ["ovs-ofctl", "-O", "OpenFlow10", verb, target]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def heron_flows(self) -> list[str]:
        dump = self.ofctl("dump-flows", f"cookie={COOKIE:#x}/-1")
        return sorted(line.strip() for line in dump.splitlines() if "cookie=" in line)


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[Lan]:
    """A node's OVS bridge with VMs a, b and c behind the veths htofa, htofb, htofc (their
    bridge ends down, as a new tap is: the driver brings them up)."""
    with namespaces("ovsnode", "a", "b", "c") as (node, a, b, c):
        directory = tmp_path / "ovs"
        try:
            runtime = asyncio.run(OvsRuntime.start(node, directory))
            for name, ns in (("a", a), ("b", b), ("c", c)):
                veth((node, f"htof{name}"), (ns, "eth0"))
                with rtnl(ns) as ipr:
                    ipr.link("set", index=index(ipr, "eth0"), address=MACS[name])
                    ipr.link("set", index=index(ipr, "lo"), state="up")
                address(ns, "eth0", f"{IPS[name]}/24")
            lan = Lan({"node": node, "a": a, "b": b, "c": c}, runtime, None)  # type: ignore[arg-type]
            lan.switch = OpenVSwitch(DataPlane(node), runtime)
            assert lan.realise(*(port(n) for n in "abc")) == []
            yield lan
        finally:
            # By its pid files: also the daemons of a start that failed half-way.
            asyncio.run(OvsRuntime(directory / "db.sock", "netdev", node, directory).stop())


def connects(lan: Lan, source: str, target: str, port: int = 7) -> bool:
    """Whether `source` opens a TCP connection to `target`'s `port` and gets bytes back."""
    return tcp_connects(lan.ns[source], lan.ns[target], target, port)


def tcp_connects(source_ns: str, target_ns: str, target: str, port: int = 7) -> bool:
    """Whether a TCP connection from `source_ns` to `target` (a VM's name) in `target_ns`
    opens and brings bytes back."""
    server = pyroute2_netns.create_socket(target_ns, socket.AF_INET, socket.SOCK_STREAM)
    client = pyroute2_netns.create_socket(source_ns, socket.AF_INET, socket.SOCK_STREAM)
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


def eventually_connects(lan: Lan, source: str, target: str) -> bool:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if connects(lan, source, target):
            return True
    return False


def received(sender: socket.socket, receiver: socket.socket, destination: tuple[str, int]) -> bool:
    """Whether a datagram sent to `destination` reaches `receiver`, sent again for a while
    (the first may wait on ARP); both sockets are closed."""
    try:
        receiver.settimeout(0.3)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            sender.sendto(b"x", destination)
            try:
                if receiver.recvfrom(16)[0] == b"x":
                    return True
            except TimeoutError:
                continue
        return False
    finally:
        sender.close()
        receiver.close()


def udp_arrives(lan: Lan, source: str, sport: int, target: str, dport: int) -> bool:
    """Whether a datagram from `source`'s port `sport` reaches `target`'s `dport`."""
    sender = pyroute2_netns.create_socket(lan.ns[source], socket.AF_INET, socket.SOCK_DGRAM)
    receiver = pyroute2_netns.create_socket(lan.ns[target], socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind((IPS[source], sport))
    receiver.bind((IPS[target], dport))
    return received(sender, receiver, (IPS[target], dport))


def datagram_arrives(
    source: tuple[str, str],
    target: tuple[str, str],
    destination: str,
    dport: int,
    sport: int = 5999,
) -> bool:
    """Whether a datagram from `source` (namespace, address) to `destination` (a broadcast or
    multicast address, or a VM's) reaches a socket of `target` (namespace, address) on
    `dport`."""
    sender = pyroute2_netns.create_socket(source[0], socket.AF_INET, socket.SOCK_DGRAM)
    receiver = pyroute2_netns.create_socket(target[0], socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source[1]))
    sender.bind((source[1], sport))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    receiver.bind(("", dport))  # a broadcast's or a group's address is not the VM's
    if ipaddress.ip_address(destination).is_multicast:
        group = socket.inet_aton(destination) + socket.inet_aton(target[1])
        receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
    return received(sender, receiver, (destination, dport))


FLOODED = ("255.255.255.255", "10.68.0.255", "239.1.2.3")  # broadcast, subnet's, a group's
UDP_5000 = FirewallRule("in", "udp", ("10.68.0.0/24",), (5000, 5000))


def floods_as_on_a_linux_bridge(lan: Lan) -> None:
    """With a filtered by ECHO and UDP_5000: what the Linux bridge driver lets reach it."""
    b = (lan.ns["b"], IPS["b"])
    for destination in FLOODED:
        assert datagram_arrives(b, (lan.ns["c"], IPS["c"]), destination, 6000), (
            destination
        )  # unfiltered
        assert not datagram_arrives(b, (lan.ns["a"], IPS["a"]), destination, 6000), destination
        assert datagram_arrives(b, (lan.ns["a"], IPS["a"]), destination, 5000), (
            destination
        )  # the rule
    # A DHCP server's broadcast reply reaches it; the same from another port does not.
    assert datagram_arrives(b, (lan.ns["a"], IPS["a"]), "255.255.255.255", 68, sport=67)
    assert not datagram_arrives(b, (lan.ns["a"], IPS["a"]), "255.255.255.255", 68, sport=66)
    # Broadcast ARP for it is answered (b has never seen it): the rule's connection opens.
    assert eventually_connects(lan, "b", "a")


def test_floods_reach_a_filtered_port_only_as_its_rules_allow(lan: Lan) -> None:
    assert lan.realise(port("a", guarded("a", ECHO, UDP_5000)), port("b"), port("c")) == []
    floods_as_on_a_linux_bridge(lan)
    # a's own broadcasts and multicasts go everywhere (it may send anything)
    for destination in FLOODED:
        assert datagram_arrives((lan.ns["a"], IPS["a"]), (lan.ns["c"], IPS["c"]), destination, 6000)


def test_unknown_unicast_is_not_flooded_to_a_filtered_port(lan: Lan) -> None:
    assert lan.realise(port("a", guarded("a")), port("b"), port("c")) == []
    b, c = (lan.ns["b"], IPS["b"]), (lan.ns["c"], IPS["c"])
    assert exchange(b, c)  # each knows the other's MAC now
    assert lan.runtime.directory is not None
    control = str(lan.runtime.directory / "ovs-vswitchd.ctl")
    sniffer = pyroute2_netns.create_socket(
        lan.ns["a"], socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)
    )
    try:
        sniffer.bind(("eth0", 0))
        # The switch forgets where c is: b's next datagram to it is flooded.
        subprocess.run(["ovs-appctl", "-t", control, "fdb/flush"], check=True, capture_output=True)
        assert datagram_arrives(b, (lan.ns["c"], IPS["c"]), IPS["c"], 6000)
        sniffer.setblocking(False)
        seen = []
        while True:
            try:
                seen.append(sniffer.recv(2048))
            except BlockingIOError:
                break
        mac_c = bytes.fromhex(MACS["c"].replace(":", ""))
        assert not [frame for frame in seen if frame[:6] == mac_c]
    finally:
        sniffer.close()


def test_a_filtered_port_gets_its_lease_from_the_dhcp_server(lan: Lan, tmp_path: Path) -> None:
    """A real dnsmasq on the bridge (its port isolated, as the plan makes it) and busybox's
    udhcpc in a: the broadcast DISCOVER goes out, the OFFER and ACK come in through a's
    flows."""
    network = f"ovsfl{os.getpid()}"
    server = DhcpServer(
        network=network,
        namespace=dhcp_namespace(network),
        bridge=BRIDGE,
        vlan=None,
        links=dhcp_link(network),
        address="10.68.0.254/24",
        mac=dhcp_mac(network),
        router=None,
        dns=(),
        mtu=1500,
        lease_seconds=600,
        hosts=(DhcpHost(MACS["a"], IPS["a"], "vm-a"),),
    )
    servers = DhcpServers(DataPlane(lan.ns["node"]), tmp_path / "dhcp")
    try:
        assert asyncio.run(servers.realise(server)) == []
        dhcp_port = Port(
            tap=server.links[0],
            vm="",
            nic=0,
            mac=server.mac,
            mode="untagged",
            isolated=True,
        )
        ports = (port("a", guarded("a")), port("b"), port("c"), dhcp_port)
        assert lan.realise(*ports) == []
        udhcpc = ["busybox", "udhcpc", "-i", "eth0", "-s", "/bin/true", "-n", "-q", "-t", "5"]
        done = subprocess.run(
            ["nsenter", f"--net=/run/netns/{lan.ns['a']}", *udhcpc, "-T", "1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert f"lease of {IPS['a']} obtained" in done.stdout + done.stderr, done
    finally:
        asyncio.run(servers.remove(network))


def test_inbound_is_denied_but_for_rules_and_replies(lan: Lan) -> None:
    assert lan.realise(port("a", guarded("a", ECHO)), port("b"), port("c")) == []
    assert eventually_connects(lan, "b", "a")  # the rule: tcp 7 from the subnet
    assert not connects(lan, "b", "a", 8)  # no rule: denied
    assert eventually_connects(lan, "a", "b")  # a's own connection: the replies come back
    # A DHCP server's reply reaches the guest; another port's does not.
    assert udp_arrives(lan, "b", 67, "a", 68)
    assert not udp_arrives(lan, "b", 66, "a", 68)

    # The rule taken away: b no longer reaches a; given back: it does again.
    assert lan.realise(port("a", guarded("a")), port("b"), port("c")) == []
    assert not connects(lan, "b", "a")
    assert lan.realise(port("a", guarded("a", ECHO)), port("b"), port("c")) == []
    assert eventually_connects(lan, "b", "a")


def test_a_udp_exchange_started_by_the_filtered_port_is_answered(lan: Lan) -> None:
    assert lan.realise(port("a", guarded("a")), port("b"), port("c")) == []
    # Started by b, to a, which has no rule for it: never arrives.
    assert not exchange((lan.ns["b"], IPS["b"]), (lan.ns["a"], IPS["a"]), timeout=3)
    # From a first, then b answers: a reply, let in; from then on the flow is established.
    assert exchange((lan.ns["a"], IPS["a"]), (lan.ns["b"], IPS["b"]))
    assert exchange((lan.ns["b"], IPS["b"]), (lan.ns["a"], IPS["a"]))


def test_out_rules_deny_the_rest_of_what_the_port_sends(lan: Lan) -> None:
    to_b = FirewallRule("out", "tcp", (f"{IPS['b']}/32",), (7, 7))
    assert lan.realise(port("a", guarded("a", to_b, deny_out=True)), port("b"), port("c")) == []
    assert eventually_connects(lan, "a", "b")
    assert not connects(lan, "a", "c")
    assert not udp_arrives(lan, "a", 5000, "b", 7)  # udp is not the rule's


def test_both_ends_filtered_needs_both_to_allow(lan: Lan) -> None:
    out_any = FirewallRule("out", "any", (ANYWHERE,))
    a = port("a", guarded("a", out_any, deny_out=True))
    assert lan.realise(a, port("b"), port("c", guarded("c"))) == []
    assert not connects(lan, "a", "c")  # a may send it, c does not let it in
    c_allows = guarded("c", FirewallRule("in", "tcp", (f"{IPS['a']}/32",), (7, 7)))
    assert lan.realise(a, port("b"), port("c", c_allows)) == []
    assert eventually_connects(lan, "a", "c")


def test_a_port_sends_only_from_its_own_address_and_mac(lan: Lan) -> None:
    assert lan.realise(port("a", guarded("a")), port("b"), port("c")) == []
    assert exchange((lan.ns["a"], IPS["a"]), (lan.ns["b"], IPS["b"]))
    address(lan.ns["a"], "eth0", "10.68.0.99/24")
    assert not exchange((lan.ns["a"], "10.68.0.99"), (lan.ns["b"], IPS["b"]), timeout=3)
    with rtnl(lan.ns["a"]) as ipr:
        ipr.link("set", index=index(ipr, "eth0"), address="02:00:00:00:0b:99")
    assert not exchange((lan.ns["a"], IPS["a"]), (lan.ns["b"], IPS["b"]), timeout=3)
    # b, unfiltered, may do as it likes
    address(lan.ns["b"], "eth0", "10.68.0.98/24")
    assert exchange((lan.ns["b"], "10.68.0.98"), (lan.ns["c"], IPS["c"]))


def test_flows_go_with_the_firewall_and_realising_again_changes_nothing(lan: Lan) -> None:
    calls: list[tuple[str, ...]] = []

    def recording(switch: OpenVSwitch) -> OpenVSwitch:
        ofctl = switch.filter._ofctl

        def recorded(bridge: str, *args: str, stdin: str | None = None) -> str:
            calls.append(args)
            return ofctl(bridge, *args, stdin=stdin)

        switch.filter._ofctl = recorded  # type: ignore[method-assign]
        return switch

    recording(lan.switch)
    ports = (port("a", guarded("a", ECHO), egress_mbps=50), port("b"), port("c"))
    assert lan.realise(*ports) == []
    flows = lan.heron_flows()
    assert flows and "meter=" in lan.ofctl("dump-meters")
    assert lan.ofctl_10("dump-ports-desc").count("NO_FLOOD") == 1  # a's port only
    assert any(c[:2] == ("--bundle", "add-flows") for c in calls)

    vsctl = ["ovs-vsctl", *lan.runtime.ctl_args(), "get", "Open_vSwitch", ".", "next_cfg"]
    next_cfg = subprocess.run(vsctl, capture_output=True, text=True, check=True).stdout
    # Again, and from an agent started anew: read, nothing written.
    for switch in (lan.switch, recording(OpenVSwitch(DataPlane(lan.ns["node"]), lan.runtime))):
        lan.switch = switch
        calls.clear()
        assert lan.realise(*ports) == []
        reads = {f"cookie={COOKIE:#x}/-1", "dump-meters", "dump-ports-desc"}
        assert {c[-1] for c in calls} <= reads
        assert lan.heron_flows() == flows
    assert subprocess.run(vsctl, capture_output=True, text=True, check=True).stdout == next_cfg

    # Lost behind the driver's back (ovs-vswitchd keeps flows in memory only): put back.
    lan.ofctl("del-flows", f"cookie={COOKIE:#x}/-1")
    assert lan.realise(*ports) == []
    assert len(lan.heron_flows()) == len(flows)

    # Another's flow on the bridge stays; the firewall taken away takes Heron's with it, but
    # for plain forwarding.
    lan.ofctl("add-flow", "cookie=0x7,priority=5,udp,tp_dst=9,actions=drop")
    assert lan.realise(port("a"), port("b"), port("c")) == []
    assert lan.heron_flows() == [f"cookie={COOKIE:#x}, priority=0 actions=NORMAL"]
    assert "meter=" not in lan.ofctl("dump-meters")
    assert "NO_FLOOD" not in lan.ofctl_10("dump-ports-desc")  # floods reach it again
    assert "cookie=0x7" in lan.ofctl("dump-flows")
    assert eventually_connects(lan, "b", "a")


def test_a_restarted_ovs_vswitchd_forwards_nothing_until_the_flows_are_back(lan: Lan) -> None:
    filtered = port("a", guarded("a", ECHO, UDP_5000))
    assert lan.realise(filtered, port("b"), port("c")) == []
    assert eventually_connects(lan, "b", "a")
    assert lan.runtime.directory is not None
    pid = int((lan.runtime.directory / "ovs-vswitchd.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not lan.runtime.running(), 10, "ovs-vswitchd to die")
    asyncio.run(OvsRuntime.start(lan.ns["node"], lan.runtime.directory))
    # Its flows are gone with it: the secure bridge drops everything, never lets a in open.
    wait_for(lambda: lan.heron_flows() == [], 10, "the bridge to be back, without flows")
    assert not connects(lan, "b", "a", 8)
    assert not exchange((lan.ns["b"], IPS["b"]), (lan.ns["c"], IPS["c"]), timeout=2)
    # The ports came back without NO_FLOOD (ovs-vswitchd does not keep it): set again.
    assert "NO_FLOOD" not in lan.ofctl_10("dump-ports-desc")
    assert lan.realise(filtered, port("b"), port("c")) == []
    assert "NO_FLOOD" in lan.ofctl_10("dump-ports-desc")
    assert eventually_connects(lan, "b", "a")
    assert not connects(lan, "b", "a", 8)
    assert exchange((lan.ns["b"], IPS["b"]), (lan.ns["c"], IPS["c"]))
    floods_as_on_a_linux_bridge(lan)


def blast(lan: Lan, source: str, target: str, total: int) -> tuple[int, float]:
    """Send `total` bytes of UDP from `source` to `target` as fast as possible: the bytes
    received, and the seconds from the first datagram sent to the last received."""
    receiver = pyroute2_netns.create_socket(lan.ns[target], socket.AF_INET, socket.SOCK_DGRAM)
    sender = pyroute2_netns.create_socket(lan.ns[source], socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    receiver.bind((IPS[target], 6000))
    receiver.settimeout(1.0)  # quiet that long: the burst is over
    got = [0]
    last = [0.0]

    def receive() -> None:
        while True:
            try:
                got[0] += len(receiver.recv(2048))
            except TimeoutError:
                return
            last[0] = time.monotonic()

    thread = threading.Thread(target=receive)
    thread.start()
    payload = b"x" * 1400
    start = time.monotonic()
    try:
        for _ in range(total // len(payload)):
            try:
                sender.sendto(payload, (IPS[target], 6000))
            except OSError:
                continue  # a full queue: the datagram is lost, as the meter would lose it
    finally:
        thread.join()
        sender.close()
        receiver.close()
    return got[0], max(last[0] - start, 0.0)


@pytest.mark.parametrize("direction", ["egress", "ingress"])
def test_rate_limits_hold(lan: Lan, direction: str) -> None:
    """2 Mbit/s (250 kB/s, bursts of 64 KiB): of 20 MB sent at once, what arrives is bounded
    by the rate over the time it took, whatever that was."""
    mbps, total = 2, 20_000_000
    # a's sending is limited (a to c), or what a receives (c to a).
    source, target = ("a", "c") if direction == "egress" else ("c", "a")
    assert lan.realise(port("a"), port("b"), port("c")) == []
    assert exchange((lan.ns[source], IPS[source]), (lan.ns[target], IPS[target]))  # ARP done
    unlimited, _ = blast(lan, source, target, total)

    limited = replace(port("a"), **{f"{direction}_mbps": mbps})
    assert lan.realise(limited, port("b"), port("c")) == []
    received, seconds = blast(lan, source, target, total)
    bound = 65536 + mbps * 125_000 * (seconds + 0.2)
    assert 0 < received <= bound, (received, seconds, unlimited)
    assert unlimited > 4 * received  # without the meter, far more came through


@pytest.fixture
def vlan_lan(tmp_path: Path) -> Iterator[tuple[dict[str, str], dict[int, OpenVSwitch]]]:
    """Two nodes whose OVS uplinks meet in a fabric's Linux bridge: VM a on node 1 and VM b
    on node 2, both in VLAN 100, so that what a receives from b comes in tagged."""
    with namespaces("ovsn1", "ovsn2", "ovsfab", "a", "b") as (n1, n2, fabric, a, b):
        nodes = {1: n1, 2: n2}
        try:
            with rtnl(fabric) as ipr:
                ipr.link("add", ifname="br0", kind="bridge")
                ipr.link("set", index=index(ipr, "br0"), state="up")
            for number, node in nodes.items():
                veth((node, "eth1"), (fabric, f"up{number}"))
                with rtnl(fabric) as ipr:
                    ipr.link("set", index=index(ipr, f"up{number}"), master=index(ipr, "br0"))
            for name, ns, node in (("a", a, n1), ("b", b, n2)):
                veth((node, f"htof{name}"), (ns, "eth0"))
                with rtnl(ns) as ipr:
                    ipr.link("set", index=index(ipr, "eth0"), address=MACS[name])
                address(ns, "eth0", f"{IPS[name]}/24")
            switches = {
                number: OpenVSwitch(
                    DataPlane(node),
                    asyncio.run(OvsRuntime.start(node, tmp_path / f"ovs{number}")),
                )
                for number, node in nodes.items()
            }
            yield {"a": a, "b": b}, switches
        finally:
            for number, node in nodes.items():
                place = tmp_path / f"ovs{number}"
                asyncio.run(OvsRuntime(place / "db.sock", "netdev", node, place).stop())


def test_tagged_frames_from_the_uplink_are_filtered_too(
    vlan_lan: tuple[dict[str, str], dict[int, OpenVSwitch]],
) -> None:
    ns, switches = vlan_lan

    def realise(node: int, *ports: Port) -> list[str]:
        plan = SwitchPlan("sw", "ovs", BRIDGE, "eth1", 1500, ports)
        return asyncio.run(switches[node].realise(plan))

    a = replace(port("a", guarded("a", ECHO, UDP_5000)), mode="access", vlan=100)
    assert realise(1, a) == []
    assert realise(2, replace(port("b"), mode="access", vlan=100)) == []
    deadline = time.monotonic() + 15
    while not tcp_connects(ns["b"], ns["a"], "a") and time.monotonic() < deadline:
        pass
    assert tcp_connects(ns["b"], ns["a"], "a")  # the rule, tagged on the way in
    assert not tcp_connects(ns["b"], ns["a"], "a", 8)
    assert tcp_connects(ns["a"], ns["b"], "b")  # a's own: the replies come back tagged
    assert not exchange((ns["b"], IPS["b"]), (ns["a"], IPS["a"]), timeout=3)
    # Floods from b come tagged too: only what a's rules allow reaches it, untagged.
    for destination in FLOODED:
        assert datagram_arrives((ns["b"], IPS["b"]), (ns["a"], IPS["a"]), destination, 5000), (
            destination
        )
        assert not datagram_arrives((ns["b"], IPS["b"]), (ns["a"], IPS["a"]), destination, 6000)
    # Realised again: nothing changes, and it still holds.
    assert realise(1, a) == []
    assert datagram_arrives((ns["b"], IPS["b"]), (ns["a"], IPS["a"]), "255.255.255.255", 5000)
    # They did come tagged: the flows for a's MAC in VLAN 100 saw them.
    target = switches[1].runtime.ofctl_target(BRIDGE)
    dump = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow14", "dump-flows", target],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tagged = [line for line in dump.splitlines() if "dl_vlan=100" in line]
    assert tagged and any("n_packets=0," not in line for line in tagged), dump
