"""The physical network a devcluster's nodes stand on, made of namespaces and veths.

Each node gets a network namespace standing for its host's data plane, with two links into a
"fabric" namespace (the data centre's switches): `under0` carries the node's underlay address
(VXLAN tunnels between nodes), `uplink0` is the port a switch's uplink is plugged into (a
plain Linux bridge in the fabric, which passes 802.1Q-tagged frames through untouched, as a
trunk port of a physical switch would). On the fabric side the links are named after the node,
so a capture there (`tcpdump -i <node>-up`) sees what the node puts on the wire.
"""

import concurrent.futures
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from heron.network import netns

log = logging.getLogger(__name__)

UNDERLAY = ipaddress.IPv4Network("10.99.0.0/24")
UNDERLAY_LINK = "under0"
UPLINK = "uplink0"
FABRIC_UNDERLAY = "underlay"
FABRIC_TRUNK = "trunk"


@dataclass(frozen=True)
class FabricNode:
    name: str
    netns: str
    underlay: str  # the node's address, without prefix length

    def fabric_port(self, kind: str) -> str:
        """The fabric's end of the node's `kind` link ("un" or "up"), 15 bytes at most."""
        return f"{self.name[:11]}-{kind}"


def fabric_netns(prefix: str) -> str:
    return f"{prefix}-fabric"


def nodes_of(prefix: str, names: list[str]) -> list[FabricNode]:
    hosts = list(UNDERLAY.hosts())
    return [FabricNode(name, f"{prefix}-{name}", str(hosts[i])) for i, name in enumerate(names)]


def _up(ipr: IPRoute, ifname: str) -> int:
    index = ipr.link_lookup(ifname=ifname)[0]
    ipr.link("set", index=index, state="up")
    return int(index)


def _on_own_thread(work: Callable[[], None]) -> None:
    """pyroute2's synchronous sockets run an event loop of their own, which fails on a thread
    whose loop runs already (a caller inside asyncio, or Playwright's sync API in the browser
    tests): the work goes to a thread of its own."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(work).result()


def build(prefix: str, nodes: list[FabricNode]) -> None:
    """Make (or complete) the fabric and every node's namespace and links; idempotent."""
    _on_own_thread(lambda: _build(prefix, nodes))


def _build(prefix: str, nodes: list[FabricNode]) -> None:
    fabric = fabric_netns(prefix)
    netns.create(fabric)
    with netns.netlink(fabric) as ipr:
        for bridge in (FABRIC_UNDERLAY, FABRIC_TRUNK):
            if not ipr.link_lookup(ifname=bridge):
                ipr.link("add", ifname=bridge, kind="bridge")
            _up(ipr, bridge)
        _up(ipr, "lo")
    for node in nodes:
        netns.create(node.netns)
        for inside, kind, bridge in (
            (UNDERLAY_LINK, "un", FABRIC_UNDERLAY),
            (UPLINK, "up", FABRIC_TRUNK),
        ):
            outside = node.fabric_port(kind)
            with netns.netlink(fabric) as ipr:
                present = bool(ipr.link_lookup(ifname=outside))
            if not present:
                with netns.netlink(node.netns) as ipr:
                    ipr.link(
                        "add",
                        ifname=inside,
                        kind="veth",
                        peer={"ifname": outside, "net_ns_fd": fabric},
                    )
            with netns.netlink(fabric) as ipr:
                index = _up(ipr, outside)
                ipr.link("set", index=index, master=ipr.link_lookup(ifname=bridge)[0])
            with netns.netlink(node.netns) as ipr:
                _up(ipr, inside)
                _up(ipr, "lo")
        with netns.netlink(node.netns) as ipr:
            index = ipr.link_lookup(ifname=UNDERLAY_LINK)[0]
            try:
                ipr.addr("add", index=index, address=node.underlay, prefixlen=UNDERLAY.prefixlen)
            except NetlinkError as exc:
                if exc.code != 17:  # EEXIST: already there
                    raise


def remove(prefix: str) -> None:
    """Delete the fabric and the nodes' namespaces (their links go with them)."""
    _on_own_thread(lambda: _remove(prefix))


def _remove(prefix: str) -> None:
    for name in netns.names():
        if name.startswith(f"{prefix}-"):
            try:
                netns.remove(name)
            except OSError as exc:
                log.warning("could not remove namespace %s: %s", name, exc)
