"""Networking: distributed switches, their port groups (networks), subnets and addresses.

A switch is defined once and realised on every node by its agent (a bridge or an Open vSwitch
bridge with the node's own uplink). A VM's NIC attaches to a network: a port group of a switch
that is untagged, one VLAN, a trunk of VLANs, or a VXLAN overlay segment carried between the
nodes' underlay addresses.
"""

import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, model_validator

from heron.models.common import Name, Record, matching, string_schema

Backend = Literal["bridge", "ovs"]
NetworkKind = Literal["untagged", "vlan", "trunk", "vxlan"]

# A Linux interface name: at most 15 bytes, no '/' or whitespace.
IFNAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,15}$"
IfName = Annotated[
    str,
    AfterValidator(
        matching(IFNAME_PATTERN, "is not an interface name (1-15 of A-Z a-z 0-9 _ . : -)")
    ),
    string_schema(IFNAME_PATTERN, 1, 15),
]
VLAN_RANGE_PATTERN = r"^[0-9]{1,4}(-[0-9]{1,4})?$"
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
MIN_MTU, MAX_MTU = 576, 9216
# Names a NIC's network may take besides a network's: QEMU's user-mode NAT, and no link.
BUILTIN_NETWORKS = ("user", "none")


def _vlan_range(value: str) -> str:
    matching(VLAN_RANGE_PATTERN, "must be a VLAN (1-4094) or a range like 100-199")(value)
    low, _, high = value.partition("-")
    first, last = int(low), int(high or low)
    if not 1 <= first <= last <= 4094:
        raise ValueError("must be a VLAN (1-4094) or a range like 100-199, low to high")
    return value


VlanRange = Annotated[str, AfterValidator(_vlan_range), string_schema(VLAN_RANGE_PATTERN, 1, 9)]


def vlan_ranges(trunk: list[str]) -> list[tuple[int, int]]:
    """The trunk's VLANs as sorted, merged (first, last) ranges."""
    spans = sorted((int(a), int(b or a)) for a, _, b in (r.partition("-") for r in trunk))
    merged: list[tuple[int, int]] = []
    for first, last in spans:
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError as exc:
        raise ValueError("is not an IPv4 address") from exc


def _cidr(value: str) -> str:
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"is not an IPv4 network like 10.1.0.0/24 ({exc})") from exc
    if net.prefixlen > 30:
        raise ValueError("leaves no room for VMs: at most /30")
    return str(net)


IPv4 = Annotated[str, AfterValidator(_ipv4), Field(examples=["10.1.0.10"])]
Cidr = Annotated[str, AfterValidator(_cidr), Field(examples=["10.1.0.0/24"])]


class AddressRange(Record):
    first: IPv4
    last: IPv4


class Subnet(Record):
    """The addresses of a network: its NICs get theirs from `ranges` (or the whole CIDR),
    recorded in the ConfigDB, and DHCP on every node hands each guest its own."""

    cidr: Cidr
    gateway: IPv4 | None = Field(default=None, description="router the guests are told of")
    dns: list[IPv4] = Field(default_factory=list, max_length=3)
    ranges: list[AddressRange] = Field(
        default_factory=list, max_length=16, description="where addresses come from; empty: all"
    )
    dhcp: bool = Field(default=True, description="serve the addresses by DHCP on every node")
    lease_seconds: int = Field(default=3600, ge=120, le=7 * 86400)

    @model_validator(mode="after")
    def _inside(self) -> "Subnet":
        net = ipaddress.IPv4Network(self.cidr)
        hosts = (net.network_address + 1, net.broadcast_address - 1)

        def check(address: str, what: str) -> None:
            if not hosts[0] <= ipaddress.IPv4Address(address) <= hosts[1]:
                raise ValueError(f"{what} {address} is not a host address of {self.cidr}")

        if self.gateway:
            check(self.gateway, "gateway")
        for span in self.ranges:
            check(span.first, "range start")
            check(span.last, "range end")
            if ipaddress.IPv4Address(span.first) > ipaddress.IPv4Address(span.last):
                raise ValueError(f"range {span.first}-{span.last} runs backwards")
        return self


class SwitchCreate(BaseModel):
    model_config = {"extra": "forbid"}
    name: Name
    backend: Backend = Field(
        default="bridge", description="a VLAN-aware Linux bridge, or Open vSwitch"
    )
    mtu: int = Field(default=1500, ge=MIN_MTU, le=MAX_MTU, description="of the uplinks")
    uplinks: dict[Name, IfName] = Field(
        default_factory=dict,
        description="node → its physical interface or bond; a node without one keeps the "
        "switch's VLANs to itself (overlay segments still cross nodes)",
    )
    description: str = Field(default="", max_length=1024)


class Switch(Record):
    name: Name
    backend: Backend
    mtu: int
    uplinks: dict[Name, IfName]
    description: str = ""
    created_at: float


class SwitchUpdate(BaseModel):
    """What may change on a switch in use; the backend may not (recreate the switch)."""

    model_config = {"extra": "forbid"}
    mtu: int | None = Field(default=None, ge=MIN_MTU, le=MAX_MTU)
    uplinks: dict[Name, IfName] | None = None
    description: str | None = Field(default=None, max_length=1024)


