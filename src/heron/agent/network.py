"""The node's network controller: builds the cluster's switches on this node and keeps them so.

It follows the switches, networks, nodes and VMs (watch-fed copies), plans what this node must
have (network.plan, pure), hands the parts to the drivers, and writes how each switch stands
(in sync, or the problems) under the node's network status. It never stops forwarding: taps
belong to the QEMUs, bridges and DHCP servers outlive the agent, and while etcd is unreachable
the last plan simply stays built.
"""

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from heron.configdb import ConfigDB, keys
from heron.errors import NetworkError
from heron.models.network import BUILTIN_NETWORKS, NodeNetworkStatus, SwitchState, network_mtu
from heron.models.vm import VM
from heron.network import links
from heron.network.bridge import LinuxBridge
from heron.network.dataplane import DataPlane
from heron.network.dhcp import DhcpServers
from heron.network.firewall import Firewall
from heron.network.ovs import OpenVSwitch
from heron.network.ovs_runtime import OvsError, OvsRuntime
from heron.network.plan import NodePlan, filtering, link_owners, plan_node, tap_name
from heron.network.shaping import realise_shaping
from heron.network.tap import open_tap
from heron.network.vxlan import realise_segment, remove_segment, segments
from heron.scheduler.inventory import Inventory

log = logging.getLogger(__name__)

# How often the node looks for drift (a bridge or port removed by hand) without a change.
DRIFT_CHECK = 15.0
# A report that did not change is written again this often (its time says the node looks).
REPORT_AGAIN = 60.0


