"""The Open vSwitch backend with real daemons: two 'nodes' (network namespaces, each with its
own ovsdb-server and ovs-vswitchd, userspace datapath) whose uplinks are veths into a 'fabric'
namespace holding a plain Linux bridge; 'VMs' are veth pairs, one end a port of the switch
(named like a tap), the other in the VM's own namespace with an address."""

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns
from support import wait_for

from heron.network import ovsdb
from heron.network.dataplane import DataPlane
from heron.network.ovs import OpenVSwitch
from heron.network.ovs_runtime import OvsRuntime
from heron.network.plan import Port, SwitchPlan, switch_bridge

pytestmark = pytest.mark.integration

PID = os.getpid()
BRIDGE = switch_bridge("fabric")


@dataclass(frozen=True)
class Vm:
    name: str
    node: int
    port: Port
    address: str | None

    @property
    def ns(self) -> str:
        return f"hvm{self.name}-{PID}"


def port(tap: str, mode: str, vlan: int | None = None, trunk=()) -> Port:
    return Port(tap=tap, vm=tap, nic=0, mac="02:00:00:00:00:01", mode=mode, vlan=vlan, trunk=trunk)  # type: ignore[arg-type]


VMS = [
    Vm("a", 1, port("hta", "access", 100), "10.100.0.1"),
    Vm("c", 1, port("htc", "access", 200), "10.100.0.3"),
    Vm("t", 1, port("htt", "trunk", trunk=((100, 200),)), None),
    Vm("u1", 1, port("htu1", "untagged"), "10.0.0.1"),
    Vm("b", 2, port("htb", "access", 100), "10.100.0.2"),
    Vm("u2", 2, port("htu2", "untagged"), "10.0.0.2"),
]
VM = {vm.name: vm for vm in VMS}


def node_ns(node: int) -> str:
    return f"hnode{node}-{PID}"


FABRIC = f"hfabric-{PID}"


