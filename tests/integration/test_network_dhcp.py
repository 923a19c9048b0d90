"""DHCP across nodes, on real namespaces, a real dnsmasq per node and busybox's udhcpc.

Two nodes' data planes (namespaces), a plain bridge each, joined at layer 2 by a veth between
their bridges, the uplink ports isolated as the switch driver marks them. One server per node
for the same network, the same address and MAC on both, each knowing only its node's VM (a
veth into a namespace of its own). The test plugs the DHCP link into the bridge itself,
standing in for the switch driver.
"""

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyroute2.netns
import pytest
from pyroute2 import IPRoute
from support import eventually, wait_for

from heron.network import dhcp, dnsmasq
from heron.network.dataplane import DataPlane
from heron.network.dhcp import DhcpServers
from heron.network.plan import DhcpHost, DhcpServer, dhcp_link, dhcp_mac, dhcp_namespace
from heron.util.proc import alive, find_running, read_pidfile

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces"),
    pytest.mark.skipif(
        not all(shutil.which(p) for p in ("dnsmasq", "busybox", "tcpdump", "nsenter")),
        reason="needs dnsmasq, busybox, tcpdump and nsenter",
    ),
]

PREFIX = f"hdt{os.getpid()}"
NETWORK = "lan"
MAC_A = "52:54:00:0a:00:01"
MAC_B = "52:54:00:0b:00:01"
MAC_STRANGER = "52:54:00:ff:00:01"
ADDRESS_A = "10.77.0.11"
ADDRESS_B = "10.77.0.12"
ROUTER = "10.77.0.1"
# Each packet handed over and written as it comes: none is left in a buffer at the end.
TCPDUMP = ("tcpdump", "-i", "eth0", "-n", "--immediate-mode", "-U")

SCRIPT = """#!/bin/sh
# udhcpc's events, one line each, and the address configured (a renewal is unicast from it)
printf '%s\tip=%s\tmask=%s\trouter=%s\tdns=%s\tmtu=%s\tserverid=%s\thostname=%s\tlease=%s\n' \
  "$1" "$ip" "$mask" "$router" "$dns" "$mtu" "$serverid" "$hostname" "$lease" >> "$EVENTS"
case "$1" in
  deconfig) ip addr flush dev "$interface" ;;
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface" ;;
esac
"""


def server(hosts: tuple[DhcpHost, ...], mtu: int = 1450) -> DhcpServer:
    return DhcpServer(
        network=NETWORK,
        namespace=dhcp_namespace(NETWORK),
        bridge="br0",
        vlan=None,
        links=dhcp_link(NETWORK),
        address="10.77.0.254/24",
        mac=dhcp_mac(NETWORK),
        router=ROUTER,
        dns=("10.77.0.2",),
        mtu=mtu,
        lease_seconds=600,
        hosts=hosts,
    )


HOST_A = DhcpHost(MAC_A, ADDRESS_A, "vm-a")
HOST_B = DhcpHost(MAC_B, ADDRESS_B, "vm_b")