class NetworkCreate(BaseModel):
    """A port group: how a NIC attached to it reaches the wire."""

    model_config = {"extra": "forbid"}
    name: Name
    switch: Name
    kind: NetworkKind = "untagged"
    vlan: int | None = Field(default=None, ge=1, le=4094, description="of a vlan network")
    trunk: list[VlanRange] = Field(
        default_factory=list, max_length=64, description="VLANs a trunk passes, e.g. 100-199"
    )
    vni: int | None = Field(default=None, ge=1, le=2**24 - 1, description="of a vxlan segment")
    mtu: int | None = Field(
        default=None,
        ge=MIN_MTU,
        le=MAX_MTU,
        description="the guests' MTU; default: the switch's, less 50 on a vxlan segment",
    )
    subnet: Subnet | None = None
    description: str = Field(default="", max_length=1024)

    @model_validator(mode="after")
    def _kind(self) -> "NetworkCreate":
        wants = {"vlan": "vlan", "trunk": "trunk", "vxlan": "vni"}
        for kind, field in wants.items():
            given = bool(getattr(self, field))
            if given and self.kind != kind:
                raise ValueError(f"{field} is only for a {kind} network")
            if not given and self.kind == kind:
                raise ValueError(f"a {kind} network needs {field}")
        if self.kind == "trunk" and self.subnet is not None:
            raise ValueError("a trunk carries many networks: it has no subnet")
        return self


class Network(Record):
    name: Name
    switch: Name
    kind: NetworkKind
    vlan: int | None = None
    trunk: list[VlanRange] = Field(default_factory=list)
    vni: int | None = None
    mtu: int | None = None
    subnet: Subnet | None = None
    description: str = ""
    created_at: float


class NetworkUpdate(BaseModel):
    """What may change while NICs use a network: its description, MTU and subnet settings
    (the CIDR only while no address is given out)."""

    model_config = {"extra": "forbid"}
    mtu: int | None = Field(
        default=None, ge=MIN_MTU, le=MAX_MTU, description="null: back to the switch's default"
    )
    subnet: Subnet | None = Field(default=None, description="null: no subnet, no DHCP")
    description: str | None = Field(default=None, max_length=1024)


def network_mtu(network: Network, switch: Switch) -> int:
    """The MTU the guests of `network` get."""
    if network.mtu is not None:
        return network.mtu
    return switch.mtu - VXLAN_OVERHEAD if network.kind == "vxlan" else switch.mtu


class SwitchState(Record):
    """How one switch stands on one node."""

    in_sync: bool
    problems: list[str] = Field(default_factory=list)
    ports: int = Field(default=0, description="VM NICs plugged in on this node")
    repaired: list[str] = Field(
        default_factory=list,
        description="what the node last put back that had changed behind its back (drift)",
    )
    repaired_at: float | None = Field(default=None, description="when it did")


class NodeNetworkStatus(Record):
    """Written by each node: whether it has realised every switch as the ConfigDB says."""

    node: Name
    switches: dict[Name, SwitchState] = Field(default_factory=dict)
    underlay: str | None = Field(default=None, description="the node's VXLAN tunnel address")
    updated_at: float
    node_up: bool = Field(
        default=True, description="false: the node is down, this is its last word (stale)"
    )


class Lease(Record):
    """An address of a network given to a NIC, kept as an index key beside the VM."""

    vm: str
    nic: int
    mac: str


# -- security groups ---------------------------------------------------------------------

Direction = Literal["in", "out"]
Protocol = Literal["any", "tcp", "udp", "icmp"]
PORTS_PATTERN = r"^[0-9]{1,5}(-[0-9]{1,5})?$"


def _ports(value: str) -> str:
    matching(PORTS_PATTERN, "must be a port (1-65535) or a range like 1000-2000")(value)
    low, _, high = value.partition("-")
    if not 1 <= int(low) <= int(high or low) <= 65535:
        raise ValueError("must be a port (1-65535) or a range like 1000-2000, low to high")
    return value


def port_range(ports: str) -> tuple[int, int]:
    low, _, high = ports.partition("-")
    return int(low), int(high or low)


def _remote(value: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"is not an IPv4 network like 10.1.0.0/24 or an address ({exc})") from exc


PortRange = Annotated[str, AfterValidator(_ports), string_schema(PORTS_PATTERN, 1, 11)]
Remote = Annotated[str, AfterValidator(_remote), Field(examples=["10.1.0.0/24", "0.0.0.0/0"])]


class Rule(Record):
    """What a security group lets through: traffic of `protocol` (to `ports`, for tcp and udp)
    from (in) or to (out) `remote` or the addresses of `remote_group`'s NICs; from or to
    anywhere when neither is given."""

    direction: Direction = "in"
    protocol: Protocol = "any"
    ports: PortRange | None = Field(default=None, description="tcp/udp: '22' or '1000-2000'")
    remote: Remote | None = Field(default=None, description="an IPv4 network or address")
    remote_group: Name | None = Field(
        default=None, description="a security group: the addresses of its members' NICs"
    )
    description: str = Field(default="", max_length=256)

    @model_validator(mode="after")
    def _consistent(self) -> "Rule":
        if self.ports is not None and self.protocol not in ("tcp", "udp"):
            raise ValueError("ports are only for tcp and udp")
        if self.remote is not None and self.remote_group is not None:
            raise ValueError("give remote or remote_group, not both")
        return self


class SecurityGroupCreate(BaseModel):
    model_config = {"extra": "forbid"}
    name: Name
    description: str = Field(default="", max_length=1024)
    rules: list[Rule] = Field(default_factory=list, max_length=256)


class SecurityGroup(Record):
    """Stateful rules for the NICs naming it: inbound, only what a rule of one of the NIC's
    groups allows (and replies to what the NIC sent); outbound, everything unless the groups
    have 'out' rules, then only what those allow."""

    name: Name
    description: str = ""
    rules: list[Rule] = Field(default_factory=list)
    created_at: float


class SecurityGroupUpdate(BaseModel):
    """A new description, or a new list of rules replacing the old."""

    model_config = {"extra": "forbid"}
    description: str | None = Field(default=None, max_length=1024)
    rules: list[Rule] | None = Field(default=None, max_length=256)
