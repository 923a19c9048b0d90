"""Rate limits of what VMs receive: a token bucket (tbf) as the root qdisc of each limited
NIC's tap, whose egress is the VM's ingress. (What a VM sends is policed in the firewall's
ruleset: this kernel has no tc police action nor ifb redirect for a tap's ingress.)"""

import asyncio
from collections.abc import Sequence
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from heron.network import netns
from heron.network.dataplane import DataPlane
from heron.network.plan import Port

ROOT = 0xFFFFFFFF
HANDLE = 0x10000  # 1:
LATENCY = "50ms"


def tbf_options(mbps: int) -> dict[str, Any]:
    """The tbf a tap gets for `mbps`: bytes per second, a burst of a few milliseconds' worth
    (at least two full frames), and at most 50 ms of queue."""
    rate = mbps * 125_000
    return {"rate": rate, "burst": max(rate // 250, 2 * 9216 + 64), "latency": LATENCY}


def _shape(plane: DataPlane, ports: Sequence[Port]) -> list[str]:
    problems: list[str] = []
    with netns.netlink(plane.netns) as ipr:
        for port in ports:
            if not port.vm:
                continue
            found = ipr.link_lookup(ifname=port.tap)
            if not found:
                continue  # its QEMU has not started yet: shaped once the tap exists
            index = found[0]
            root = [q for q in ipr.get_qdiscs(index=index) if q["parent"] == ROOT]
            current = root[0] if root else None
            kind = current.get("TCA_KIND") if current is not None else None
            if port.ingress_mbps is None:
                if kind == "tbf":
                    ipr.tc("del", index=index, handle=current["handle"], parent=ROOT)  # type: ignore[index]
                continue
            options = tbf_options(port.ingress_mbps)
            if kind == "tbf" and current is not None:
                parms = current.get_nested("TCA_OPTIONS", "TCA_TBF_PARMS") or {}
                if parms.get("rate") == options["rate"]:
                    continue
            try:
                ipr.tc("replace", "tbf", index, HANDLE, **options)
            except NetlinkError as exc:  # a kernel without tbf: said, not raised
                problems.append(f"tap {port.tap}: rate limit not set ({exc})")
    return problems


async def realise_shaping(plane: DataPlane, ports: Sequence[Port]) -> list[str]:
    """Give the taps of `ports` that exist their receive rate limits (and take away those no
    longer wanted)."""
    return await asyncio.to_thread(_shape, plane, ports)
