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
    SecurityGroup,
    Switch,
    network_mtu,
    port_range,
    vlan_ranges,
)
from heron.models.node import Node
from heron.models.vm import VM, NicSpec
from heron.network.ipam import dhcp_server

PortMode = Literal["untagged", "access", "trunk"]
VXLAN_PORT = 4789
OWNED_PREFIXES = ("hb", "hx", "hv", "ht", "hd")
TAP_PREFIX = "ht"  # a VM NIC's tap: QEMU's, opened by the agent when the VM starts


def _short(text: str, length: int = 10) -> str:
    return hashlib.blake2s(text.encode(), digest_size=8).hexdigest()[:length]


def uplink_holds_addresses(uplink: str, addresses: Iterable[str]) -> str:
    """Why an interface carrying the host's own addresses is not taken as an uplink: as a
    port of a switch it would stop answering for them, and the node could cut itself off."""
    return (
        f"uplink {uplink} holds this host's address {', '.join(addresses)}: as a port of the "
        "switch it would stop answering there; move the address off it or name another "
        "interface"
    )


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
    return TAP_PREFIX + mac.replace(":", "")


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


ANYWHERE = "0.0.0.0/0"


@dataclass(frozen=True)
class FirewallRule:
    """One allowing rule of a NIC's groups, its remote group resolved to addresses."""

    direction: Literal["in", "out"]
    protocol: Literal["any", "tcp", "udp", "icmp"]
    remotes: tuple[str, ...]  # IPv4 networks; ANYWHERE for any
    ports: tuple[int, int] | None = None


@dataclass(frozen=True)
class PortFirewall:
    """What a NIC with security groups may do: send only from its MAC (and its address, when
    its network has a subnet), receive only what `rules` allow or replies; send anything unless
    `deny_out`, then only what the 'out' rules allow."""

    mac: str
    address: str | None
    rules: tuple[FirewallRule, ...] = ()
    deny_out: bool = False


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
    firewall: PortFirewall | None = None
    ingress_mbps: int | None = None  # what the VM receives
    egress_mbps: int | None = None  # what the VM sends

    @property
    def guarded(self) -> bool:
        """Whether it is filtered or rate limited."""
        return self.firewall is not None or bool(self.ingress_mbps or self.egress_mbps)


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


def link_owners(plan: NodePlan) -> dict[str, str]:
    """The switch each link of the plan belongs to, by link name: bridges, uplinks, VXLAN
    devices, the VMs' taps and the DHCP servers' links."""
    owners: dict[str, str] = {}
    for switch in plan.switches:
        named = [switch.bridge, *([switch.uplink] if switch.uplink else [])]
        for name in [*named, *(p.tap for p in switch.ports)]:
            owners[name] = switch.name
    for segment in plan.segments:
        for name in [segment.bridge, segment.device, *(p.tap for p in segment.ports)]:
            owners[name] = segment.switch
    for server in plan.dhcp:
        if server.bridge in owners:
            for name in server.links:
                owners[name] = owners[server.bridge]
    return owners


def dhcp_address(network: Network) -> str | None:
    """The address of `network`'s DHCP server, if it has one; never given to a NIC."""
    server = dhcp_server(network.subnet) if network.subnet else None
    return str(server) if server else None


def group_members(vms: Iterable[VM]) -> dict[str, tuple[str, ...]]:
    """The addresses of each security group's NICs (in the whole cluster), sorted."""
    members: dict[str, set[str]] = {}
    for vm in vms:
        for nic in vm.spec.nics:
            for group in nic.security_groups:
                if nic.address:
                    members.setdefault(group, set()).add(nic.address)
    return {g: tuple(sorted(a, key=ipaddress.IPv4Address)) for g, a in members.items()}


def port_firewall(
    nic: NicSpec,
    groups: Mapping[str, SecurityGroup],
    members: Mapping[str, tuple[str, ...]],
) -> tuple[PortFirewall | None, list[str]]:
    """A NIC's firewall from its groups (None without groups: no filtering), and the names it
    gives that are not groups (left out: the NIC gets less, never more)."""
    if not nic.security_groups or nic.mac is None:
        return None, []
    missing: list[str] = []
    rules: list[FirewallRule] = []
    for name in nic.security_groups:
        group = groups.get(name)
        if group is None:
            missing.append(name)
            continue
        for rule in group.rules:
            if rule.remote_group is not None:
                if rule.remote_group not in groups:
                    missing.append(rule.remote_group)
                remotes = tuple(f"{a}/32" for a in members.get(rule.remote_group, ()))
                if not remotes:
                    continue  # a group without addresses matches nothing
            else:
                remotes = (rule.remote or ANYWHERE,)
            ports = port_range(rule.ports) if rule.ports else None
            found = FirewallRule(rule.direction, rule.protocol, remotes, ports)
            if found not in rules:
                rules.append(found)
    deny_out = any(
        r.direction == "out"
        for name in nic.security_groups
        if name in groups
        for r in groups[name].rules
    )
    firewall = PortFirewall(nic.mac, nic.address, tuple(rules), deny_out)
    return firewall, sorted(set(missing))


def plan_node(
    node: str,
    switches: Mapping[str, Switch],
    networks: Mapping[str, Network],
    nodes: Mapping[str, Node],
    vms: Iterable[VM],
    security_groups: Mapping[str, SecurityGroup] | None = None,
) -> NodePlan:
    """What `node` must build: every switch (so its uplink carries the VLANs at once), and the
    segments and DHCP servers of the networks its VMs' NICs use, each NIC's port with its
    firewall and rate limits."""
    problems: list[str] = []
    vms = list(vms)
    groups = security_groups or {}
    members = group_members(vms)
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
            firewall, missing = port_firewall(nic, groups, members)
            if missing:
                problems.append(
                    f"VM {vm.spec.name} NIC {index}: no security group {', '.join(missing)}"
                )
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
                    firewall=firewall,
                    ingress_mbps=nic.ingress_mbps,
                    egress_mbps=nic.egress_mbps,
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


@dataclass(frozen=True)
class Filtering:
    """What the firewall and shaping drivers get from a node's plan: the ports of its Linux
    bridges (every VXLAN segment's too) by switch, and those bridges. Open vSwitch ports are
    not among them: the userspace datapath reads a tap before the kernel's hooks, so the OVS
    driver filters and limits them itself, with OpenFlow (ovs_flows)."""

    ports: dict[str, tuple[Port, ...]]
    bridges: tuple[str, ...]


def filtering(plan: NodePlan) -> Filtering:
    ports: dict[str, list[Port]] = {}
    bridges: list[str] = []
    for switch in plan.switches:
        if switch.backend == "bridge":
            ports.setdefault(switch.name, []).extend(switch.ports)
            bridges.append(switch.bridge)
    for segment in plan.segments:
        ports.setdefault(segment.switch, []).extend(segment.ports)
        bridges.append(segment.bridge)
    return Filtering({k: tuple(v) for k, v in ports.items()}, tuple(bridges))
