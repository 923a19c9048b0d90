"""What must change in Open vSwitch for a switch's bridge to match its plan: pure, from the
plan, the database's state and the kernel's links, as ovs-vsctl commands for one transaction.

Only what differs is changed (a column at a time), so a bridge in sync gets no command at all
and a running VM's port is never reconfigured, let alone detached.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from heron.network import ovsdb
from heron.network.plan import Port, SwitchPlan, uplink_holds_addresses

OWNER = f"external_ids:{ovsdb.OWNER_KEY}=true"
# Without flows a secure bridge forwards nothing, where a standalone one forwards everything
# (NORMAL): when ovs-vswitchd starts again, its flows (kept in memory only) are gone until
# the driver puts them back, and a filtered port must not be open meanwhile. Heron's flows
# include the NORMAL a bridge would otherwise have (ovs_flows).
SECURE = "fail_mode=secure"
# Where the peer of a veth port has had its TX checksum offload turned off, the port's
# interface records the veth's ifindex: a veth made again under the same name (its peer
# with offload on again) has another one.
OFFLOAD_KEY = "heron-tx-csum-off"
# 802.1Q reserves VLAN 4095: no frame carries it. A trunk of it alone carries nothing, where
# an empty `trunks` would carry every VLAN.
NO_VLAN = 4095
UNTAGGED = 0  # OVS's VLAN of frames without an 802.1Q header


@dataclass(frozen=True)
class Link:
    """A kernel network interface of the data plane, as far as the switch cares."""

    name: str
    index: int
    kind: str = ""  # "veth", "tun", ... ("" for a physical NIC)
    up: bool = False
    peer: int | None = None  # a veth's other end: its ifindex
    peer_netnsid: int | None = None  # and its namespace's id here, if not this one
    addresses: tuple[str, ...] = ()  # the host's own (global scope), as address/prefix


@dataclass(frozen=True)
class PortConfig:
    """The VLAN settings of an OVS port (the columns of the Port table Heron sets)."""

    tag: int | None = None
    trunks: tuple[int, ...] = ()
    vlan_mode: str | None = None
    protected: bool = False


@dataclass
class Sync:
    """The changes making a bridge match its plan."""

    commands: list[list[str]] = field(default_factory=list)  # ovs-vsctl, one transaction
    links_up: list[str] = field(default_factory=list)
    links_down: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def expand(ranges: Iterable[tuple[int, int]]) -> tuple[int, ...]:
    return tuple(sorted({vlan for first, last in ranges for vlan in range(first, last + 1)}))


def port_config(port: Port) -> PortConfig:
    """A VM's (or DHCP server's) port. An untagged port is an access port of VLAN 0: a port
    with neither tag nor trunks would be a trunk of every VLAN, seeing all their frames."""
    if port.mode == "access":
        assert port.vlan is not None
        return PortConfig(tag=port.vlan, vlan_mode="access", protected=port.isolated)
    if port.mode == "trunk":
        return PortConfig(trunks=expand(port.trunk), vlan_mode="trunk", protected=port.isolated)
    return PortConfig(tag=UNTAGGED, vlan_mode="access", protected=port.isolated)


def uplink_config(ports: Iterable[Port]) -> PortConfig:
    """The uplink: a trunk of exactly the VLANs the ports use (0 for untagged frames), and
    protected like every port that is not a VM's, so that nothing is forwarded from the
    fabric back to it."""
    vlans: set[int] = set()
    for port in ports:
        config = port_config(port)
        vlans.update(config.trunks or (config.tag or UNTAGGED,))
    return PortConfig(trunks=tuple(sorted(vlans)) or (NO_VLAN,), vlan_mode="trunk", protected=True)


def current_config(port: ovsdb.Port) -> PortConfig:
    return PortConfig(port.tag, port.trunks, port.vlan_mode, port.protected)


def _set(value: int | str | bool | tuple[int, ...] | None) -> str:
    if value is None:
        return "[]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def port_settings(want: PortConfig, have: PortConfig | None = None) -> list[str]:
    """The `column=value` arguments turning `have` (all of them for a new port) into `want`."""
    settings = []
    for column in ("tag", "trunks", "vlan_mode", "protected"):
        value = getattr(want, column)
        if have is None or getattr(have, column) != value:
            settings.append(f"{column}={_set(value)}")
    return settings


def veth_fixes(
    plan: SwitchPlan, state: ovsdb.State, links: Mapping[str, Link], datapath_type: str
) -> list[str]:
    """The veth ports of the plan (VMs', DHCP servers', the uplink) whose peer may still send
    with TX checksum offload on.

    In the userspace (netdev) datapath, ovs-vswitchd reads a port's frames with a packet
    socket. A frame from a peer with checksum offload on arrives there with its TCP/UDP
    checksum not yet computed (the kernel leaves that to a NIC), and the datapath forwards it
    as it is: the receiver drops it. Pings work, TCP does not. Turning offload off on the
    sending end, the veth's peer, makes its kernel compute the checksum. (The kernel datapath
    completes such checksums itself; QEMU's taps are the guest's to configure.)"""
    if datapath_type != "netdev":
        return []
    fixes = []
    # An uplink that is a veth (a devcluster node's, into its fabric) is one too.
    for name in [*(port.tap for port in plan.ports), *([plan.uplink] if plan.uplink else [])]:
        link = links.get(name)
        if link is None or link.kind != "veth":
            continue
        interface = state.interfaces.get(name)
        marked = interface.external_ids.get(OFFLOAD_KEY) if interface else None
        if marked != str(link.index):
            fixes.append(name)
    return fixes


def plan_sync(
    plan: SwitchPlan,
    state: ovsdb.State,
    links: Mapping[str, Link],
    datapath_type: str,
    offloaded: Mapping[str, int] | None = None,
) -> Sync:
    """The commands, link changes and problems that make `plan.bridge` match `plan`.

    `links` are the data plane's kernel interfaces; `offloaded` the veth ports (by name, with
    their ifindex) whose peer has just had TX checksum offload turned off, to be recorded."""
    sync = Sync()
    bridge = state.bridges.get(plan.bridge)
    if bridge is None:
        sync.commands.append(["--may-exist", "add-br", plan.bridge])
        sync.commands.append(
            ["set", "Bridge", plan.bridge, f"datapath_type={datapath_type}", SECURE, OWNER]
        )
    else:
        changes = (
            [] if bridge.datapath_type == datapath_type else [f"datapath_type={datapath_type}"]
        )
        if bridge.fail_mode != "secure":
            changes.append(SECURE)  # OVS flushes the bridge's flows: the driver puts them back
        if not bridge.owned:
            changes.append(OWNER)
        if changes:
            sync.commands.append(["set", "Bridge", plan.bridge, *changes])
    _mtu(sync, state, plan.bridge, plan.mtu)
    on_bridge = set(bridge.ports) if bridge else set()

    wanted: dict[str, tuple[PortConfig, int]] = {}
    for port in plan.ports:
        link = links.get(port.tap)
        if link is None and port.tap not in on_bridge:
            continue  # its VM has not started yet: QEMU makes the tap
        wanted[port.tap] = (port_config(port), port.mtu)
        if link is not None and link.up != port.link_up:
            (sync.links_up if port.link_up else sync.links_down).append(port.tap)
    if plan.uplink is not None:
        uplink = links.get(plan.uplink)
        other = state.ports.get(plan.uplink)
        if other is not None and other.bridge not in (None, plan.bridge):
            sync.problems.append(f"uplink {plan.uplink} is already a port of bridge {other.bridge}")
        elif uplink is not None and uplink.addresses and plan.uplink not in on_bridge:
            sync.problems.append(uplink_holds_addresses(plan.uplink, uplink.addresses))
        else:
            if uplink is None:
                sync.problems.append(f"uplink {plan.uplink} does not exist")
            elif not uplink.up:
                sync.links_up.append(plan.uplink)
            if uplink is not None or plan.uplink in on_bridge:
                wanted[plan.uplink] = (uplink_config(plan.ports), plan.mtu)

    for name in sorted(on_bridge - set(wanted) - {plan.bridge}):
        if state.ports[name].owned:
            sync.commands.append(["del-port", plan.bridge, name])
    for name, (config, mtu) in wanted.items():
        have = state.ports.get(name)
        if have is not None and have.bridge == plan.bridge:
            settings = port_settings(config, current_config(have))
            if not have.owned:
                settings.append(OWNER)
            if settings:
                sync.commands.append(["set", "Port", name, *settings])
        else:
            if have is not None:
                # A NIC moved to another switch: OVS has one port of a name, on one bridge.
                sync.commands.append(["--if-exists", "del-port", name])
            sync.commands.append(
                ["--may-exist", "add-port", plan.bridge, name, *port_settings(config), OWNER]
            )
        _mtu(sync, state, name, mtu)
    for name, index in sorted((offloaded or {}).items()):
        sync.commands.append(["set", "Interface", name, f"external_ids:{OFFLOAD_KEY}={index}"])
    return sync


def _mtu(sync: Sync, state: ovsdb.State, interface: str, mtu: int) -> None:
    have = state.interfaces.get(interface)
    if have is None or have.mtu_request != mtu:
        sync.commands.append(["set", "Interface", interface, f"mtu_request={mtu}"])


def transaction(commands: list[list[str]]) -> list[str]:
    """One ovs-vsctl transaction of `commands` (its arguments after the global options)."""
    return [arg for command in commands for arg in ("--", *command)]
