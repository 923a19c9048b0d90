"""VXLAN overlay segments: a bridge and a kernel VXLAN device per segment on each node.

No multicast: the device floods broadcast and unknown frames to every peer node by head-end
replication, one all-zeros FDB entry per peer, and learns where each remote MAC lives. Peers
come and go as nodes join and leave: their entries are added and removed on the device in
place, so the VMs on the segment never lose their link. The outer packets carry DF: a frame
the underlay cannot carry is refused (the guest learns the path MTU) rather than silently
fragmented, and an underlay whose MTU is too small for the segment is a problem.
"""

import asyncio
import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from heron.models.network import VXLAN_OVERHEAD
from heron.network import links
from heron.network.bridgeports import LinkState, WantedPort, port_changes
from heron.network.dataplane import DataPlane
from heron.network.plan import VXLAN_PORT, Segment, segment_bridge, segment_device

ALL_ZEROS = "00:00:00:00:00:00"
TTL = 64
DF_SET = 1  # IFLA_VXLAN_DF: VXLAN_DF_SET


@dataclass(frozen=True)
class Device:
    """What matters of a VXLAN device: the first three cannot change in place."""

    vni: int
    port: int
    group: str | None
    local: str | None
    learning: bool
    df: int
    ttl: int


def wanted_device(segment: Segment) -> Device:
    return Device(segment.vni, VXLAN_PORT, None, segment.local, True, DF_SET, TTL)


def device_fix(have: Device, want: Device) -> str | None:
    """How to make `have` the wanted device: None when it is, "change" for what the kernel
    changes in place, "recreate" for the VNI, the port or a multicast group."""
    if (have.vni, have.port, have.group) != (want.vni, want.port, want.group):
        return "recreate"
    return None if have == want else "change"


def peer_changes(have: Iterable[str], want: Iterable[str]) -> tuple[list[str], list[str]]:
    """The peers to add and to remove (their all-zeros FDB entries)."""
    current, wanted = set(have), set(want)
    return sorted(wanted - current), sorted(current - wanted)


def underlay_problem(segment: Segment, underlay_mtu: int | None) -> str | None:
    """Whether the underlay carries the segment's frames whole (VXLAN adds 50 bytes)."""
    if underlay_mtu is None:
        return (
            f"network {segment.network}: the underlay address {segment.local} "
            "is on no interface of this node"
        )
    needs = segment.mtu + VXLAN_OVERHEAD
    if underlay_mtu < needs:
        return (
            f"network {segment.network}: underlay MTU {underlay_mtu} is too small for "
            f"segment mtu {segment.mtu} (needs {needs}): lower the network's MTU or raise "
            "the underlay's"
        )
    return None


def _vni_of(name: str, prefix: str) -> int | None:
    try:
        return int(name[len(prefix) :], 16) if name.startswith(prefix) else None
    except ValueError:
        return None


