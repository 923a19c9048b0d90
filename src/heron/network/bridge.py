"""The Linux bridge backend of a switch: one kernel bridge per switch on each node.

The bridge filters VLANs where the kernel can (vlan_filtering=1): access ports get their VLAN
as PVID untagged, trunks their VLANs tagged, and the node's uplink (isolated) carries every
VLAN a port uses. On a kernel without bridge VLAN filtering only untagged networks can be
realised; every VLAN port is then a problem naming the backend that can carry it.
"""

import asyncio
import errno
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from heron.network import links
from heron.network.bridgeports import LinkState, port_changes, switch_ports
from heron.network.dataplane import DataPlane
from heron.network.plan import SwitchPlan

PREFIX = "hb"  # of plan.switch_bridge's names


def _enable_vlan_filtering(ipr: Any, bridge: LinkState) -> bool:
    """Whether the bridge filters VLANs, turning filtering on if the kernel has it."""
    message = ipr.get_links(bridge.index)[0]
    data = message.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    if data is not None and data.get_attr("IFLA_BR_VLAN_FILTERING"):
        return True
    try:
        ipr.link("set", index=bridge.index, kind="bridge", br_vlan_filtering=1)
    except NetlinkError as exc:
        if exc.code in (errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise
    return True


class LinuxBridge:
    """Realises switches as Linux bridges in one data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def realise(self, plan: SwitchPlan) -> list[str]:
        """Make the bridge of `plan` and its ports as planned; the problems, empty when in
        sync. Ports that match are not touched, so running VMs keep forwarding."""
        return await asyncio.to_thread(self._realise, plan)

    async def remove(self, bridge: str) -> None:
        """Delete the bridge if it is Heron's; its ports (taps, the uplink) are released."""
        await asyncio.to_thread(self._remove, bridge)

    async def owned(self) -> set[str]:
        """The bridges of this plane that Heron made for switches."""
        return await asyncio.to_thread(self._owned)

    def _realise(self, plan: SwitchPlan) -> list[str]:
        with links.netlink(self.plane) as ipr:
            bridge, problems = links.ensure_bridge(ipr, plan.bridge, plan.mtu)
            if bridge is None:
                return problems
            filtering = _enable_vlan_filtering(ipr, bridge)
            current = links.read_links(ipr)
            wanted = switch_ports(plan, filtering, current)
            problems.extend(wanted.problems)
            vlans = links.read_vlans(ipr, current) if filtering else None
            changes = port_changes(current[plan.bridge], wanted.ports, current, vlans)
            problems.extend(links.apply(ipr, changes, current))
            return problems

    def _remove(self, bridge: str) -> None:
        with links.netlink(self.plane) as ipr:
            links.delete_owned(ipr, bridge)

    def _owned(self) -> set[str]:
        with links.netlink(self.plane) as ipr:
            return {
                link.name
                for link in links.read_links(ipr).values()
                if link.kind == "bridge" and link.name.startswith(PREFIX) and links.owned(link)
            }
