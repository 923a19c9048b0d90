"""Live migration between nodes over TCP, driven by the source node's agent.

The source writes a migration record and a `vm.receive` task for the target in one
transaction (one migration per VM at a time). The target starts the VM's QEMU with
`-incoming defer`, listens, and publishes its URI in the record. The source then migrates,
reporting QEMU's progress in its task; on completion it gives the VM record to the target
and stops its own, now paused, QEMU. On failure or cancel the source keeps running the VM
and the target drops its incoming QEMU. Disks must be on shared storage for now.
"""

import asyncio
import contextlib
import logging
import socket
import time
from typing import Any

from heron.agent.tasks import TaskCancelled, TaskContext, TaskFailed
from heron.agent.vms import VMController, VMError
from heron.configdb import ConfigDB, Txn, keys
from heron.configdb.store import Conflict
from heron.hypervisor.qemu import QemuError
from heron.models.migration import Migration, MigrationState
from heron.models.node import Node
from heron.models.storage import Pool, Volume
from heron.models.task import new_task
from heron.models.vm import VM

log = logging.getLogger(__name__)

PREPARE_TIMEOUT = 60.0
_POLL = 0.1


class Migrations:
    def __init__(self, db: ConfigDB, node: str, address: str, vms: VMController):
        self.db = db
        self.node = node
        self.address = address
        self.vms = vms

    # -- shared ----------------------------------------------------------------------------

    async def _set(self, vm_id: str, **changes: Any) -> Migration:
        def change(record: Migration) -> Migration:
            return record.model_copy(update=changes)

        return (await self.db.update(Migration, keys.migration(vm_id), change)).value

    async def _wait(self, vm_id: str, states: set[MigrationState], timeout: float) -> Migration:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            entry = await self.db.get(Migration, keys.migration(vm_id))
            if entry is None:
                raise TaskFailed("the migration record vanished")
            if entry.value.state in states:
                return entry.value
            if loop.time() > deadline:
                raise TaskFailed(f"no answer from node {entry.value.target} in {timeout:.0f}s")
            await asyncio.sleep(_POLL)  # polling the record the other node writes

    # -- source ----------------------------------------------------------------------------

    async def migrate(self, ctx: TaskContext) -> dict[str, Any]:
        vm_id, params = ctx.task.target, ctx.task.params
        target = str(params["target"])
        entry = await self.db.get(VM, keys.vm(vm_id))
        if entry is None:
            raise TaskFailed("the VM no longer exists")
        vm = entry.value
        if vm.node == target:
            return {"node": target}  # a repeat after a crash: already done
        if vm.node != self.node:
            raise TaskFailed(f"the VM runs on {vm.node}, not here")
        qemu = self.vms.runtime(vm_id).qemu
        if not qemu.running():
            raise TaskFailed("the VM is not running")
        local = await local_disks(self.db, vm)
        if local:
            raise TaskFailed(
                f"disk {local[0]} is on node-local storage; "
                "only VMs on shared storage can migrate yet"
            )
        record = Migration(
            vm=vm_id,
            source=self.node,
            target=target,
            max_downtime_ms=int(params.get("max_downtime_ms", 300)),
            auto_converge=bool(params.get("auto_converge", True)),
            created_at=time.time(),
        )
        receive = new_task("vm.receive", target, vm_id, ctx.task.user)
        key = keys.migration(vm_id)
        try:
            await self.db.commit(
                Txn().require_absent(key).put(key, record).put(keys.task(receive.id), receive)
            )
        except Conflict as exc:
            raise TaskFailed("another migration of this VM is in progress") from exc
        started = time.monotonic()
        try:
            ready = await self._wait(
                vm_id, {MigrationState.ready, MigrationState.failed}, PREPARE_TIMEOUT
            )
            if ready.state == MigrationState.failed:
                raise TaskFailed(f"the target could not prepare: {ready.error}")
            await ctx.progress(0.02, f"{target} listens on {ready.uri}")
            downtime = await self._send(ctx, record, str(ready.uri))

            await self._hand_record_over(vm_id, target, downtime)
        except (TaskFailed, TaskCancelled, QemuError, VMError) as exc:
            with contextlib.suppress(QemuError):
                await qemu.execute("migrate_cancel")
            with contextlib.suppress(Exception):
                await self._set(vm_id, state=MigrationState.failed, error=str(exc) or "cancelled")
            raise
        await self.vms.hand_over(vm_id)
        total = round((time.monotonic() - started) * 1000)
        await ctx.log(f"migrated to {target} in {total} ms, downtime {downtime} ms")
        return {"node": target, "downtime_ms": downtime, "total_ms": total}

    async def _hand_record_over(self, vm_id: str, target: str, downtime: int | None) -> None:
        """The VM runs on the target now: the VM record and the migration's end, at once."""
        for _ in range(20):
            vm = await self.db.get(VM, keys.vm(vm_id))
            record = await self.db.get(Migration, keys.migration(vm_id))
            if vm is None or record is None:
                raise TaskFailed("the VM or its migration record vanished")
            moved = vm.value.model_copy(deep=True)
            moved.node = target
            moved.generation += 1
            done = record.value.model_copy(
                update={"state": MigrationState.completed, "downtime_ms": downtime}
            )
            txn = (
                Txn()
                .require_revision(vm.key, vm.revision)
                .require_revision(record.key, record.revision)
                .put(vm.key, moved)
                .put(record.key, done)
            )
            with contextlib.suppress(Conflict):
                await self.db.commit(txn)
                return
        raise TaskFailed("the VM record kept changing; could not hand it over")

    async def _send(self, ctx: TaskContext, record: Migration, uri: str) -> int | None:
        qemu = self.vms.runtime(record.vm).qemu
        capabilities = [
            {"capability": "auto-converge", "state": record.auto_converge},
            {"capability": "events", "state": True},
        ]
        await qemu.execute("migrate-set-capabilities", {"capabilities": capabilities})
        await qemu.execute("migrate-set-parameters", {"downtime-limit": record.max_downtime_ms})
        await self._set(record.vm, state=MigrationState.running)
        await qemu.execute("migrate", {"uri": uri})
        while True:
            info = await qemu.execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                return info.get("downtime")
            if status in ("failed", "cancelled"):
                raise TaskFailed(f"QEMU migration {status}: {info.get('error-desc', '')}")
            ram = info.get("ram", {})
            total = ram.get("total") or 0
            if total:
                done = min(ram.get("transferred", 0) / total, 0.99)
                await ctx.progress(0.02 + 0.97 * done)
            await asyncio.sleep(_POLL)  # QEMU reports progress only when asked

    # -- target ----------------------------------------------------------------------------

    async def receive(self, ctx: TaskContext) -> dict[str, Any]:
        vm_id = ctx.task.target
        entry = await self.db.get(Migration, keys.migration(vm_id))
        vm = await self.db.get(VM, keys.vm(vm_id))
        if entry is None or vm is None or entry.value.target != self.node:
            return {"skipped": "no migration to this node"}
        if entry.value.state == MigrationState.preparing:
            try:
                qemu = await self.vms.start_incoming(vm.value)
                uri = f"tcp:{self.address}:{_free_port(self.address)}"
                await qemu.execute(
                    "migrate-set-capabilities",
                    {"capabilities": [{"capability": "events", "state": True}]},
                )
                await qemu.execute("migrate-incoming", {"uri": uri})
            except (VMError, QemuError) as exc:
                await self._set(vm_id, state=MigrationState.failed, error=str(exc))
                await self.vms.hand_over(vm_id)
                raise TaskFailed(str(exc)) from exc
            await self._set(vm_id, state=MigrationState.ready, uri=uri)
        source = entry.value.source
        end = await self._until_done(vm_id, source)
        if end.state == MigrationState.completed:
            await self.vms.reconcile(vm_id)
            await self.db.delete(keys.migration(vm_id))
            return {"node": self.node, "downtime_ms": end.downtime_ms}
        await self.vms.hand_over(vm_id)
        await self.db.delete(keys.migration(vm_id))
        raise TaskFailed(f"the migration failed: {end.error}")

    async def _until_done(self, vm_id: str, source: str) -> Migration:
        """Wait for the source's verdict; a source whose lease expired gives none."""
        while True:
            entry = await self.db.get(Migration, keys.migration(vm_id))
            if entry is None:
                raise TaskFailed("the migration record vanished")
            if entry.value.state in (MigrationState.completed, MigrationState.failed):
                return entry.value
            if await self.db.get(Node, keys.node(source)) is None:
                return await self._set(
                    vm_id, state=MigrationState.failed, error=f"source node {source} failed"
                )
            await asyncio.sleep(_POLL * 5)  # polling the record the source writes


async def local_disks(db: ConfigDB, vm: VM) -> list[str]:
    """The VM's volumes that only its node can reach."""
    shared = {e.value.name for e in await db.list(Pool, keys.POOLS) if e.value.shared}
    local = []
    for disk in vm.spec.disks:
        volume = await db.get(Volume, keys.volume(disk.volume))
        if volume is None or volume.value.pool not in shared:
            local.append(disk.volume)
    return local


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])
