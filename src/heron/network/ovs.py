"""The Open vSwitch backend of a switch: an OVS bridge per switch on each node, its uplink a
trunk of the VLANs in use, each VM's tap an access or trunk port.

The state is read from the database once per realise, the differences (ovs_sync, pure) are
written in one ovs-vsctl transaction, and ovs-vsctl waits until ovs-vswitchd has applied
them. Everything Heron makes carries external_ids:heron-owner=true; only that is removed.
Then the bridge's OpenFlow flows and meters (security groups, anti-spoofing, rate limits:
ovs_flows, ovs_filter) are put in place, before the new taps are brought up.
"""

import asyncio
import errno
import os
import subprocess
from pathlib import Path

from pyroute2 import IPRoute, NetlinkError

from heron.network import netns, ovsdb
from heron.network.dataplane import DataPlane
from heron.network.links import host_addresses
from heron.network.ovs_filter import BridgeFilter
from heron.network.ovs_flows import bridge_flows
from heron.network.ovs_runtime import OvsError, OvsRuntime
from heron.network.ovs_sync import Link, plan_sync, transaction, veth_fixes
from heron.network.plan import SwitchPlan

IFF_UP = 0x1
# The fingerprint of Heron's flows and meters on a bridge (ovs_filter).
FLOWS_KEY = "heron-flows"
# ovs-vsctl waits for ovs-vswitchd to apply a change; a daemon that does not is a problem.
VSCTL_TIMEOUT = 30


