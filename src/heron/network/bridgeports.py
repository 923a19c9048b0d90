"""The ports of a Linux bridge: what each should be, and the changes that get it there (pure).

A driver reads the links of its plane (LinkState) and, where the bridge filters VLANs, each
port's VLANs; `port_changes` compares that with the wanted ports and lists the changes in the
order that is safe for running VMs: a port is enslaved, flagged and given its VLANs before it
is brought up, so a new tap never forwards on the wrong VLAN, and a port that already matches
gets no change at all. The VLAN changes are single netlink messages (`vlan_spec`): ranges
of VLANs travel as a begin/end pair, so a trunk of thousands costs one request.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from heron.network.plan import Port, SwitchPlan, uplink_holds_addresses

# struct bridge_vlan_info flags (linux/if_bridge.h)
PVID = 0x2
UNTAGGED = 0x4
RANGE_BEGIN = 0x8
RANGE_END = 0x10
# What a port gets from the kernel the moment it is enslaved: the bridge's default_pvid
# (left at 1), untagged.
DEFAULT_PVID = 1
NATIVE = PVID | UNTAGGED

Vlans = Mapping[int, int]  # VLAN id → PVID/UNTAGGED flags


@dataclass(frozen=True)
class LinkState:
    """One link of the plane as the kernel reports it."""

    name: str
    index: int
    kind: str | None = None
    master: int | None = None
    mtu: int = 1500
    up: bool = False
    alias: str | None = None
    isolated: bool = False
    addresses: tuple[str, ...] = ()  # the host's own (global scope), as address/prefix


@dataclass(frozen=True)
class WantedPort:
    """How one port of a bridge must be: `vlans` is None on a bridge without VLAN filtering."""

    name: str
    mtu: int
    up: bool = True
    isolated: bool = False
    vlans: Vlans | None = None


@dataclass(frozen=True)
class Enslave:
    port: str
    bridge: str


@dataclass(frozen=True)
class Release:
    port: str


@dataclass(frozen=True)
class SetMtu:
    link: str
    mtu: int


@dataclass(frozen=True)
class SetIsolated:
    port: str
    isolated: bool


@dataclass(frozen=True)
class AddVlans:
    """Add (or change the flags of) VLANs: one RTM_SETLINK of the AF_BRIDGE family."""

    port: str
    entries: tuple[tuple[int, int], ...]  # (flags, vid), ranges as begin/end pairs


@dataclass(frozen=True)
class DelVlans:
    """Remove VLANs: one RTM_DELLINK of the AF_BRIDGE family."""

    port: str
    entries: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class SetUp:
    link: str
    up: bool


Change = Enslave | Release | SetMtu | SetIsolated | AddVlans | DelVlans | SetUp


@dataclass(frozen=True)
class SwitchPorts:
    """The wanted ports of a switch's bridge on this node, and why some cannot be."""

    ports: tuple[WantedPort, ...]
    problems: tuple[str, ...] = field(default=())


def port_vlans(port: Port) -> dict[int, int]:
    """The VLANs a VM's port carries: untagged on VLAN 1 (the bridge's default), one VLAN as
    its PVID untagged (access), or its trunk's VLANs tagged."""
    if port.mode == "access" and port.vlan is not None:
        return {port.vlan: NATIVE}
    if port.mode == "trunk":
        return {vid: 0 for first, last in port.trunk for vid in range(first, last + 1)}
    return {DEFAULT_PVID: NATIVE}


def uplink_vlans(ports: Iterable[Port]) -> dict[int, int]:
    """The uplink carries VLAN 1 untagged (the untagged networks) and, tagged, every VLAN a
    port of this node uses."""
    vlans = {DEFAULT_PVID: NATIVE}
    for port in ports:
        for vid in port_vlans(port):
            vlans.setdefault(vid, 0)
    return vlans


def _describe(port: Port) -> str:
    if port.vm:
        return f"port {port.tap} (VM {port.vm} NIC {port.nic})"
    return f"port {port.tap}"


def _vlan_text(port: Port) -> str:
    if port.mode == "access":
        return f"VLAN {port.vlan} needs"
    spans = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in port.trunk)
    return f"VLANs {spans} need"


