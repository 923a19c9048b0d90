"""The failover controller, run by the leader.

A node is failed when its agent's lease has expired (its record is gone from /heron/nodes/) and
its fence watchdog's too (/heron/watchdogs/: a watchdog keeps it while the agent is within its
grace, see ha/fence.py). After a margin, which covers the failed node's fence deadline, its HA
VMs are given to the least-loaded nodes that fit them, highest priority first; a VM that fits
nowhere waits as `pending`, with the reason, until capacity returns. An HA VM whose QEMU
crashed on a live node is started again there. Every decision is fenced by the leader's token
and written to the audit log.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from heron.audit import AuditLog
from heron.configdb import Entry, Txn, keys
from heron.configdb.election import Election
from heron.configdb.store import Conflict
from heron.ha.planner import plan_restarts
from heron.models.group import VMGroup, effective_ha
from heron.models.node import Node
from heron.models.task import PowerParams, TaskKind, new_task
from heron.models.vm import VM, PowerState, RunState, VMStatus
from heron.scheduler.inventory import Inventory
from heron.scheduler.placement import node_loads

log = logging.getLogger(__name__)

MARGIN = 1.0  # after a lease expired, on top of the fence deadline being shorter than the TTL
CRASH_RETRY = 10.0  # an HA VM that keeps crashing is restarted at most this often
# Node changes wake the controller at once; everything else (crashed VMs, capacity that
# returned) is looked at every tick. Waking on every VM change made the leader re-read all
# VMs for each of them: with 10 000 VMs that starved it during mass creation.
_TICK = 0.5


class FailoverController:
    def __init__(
        self,
        inventory: Inventory,
        audit: AuditLog,
        margin: float = MARGIN,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.inventory = inventory
        self.db = inventory.db
        self.audit = audit
        self.margin = margin
        self.clock = clock
        self._missing_since: dict[str, float] = {}
        self._restarted_at: dict[str, float] = {}

    async def run(self, election: Election) -> None:
        await self.inventory.ready()
        wake = self.inventory.nodes.listen()
        while True:
            # A conflict: someone changed a VM under us, or we lost the lead. Look again.
            with contextlib.suppress(Conflict):
                await self.step(election)
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), _TICK)

    async def step(self, election: Election) -> None:
        inv = await self.inventory.ready()
        nodes = inv.live_nodes()
        present = set(nodes) | {name for name, _ in inv.watchdogs.items()}
        vm_entries = list(inv.vms)
        now = self.clock()
        for name in {e.value.node for e in vm_entries} - present:
            self._missing_since.setdefault(name, now)
        for name in list(self._missing_since):
            if name in present:
                del self._missing_since[name]
        groups = inv.groups_by_name()
        wanted = [
            e
            for e in vm_entries
            if e.value.power != "stopped"
            and effective_ha(e.value, groups.get(e.value.spec.group or "")).enabled
        ]
        orphans = [
            e
            for e in wanted
            if e.value.node in self._missing_since
            and now - self._missing_since[e.value.node] >= self.margin
        ]
        crashed = [
            e
            for e in wanted
            if e.value.node in nodes
            and (s := inv.vm_status.get(e.value.id)) is not None
            and s.value.node == e.value.node
            and s.value.state in (RunState.crashed, RunState.error)
            and now - self._restarted_at.get(e.value.id, -CRASH_RETRY) >= CRASH_RETRY
        ]
        if orphans:
            await self._fail_over(election, orphans, nodes, [e.value for e in vm_entries], groups)
        for entry in crashed:
            self._restarted_at[entry.value.id] = now
            await self._restart(election, entry, entry.value.node, "its QEMU crashed or failed")

    async def _fail_over(
        self,
        election: Election,
        orphans: list[Entry[VM]],
        nodes: dict[str, Node],
        vms: list[VM],
        groups: dict[str, VMGroup],
    ) -> None:
        orphan_ids = {e.value.id for e in orphans}
        survivors = [v for v in vms if v.id not in orphan_ids]
        # The orphans' memory no longer counts anywhere: their node is gone.
        loads = node_loads(nodes, survivors, self.inventory.measured(time.time()))
        shared = self.inventory.shared_volumes()
        plan = plan_restarts([e.value for e in orphans], loads, shared, groups, survivors)
        by_id = {e.value.id: e for e in orphans}
        for vm, target in plan.moves:
            await self._restart(election, by_id[vm.id], target, f"node {vm.node} failed")
        for vm, reason in plan.pending:
            status = self.inventory.vm_status.get(vm.id)
            if (
                status is not None
                and status.value.state == RunState.pending
                and (status.value.message == reason)
            ):
                continue
            pending = VMStatus(
                state=RunState.pending,
                node=vm.node,
                message=reason,
                observed_generation=vm.generation,
                updated_at=time.time(),
            )
            revision = await self.db.commit(
                election.fence(Txn()).put(keys.vm_status(vm.id), pending)
            )
            await self.inventory.vm_status.wait_for(revision)
            self.audit.record(
                user="ha",
                method="HA",
                path=f"/vms/{vm.id}",
                status=0,
                result="pending",
                target=vm.id,
                reason=reason,
            )
            log.warning("HA: VM %s pending: %s", vm.spec.name, reason)

    async def _restart(self, election: Election, entry: Entry[VM], target: str, why: str) -> None:
        vm = entry.value.model_copy(deep=True)
        source = vm.node
        vm.node = target
        vm.power = PowerState.running
        vm.generation += 1
        params = PowerParams(graceful=False, reason=why)
        task = new_task(TaskKind.vm_start, target, vm.id, "ha", params)
        txn = election.fence(Txn()).require_revision(entry.key, entry.revision)
        revision = await self.db.commit(txn.put(entry.key, vm).put(keys.task(task.id), task))
        # The next step must see this VM where it now is, not fail it over a second time.
        await self.inventory.vms.wait_for(revision)
        self.audit.record(
            user="ha",
            method="HA",
            path=f"/vms/{vm.id}",
            status=0,
            result="ok",
            target=vm.id,
            reason=f"{why}: restarting {vm.spec.name} on {target}",
            source=source,
            task=task.id,
        )
        log.warning("HA: %s; restarting VM %s on %s", why, vm.spec.name, target)