class NetworkController:
    def __init__(
        self,
        db: ConfigDB,
        node: str,
        plane: DataPlane,
        state_dir: Path,
        inventory: Inventory,
        running_here: Callable[[], Iterable[str]] = lambda: (),
    ):
        self.db = db
        self.node = node
        self.plane = plane
        self.inventory = inventory
        self.running_here = running_here  # ids of VMs whose QEMU runs here (arrivals too)
        self.directory = state_dir / "network"
        self.bridge = LinuxBridge(plane)
        self._ovs: OpenVSwitch | None = None
        self.dhcp = DhcpServers(plane, self.directory / "dhcp")
        self.firewall = Firewall(plane)
        self._lock = asyncio.Lock()
        self._arriving: dict[str, VM] = {}
        self._reported: tuple[NodeNetworkStatus, float] | None = None
        self._realised: NodePlan | None = None  # the plan the last realise built
        self._repairs: dict[str, tuple[float, list[str]]] = {}  # the last drift, by switch

    async def _ovs_switch(self) -> OpenVSwitch:
        """Open vSwitch, once a switch uses it: the host's own service, or on a devcluster
        daemons of this node's, which outlive the agent like the bridges.

        Raises OvsError when the node's own daemons do not start."""
        if self._ovs is None:
            runtime = await OvsRuntime.for_plane(self.plane, self.directory / "ovs")
            self._ovs = OpenVSwitch(self.plane, runtime)
        return self._ovs

    def plan(self) -> NodePlan:
        inv = self.inventory
        here = set(self.running_here()) | set(self._arriving)
        known = {v.id: v for v in inv.vms.values()} | self._arriving
        vms = [
            v.model_copy(update={"node": self.node}) if v.id in here else v for v in known.values()
        ]
        return plan_node(
            self.node,
            {e.value.name: e.value for e in inv.switches},
            {e.value.name: e.value for e in inv.networks},
            inv.live_nodes(),
            vms,
            {e.value.name: e.value for e in inv.security_groups},
        )

    async def realise(self) -> dict[str, SwitchState]:
        """Build this node's part of every switch; returns how each stands."""
        async with self._lock:
            plan = self.plan()
            before = await self._snapshot()
            states: dict[str, SwitchState] = {}
            problems: dict[str, list[str]] = {s.name: [] for s in plan.switches}
            # DHCP servers first: a link made anew is plugged into its bridge below.
            for server in plan.dhcp:
                owner = self._switch_of(server.network)
                problems.setdefault(owner, []).extend(await self.dhcp.realise(server))
            for network in await self.dhcp.running() - {d.network for d in plan.dhcp}:
                await self.dhcp.remove(network)
            for switch in plan.switches:
                if switch.backend == "ovs":
                    try:
                        ovs = await self._ovs_switch()
                    except OvsError as exc:
                        problems[switch.name].append(str(exc))
                        continue
                    problems[switch.name] += await ovs.realise(switch)
                else:
                    problems[switch.name] += await self.bridge.realise(switch)
            for backend, wanted in (
                (self.bridge, {s.bridge for s in plan.switches if s.backend == "bridge"}),
                (self._ovs, {s.bridge for s in plan.switches if s.backend == "ovs"}),
            ):
                if backend is not None:
                    for stale in await backend.owned() - wanted:
                        await backend.remove(stale)
            for segment in plan.segments:
                problems.setdefault(segment.switch, [])
                problems[segment.switch] += [
                    f"segment {segment.network}: {p}"
                    for p in await realise_segment(self.plane, segment)
                ]
            for vni in await segments(self.plane) - {s.vni for s in plan.segments}:
                await remove_segment(self.plane, vni)
            for switch_name, found in (await self._filter(plan)).items():
                problems.setdefault(switch_name, []).extend(found)
            for problem in plan.problems:
                log.warning("network plan: %s", problem)
            after = await self._snapshot()
            if plan == self._realised and before is not None and after is not None:
                self._note_drift(plan, links.drift(before, after))
            self._realised = plan
            for switch in plan.switches:
                ports = sum(1 for p in switch.ports if p.vm)
                ports += sum(
                    1 for s in plan.segments if s.switch == switch.name for p in s.ports if p.vm
                )
                found = problems.get(switch.name, [])
                at, repaired = self._repairs.get(switch.name, (None, []))
                states[switch.name] = SwitchState(
                    in_sync=not found,
                    problems=found,
                    ports=ports,
                    repaired=repaired,
                    repaired_at=at,
                )
            return states

    def switch_ports(self) -> list[tuple[str, str, str]]:
        """(switch, link, kind) of this node's ports that are not a VM's, as last built:
        each switch's uplink and each VXLAN segment's device."""
        plan = self._realised
        if plan is None:
            return []
        ports = [(s.name, s.uplink, "uplink") for s in plan.switches if s.uplink]
        return ports + [(s.switch, s.device, "vxlan") for s in plan.segments]

    async def _snapshot(self) -> dict[str, links.LinkView] | None:
        return await asyncio.to_thread(links.snapshot, self.plane)

    def _note_drift(self, plan: NodePlan, repaired: dict[str, str]) -> None:
        """What a realise changed although nothing in the plan did: someone or something
        changed the data plane behind the agent's back. Logged, and kept in the switch's
        status until the next drift."""
        owners = link_owners(plan)
        by_switch: dict[str, list[str]] = {}
        for name, what in sorted(repaired.items()):
            log.warning("network drift repaired: %s", what)
            if name in owners:
                by_switch.setdefault(owners[name], []).append(what)
        now = time.time()
        for switch, found in by_switch.items():
            self._repairs[switch] = (now, found)

    async def _filter(self, plan: NodePlan) -> dict[str, list[str]]:
        """Security groups and rate limits of the VM ports, once their bridges stand: the
        problems by switch."""
        where = filtering(plan)
        problems: dict[str, list[str]] = {}
        ports = [p for found in where.ports.values() for p in found]
        shared = await self.firewall.realise(ports, where.bridges)
        shared += await realise_shaping(self.plane, ports)
        if shared:
            for switch_name, found in where.ports.items():
                if any(p.guarded for p in found):
                    problems.setdefault(switch_name, []).extend(shared)
        return problems

    def _switch_of(self, network: str) -> str:
        found = self.inventory.networks.get(network)
        return found.value.switch if found else network

    async def report(self, states: dict[str, SwitchState]) -> None:
        underlay = self.inventory.live_nodes().get(self.node)
        now = time.time()
        status = NodeNetworkStatus(
            node=self.node,
            switches=states,
            underlay=underlay.underlay if underlay else None,
            updated_at=now,
        )
        if self._reported is not None:
            last, at = self._reported
            same = last.model_copy(update={"updated_at": now}) == status
            if same and now - at < REPORT_AGAIN:
                return  # a thousand nodes re-writing the same every 15 s is etcd's load
        await self.db.put(keys.network_status(self.node), status)
        self._reported = (status, now)

    async def run(self) -> None:
        """Keep this node's switches built as the ConfigDB says, repairing drift."""
        inv = await self.inventory.ready()
        caches = (inv.switches, inv.networks, inv.nodes, inv.vms, inv.security_groups)
        changes = [c.listen() for c in caches]
        while True:
            try:
                await self.report(await self.realise())
            except Exception:  # a driver's bug or etcd away: keep what is built, try again
                log.exception("network: realising this node's switches failed")
            waiters = [asyncio.ensure_future(c.wait()) for c in changes]
            try:
                await asyncio.wait(waiters, timeout=DRIFT_CHECK, return_when="FIRST_COMPLETED")
            finally:
                for waiter in waiters:
                    waiter.cancel()
            for change in changes:
                change.clear()

    async def plug(self, vm: VM, only: set[int] | None = None) -> dict[int, int]:
        """Open a tap for each of `vm`'s NICs on a network (those in `only`, if given) and
        plug it into its bridge before QEMU starts, arrives here by migration or takes the NIC
        while it runs; returns the fds by NIC index, which the caller hands to QEMU and then
        closes. The caller calls `settled` once QEMU has them."""
        inv = await self.inventory.ready()
        fds: dict[int, int] = {}
        try:
            for index, nic in enumerate(vm.spec.nics):
                if nic.network in BUILTIN_NETWORKS or (only is not None and index not in only):
                    continue
                network = inv.networks.get(nic.network)
                switch = inv.switches.get(network.value.switch) if network else None
                if network is None or switch is None:
                    raise NetworkError(f"NIC {index}: no network {nic.network!r}")
                mtu = network_mtu(network.value, switch.value)
                offload = True
                if switch.value.backend == "ovs" and network.value.kind != "vxlan":
                    try:
                        offload = (await self._ovs_switch()).guest_checksum_offload
                    except OvsError as exc:
                        raise NetworkError(f"NIC {index}: {exc}") from exc
                name = tap_name(nic.mac or "")
                fds[index] = await asyncio.to_thread(open_tap, self.plane, name, mtu, offload)
            if fds:
                self._arriving[vm.id] = vm
                states = await self.realise()
                with contextlib.suppress(Exception):
                    await self.report(states)
        except BaseException:
            self.settled(vm.id)
            for fd in fds.values():
                os.close(fd)
            raise
        return fds

    def settled(self, vm_id: str) -> None:
        """`vm_id`'s QEMU runs here now (or failed to start): its ports follow it from now."""
        self._arriving.pop(vm_id, None)
