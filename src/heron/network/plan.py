"""What one node must build for the cluster's switches: pure, from the ConfigDB's records.

The agent computes a NodePlan from the switches, networks, live nodes and the VMs that run on
it, and hands its parts to the drivers (a bridge or Open vSwitch per switch, a kernel VXLAN
device and bridge per overlay segment in use, a DHCP server per network with local NICs).
Every kernel object's name is derived here, short enough for Linux (15 bytes), and prefixed so
the agent recognises what it owns and never touches anything else.
"""

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from heron.models.network import (
    BUILTIN_NETWORKS,
    Network,
    Switch,
    network_mtu,
    vlan_ranges,
)
from heron.models.node import Node
from heron.models.vm import VM
from heron.network.ipam import dhcp_server

PortMode = Literal["untagged", "access", "trunk"]
VXLAN_PORT = 4789
OWNED_PREFIXES = ("hb", "hx", "hv", "ht", "hd")


def _short(text: str, length: int = 10) -> str:
    return hashlib.blake2s(text.encode(), digest_size=8).hexdigest()[:length]


def switch_bridge(switch: str) -> str:
    """The bridge (kernel or OVS) realising `switch` on a node."""
    return "hb" + _short(switch)


def segment_bridge(vni: int) -> str:
    return f"hx{vni:x}"


def segment_device(vni: int) -> str:
    return f"hv{vni:x}"


def tap_name(mac: str) -> str:
    """A NIC's tap, named after its MAC (unique in the cluster), so it keeps its name when
    other NICs of the VM come and go."""
    return "ht" + mac.replace(":", "")


def dhcp_namespace(network: str) -> str:
    """The network namespace a network's DHCP server lives in, apart from the host's routes."""
    return "hd-" + network


def dhcp_link(network: str) -> tuple[str, str]:
    """The veth pair between the DHCP namespace (second) and the network's bridge (first)."""
    short = _short(network)
    return "hd" + short, "hd" + short + "n"


def dhcp_mac(network: str) -> str:
    """One MAC for a network's DHCP server on every node (locally administered, unicast):
    each node's server answers only its own NICs and never reaches another node, so the guests
    see one server wherever they run, and a lease renewed after a migration finds it."""
    digits = hashlib.blake2s(network.encode(), digest_size=4).hexdigest()
    return "02:48:" + ":".join(digits[i : i + 2] for i in range(0, 8, 2))


@dataclass(frozen=True)
class Port:
    """A port of a bridge on this node: a VM NIC's tap, or (isolated) the bridge end of a
    DHCP server's link. Isolated ports, like the uplinks and VXLAN devices, never forward to
    one another (the bridge's `isolated` flag, OVS's `protected`): a DHCP server talks only
    to the VMs of its own node."""

    tap: str
    vm: str
    nic: int
    mac: str
    mode: PortMode
    vlan: int | None = None
    trunk: tuple[tuple[int, int], ...] = ()
    address: str | None = None
    mtu: int = 1500
    link_up: bool = True
    isolated: bool = False


@dataclass(frozen=True)
class SwitchPlan:
    """A switch on this node: its bridge, the node's uplink and the VM ports on its VLANs."""

    name: str
    backend: str
    bridge: str
    uplink: str | None
    mtu: int
    ports: tuple[Port, ...] = ()


@dataclass(frozen=True)
class Segment:
    """A VXLAN segment with NICs on this node: its own bridge and kernel VXLAN device, sending
    broadcast and unknown frames to every peer node (head-end replication, no multicast)."""

    network: str
    switch: str
    vni: int
    bridge: str
    device: str
    local: str
    peers: tuple[str, ...]
    mtu: int
    ports: tuple[Port, ...] = ()


@dataclass(frozen=True)
class DhcpHost:
    mac: str
    address: str
    hostname: str


@dataclass(frozen=True)
class DhcpServer:
    """A network's DHCP server on this node, answering only the NICs of this node's VMs."""

    network: str
    namespace: str
    bridge: str
    vlan: int | None
    links: tuple[str, str]
    address: str  # with prefix length, e.g. 10.1.0.254/24
    mac: str
    router: str | None
    dns: tuple[str, ...]
    mtu: int
    lease_seconds: int
    hosts: tuple[DhcpHost, ...]


@dataclass(frozen=True)
class NodePlan:
    switches: tuple[SwitchPlan, ...] = ()
    segments: tuple[Segment, ...] = ()
    dhcp: tuple[DhcpServer, ...] = ()
    problems: tuple[str, ...] = field(default=())


