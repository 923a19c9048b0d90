"""Netlink in a data plane: the links Heron's Linux drivers read and the changes they apply.

Blocking (pyroute2's synchronous IPRoute, which runs an event loop of its own and so fails on
a thread whose loop is running): the drivers call these from `asyncio.to_thread`.
Only the kernel's refusals become problems (sentences); a link that vanished between reading
and changing it (a VM that stopped) is skipped: the next realise sees the truth.
"""

import errno
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pyroute2.config import AF_BRIDGE
from pyroute2.netlink.exceptions import NetlinkError

from heron.network import netns
from heron.network.bridgeports import (
    AddVlans,
    Change,
    DelVlans,
    Enslave,
    LinkState,
    Release,
    SetIsolated,
    SetMtu,
    SetUp,
    Vlans,
    parse_vlan_entries,
    vlan_spec,
)
from heron.network.dataplane import DataPlane
from heron.network.plan import OWNED_PREFIXES, TAP_PREFIX

MARK = "heron"
IFF_UP = 0x1
RTEXT_FILTER_BRVLAN_COMPRESSED = 1 << 2


@contextmanager
def netlink(plane: DataPlane) -> Iterator[Any]:
    """An rtnetlink socket in the plane's namespace. flags=0: a plane whose namespace is gone
    is an error, never a new empty namespace; groups=0: no event subscriptions."""
    ipr = netns.netlink(plane.netns, groups=0)
    try:
        yield ipr
    finally:
        ipr.close()


def host_addresses(ipr: Any) -> dict[int, tuple[str, ...]]:
    """The global-scope addresses of the plane's links (link-local ones are on every link and
    say nothing), as address/prefix, by link index."""
    found: dict[int, list[str]] = {}
    for message in ipr.get_addr():
        if message["scope"] == 0:
            address = message.get_attr("IFA_ADDRESS")
            found.setdefault(message["index"], []).append(f"{address}/{message['prefixlen']}")
    return {index: tuple(addresses) for index, addresses in found.items()}


def link_state(message: Any, addresses: Mapping[int, tuple[str, ...]] | None = None) -> LinkState:
    info = message.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    isolated = False
    if info is not None and info.get_attr("IFLA_INFO_SLAVE_KIND") == "bridge":
        data = info.get_attr("IFLA_INFO_SLAVE_DATA")
        isolated = bool(data is not None and data.get_attr("IFLA_BRPORT_ISOLATED"))
    return LinkState(
        name=message.get_attr("IFLA_IFNAME"),
        index=message["index"],
        kind=kind,
        master=message.get_attr("IFLA_MASTER") or None,
        mtu=message.get_attr("IFLA_MTU"),
        up=bool(message["flags"] & IFF_UP),
        alias=message.get_attr("IFLA_IFALIAS"),
        isolated=isolated,
        addresses=(addresses or {}).get(message["index"], ()),
    )


def read_links(ipr: Any) -> dict[str, LinkState]:
    """Every link of the plane, by name."""
    addresses = host_addresses(ipr)
    links = (link_state(message, addresses) for message in ipr.get_links())
    return {link.name: link for link in links}


def owned(link: LinkState) -> bool:
    """Heron's own: a name with one of its prefixes and its mark."""
    return link.name.startswith(OWNED_PREFIXES) and link.alias == MARK


def mark(ipr: Any, link: LinkState) -> None:
    if link.alias != MARK:
        ipr.link("set", index=link.index, ifalias=MARK)


def read_vlans(ipr: Any, links: Mapping[str, LinkState]) -> dict[str, Vlans]:
    """Each bridge port's VLANs, asked in the compressed form (ranges), by port name."""
    names = {link.index: link.name for link in links.values()}
    vlans: dict[str, Vlans] = {}
    for reply in ipr.link("dump", family=AF_BRIDGE, ext_mask=RTEXT_FILTER_BRVLAN_COMPRESSED):
        spec = reply.get_attr("IFLA_AF_SPEC")
        if spec is None or reply["index"] not in names:
            continue
        entries = [(e["flags"], e["vid"]) for e in spec.get_attrs("IFLA_BRIDGE_VLAN_INFO")]
        vlans[names[reply["index"]]] = parse_vlan_entries(entries)
    return vlans


def send_vlans(ipr: Any, command: str, index: int, entries: Sequence[tuple[int, int]]) -> None:
    """One AF_BRIDGE message for the port `index`: "add" (RTM_SETLINK) or "del"
    (RTM_DELLINK) every entry, however many VLANs its ranges span."""
    ipr.vlan_filter(command, index=index, af_spec=vlan_spec(entries))


