"""Draining a node for maintenance: every VM live-migrates away, placement-aware, one by one.

Running VMs move by live migration (a `vm.migrate` task each, so each has its own progress
and log); stopped VMs on shared storage just have their record given to another node. What
cannot move is listed in the task's error; the node stays in maintenance either way.
"""

import asyncio
from typing import Any

from heron.agent.migration import local_disks
from heron.agent.tasks import TaskContext, TaskFailed
from heron.agent.vms import VMController
from heron.configdb import ConfigDB, keys
from heron.configdb.store import Conflict
from heron.models.task import MigrateParams, Task, TaskKind, new_task
from heron.models.vm import VM, PowerState
from heron.scheduler.inventory import group_of, live_nodes
from heron.scheduler.placement import PlacementError, affinity_for, migration_target, node_loads

_POLL = 0.2


class Drain:
    def __init__(self, db: ConfigDB, node: str, vms: VMController):
        self.db = db
        self.node = node
        self.vms = vms

    async def __call__(self, ctx: TaskContext) -> dict[str, Any]:
        mine = sorted(
            (e.value for e in await self.db.list(VM, keys.VMS) if e.value.node == self.node),
            key=lambda vm: vm.spec.name,
        )
        moved: list[str] = []
        stuck: list[str] = []
        for done, vm in enumerate(mine):
            try:
                target = await self._target(vm)
                if vm.power != PowerState.stopped and self.vms.runtime(vm.id).qemu.running():
                    await self._migrate(ctx, vm, target)
                else:
                    await self._reassign(vm, target)
                moved.append(f"{vm.spec.name}->{target}")
            except (TaskFailed, PlacementError, Conflict) as exc:
                stuck.append(f"{vm.spec.name}: {exc}")
            await ctx.progress((done + 1) / len(mine), f"{done + 1}/{len(mine)} handled")
        if stuck:
            raise TaskFailed("could not move " + "; ".join(stuck))
        return {"moved": moved}

    async def _target(self, vm: VM) -> str:
        nodes = await live_nodes(self.db)
        vms = [e.value for e in await self.db.list(VM, keys.VMS) if e.value.id != vm.id]
        rule = affinity_for(vm.id, await group_of(self.db, vm), vms)
        loads = node_loads(nodes, vms)
        return migration_target(loads, self.node, vm.spec.memory_mib, vm.spec.vcpus, rule)

    async def _migrate(self, ctx: TaskContext, vm: VM, target: str) -> None:
        task = new_task(
            TaskKind.vm_migrate, self.node, vm.id, ctx.task.user, MigrateParams(target=target)
        )
        await self.db.create(keys.task(task.id), task)
        while True:
            entry = await self.db.get(Task, keys.task(task.id))
            if entry is not None and entry.value.state.finished:
                if entry.value.state != "succeeded":
                    raise TaskFailed(entry.value.error or entry.value.state)
                return
            await asyncio.sleep(_POLL)  # polling the migration task we created

    async def _reassign(self, vm: VM, target: str) -> None:
        local = await local_disks(self.db, vm)
        if local:
            raise TaskFailed(f"stopped, with disk {local[0]} on this node's local storage")

        def move(current: VM) -> VM:
            if current.node != self.node:
                raise Conflict("the VM moved meanwhile")
            current.node = target
            current.generation += 1
            return current

        await self.db.update(VM, keys.vm(vm.id), move)
