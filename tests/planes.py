"""Network namespaces for the network drivers' tests: nodes' data planes, and 'VMs' that are a
namespace with one end of a veth pair (the other end stands for the VM's tap)."""

import errno
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute, netns


@contextmanager
def namespaces(*tags: str) -> Iterator[list[str]]:
    """Fresh namespaces named after the test's pid, deleted (with their links) at the end."""
    names = [f"t{os.getpid()}{tag}" for tag in tags]
    made: list[str] = []
    try:
        for name in names:
            netns.create(name)
            made.append(name)
        yield names
    finally:
        for name in made:
            netns.remove(name)


@contextmanager
def rtnl(ns: str | None) -> Iterator[Any]:
    ipr = IPRoute(netns=ns, flags=0, groups=0) if ns else IPRoute(groups=0)
    try:
        yield ipr
    finally:
        ipr.close()


def index(ipr: Any, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    assert found, f"no link {name}"
    return int(found[0])


def veth(a: tuple[str, str], b: tuple[str, str], mtu: int = 1500) -> None:
    """A veth pair: a[1] in namespace a[0], b[1] in b[0], both with `mtu`, the b end up."""
    (ns_a, name_a), (ns_b, name_b) = a, b
    with rtnl(ns_a) as ipr:
        ipr.link("add", ifname=name_a, kind="veth", peer={"ifname": name_b, "net_ns_fd": ns_b})
        ipr.link("set", index=index(ipr, name_a), mtu=mtu)
    with rtnl(ns_b) as ipr:
        ipr.link("set", index=index(ipr, name_b), mtu=mtu, state="up")


def address(ns: str, name: str, cidr: str) -> None:
    ip, prefix = cidr.split("/")
    with rtnl(ns) as ipr:
        ipr.addr("add", index=index(ipr, name), address=ip, prefixlen=int(prefix))
        ipr.link("set", index=index(ipr, name), state="up")


def up(ns: str, name: str) -> None:
    with rtnl(ns) as ipr:
        ipr.link("set", index=index(ipr, name), state="up")


def udp_socket(ns: str, ip: str) -> socket.socket:
    sock = netns.create_socket(ns, socket.AF_INET, socket.SOCK_DGRAM, flags=0)
    sock.bind((ip, 5555))
    sock.settimeout(0.3)
    return sock


def exchange(a: tuple[str, str], b: tuple[str, str], timeout: float = 15) -> bool:
    """Whether a datagram goes from a (namespace, address) to b and an answer comes back,
    retried until `timeout` (the first may wait on ARP, the bridge's learning)."""
    one, two = udp_socket(*a), udp_socket(*b)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            one.sendto(b"ping", (b[1], 5555))
            try:
                data, sender = two.recvfrom(64)
                two.sendto(b"pong:" + data, sender)
                if one.recvfrom(64)[0] == b"pong:ping":
                    return True
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EHOSTUNREACH, errno.ECONNREFUSED):
                    raise
        return False
    finally:
        one.close()
        two.close()


def link_table(ns: str) -> set[tuple[Any, ...]]:
    """What a realise may change of a plane's links: name, index, master, MTU, admin state,
    alias and the bridge port's isolated flag."""
    rows = set()
    with rtnl(ns) as ipr:
        for message in ipr.get_links():
            info = message.get_attr("IFLA_LINKINFO")
            data = info.get_attr("IFLA_INFO_SLAVE_DATA") if info is not None else None
            rows.add(
                (
                    message.get_attr("IFLA_IFNAME"),
                    message["index"],
                    message.get_attr("IFLA_MASTER"),
                    message.get_attr("IFLA_MTU"),
                    message["flags"] & 1,
                    message.get_attr("IFLA_IFALIAS"),
                    data.get_attr("IFLA_BRPORT_ISOLATED") if data is not None else None,
                )
            )
    return rows


def links(ns: str) -> dict[str, Any]:
    with rtnl(ns) as ipr:
        return {m.get_attr("IFLA_IFNAME"): m for m in ipr.get_links()}


def fdb_table(ns: str, device: str) -> set[tuple[str, str | None]]:
    """The VXLAN device's static FDB entries (MAC, remote): neither learned ones nor the
    bridge's entry for the device's own MAC."""
    with rtnl(ns) as ipr:
        idx = index(ipr, device)
        return {
            (e.get_attr("NDA_LLADDR"), e.get_attr("NDA_DST"))
            for e in ipr.fdb("dump", ifindex=idx)
            if e["ifindex"] == idx and e["state"] & 0x80 and e.get_attr("NDA_DST")  # NUD_PERMANENT
        }
