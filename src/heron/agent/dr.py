"""Protected VMs' replication rounds on the node that runs them (issue 19, inside one cluster).

`DRScheduler.run` looks at the protection policies every few seconds and, for each protected
VM running here whose interval has passed since its last round started, writes a
`dr.replicate` task for this node; one at a time per VM (no new one while one is queued or
running). `DRTasks.replicate` carries it out: one round (hypervisor.qmp_replica) into this
node's replica store (cluster setting `dr.store`, default <state>/dr-store), then retention
and the store's garbage collection, then the VM's DRStatus record (its points, the round's
numbers or error). A failed round is retried at the next interval.

A round holds the VM's lock (VMController's runtime lock) throughout, as snapshots, hardware
changes and power changes do: none of them runs beside it. A VM migrating (its migration
record) is not replicated; the migration service refuses to start while a round is queued
or running. After a VM moves, the next round runs on its new node, into that node's store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from heron.agent.tasks import TaskCancelled, TaskContext, TaskFailed
from heron.agent.vms import VMController
from heron.configdb import ConfigDB, keys
from heron.dr import policy
from heron.dr.errors import Busy
from heron.dr.replicate import Progress, RoundReport
from heron.dr.store import Store
from heron.errors import DRError
from heron.hypervisor import command
from heron.hypervisor.qemu import QemuError
from heron.hypervisor.qmp_replica import ReplicaDisk, replicate
from heron.models.dr import DRPoint, DRSettings, DRStatus, Protection, ProtectionPolicy
from heron.models.settings import ClusterSettings
from heron.models.task import Task, TaskKind, new_task
from heron.models.vm import VM, Hardware

log = logging.getLogger(__name__)

_EXCLUSIVE = (
    TaskKind.dr_replicate,
    TaskKind.vm_migrate,
    TaskKind.vm_receive,
    TaskKind.snapshot_create,
    TaskKind.snapshot_revert,
    TaskKind.snapshot_delete,
)
TICK = 2.0  # how often the policies are looked at: a round starts at most this late
KEEP_ROUNDS = 5  # ended dr.replicate tasks kept per VM
_PROGRESS_POLL = 0.5


async def dr_settings(db: ConfigDB) -> DRSettings:
    found = await db.get(ClusterSettings, keys.SETTINGS)
    return (found.value if found else ClusterSettings()).dr


def store_path(settings: DRSettings, state_dir: Path) -> Path:
    return Path(settings.store) if settings.store else state_dir / "dr-store"


def open_store(path: Path) -> Store:
    """The replica store at `path`, made there if missing."""
    return Store.create(path)


class DRScheduler:
    def __init__(self, db: ConfigDB, node: str, vms: VMController):
        self.db = db
        self.node = node
        self.vms = vms

    async def run(self) -> None:
        while True:
            try:
                await self.round(time.time())
            except asyncio.CancelledError:
                raise
            except Exception:  # the ConfigDB away a moment: next tick
                log.exception("DR scheduling round failed")
            await asyncio.sleep(TICK)

    async def round(self, now: float) -> list[Task]:
        """Write the tasks of the rounds due now; returns them."""
        protections = [e.value for e in await self.db.list(Protection, keys.DR_PROTECTIONS)]
        if not protections:
            return []
        running = set(self.vms.running_here())
        tasks = [e.value for e in await self.db.list(Task, keys.TASKS)]
        # One round at a time per VM, none while it migrates (the migration record comes a
        # moment after its task) or has a snapshot being taken (that would wait on its lock).
        busy = {t.target for t in tasks if t.kind in _EXCLUSIVE and not t.state.finished}
        await self._forget_old_rounds(tasks)
        made = []
        for protection in protections:
            vm_id = protection.vm
            if vm_id not in running or vm_id in busy:
                continue
            vm = await self.db.get(VM, keys.vm(vm_id))
            if vm is None or vm.value.node != self.node:
                continue
            if await self.db.get_raw(keys.migration(vm_id)) is not None:
                continue
            status = await self.db.get(DRStatus, keys.dr_status(vm_id))
            if not policy.due(protection, status.value if status else None, now):
                continue
            task = new_task(TaskKind.dr_replicate, self.node, vm_id, "dr")
            await self.db.create(keys.task(task.id), task)
            made.append(task)
        return made

    async def _forget_old_rounds(self, tasks: list[Task]) -> None:
        """Keep the last KEEP_ROUNDS ended rounds of each VM: a round every few minutes would
        otherwise crowd every other task out of the node's list (tasks.KEEP_FINISHED). The
        status record keeps what they achieved."""
        ended: dict[str, list[Task]] = {}
        for task in tasks:
            if (
                task.kind == TaskKind.dr_replicate
                and task.node == self.node
                and task.state.finished
            ):
                ended.setdefault(task.target, []).append(task)
        for rounds in ended.values():
            rounds.sort(key=lambda t: t.updated_at)
            for task in rounds[:-KEEP_ROUNDS]:
                with contextlib.suppress(KeyError):
                    await self.db.delete(keys.task(task.id))


class DRTasks:
    def __init__(self, db: ConfigDB, node: str, state_dir: Path, vms: VMController):
        self.db = db
        self.node = node
        self.state_dir = state_dir
        self.vms = vms

    async def _status(self, vm: VM, path: Path) -> DRStatus:
        found = await self.db.get(DRStatus, keys.dr_status(vm.id))
        if found is None or found.value.node != self.node or found.value.store != str(path):
            # A store elsewhere (the VM moved, or the setting changed): its points stay
            # there; this store's are listed from now on.
            return DRStatus(vm=vm.id, name=vm.spec.name, node=self.node, store=str(path))
        return found.value.model_copy(update={"name": vm.spec.name})

    async def _save(self, status: DRStatus) -> None:
        await self.db.put(keys.dr_status(status.vm), status)

    async def replicate(self, ctx: TaskContext) -> dict[str, Any]:
        vm_id = ctx.task.target
        protection = await self.db.get(Protection, keys.dr_protection(vm_id))
        if protection is None:
            return {"skipped": "the VM is no longer protected"}
        entry = await self.db.get(VM, keys.vm(vm_id))
        if entry is None:
            return {"skipped": "the VM is gone"}
        vm = entry.value
        if vm.node != self.node:
            return {"skipped": f"the VM runs on {vm.node} now: its next round runs there"}
        if await self.db.get_raw(keys.migration(vm_id)) is not None:
            raise TaskFailed("the VM is migrating: its next round runs after")
        path = store_path(await dr_settings(self.db), self.state_dir)
        store = await asyncio.to_thread(open_store, path)
        status = await self._status(vm, path)
        status.last_attempt = time.time()
        await self._save(status)
        rt = self.vms.runtime(vm_id)
        try:
            async with rt.lock:  # no snapshot, hardware or power change beside the round
                report = await self._round(ctx, vm, rt.qemu, store)
        except (TaskCancelled, asyncio.CancelledError):
            status.last_error = "cancelled"
            status.last_ended = time.time()
            await self._save(status)
            raise
        except (QemuError, DRError, OSError, TaskFailed) as exc:
            status.last_error = str(exc) or type(exc).__name__
            status.last_ended = time.time()
            await self._save(status)
            raise TaskFailed(f"the replication round failed: {status.last_error}") from exc
        removed = await asyncio.to_thread(
            prune, store, vm_id, protection.value.policy, report.point.id
        )
        status.last_error = None
        status.last_ended = time.time()
        status.last_kind = report.kind
        status.last_bytes_read = report.bytes_read
        status.last_bytes_written = report.bytes_written
        status.last_chunks_sent = report.chunks_sent
        status.points = await asyncio.to_thread(listed, store, vm_id, status.points, report)
        spec = self.vms.running_spec(vm_id) or vm.spec
        status.hardware = spec.model_dump(mode="json", include=set(Hardware.model_fields))
        status.buses = [d.bus for d in spec.disks]
        await self._save(status)
        return {
            "point": report.point.id,
            "kind": report.kind,
            "bytes_read": report.bytes_read,
            "chunks_sent": report.chunks_sent,
            "bytes_written": report.bytes_written,
            "removed": removed,
        }

    async def restore_disk(self, vm_id: str, point: str, disk: str, work: Path) -> Path:
        """A point's disk restored from this node's store into a sparse raw file in `work`."""
        path = store_path(await dr_settings(self.db), self.state_dir)
        store = await asyncio.to_thread(open_store, path)
        work.mkdir(parents=True, exist_ok=True)
        target = work / f"{disk}.raw"
        try:
            await asyncio.to_thread(store.restore, vm_id, point, disk, target)
        except (DRError, OSError) as exc:
            raise TaskFailed(f"{disk} of point {point}: {exc}") from exc
        return target

    async def _round(self, ctx: TaskContext, vm: VM, qemu: Any, store: Store) -> RoundReport:
        if not qemu.running():
            raise TaskFailed("the VM is not running here")
        spec = self.vms.running_spec(vm.id) or vm.spec
        disks = [
            ReplicaDisk(f"disk{i}", f"disk{i}", command.disk_backend(i, disk.bus))
            for i, disk in enumerate(spec.disks)
        ]
        if not disks:
            raise TaskFailed("the VM has no disks")
        seen: list[Progress] = []
        stop: list[bool] = []

        def progress(p: Progress) -> None:  # a worker thread, after each chunk read
            if stop:
                raise TaskCancelled()
            seen.append(p)
            del seen[:-1]

        async def report_progress() -> None:
            while True:
                await asyncio.sleep(_PROGRESS_POLL)  # the round's thread reports by itself
                if not seen:
                    continue
                last = seen[-1]
                index = [d.name for d in disks].index(last.disk)
                share = (last.chunks_done / last.chunks_total) if last.chunks_total else 1.0
                try:
                    await ctx.progress(
                        0.95 * (index + share) / len(disks),
                        None,
                    )
                except TaskCancelled:
                    stop.append(True)
                    return

        reporter = asyncio.create_task(report_progress())
        try:
            await ctx.log(f"a round of {len(disks)} disk(s) into {store.root}")
            report = await replicate(
                qemu, vm.id, disks, store, self.vms.paths(vm.id).root, progress=progress
            )
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        if stop:
            raise TaskCancelled()
        await ctx.log(
            f"{report.kind} point {report.point.id}: {report.chunks_read} chunks read "
            f"({report.bytes_read} bytes), {report.chunks_sent} sent, "
            f"{report.bytes_written} bytes new in the store"
        )
        return report


def prune(store: Store, vm: str, policy_: ProtectionPolicy, newest: str) -> list[str]:
    """Retention after a round: delete the points the policy does not keep, then collect the
    chunks no point names. A point busy (being read by a restore) stays until next time."""
    removed = []
    for point in policy.expired([(p.id, p.created) for p in store.points(vm)], policy_):
        if point == newest:
            continue
        try:
            store.delete_point(vm, point)
        except Busy:
            continue
        removed.append(point)
    if removed:
        with contextlib.suppress(Busy):
            store.gc()
    return removed


def listed(store: Store, vm: str, known: list[DRPoint], report: RoundReport) -> list[DRPoint]:
    """The VM's points in the store, with what the rounds told of them."""
    by_id = {p.id: p for p in known}
    by_id[report.point.id] = DRPoint(
        id=report.point.id,
        created=report.point.created,
        kind=report.kind,
        parent=report.point.parent,
        disks=dict(report.point.disks),
        bytes_read=report.bytes_read,
        chunks_sent=report.chunks_sent,
        bytes_written=report.bytes_written,
    )
    points = []
    for info in store.points(vm):
        found = by_id.get(info.id)
        if found is None:
            found = DRPoint(
                id=info.id,
                created=info.created,
                kind="full" if info.parent is None else "incremental",
                parent=info.parent,
                disks=dict(info.disks),
            )
        points.append(found)
    points.sort(key=lambda p: (p.created, p.id))
    return points