def run(ns: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{ns}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ping(vm: str, address: str, count: int = 1) -> bool:
    return run(VM[vm].ns, "busybox", "ping", "-c", str(count), "-W", "1", address).returncode == 0


def up(ipr: IPRoute, name: str) -> int:
    index = ipr.link_lookup(ifname=name)[0]
    ipr.link("set", index=index, state="up")
    return index


def veth(ns: str, name: str, peer_ns: str, peer: str) -> None:
    with IPRoute(netns=ns) as ipr:
        ipr.link("add", ifname=name, kind="veth", peer={"ifname": peer, "net_ns_fd": peer_ns})


def build_namespaces() -> None:
    for name in [FABRIC, node_ns(1), node_ns(2), *(vm.ns for vm in VMS)]:
        netns.create(name)
    with IPRoute(netns=FABRIC) as ipr:
        ipr.link("add", ifname="br0", kind="bridge")
        up(ipr, "br0")
    for node in (1, 2):
        veth(FABRIC, f"up{node}", node_ns(node), "eth1")
        with IPRoute(netns=FABRIC) as ipr:
            index = up(ipr, f"up{node}")
            ipr.link("set", index=index, master=ipr.link_lookup(ifname="br0")[0])
    for vm in VMS:
        veth(node_ns(vm.node), vm.port.tap, vm.ns, "eth0")
        with IPRoute(netns=vm.ns) as ipr:
            up(ipr, "lo")
            index = up(ipr, "eth0")
            if vm.address:
                ipr.addr("add", index=index, address=vm.address, prefixlen=16)


def plan(node: int, without: tuple[str, ...] = (), down: tuple[str, ...] = ()) -> SwitchPlan:
    ports = tuple(
        replace(vm.port, link_up=vm.name not in down)
        for vm in VMS
        if vm.node == node and vm.name not in without
    )
    return SwitchPlan("fabric", "ovs", BRIDGE, "eth1", 1500, ports)


@dataclass
class Lab:
    runtimes: dict[int, OvsRuntime]
    switches: dict[int, OpenVSwitch]
    directory: Path

    def vsctl(self, node: int, *args: str) -> str:
        command = ["ovs-vsctl", *self.runtimes[node].ctl_args(), *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def state(self, node: int) -> ovsdb.State:
        return ovsdb.parse_state(self.vsctl(node, *ovsdb.READ_STATE))


@pytest.fixture(scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    directory = tmp_path_factory.mktemp("ovs")
    try:
        # pyroute2's IPRoute runs an event loop of its own: not in the test's loop's thread.
        await asyncio.to_thread(build_namespaces)
        runtimes = {
            node: await OvsRuntime.for_plane(DataPlane(node_ns(node)), directory / f"node{node}")
            for node in (1, 2)
        }
        switches = {n: OpenVSwitch(DataPlane(node_ns(n)), runtimes[n]) for n in (1, 2)}
        for node in (1, 2):
            assert await switches[node].realise(plan(node)) == []
        yield Lab(runtimes, switches, directory)
    finally:
        for node in (1, 2):
            # By its pid files: also the daemons of a start that failed half-way.
            place = directory / f"node{node}"
            await OvsRuntime(place / "db.sock", "netdev", node_ns(node), place).stop()
        for name in [FABRIC, node_ns(1), node_ns(2), *(vm.ns for vm in VMS)]:
            with suppress(OSError):
                netns.remove(name)


def link(ns: str, name: str) -> dict[str, int] | None:
    """The flags of interface `name` in `ns`, if it exists."""
    with IPRoute(netns=ns) as ipr:
        found = ipr.link_lookup(ifname=name)
        return {"flags": ipr.get_links(found[0])[0]["flags"]} if found else None


def test_a_userspace_bridge_with_a_trunk_uplink(lab: Lab) -> None:
    state = lab.state(1)
    bridge = state.bridges[BRIDGE]
    assert lab.runtimes[1].datapath_type == "netdev"  # this kernel has no OVS module
    assert not lab.switches[1].guest_checksum_offload
    assert bridge.owned and bridge.datapath_type == "netdev"
    assert set(bridge.ports) == {BRIDGE, "eth1", "hta", "htc", "htt", "htu1"}
    uplink = state.ports["eth1"]
    assert (uplink.vlan_mode, uplink.trunks, uplink.protected) == (
        "trunk",
        (0, *range(100, 201)),
        True,
    )
    assert (state.ports["hta"].tag, state.ports["hta"].vlan_mode) == (100, "access")
    assert state.ports["htt"].trunks == tuple(range(100, 201))
    assert (state.ports["htu1"].tag, state.ports["htu1"].vlan_mode) == (0, "access")


def test_vms_of_one_vlan_on_two_nodes_reach_each_other(lab: Lab) -> None:
    wait_for(lambda: ping("a", "10.100.0.2"), 20, "a (node1) to ping b (node2) in VLAN 100")
    wait_for(lambda: ping("u1", "10.0.0.2"), 20, "untagged u1 (node1) to ping u2 (node2)")


def test_a_vm_of_another_vlan_does_not(lab: Lab) -> None:
    assert not ping("c", "10.100.0.2", count=2)
    assert not ping("c", "10.100.0.1", count=2)  # nor its neighbour on the same node


@contextmanager
def capture(ns: str, interface: str) -> Iterator[list[str]]:
    """tcpdump -e on `interface` while the block runs; its lines are in the list after."""
    lines: list[str] = []
    tcpdump = ["tcpdump", "-e", "-n", "-l", "-c", "200", "-i", interface]
    dump = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{ns}", "timeout", "30", *tcpdump],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert dump.stderr is not None
        # tcpdump says so once its capture is open: only then is traffic worth making.
        wait_for(lambda: "listening on" in dump.stderr.readline(), 10, "tcpdump to listen")
        yield lines
    finally:
        dump.terminate()
        out, _ = dump.communicate(timeout=10)
        lines.extend(out.splitlines())


def arp_storm() -> None:
    """Broadcasts in VLAN 100 (from a), VLAN 200 (from c) and untagged (from u1): an unknown
    neighbour's ARP."""
    for vm, address in (("a", "10.100.0.99"), ("c", "10.100.0.99"), ("u1", "10.0.0.99")):
        run(VM[vm].ns, "busybox", "arping", "-c", "2", "-w", "1", "-I", "eth0", address)


def test_the_uplink_and_a_trunk_port_carry_802_1q_tags(lab: Lab) -> None:
    with capture(FABRIC, "up1") as fabric, capture(VM["t"].ns, "eth0") as trunk:
        arp_storm()
    for lines in (fabric, trunk):
        text = "\n".join(lines)
        assert re.search(r"vlan 100\b", text) and re.search(r"vlan 200\b", text), text
    # Untagged frames leave untagged (not priority-tagged as VLAN 0), and not to the trunk.
    untagged = [line for line in fabric if "10.0.0.99" in line]
    assert untagged and not any("vlan" in line for line in untagged), fabric
    assert not any("10.0.0.99" in line for line in trunk), trunk


SERVER = """
import socket, sys
s = socket.socket()
s.bind(("0.0.0.0", 5001))
s.listen(1)
s.settimeout(20)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(20)
n = 0
while chunk := c.recv(65536):
    n += len(chunk)
print(n, flush=True)
"""
CLIENT = """
import socket
s = socket.create_connection(("10.100.0.2", 5001), timeout=20)
s.sendall(b"x" * 2_000_000)
s.close()
"""


def test_tcp_between_vms_on_two_nodes(lab: Lab) -> None:
    server = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{VM['b'].ns}", sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # The driver turned TX checksum offload off where the VMs' frames come from.
        for ns, interface in ((VM["a"].ns, "eth0"), (VM["b"].ns, "eth0"), (FABRIC, "up1")):
            assert "tx-checksumming: off" in run(ns, "ethtool", "-k", interface).stdout
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        sent = run(VM["a"].ns, sys.executable, "-c", CLIENT, timeout=30)
        assert sent.returncode == 0, sent.stderr
        assert server.stdout.readline().strip() == "2000000"
    finally:
        server.kill()
        server.wait()


async def test_realising_again_changes_nothing(lab: Lab) -> None:
    def snapshot() -> tuple[str, str]:
        ports = lab.vsctl(1, "--format=json", "list", "Port")
        interfaces = lab.vsctl(
            1,
            "--format=json",
            "--columns=_uuid,name,link_resets,admin_state,mtu_request,external_ids",
            "list",
            "Interface",
        )
        return ports, interfaces

    next_cfg = lab.vsctl(1, "get", "Open_vSwitch", ".", "next_cfg")
    before = snapshot()
    assert await lab.switches[1].realise(plan(1)) == []
    assert before == snapshot()
    assert next_cfg == lab.vsctl(1, "get", "Open_vSwitch", ".", "next_cfg")


async def test_an_agent_restart_keeps_the_daemons(lab: Lab) -> None:
    pids = {p.name: p.read_text() for p in (lab.directory / "node1").glob("*.pid")}
    again = await OvsRuntime.start(node_ns(1), lab.directory / "node1")
    assert again == lab.runtimes[1]
    assert pids == {p.name: p.read_text() for p in (lab.directory / "node1").glob("*.pid")}
    assert ping("a", "10.100.0.2")

    # ovs-vswitchd killed: the next start brings it back, and it rebuilds the switch from
    # the database; its flows (in memory only) are gone, and the secure bridge forwards
    # nothing until the driver puts them back.
    os.kill(int(pids["ovs-vswitchd.pid"]), signal.SIGKILL)
    wait_for(lambda: not lab.runtimes[1].running(), 10, "ovs-vswitchd to die")
    await OvsRuntime.start(node_ns(1), lab.directory / "node1")
    assert lab.runtimes[1].running()
    assert not ping("a", "10.100.0.2")
    assert await lab.switches[1].realise(plan(1)) == []
    wait_for(lambda: ping("a", "10.100.0.2"), 20, "a to reach b again")


async def test_link_down_and_a_port_removed_from_the_plan(lab: Lab) -> None:
    assert await lab.switches[1].realise(plan(1, down=("a",))) == []
    hta = await asyncio.to_thread(link, node_ns(1), "hta")
    assert hta is not None and not hta["flags"] & 1  # IFF_UP
    assert not ping("a", "10.100.0.2")

    assert await lab.switches[2].realise(plan(2, without=("b",))) == []
    state = lab.state(2)
    assert "htb" not in state.bridges[BRIDGE].ports and "htb" not in state.ports
    assert await asyncio.to_thread(link, node_ns(2), "htb")  # detached, never deleted
    assert state.ports["eth1"].trunks == (0,)  # VLAN 100 and 200 left node2's uplink


async def test_remove_takes_only_herons_bridges(lab: Lab) -> None:
    switch = lab.switches[1]
    lab.vsctl(1, "add-br", "operators", "--", "set", "Bridge", "operators", "datapath_type=netdev")
    assert await switch.owned() == {BRIDGE}
    await switch.remove("operators")
    await switch.remove(BRIDGE)
    assert set(lab.state(1).bridges) == {"operators"}
    assert await switch.owned() == set()
    for name in ("hta", "eth1"):  # its ports' devices stay
        assert await asyncio.to_thread(link, node_ns(1), name)
    assert await switch.realise(replace(plan(1), uplink="eth9")) == ["uplink eth9 does not exist"]