def switch_ports(
    plan: SwitchPlan, vlan_filtering: bool, links: Mapping[str, LinkState]
) -> SwitchPorts:
    """The ports of `plan`'s bridge that can be realised now: its uplink, and the ports whose
    taps exist (the others are attached once QEMU has opened them). On a kernel whose bridges
    cannot filter VLANs, a VLAN or trunk port is left out with a problem: attached anyway, it
    would join the untagged network. An uplink that already serves another master (the
    host's own bridge or bond, another switch) or holds the host's addresses is left alone
    with a problem: taking it could cut the host off."""
    problems: list[str] = []
    wanted: list[WantedPort] = []
    usable: list[Port] = []
    for port in plan.ports:
        needs_vlans = port.mode in ("access", "trunk")
        if needs_vlans and not vlan_filtering:
            problems.append(
                f"{_describe(port)}: this kernel's bridges cannot filter VLANs: "
                f"{_vlan_text(port)} the ovs backend here"
            )
            continue
        usable.append(port)
        if port.tap in links:
            wanted.append(
                WantedPort(
                    name=port.tap,
                    mtu=port.mtu,
                    up=port.link_up,
                    isolated=port.isolated,
                    vlans=port_vlans(port) if vlan_filtering else None,
                )
            )
    if plan.uplink is not None:
        uplink = links.get(plan.uplink)
        bridge = links.get(plan.bridge)
        if uplink is None:
            problems.insert(0, f"uplink {plan.uplink} does not exist")
        elif uplink.master is not None and (bridge is None or uplink.master != bridge.index):
            holder = next(
                (link.name for link in links.values() if link.index == uplink.master),
                f"link {uplink.master}",
            )
            problems.insert(0, f"uplink {plan.uplink} is a port of {holder}: free it first")
        elif uplink.addresses and (bridge is None or uplink.master != bridge.index):
            problems.insert(0, uplink_holds_addresses(plan.uplink, uplink.addresses))
        else:
            wanted.insert(
                0,
                WantedPort(
                    name=plan.uplink,
                    mtu=plan.mtu,
                    isolated=True,
                    vlans=uplink_vlans(usable) if vlan_filtering else None,
                ),
            )
    return SwitchPorts(tuple(wanted), tuple(problems))


def vlan_entries(vlans: Vlans) -> tuple[tuple[int, int], ...]:
    """`vlans` as bridge_vlan_info entries: runs of consecutive VLANs with the same flags as
    one begin/end pair (the kernel allows no PVID in a range, so that one stands alone)."""
    entries: list[tuple[int, int]] = []
    vids = sorted(vlans)
    start = 0
    while start < len(vids):
        end = start
        flags = vlans[vids[start]]
        while (
            not flags & PVID
            and end + 1 < len(vids)
            and vids[end + 1] == vids[end] + 1
            and vlans[vids[end + 1]] == flags
        ):
            end += 1
        if end == start:
            entries.append((flags, vids[start]))
        else:
            entries.append((flags | RANGE_BEGIN, vids[start]))
            entries.append((flags | RANGE_END, vids[end]))
        start = end + 1
    return tuple(entries)


def parse_vlan_entries(entries: Iterable[tuple[int, int]]) -> dict[int, int]:
    """The VLANs of a port from the kernel's (flags, vid) entries, ranges expanded."""
    vlans: dict[int, int] = {}
    begin: tuple[int, int] | None = None
    for flags, vid in entries:
        if flags & RANGE_BEGIN:
            begin = (flags, vid)
            continue
        if begin is not None and flags & RANGE_END:
            for each in range(begin[1], vid + 1):
                vlans[each] = begin[0] & NATIVE
            begin = None
            continue
        vlans[vid] = flags & NATIVE
    return vlans


def vlan_spec(entries: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """The IFLA_AF_SPEC of an AF_BRIDGE link message carrying `entries` for one port: sent
    as RTM_SETLINK it adds them, as RTM_DELLINK it removes them."""
    return {
        "attrs": [("IFLA_BRIDGE_VLAN_INFO", {"flags": flags, "vid": vid}) for flags, vid in entries]
    }


def _port_change(
    bridge: LinkState,
    port: WantedPort,
    link: LinkState,
    vlans: Vlans | None,
) -> list[Change]:
    changes: list[Change] = []
    if link.master != bridge.index:
        # A port enslaved now starts as the kernel makes it: not isolated, default PVID.
        changes.append(Enslave(port.name, bridge.name))
        link = LinkState(link.name, link.index, link.kind, bridge.index, link.mtu, link.up)
        vlans = {DEFAULT_PVID: NATIVE}
    if link.mtu != port.mtu:
        changes.append(SetMtu(port.name, port.mtu))
    if link.isolated != port.isolated:
        changes.append(SetIsolated(port.name, port.isolated))
    if port.vlans is not None:
        have = vlans or {}
        add = {vid: flags for vid, flags in port.vlans.items() if have.get(vid) != flags}
        gone = {vid: 0 for vid in have if vid not in port.vlans}
        # Adding first moves the PVID before the old one goes: no moment without one.
        if add:
            changes.append(AddVlans(port.name, vlan_entries(add)))
        if gone:
            changes.append(DelVlans(port.name, vlan_entries(gone)))
    if link.up != port.up:
        changes.append(SetUp(port.name, port.up))
    return changes


def port_changes(
    bridge: LinkState,
    wanted: Sequence[WantedPort],
    links: Mapping[str, LinkState],
    vlans: Mapping[str, Vlans] | None = None,
) -> list[Change]:
    """What makes the ports of `bridge` the `wanted` ones. `links` are the plane's links by
    name; `vlans` each port's VLANs (None where the bridge does not filter). Every other port
    of the bridge is released, not deleted: the bridge is Heron's, so what else hangs on it
    is a port that left the plan (a stopped VM's tap, a former uplink)."""
    names = {port.name for port in wanted}
    changes: list[Change] = [
        Release(link.name)
        for link in sorted(links.values(), key=lambda link: link.name)
        if link.master == bridge.index and link.name not in names
    ]
    for port in wanted:
        link = links.get(port.name)
        if link is None:
            continue
        changes.extend(_port_change(bridge, port, link, (vlans or {}).get(port.name)))
    return changes
