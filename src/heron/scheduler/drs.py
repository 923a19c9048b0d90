"""The balancing controller (DRS), run by the leader when the administrator sets its mode to
automatic (in mode advise, GET /cluster/drs shows the move it would make, and nothing moves).

Every `interval` seconds it asks the balancer for the one best move; the imbalance must
persist for `hysteresis` checks in a row before it acts, and at most `max_concurrent` of its
migrations run at once. Each decision goes to the audit log with the numbers behind it.
"""

import asyncio
import logging
import time
from dataclasses import dataclass

from heron.audit import AuditLog
from heron.configdb import Txn, keys
from heron.configdb.election import Election
from heron.configdb.store import Conflict
from heron.models.demand import by_vm
from heron.models.migration import pinned
from heron.models.settings import ClusterSettings, DRSBasis, DRSSettings
from heron.models.snapshot import Snapshot
from heron.models.task import MigrateParams, TaskKind, new_task
from heron.models.vm import RunState
from heron.scheduler.balancer import Move, propose
from heron.scheduler.inventory import Inventory
from heron.scheduler.placement import NodeLoad, node_loads
from heron.storage.registry import capabilities

log = logging.getLogger(__name__)

_IDLE_CHECK = 2.0  # how often a disabled balancer looks whether it was turned on


@dataclass(frozen=True)
class Assessment:
    loads: list[NodeLoad]  # every live node's
    move: Move | None  # the one DRS would make now
    basis: DRSBasis  # the basis in force
    note: str | None = None  # why it is not the basis asked for


def assess(inv: Inventory, drs: DRSSettings, now: float | None = None) -> Assessment:
    """The cluster's loads and the move the balancer proposes for them: only running VMs
    move, and none that is migrating, has a migration task waiting, or is pinned to its node
    (`models.migration.pinned`).

    On basis demand, a node running VMs without a recent measurement (just started, or its
    agent away) would look idle: until every such node has one, allocated memory is
    balanced instead, and the assessment says why."""
    nodes = inv.live_nodes()
    vms = inv.vms.values()
    running = [
        v
        for v in vms
        if v.node in nodes
        and (s := inv.vm_status.get(v.id)) is not None
        and s.value.state == RunState.running
    ]
    migrating = {m.vm for m in inv.migrations.values()}
    pending = {
        t.target
        for t in inv.tasks.values()
        if t.kind == TaskKind.vm_migrate and not t.state.finished
    }
    shared = {p.name for p in inv.pools.values() if capabilities(p).shared}
    snapshots: dict[str, list[Snapshot]] = {}
    for snapshot in inv.snapshots.values():
        snapshots.setdefault(snapshot.vm, []).append(snapshot)
    volumes = {v.id: v for v in inv.volumes.values()}
    stuck = {  # a live migration of these would be refused
        v.id for v in running if pinned(v, volumes, shared, snapshots.get(v.id, []))
    }
    movable = {v.id for v in running} - migrating - pending - stuck
    basis, note, measured = drs.basis, None, None
    if basis == "demand":
        measured = inv.measured(time.time() if now is None else now)
        unmeasured = sorted({v.node for v in running} - measured.keys())
        if unmeasured:
            basis, measured = "allocated", None
            note = (
                f"no recent measurement from {', '.join(unmeasured)}: allocated memory is "
                "balanced meanwhile"
            )
    loads = node_loads(nodes, vms, measured)
    demand = None if measured is None else by_vm(measured.values())
    groups = inv.groups_by_name()
    move = propose(loads, running, drs.threshold, groups, movable, demand)
    return Assessment(loads, move, basis, note)


class BalancingController:
    def __init__(self, inventory: Inventory, audit: AuditLog):
        self.inventory = inventory
        self.db = inventory.db
        self.audit = audit
        self.streak = 0

    async def settings(self) -> DRSSettings:
        found = await self.db.get(ClusterSettings, keys.SETTINGS)
        return found.value.drs if found else DRSSettings()

    async def run(self, election: Election) -> None:
        while True:
            drs = await self.settings()
            if drs.mode == "automatic":
                try:
                    await self.step(election, drs)
                except Conflict:
                    self.streak = 0  # the cluster changed under us: start counting again
            else:
                self.streak = 0
            await asyncio.sleep(drs.interval if drs.mode == "automatic" else _IDLE_CHECK)

    async def step(self, election: Election, drs: DRSSettings) -> None:
        inv = await self.inventory.ready()
        ours = [t for t in inv.tasks.values() if t.user == "drs" and not t.state.finished]
        move = assess(inv, drs).move
        if move is None:
            self.streak = 0
            return
        self.streak += 1
        if self.streak < drs.hysteresis or len(ours) >= drs.max_concurrent:
            return
        params = MigrateParams(target=move.target)
        task = new_task(TaskKind.vm_migrate, move.source, move.vm.id, "drs", params)
        revision = await self.db.commit(election.fence(Txn()).put(keys.task(task.id), task))
        await self.inventory.tasks.wait_for(revision)  # the next step counts it as ours
        self.streak = 0
        self.audit.record(
            user="drs",
            method="DRS",
            path=f"/vms/{move.vm.id}",
            status=0,
            result="ok",
            target=move.vm.id,
            reason=move.explanation,
            task=task.id,
            vm_name=move.vm.spec.name,
            source=move.source,
            destination=move.target,
        )
        log.info("DRS: %s", move.explanation)