def _device(ipr: Any, link: LinkState) -> Device:
    data = ipr.get_links(link.index)[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    return Device(
        vni=data.get_attr("IFLA_VXLAN_ID"),
        port=data.get_attr("IFLA_VXLAN_PORT"),
        group=data.get_attr("IFLA_VXLAN_GROUP"),
        local=data.get_attr("IFLA_VXLAN_LOCAL"),
        learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
        df=data.get_attr("IFLA_VXLAN_DF") or 0,
        ttl=data.get_attr("IFLA_VXLAN_TTL") or 0,
    )


def _vxlan_args(device: Device) -> dict[str, Any]:
    return {
        "kind": "vxlan",
        "vxlan_id": device.vni,
        "vxlan_port": device.port,
        "vxlan_local": device.local,
        "vxlan_learning": int(device.learning),
        "vxlan_df": device.df,
        "vxlan_ttl": device.ttl,
    }


def _ensure_device(ipr: Any, segment: Segment) -> tuple[LinkState | None, list[str]]:
    want = wanted_device(segment)
    link = links.read_links(ipr).get(segment.device)
    if link is not None and link.kind != "vxlan":
        return None, [f"{segment.device} exists and is not a VXLAN device: remove it"]
    if link is not None:
        fix = device_fix(_device(ipr, link), want)
        if fix == "recreate" and not links.owned(link):
            return None, [f"{segment.device} is not Heron's and differs from VNI {want.vni}"]
        if fix == "recreate":
            ipr.link("del", index=link.index)
            link = None
        elif fix == "change":
            args = _vxlan_args(want)
            del args["vxlan_id"], args["vxlan_port"]
            ipr.link("set", index=link.index, **args)
    if link is None:
        ipr.link("add", ifname=segment.device, mtu=segment.mtu, **_vxlan_args(want))
        link = links.read_links(ipr)[segment.device]
    links.mark(ipr, link)
    return link, []


def _underlay_mtu(ipr: Any, address: str) -> int | None:
    for message in ipr.get_addr():
        if address in (message.get_attr("IFA_LOCAL"), message.get_attr("IFA_ADDRESS")):
            return int(ipr.get_links(message["index"])[0].get_attr("IFLA_MTU"))
    return None


def _peers(ipr: Any, index: int) -> set[str]:
    return {
        entry.get_attr("NDA_DST")
        for entry in ipr.fdb("dump", ifindex=index)
        if entry["ifindex"] == index
        and entry.get_attr("NDA_LLADDR") == ALL_ZEROS
        and entry.get_attr("NDA_DST")
    }


def _sync_peers(ipr: Any, device: LinkState, peers: Iterable[str]) -> list[str]:
    add, remove = peer_changes(_peers(ipr, device.index), peers)
    problems = []
    for command, peer in [("append", p) for p in add] + [("del", p) for p in remove]:
        try:
            ipr.fdb(command, ifindex=device.index, lladdr=ALL_ZEROS, dst=peer)
        except NetlinkError as exc:
            if not (command == "del" and exc.code == errno.ENOENT):
                action = "adding" if command == "append" else "removing"
                problems.append(
                    f"{action} VXLAN peer {peer} on {device.name} failed: {os.strerror(exc.code)}"
                )
    return problems


def _realise(plane: DataPlane, segment: Segment) -> list[str]:
    with links.netlink(plane) as ipr:
        problems: list[str] = []
        underlay = underlay_problem(segment, _underlay_mtu(ipr, segment.local))
        if underlay is not None:
            problems.append(underlay)
        bridge, trouble = links.ensure_bridge(ipr, segment.bridge, segment.mtu)
        problems.extend(trouble)
        device, trouble = _ensure_device(ipr, segment)
        problems.extend(trouble)
        if bridge is None or device is None:
            return problems
        problems.extend(_sync_peers(ipr, device, segment.peers))
        current = links.read_links(ipr)
        wanted = [WantedPort(segment.device, segment.mtu, isolated=True)]
        wanted += [
            WantedPort(port.tap, port.mtu, up=port.link_up, isolated=port.isolated)
            for port in segment.ports
            if port.tap in current
        ]
        changes = port_changes(current[segment.bridge], wanted, current)
        problems.extend(links.apply(ipr, changes, current))
        return problems


def _remove(plane: DataPlane, vni: int) -> None:
    with links.netlink(plane) as ipr:
        links.delete_owned(ipr, segment_device(vni))
        links.delete_owned(ipr, segment_bridge(vni))


def _segments(plane: DataPlane) -> set[int]:
    found: set[int] = set()
    with links.netlink(plane) as ipr:
        for link in links.read_links(ipr).values():
            if not links.owned(link):
                continue
            if link.kind == "vxlan":
                vni = _vni_of(link.name, segment_device(0)[:2])
            elif link.kind == "bridge":
                vni = _vni_of(link.name, segment_bridge(0)[:2])
            else:
                vni = None
            if vni is not None:
                found.add(vni)
    return found


async def realise_segment(plane: DataPlane, segment: Segment) -> list[str]:
    """Make the segment's bridge, VXLAN device, peers and ports as planned; the problems,
    empty when in sync. Nothing that matches is touched."""
    return await asyncio.to_thread(_realise, plane, segment)


async def remove_segment(plane: DataPlane, vni: int) -> None:
    """Delete the segment's device and bridge if they are Heron's (taps are released)."""
    await asyncio.to_thread(_remove, plane, vni)


async def segments(plane: DataPlane) -> set[int]:
    """The VNIs of the segments Heron has in this plane (device or bridge present)."""
    return await asyncio.to_thread(_segments, plane)