def _apply_one(ipr: Any, change: Change, index: Mapping[str, int]) -> None:
    match change:
        case Enslave(port, bridge):
            ipr.link("set", index=index[port], master=index[bridge])
        case Release(port):
            ipr.link("set", index=index[port], master=0)
        case SetMtu(link, mtu):
            ipr.link("set", index=index[link], mtu=mtu)
        case SetIsolated(port, isolated):
            ipr.link("set", index=index[port], kind="bridge_slave", isolated=int(isolated))
        case AddVlans(port, entries):
            send_vlans(ipr, "add", index[port], entries)
        case DelVlans(port, entries):
            send_vlans(ipr, "del", index[port], entries)
        case SetUp(link, up):
            ipr.link("set", index=index[link], state="up" if up else "down")


def _what(change: Change) -> str:
    match change:
        case Enslave(port, bridge):
            return f"attaching {port} to {bridge}"
        case Release(port):
            return f"detaching {port}"
        case SetMtu(link, mtu):
            return f"setting the MTU of {link} to {mtu}"
        case SetIsolated(port, isolated):
            return f"{'setting' if isolated else 'clearing'} the isolated flag of {port}"
        case AddVlans(port, _):
            return f"adding VLANs to {port}"
        case DelVlans(port, _):
            return f"removing VLANs from {port}"
        case SetUp(link, up):
            return f"setting {link} {'up' if up else 'down'}"


def apply(ipr: Any, changes: Sequence[Change], links: Mapping[str, LinkState]) -> list[str]:
    """Make `changes`, in order; the problems of those the kernel refused."""
    index = {name: link.index for name, link in links.items()}
    problems: list[str] = []
    for change in changes:
        try:
            _apply_one(ipr, change, index)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                continue
            problems.append(f"{_what(change)} failed: {os.strerror(exc.code)}")
    return problems


def ensure_bridge(ipr: Any, name: str, mtu: int) -> tuple[LinkState | None, list[str]]:
    """The bridge `name`, made (marked) if missing, with its MTU and up; None with a problem
    when the name is taken by a link that is not a bridge."""
    links = read_links(ipr)
    link = links.get(name)
    if link is None:
        ipr.link("add", ifname=name, kind="bridge")
        link = read_links(ipr)[name]
    if link.kind != "bridge":
        return None, [f"{name} exists and is not a bridge: remove it"]
    mark(ipr, link)
    problems = []
    if link.mtu != mtu:
        try:
            ipr.link("set", index=link.index, mtu=mtu)
        except NetlinkError as exc:
            problems.append(f"setting the MTU of {name} to {mtu} failed: {os.strerror(exc.code)}")
    if not link.up:
        ipr.link("set", index=link.index, state="up")
    return link, problems


def delete_owned(ipr: Any, name: str) -> None:
    """Delete the link `name` if it is Heron's (its ports are released, not deleted)."""
    link = read_links(ipr).get(name)
    if link is None or not owned(link):
        return
    try:
        ipr.link("del", index=link.index)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise


# -- drift ----------------------------------------------------------------------------------

# What of a link the drivers keep as planned: its kind, master (by name), up, MTU.
LinkView = tuple[str | None, str | None, bool, int]


def snapshot(plane: DataPlane) -> dict[str, LinkView] | None:
    """The plane's links as far as drift goes, by name; None if its namespace cannot be
    entered (blocking: call it from a thread)."""
    try:
        with netlink(plane) as ipr:
            found = read_links(ipr)
    except (NetlinkError, OSError):
        return None
    names = {link.index: link.name for link in found.values()}
    return {
        link.name: (link.kind, names.get(link.master) if link.master else None, link.up, link.mtu)
        for link in found.values()
    }


def drift(before: Mapping[str, LinkView], after: Mapping[str, LinkView]) -> dict[str, str]:
    """What a realise put back, by link: links it made again and links whose master, state or
    MTU it changed (pure). A VM's tap that appeared is its QEMU's doing, not a repair."""
    repaired: dict[str, str] = {}
    for name, (_, master, up, mtu) in after.items():
        was = before.get(name)
        if was is None:
            if not name.startswith(TAP_PREFIX):
                repaired[name] = f"{name} was missing: made again"
            continue
        _, was_master, was_up, was_mtu = was
        fixed = []
        if was_master != master:
            fixed.append(f"attached to {master}" if master else "detached")
        if was_up != up:
            fixed.append("brought up" if up else "brought down")
        if was_mtu != mtu:
            fixed.append(f"MTU set back to {mtu}")
        if fixed:
            repaired[name] = f"{name} {', '.join(fixed)}"
    return repaired