class OpenVSwitch:
    """The switches of one data plane realised by one Open vSwitch runtime."""

    def __init__(self, plane: DataPlane, runtime: OvsRuntime) -> None:
        self.plane = plane
        self.runtime = runtime
        self.filter = BridgeFilter(runtime)

    @property
    def guest_checksum_offload(self) -> bool:
        """Whether a VM's NIC on these switches may leave its checksums to the host
        (virtio-net's csum feature). Not with the userspace datapath: a frame QEMU writes to
        its tap with the checksum left undone would be forwarded as it is (the veth ports'
        trouble, ovs_sync.veth_fixes), so the guest must compute its own (csum=off)."""
        return self.runtime.datapath_type == "system"

    async def realise(self, plan: SwitchPlan) -> list[str]:
        """Make `plan.bridge` match `plan`; the problems that remain (empty: in sync)."""
        return await asyncio.to_thread(self._realise, plan)

    async def remove(self, bridge: str) -> None:
        """Delete `bridge` if Heron made it; its ports' devices (taps, uplink) stay.

        Raises OvsError if the database cannot be reached."""
        state = await asyncio.to_thread(self._state)
        if bridge in state.bridges and state.bridges[bridge].owned:
            await asyncio.to_thread(self._vsctl, ["--", "--if-exists", "del-br", bridge])

    async def owned(self) -> set[str]:
        """The bridges Heron made.

        Raises OvsError if the database cannot be reached."""
        state = await asyncio.to_thread(self._state)
        return {name for name, bridge in state.bridges.items() if bridge.owned}

    def _realise(self, plan: SwitchPlan) -> list[str]:
        if not self.runtime.running():
            return [f"Open vSwitch does not run (no database at {self.runtime.socket})"]
        try:
            state = self._state()
        except OvsError as exc:
            return [str(exc)]
        try:
            ipr = netns.netlink(self.plane.netns)
        except (NetlinkError, OSError) as exc:
            return [f"network namespace {self.plane.netns} cannot be entered: {exc}"]
        with ipr:
            return self._apply(plan, state, ipr)

    def _apply(self, plan: SwitchPlan, state: ovsdb.State, ipr: IPRoute) -> list[str]:
        datapath = self.runtime.datapath_type
        links = _links(ipr)
        problems: list[str] = []
        offloaded: dict[str, int] = {}
        for name in veth_fixes(plan, state, links, datapath):
            problem = self._checksum_offload_off(ipr, links[name])
            if problem:
                problems.append(problem)
            else:
                offloaded[name] = links[name].index
        sync = plan_sync(plan, state, links, datapath, offloaded)
        problems.extend(sync.problems)
        if sync.commands:
            try:
                self._vsctl(transaction(sync.commands))
            except OvsError as exc:
                problems.append(f"bridge {plan.bridge}: {exc}")
        problems.extend(self._filter(plan, state, bool(sync.commands)))
        for wanted, names in (("up", sync.links_up), ("down", sync.links_down)):
            for name in names:
                problems.extend(_set_link(ipr, links[name], wanted))
        return problems

    def _filter(self, plan: SwitchPlan, state: ovsdb.State, changed: bool) -> list[str]:
        """The security groups and rate limits of the plan's ports, as OpenFlow flows."""
        if changed:
            try:
                state = self._state()  # the ports just added have their OpenFlow numbers
            except OvsError as exc:
                return [str(exc)]
        if plan.bridge not in state.bridges:
            return []
        on_bridge = set(state.bridges[plan.bridge].ports)
        ofports = {
            name: interface.ofport
            for name, interface in state.interfaces.items()
            if name in on_bridge and interface.ofport is not None
        }
        wanted = bridge_flows(plan.bridge, plan.ports, ofports, plan.uplink)
        recorded = state.bridges[plan.bridge].external_ids.get(FLOWS_KEY)
        problems, record = self.filter.apply(plan.bridge, wanted, recorded)
        if record is not None and record != recorded:
            try:
                self._vsctl(["set", "Bridge", plan.bridge, f"external_ids:{FLOWS_KEY}={record}"])
            except OvsError as exc:
                problems.append(f"bridge {plan.bridge}: {exc}")
        return problems

    def _state(self) -> ovsdb.State:
        return ovsdb.parse_state(self._vsctl(ovsdb.READ_STATE))

    def _vsctl(self, args: list[str]) -> str:
        command = ["ovs-vsctl", *self.runtime.ctl_args(), f"--timeout={VSCTL_TIMEOUT}", *args]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=VSCTL_TIMEOUT + 5
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OvsError(f"ovs-vsctl failed: {exc}") from exc
        if done.returncode != 0:
            raise OvsError(f"ovs-vsctl: {done.stderr.strip() or f'exit {done.returncode}'}")
        return done.stdout

    def _checksum_offload_off(self, ipr: IPRoute, link: Link) -> str | None:
        """Turn TX checksum offload off on the far end of veth `link` (why: ovs_sync.veth_fixes);
        the problem if it could not be."""
        lost = f"port {link.name}: the other end of the veth is not found"
        namespace = self._namespace_of(ipr, link.peer_netnsid)
        if namespace is None or link.peer is None:
            return lost
        try:
            with netns.netlink(namespace) as there:
                peer = there.get_links(link.peer)[0].get("ifname")
        except (NetlinkError, OSError, IndexError):
            return lost  # its namespace or the veth went meanwhile
        command = ["nsenter", f"--net={namespace}", "ethtool", "-K", peer, "tx", "off"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"port {link.name}: TX checksum offload stays on: {exc}"
        if done.returncode != 0:
            return f"port {link.name}: TX checksum offload stays on: {done.stderr.strip()}"
        return None

    def _namespace_of(self, ipr: IPRoute, netnsid: int | None) -> str | None:
        """The path of the namespace with id `netnsid` in the data plane's (None: its own)."""
        here = f"/run/netns/{self.plane.netns}" if self.plane.netns else "/proc/self/ns/net"
        if netnsid is None:
            return here
        candidates = [str(p) for p in sorted(Path("/run/netns").glob("*"))]
        for path in [*candidates, "/proc/self/ns/net"]:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                if ipr.get_netnsid(fd=fd).get("nsid") == netnsid:
                    return path
            except NetlinkError:
                continue
            finally:
                os.close(fd)
        return None


def _set_link(ipr: IPRoute, link: Link, state: str) -> list[str]:
    try:
        ipr.link("set", index=link.index, state=state)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return []  # a tap whose VM has just stopped
        return [f"{link.name} could not be set {state}: {exc}"]
    return []


def _links(ipr: IPRoute) -> dict[str, Link]:
    links = {}
    addresses = host_addresses(ipr)
    for message in ipr.get_links():
        name = message.get("ifname")
        links[name] = Link(
            name=name,
            index=message["index"],
            kind=message.get(("linkinfo", "kind")) or "",
            up=bool(message["flags"] & IFF_UP),
            peer=message.get("link"),
            peer_netnsid=message.get("link_netnsid"),
            addresses=addresses.get(message["index"], ()),
        )
    return links