def dhcp_address(network: Network) -> str | None:
    """The address of `network`'s DHCP server, if it has one; never given to a NIC."""
    server = dhcp_server(network.subnet) if network.subnet else None
    return str(server) if server else None


def plan_node(
    node: str,
    switches: Mapping[str, Switch],
    networks: Mapping[str, Network],
    nodes: Mapping[str, Node],
    vms: Iterable[VM],
) -> NodePlan:
    """What `node` must build: every switch (so its uplink carries the VLANs at once), and the
    segments and DHCP servers of the networks its VMs' NICs use."""
    problems: list[str] = []
    ports: dict[str, list[Port]] = {}  # by network
    hosts: dict[str, list[DhcpHost]] = {}
    for vm in sorted(vms, key=lambda v: v.id):
        if vm.node != node:
            continue
        for index, nic in enumerate(vm.spec.nics):
            if nic.network in BUILTIN_NETWORKS:
                continue
            network = networks.get(nic.network)
            switch = switches.get(network.switch) if network else None
            if network is None or switch is None or nic.mac is None:
                problems.append(f"VM {vm.spec.name} NIC {index}: no network {nic.network}")
                continue
            mode: PortMode = {"vlan": "access", "trunk": "trunk"}.get(network.kind, "untagged")  # type: ignore[assignment]
            ports.setdefault(network.name, []).append(
                Port(
                    tap=tap_name(nic.mac),
                    vm=vm.id,
                    nic=index,
                    mac=nic.mac,
                    mode=mode,
                    vlan=network.vlan,
                    trunk=tuple(vlan_ranges(network.trunk)),
                    address=nic.address,
                    mtu=network_mtu(network, switch),
                    link_up=nic.link_up,
                )
            )
            if nic.address:
                hosts.setdefault(network.name, []).append(
                    DhcpHost(nic.mac, nic.address, f"{vm.spec.name}")
                )
    for name in sorted(ports):
        network = networks[name]
        server = dhcp_address(network)
        if server is not None:
            ports[name].append(
                Port(
                    tap=dhcp_link(name)[0],
                    vm="",
                    nic=-1,
                    mac=dhcp_mac(name),
                    mode="access" if network.kind == "vlan" else "untagged",
                    vlan=network.vlan,
                    mtu=ports[name][0].mtu,
                    isolated=True,
                )
            )
    local = nodes[node].underlay if node in nodes else None
    peers = tuple(sorted(n.underlay for name, n in nodes.items() if name != node and n.underlay))
    switch_plans = []
    for switch in sorted(switches.values(), key=lambda s: s.name):
        on_switch = [
            p
            for net in networks.values()
            if net.switch == switch.name and net.kind != "vxlan"
            for p in ports.get(net.name, [])
        ]
        switch_plans.append(
            SwitchPlan(
                name=switch.name,
                backend=switch.backend,
                bridge=switch_bridge(switch.name),
                uplink=switch.uplinks.get(node),
                mtu=switch.mtu,
                ports=tuple(on_switch),
            )
        )
    segments = []
    dhcp = []
    for name in sorted(ports):
        network = networks[name]
        switch = switches[network.switch]
        bridge = switch_bridge(switch.name)
        if network.kind == "vxlan":
            assert network.vni is not None
            if local is None:
                problems.append(f"network {name}: this node has no underlay address for VXLAN")
                continue
            bridge = segment_bridge(network.vni)
            segments.append(
                Segment(
                    network=name,
                    switch=switch.name,
                    vni=network.vni,
                    bridge=bridge,
                    device=segment_device(network.vni),
                    local=local,
                    peers=peers,
                    mtu=network_mtu(network, switch),
                    ports=tuple(ports[name]),
                )
            )
        server = dhcp_address(network)
        if server is None or network.subnet is None:
            continue
        prefix = ipaddress.IPv4Network(network.subnet.cidr).prefixlen
        dhcp.append(
            DhcpServer(
                network=name,
                namespace=dhcp_namespace(name),
                bridge=bridge,
                vlan=network.vlan if network.kind == "vlan" else None,
                links=dhcp_link(name),
                address=f"{server}/{prefix}",
                mac=dhcp_mac(name),
                router=network.subnet.gateway,
                dns=tuple(network.subnet.dns),
                mtu=network_mtu(network, switch),
                lease_seconds=network.subnet.lease_seconds,
                hosts=tuple(hosts.get(name, [])),
            )
        )
    return NodePlan(tuple(switch_plans), tuple(segments), tuple(dhcp), tuple(problems))