def in_ns(namespace: str, *args: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{namespace}", *args]


def ipr(namespace: str) -> IPRoute:
    return IPRoute(netns=namespace)


def plug(namespace: str, port: str, *, isolated: bool) -> None:
    """Into the node's bridge, as the switch driver would."""
    with ipr(namespace) as ip:
        index = ip.link_lookup(ifname=port)[0]
        ip.link("set", index=index, master=ip.link_lookup(ifname="br0")[0], state="up")
        ip.brport("set", index=index, isolated=1 if isolated else 0)


@dataclass
class Node:
    name: str
    dhcp: DhcpServers

    @property
    def plane(self) -> str:
        assert self.dhcp.plane.netns is not None
        return self.dhcp.plane.netns

    def files(self) -> dnsmasq.ServerFiles:
        return dnsmasq.ServerFiles(self.dhcp.directory / NETWORK)

    def pid(self) -> int | None:
        files = self.files()
        return read_pidfile(files.pid, dnsmasq.marker(files))

    def log(self) -> str:
        try:
            return self.files().log.read_text()
        except FileNotFoundError:
            return ""

    async def realise(self, hosts: tuple[DhcpHost, ...], mtu: int = 1450) -> None:
        assert await self.dhcp.realise(server(hosts, mtu)) == []
        await asyncio.to_thread(plug, self.plane, dhcp_link(NETWORK)[0], isolated=True)


@dataclass
class Client:
    """A VM's NIC: a veth from a node's bridge into a namespace of its own."""

    namespace: str
    port: str
    mac: str
    events: Path
    processes: list[subprocess.Popen[bytes]]  # the fabric's: every one is stopped at the end
    daemon: subprocess.Popen[bytes] | None = None

    def lines(self) -> list[dict[str, str]]:
        try:
            text = self.events.read_text()
        except FileNotFoundError:
            return []
        found = []
        for line in text.splitlines():
            event, *pairs = line.split("\t")
            found.append({"event": event} | dict(p.split("=", 1) for p in pairs))
        return found

    def udhcpc(self, script: Path, *options: str) -> list[str]:
        return in_ns(self.namespace, "busybox", "udhcpc", "-i", "eth0", "-s", str(script), *options)

    def start(self, script: Path) -> subprocess.Popen[bytes]:
        """udhcpc as a guest runs it: in the foreground, keeping its lease."""
        process = subprocess.Popen(
            self.udhcpc(script, "-f", "-t", "5", "-T", "1", "-A", "1"),
            env=os.environ | {"EVENTS": str(self.events)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)
        self.daemon = process
        return process

    def renew(self) -> None:
        """At once, as it would at half the lease."""
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGUSR1)


@dataclass
class Capture:
    """tcpdump in a client's namespace: the DHCP replies that reach it."""

    process: subprocess.Popen[bytes]
    file: Path
    errors: Path

    @classmethod
    def start(cls, client: Client, directory: Path) -> "Capture":
        file, errors = directory / f"{client.port}.pcap", directory / f"{client.port}.err"
        with open(errors, "wb") as err:
            process = subprocess.Popen(
                in_ns(client.namespace, *TCPDUMP, "-w", str(file), "udp src port 67"),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        client.processes.append(process)
        capture = cls(process, file, errors)
        wait_for(lambda: "listening on" in errors.read_text(), 10, "tcpdump to listen")
        return capture

    def read(self) -> list[str]:
        """The DHCP message types received so far, with their sender's MAC."""
        text = subprocess.run(
            ["tcpdump", "-r", str(self.file), "-n", "-e", "-v"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        senders = re.findall(r"^\S+ ([0-9a-f:]{17}) >", text, re.M)
        kinds = re.findall(r"DHCP-Message \(53\), length 1: (\w+)", text)
        return [f"{kind} from {sender}" for kind, sender in zip(kinds, senders, strict=True)]

    def replies(self, expected: int) -> list[str]:
        """Every reply received once `expected` have (each written as it comes, -U)."""
        wait_for(lambda: len(self.read()) >= expected, 10, f"{expected} DHCP replies")
        self.process.send_signal(signal.SIGINT)
        self.process.wait(10)
        return self.read()


@dataclass
class Fabric:
    a: Node
    b: Node
    script: Path
    directory: Path
    clients: dict[str, Client] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client(self, node: Node, name: str, mac: str) -> Client:
        namespace = f"{PREFIX}vm{name}"
        port = f"vm{name}"
        pyroute2.netns.create(namespace)
        with ipr(node.plane) as ip:
            ip.link("add", ifname=port, kind="veth", peer="eth0")
            ip.link("set", index=ip.link_lookup(ifname="eth0")[0], net_ns_fd=namespace)
        with ipr(namespace) as ip:
            eth0 = ip.link_lookup(ifname="eth0")[0]
            ip.link("set", index=eth0, address=mac, state="up")
            ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")
        plug(node.plane, port, isolated=False)
        client = Client(namespace, port, mac, self.directory / f"{name}.events", self.processes)
        self.clients[name] = client
        return client


def make_plane(plane: str) -> None:
    """A node's data plane: a namespace with one plain bridge."""
    pyroute2.netns.create(plane)
    with ipr(plane) as ip:
        ip.link("add", ifname="br0", kind="bridge")
        for link in ("br0", "lo"):
            ip.link("set", index=ip.link_lookup(ifname=link)[0], state="up")


def ours() -> list[str]:
    return [n for n in pyroute2.netns.listnetns() if n.startswith(PREFIX)]


@pytest.fixture(scope="module")
def fabric(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fabric]:
    directory = tmp_path_factory.mktemp("dhcp")
    script = directory / "udhcpc.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    nodes = [
        Node(name, DhcpServers(DataPlane(f"{PREFIX}node{name}"), directory / name)) for name in "ab"
    ]
    made = Fabric(*nodes, script, directory)
    try:
        for node in nodes:
            make_plane(node.plane)
        # The two nodes' uplinks, one segment between them, isolated as uplinks are.
        with ipr(made.a.plane) as ip:
            ip.link("add", ifname="uplink", kind="veth", peer="uplinkb")
            ip.link("set", index=ip.link_lookup(ifname="uplinkb")[0], net_ns_fd=made.b.plane)
        with ipr(made.b.plane) as ip:
            index = ip.link_lookup(ifname="uplinkb")[0]
            ip.link("set", index=index, ifname="uplink")
        for node in (made.a, made.b):
            plug(node.plane, "uplink", isolated=True)
        yield made
    finally:
        for process in made.processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        for node in nodes:
            with contextlib.suppress(Exception):
                asyncio.run(node.dhcp.remove(NETWORK))
            for pid in find_running(str(node.dhcp.directory)):
                os.kill(pid, signal.SIGKILL)
        for namespace in ours():
            pyroute2.netns.remove(namespace)


async def bound(client: Client, after: int = 0, event: str = "bound") -> dict[str, str]:
    async def check() -> dict[str, str] | None:
        found = [e for e in client.lines()[after:] if e["event"] == event]
        return found[0] if found else None

    return await eventually(check, 20, f"{client.port} {event}")


async def guest_of(fabric: Fabric, name: str) -> Client:
    """Guest `name` ("a" or "b") holding its lease, on its node (as the first test leaves it)."""
    if name not in fabric.clients:
        await fabric.a.realise((HOST_A,))
        await fabric.b.realise((HOST_B,))
        node, mac = (fabric.a, MAC_A) if name == "a" else (fabric.b, MAC_B)
        client = await asyncio.to_thread(fabric.client, node, name, mac)
        client.start(fabric.script)
    await bound(fabric.clients[name])
    return fabric.clients[name]


async def test_each_guest_gets_its_own_address_router_and_mtu_from_its_node_alone(
    fabric: Fabric,
) -> None:
    await fabric.a.realise((HOST_A,))
    await fabric.b.realise((HOST_B,))
    guest_a = await asyncio.to_thread(fabric.client, fabric.a, "a", MAC_A)
    guest_b = await asyncio.to_thread(fabric.client, fabric.b, "b", MAC_B)
    captures = {
        name: await asyncio.to_thread(Capture.start, client, fabric.directory)
        for name, client in (("a", guest_a), ("b", guest_b))
    }
    guest_a.start(fabric.script)
    guest_b.start(fabric.script)

    lease_a, lease_b = await bound(guest_a), await bound(guest_b)

    assert (lease_a["ip"], lease_b["ip"]) == (ADDRESS_A, ADDRESS_B)
    assert (lease_a["hostname"], lease_b["hostname"]) == ("vm-a", "vm-b")
    for lease in (lease_a, lease_b):
        assert lease["router"] == ROUTER
        assert lease["dns"] == "10.77.0.2"
        assert lease["mtu"] == "1450"
        assert lease["mask"] == "24"
        assert lease["serverid"] == "10.77.0.254"
        assert lease["lease"] == "600"
    # Each node's server logs its own guest's exchange, and never even sees the other's.
    ack = "DHCPACK(" + dhcp_link(NETWORK)[1] + ") {} {}"
    wait_for(lambda: ack.format(ADDRESS_A, MAC_A) in fabric.a.log(), 10, "node a's ACK logged")
    wait_for(lambda: ack.format(ADDRESS_B, MAC_B) in fabric.b.log(), 10, "node b's ACK logged")
    assert MAC_A not in fabric.b.log()
    assert MAC_B not in fabric.a.log()
    # One offer and one acknowledgement reached each guest, from the one server MAC.
    server_mac = dhcp_mac(NETWORK)
    for name, capture in captures.items():
        replies = await asyncio.to_thread(capture.replies, 2)
        assert replies == [f"Offer from {server_mac}", f"ACK from {server_mac}"], name


async def test_a_mac_no_node_knows_gets_no_answer(fabric: Fabric) -> None:
    await fabric.a.realise((HOST_A,))
    await fabric.b.realise((HOST_B,))
    stranger = await asyncio.to_thread(fabric.client, fabric.a, "x", MAC_STRANGER)
    events = stranger.events

    result = await asyncio.to_thread(
        subprocess.run,
        stranger.udhcpc(fabric.script, "-n", "-q", "-t", "2", "-T", "1"),
        env=os.environ | {"EVENTS": str(events)},
        capture_output=True,
        timeout=30,
    )

    assert result.returncode != 0
    assert not [e for e in stranger.lines() if e["event"] == "bound"]
    assert f"{MAC_STRANGER} ignored" in fabric.a.log()


async def test_a_migrated_guest_renews_with_its_new_node_and_keeps_its_address(
    fabric: Fabric,
) -> None:
    guest = await guest_of(fabric, "a")
    seen = len(guest.lines())

    # The guest's NIC moves to node b's bridge; the IPAM lists it with node b now.
    def move() -> None:
        with ipr(fabric.a.plane) as ip:
            index = ip.link_lookup(ifname=guest.port)[0]
            ip.link("set", index=index, net_ns_fd=fabric.b.plane)
        plug(fabric.b.plane, guest.port, isolated=False)

    await asyncio.to_thread(move)
    await fabric.a.realise(())
    await fabric.b.realise((HOST_B, HOST_A))
    guest.renew()

    renewed = await bound(guest, after=seen, event="renew")

    assert renewed["ip"] == ADDRESS_A
    assert renewed["serverid"] == "10.77.0.254"
    ack = f"DHCPACK({dhcp_link(NETWORK)[1]}) {ADDRESS_A} {MAC_A}"
    wait_for(lambda: ack in fabric.b.log(), 10, "node b's ACK logged")


async def test_new_hosts_reload_the_server_and_new_options_restart_it(fabric: Fabric) -> None:
    await fabric.a.realise((HOST_A,))
    pid = fabric.a.pid()
    reads = fabric.a.log().count("read ")

    # Another agent (after a restart) finds the same server, and only makes it re-read.
    again = Node("a", DhcpServers(fabric.a.dhcp.plane, fabric.a.dhcp.directory))
    await again.realise((HOST_A, HOST_B))

    assert again.pid() == pid
    assert f"{MAC_B},{ADDRESS_B},vm-b" in fabric.a.files().hosts.read_text()
    wait_for(lambda: fabric.a.log().count("read ") > reads, 10, "dnsmasq to re-read its hosts")
    await again.realise((HOST_A, HOST_B))
    assert again.pid() == pid

    await again.realise((HOST_A, HOST_B), mtu=1400)

    assert again.pid() not in (None, pid)
    assert "option:mtu,1400" in fabric.a.files().config.read_text()


async def test_a_server_that_died_is_started_again(fabric: Fabric) -> None:
    await fabric.b.realise((HOST_B,))
    pid = fabric.b.pid()
    assert pid is not None
    marker = dnsmasq.marker(fabric.b.files())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid, marker), 10, "dnsmasq to die")

    await fabric.b.realise((HOST_B,))

    assert fabric.b.pid() not in (None, pid)


async def test_a_server_whose_namespace_was_replaced_is_started_in_the_new_one(
    fabric: Fabric,
) -> None:
    await fabric.b.realise((HOST_B,))
    pid = fabric.b.pid()
    namespace = fabric.b.dhcp.plane.namespace(dhcp_namespace(NETWORK))
    # Deleted under it (the old one lives on, held by dnsmasq alone), with the link.
    await asyncio.to_thread(pyroute2.netns.remove, namespace)

    await fabric.b.realise((HOST_B,))

    assert fabric.b.pid() not in (None, pid)
    assert (
        os.stat(f"/proc/{fabric.b.pid()}/ns/net").st_ino
        == os.stat(f"/run/netns/{namespace}").st_ino
    )
    guest = await guest_of(fabric, "b")
    seen = len(guest.lines())
    guest.renew()
    assert (await bound(guest, after=seen, event="renew"))["ip"] == ADDRESS_B


async def test_a_long_log_is_set_aside_and_begun_anew(
    fabric: Fabric, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fabric.b.realise((HOST_B,))
    pid = fabric.b.pid()
    monkeypatch.setattr(dhcp, "LOG_LIMIT", 1)

    await fabric.b.realise((HOST_B,))

    log = fabric.b.files().log
    assert "started" in log.with_name(log.name + ".1").read_text()
    guest = await guest_of(fabric, "b")
    seen = len(guest.lines())
    guest.renew()
    await bound(guest, after=seen, event="renew")
    wait_for(lambda: MAC_B in fabric.b.log(), 10, "the renewal in the new log")
    assert fabric.b.pid() == pid


async def test_a_subnet_without_router_or_dns_gives_neither(fabric: Fabric) -> None:
    host = DhcpHost("52:54:00:0a:00:02", "10.77.0.21", "vm-n")
    bare = replace(server((host,)), router=None, dns=())
    assert await fabric.a.dhcp.realise(bare) == []
    await asyncio.to_thread(plug, fabric.a.plane, dhcp_link(NETWORK)[0], isolated=True)
    guest = await asyncio.to_thread(fabric.client, fabric.a, "n", host.mac)

    result = await asyncio.to_thread(
        subprocess.run,
        guest.udhcpc(fabric.script, "-n", "-q", "-t", "5", "-T", "1"),
        env=os.environ | {"EVENTS": str(guest.events)},
        capture_output=True,
        timeout=30,
    )

    assert result.returncode == 0
    lease = await bound(guest)
    assert (lease["ip"], lease["router"], lease["dns"], lease["mtu"]) == (
        host.address,
        "",
        "",
        "1450",
    )


async def test_remove_leaves_nothing_of_the_server(fabric: Fabric) -> None:
    await fabric.a.realise((HOST_A,))
    await fabric.b.realise((HOST_B,))
    assert await fabric.a.dhcp.running() == {NETWORK}
    namespace = fabric.a.dhcp.plane.namespace(dhcp_namespace(NETWORK))
    marker = dnsmasq.marker(fabric.a.files())

    await fabric.a.dhcp.remove(NETWORK)

    assert await fabric.a.dhcp.running() == set()
    assert namespace not in pyroute2.netns.listnetns()
    assert not fabric.a.files().directory.exists()
    assert find_running(marker) == []

    def links() -> list[str]:
        with ipr(fabric.a.plane) as ip:
            return [link.get("ifname") for link in ip.get_links()]

    assert dhcp_link(NETWORK)[0] not in await asyncio.to_thread(links)
    # Node b's server is another's: untouched.
    assert fabric.b.pid() is not None


async def test_a_missing_data_plane_is_reported_not_made(fabric: Fabric) -> None:
    plane = f"{PREFIX}gone"
    servers = DhcpServers(DataPlane(plane), fabric.directory / "gone")

    problems = await servers.realise(server((HOST_A,)))

    assert problems == [
        f"DHCP of network {NETWORK}: the data plane's namespace {plane} does not exist"
    ]
    assert not [n for n in pyroute2.netns.listnetns() if n.startswith(plane)]
    await servers.remove(NETWORK)
    assert await servers.running() == set()


async def test_an_address_given_anew_is_served_to_its_new_nic(fabric: Fabric) -> None:
    # A VM is deleted and the IPAM gives its address to a new VM's NIC on the same node: the
    # server must not keep the address for the old MAC's lease.
    await fabric.b.realise((HOST_B,))
    first = await asyncio.to_thread(fabric.client, fabric.b, "old", MAC_B)
    first.start(fabric.script)
    assert (await bound(first))["ip"] == ADDRESS_B
    first.daemon.terminate()  # type: ignore[union-attr]
    await fabric.b.realise((DhcpHost(MAC_STRANGER, ADDRESS_B, "vm-new"),))
    newcomer = await asyncio.to_thread(fabric.client, fabric.b, "new", MAC_STRANGER)
    newcomer.start(fabric.script)
    assert (await bound(newcomer))["ip"] == ADDRESS_B
