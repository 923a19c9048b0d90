"""What each kind of task does on the node that carries it out. All of it is idempotent."""

import asyncio
import contextlib
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from heron.agent.ardfs import io_status
from heron.agent.dr import DRTasks
from heron.agent.drain import Drain
from heron.agent.imports import Imports
from heron.agent.migration import Migrations
from heron.agent.snapshots import Snapshots, drop_state_volumes, forget_vm
from heron.agent.support import SupportBundles
from heron.agent.tasks import Handler, TaskContext, TaskFailed
from heron.agent.vms import VMController, VMError
from heron.configdb import ConfigDB, Conflict, Txn, keys
from heron.hypervisor.command import format_node
from heron.hypervisor.qemu import QemuError, QemuVM
from heron.models.common import new_id
from heron.models.storage import Pool, Volume, VolumeFormat, VolumeHealth
from heron.models.task import (
    DRRestoreParams,
    PowerParams,
    RebalanceParams,
    TaskKind,
    VMCloneParams,
    VMCreateParams,
    VMDeleteParams,
    VolumeImportParams,
    VolumeResizeParams,
)
from heron.models.vm import VM, RunState
from heron.network.ipam import release_nics
from heron.storage.driver import PoolDriver, StorageError
from heron.storage.qemuimg import QemuImgError
from heron.storage.registry import driver_for


class Handlers:
    def __init__(
        self, db: ConfigDB, node: str, state_dir: Path, vms: VMController, migrations: Migrations
    ):
        self.db = db
        self.node = node
        self.state_dir = state_dir
        self.vms = vms
        self.migrations = migrations
        self.snapshots = Snapshots(db, node, state_dir, vms)
        self.dr = DRTasks(db, node, state_dir, vms)
        self.imports = Imports(
            db, node, state_dir, self._volume, self._set_volume, self.delete_vm, self._reconcile
        )
        # Diagnostic bundles need the peers' HTTP client: herond sets them before the runner.
        self.support: SupportBundles | None = None

    def table(self) -> dict[TaskKind, Handler]:
        """The handler of every kind of task; a test checks that no kind is left out."""
        return {
            TaskKind.vm_create: self.vm_create,
            TaskKind.vm_start: self.vm_power,
            TaskKind.vm_stop: self.vm_power,
            TaskKind.vm_shutdown: self.vm_power,
            TaskKind.vm_pause: self.vm_power,
            TaskKind.vm_resume: self.vm_power,
            TaskKind.vm_reboot: self.vm_reboot,
            TaskKind.vm_delete: self.vm_delete,
            TaskKind.vm_nics: self.vm_nics,
            TaskKind.vm_hardware: self.vm_hardware,
            TaskKind.vm_clone: self.vm_clone,
            TaskKind.vm_migrate: self.migrations.migrate,
            TaskKind.vm_receive: self.migrations.receive,
            TaskKind.node_drain: Drain(self.db, self.node, self.vms),
            TaskKind.volume_create: self.volume_create,
            TaskKind.volume_import: self.volume_import,
            TaskKind.volume_resize: self.volume_resize,
            TaskKind.volume_delete: self.volume_delete,
            TaskKind.volume_rebuild: self.volume_rebuild,
            TaskKind.volume_rebalance: self.volume_rebalance,
            TaskKind.pool_scan: self.pool_scan,
            TaskKind.snapshot_create: self.snapshots.create,
            TaskKind.snapshot_revert: self.snapshots.revert,
            TaskKind.snapshot_delete: self.snapshots.delete,
            TaskKind.support_bundle: self.support_bundle,
            TaskKind.v2v_scan: self.imports.scan,
            TaskKind.v2v_import: self.imports.run,
            TaskKind.dr_replicate: self.dr.replicate,
            TaskKind.dr_restore: self.dr_restore,
        }

    async def support_bundle(self, ctx: TaskContext) -> dict[str, Any]:
        if self.support is None:
            raise TaskFailed("this node builds no diagnostic bundles")
        return await self.support.build(ctx)

    # -- helpers -------------------------------------------------------------------------

    async def _volume(self, volume_id: str) -> tuple[Volume, PoolDriver]:
        entry = await self.db.get(Volume, keys.volume(volume_id))
        if entry is None:
            raise TaskFailed(f"volume {volume_id} does not exist")
        return entry.value, await self._pool(entry.value.pool)

    async def _pool(self, name: str) -> PoolDriver:
        pool = await self.db.get(Pool, keys.pool(name))
        if pool is None:
            raise TaskFailed(f"pool {name} does not exist")
        driver = driver_for(pool.value, self.state_dir, self.db)
        try:
            await driver.prepare()
        except StorageError as exc:
            raise TaskFailed(str(exc)) from exc
        return driver

    async def _set_volume(self, volume_id: str, **changes: Any) -> None:
        def change(volume: Volume) -> Volume:
            return volume.model_copy(update=changes)

        await self.db.update(Volume, keys.volume(volume_id), change)

    async def _make_volume(
        self,
        ctx: TaskContext,
        volume_id: str,
        source_id: str | None,
        source_image: str | None,
        share: tuple[float, float],
        clone: bool = False,
        source_format: str | None = None,
    ) -> None:
        """Create one volume, empty or copied from a source (`clone`: by its pool's clone,
        as the volume's `origin` says); progress in [share). `source_format`: the image's,
        never probed (a guest's raw disk may hold what looks like another format)."""
        try:
            volume, pool = await self._volume(volume_id)
        except TaskFailed as exc:  # e.g. the pool cannot be mounted here
            with contextlib.suppress(KeyError):
                await self._set_volume(volume_id, state="error", error=str(exc))
            raise
        if volume.state == "ready":
            return  # done before a restart cut the task short
        low, high = share

        async def progress(fraction: float) -> None:
            await ctx.progress(low + (high - low) * fraction)

        try:
            if clone and source_id is not None:
                source, _ = await self._volume(source_id)
                origin = volume.origin
                snapshot, linked = (origin.snapshot, origin.linked) if origin else (None, False)
                await pool.clone(source, snapshot, volume, linked, progress)
                await self._set_volume(volume_id, state="ready", error="")
                await ctx.log(f"volume {volume.name} ready ({'linked' if linked else 'full'})")
                return
            if source_id is not None:
                source, source_pool = await self._volume(source_id)
                source_image = source_pool.image(source)
            if source_image is not None:
                size = await pool.import_image(volume, source_image, progress, source_format)
                await self._set_volume(volume_id, state="ready", size=size, error="")
            else:
                await pool.create(volume)
                await self._set_volume(volume_id, state="ready", error="")
        except (QemuImgError, StorageError) as exc:
            await self._set_volume(volume_id, state="error", error=str(exc))
            raise TaskFailed(f"volume {volume.name}: {exc}") from exc
        await ctx.log(f"volume {volume.name} ready")

    # -- VMs -----------------------------------------------------------------------------

    async def vm_create(self, ctx: TaskContext) -> dict[str, Any]:
        volumes = ctx.params(VMCreateParams).volumes
        for index, item in enumerate(volumes):
            share = (index / (len(volumes) + 1), (index + 1) / (len(volumes) + 1))
            await self._make_volume(ctx, item.id, item.source, None, share)
        state = await self._reconcile(ctx.task.target)
        return {"vm": ctx.task.target, "state": state.value}

    async def vm_clone(self, ctx: TaskContext) -> dict[str, Any]:
        """A VM cloned from another: its volumes by their pools' clones (or copies, into
        another pool), then it is started if asked."""
        volumes = ctx.params(VMCloneParams).volumes
        for index, item in enumerate(volumes):
            share = (index / (len(volumes) + 1), (index + 1) / (len(volumes) + 1))
            await self._make_volume(ctx, item.id, item.source, None, share, clone=item.clone)
        state = await self._reconcile(ctx.task.target)
        return {"vm": ctx.task.target, "state": state.value}

    async def dr_restore(self, ctx: TaskContext) -> dict[str, Any]:
        """A new VM from a DR point: each disk restored from this node's replica store into a
        raw file beside it, imported into its volume (the pool's format), the file removed."""
        params = ctx.params(DRRestoreParams)
        work = self.state_dir / "dr-restore" / ctx.task.id
        try:
            for index, item in enumerate(params.volumes):
                share = (index / (len(params.volumes) + 1), (index + 1) / (len(params.volumes) + 1))
                image = await self.dr.restore_disk(params.vm, params.point, f"disk{index}", work)
                await self._make_volume(ctx, item.id, None, str(image), share, source_format="raw")
                image.unlink(missing_ok=True)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        state = await self._reconcile(ctx.task.target)
        return {"vm": ctx.task.target, "point": params.point, "state": state.value}

    async def _reconcile(self, vm_id: str, **options: Any) -> RunState:
        try:
            return await self.vms.reconcile(vm_id, **options)
        except (VMError, QemuError) as exc:
            await self.vms.report_error(vm_id, str(exc))
            raise TaskFailed(str(exc)) from exc

    async def vm_power(self, ctx: TaskContext) -> dict[str, Any]:
        params = ctx.params(PowerParams)
        state = await self._reconcile(
            ctx.task.target, graceful=params.graceful, timeout=params.timeout
        )
        return {"state": state.value}

    async def vm_reboot(self, ctx: TaskContext) -> dict[str, Any]:
        try:
            await self.vms.reboot(ctx.task.target)
        except (VMError, QemuError) as exc:
            raise TaskFailed(str(exc)) from exc
        return {"state": RunState.running.value}

    async def vm_nics(self, ctx: TaskContext) -> dict[str, Any]:
        entry = await self.db.get(VM, keys.vm(ctx.task.target))
        if entry is None:
            raise TaskFailed("the VM is gone")
        try:
            done = await self.vms.sync_nics(entry.value)
        except (VMError, QemuError) as exc:
            raise TaskFailed(str(exc)) from exc
        await self.vms.reconcile(entry.value.id)  # its status shows the running hardware
        return {"done": done}

    async def vm_hardware(self, ctx: TaskContext) -> dict[str, Any]:
        entry = await self.db.get(VM, keys.vm(ctx.task.target))
        if entry is None:
            raise TaskFailed("the VM is gone")
        try:
            done = await self.vms.apply_hardware(entry.value, ctx.progress)
        except (VMError, QemuError) as exc:
            raise TaskFailed(str(exc)) from exc
        await self.vms.reconcile(entry.value.id)  # its status shows the running hardware
        return {"done": done}

    async def vm_delete(self, ctx: TaskContext) -> dict[str, Any]:
        return await self.delete_vm(
            ctx.task.target, ctx.params(VMDeleteParams).volumes, ctx.progress
        )

    async def delete_vm(
        self, vm_id: str, volumes: bool, progress: Callable[[float, str], Awaitable[None]]
    ) -> dict[str, Any]:
        """Stop the VM's QEMU and remove its records (and its volumes' data, if asked)."""
        entry = await self.db.get(VM, keys.vm(vm_id))
        await self.vms.destroy(vm_id)
        await progress(0.5, "QEMU stopped")
        if entry is None:
            return {"deleted": vm_id}  # a repeat after a crash: the record is already gone
        vm = entry.value
        txn = (
            Txn()
            .delete(keys.vm(vm_id))
            .delete(keys.vm_name(vm.spec.name))
            .delete(keys.vm_status(vm_id))
        )
        release_nics(txn, vm.spec.nics)
        txn.delete(keys.dr_protection(vm_id))  # its points stay listed, for a restore
        # Its snapshots' memory states mean nothing without their records: they go too.
        states = await drop_state_volumes(self.db, self.state_dir, vm_id)
        await forget_vm(self.db, vm_id, txn)
        removed = []
        if volumes:
            for disk in vm.spec.disks:
                with contextlib.suppress(TaskFailed, StorageError):
                    volume, pool = await self._volume(disk.volume)
                    await pool.delete(volume)
                    txn.delete(keys.volume(volume.id)).delete(keys.volume_health(volume.id))
                    txn.delete(keys.volume_name(volume.pool, volume.name))
                    removed.append(volume.name)
        await self.db.commit(txn)
        return {"deleted": vm_id, "volumes": removed, "memory_states": states}

    # -- volumes -------------------------------------------------------------------------

    async def volume_create(self, ctx: TaskContext) -> dict[str, Any]:
        await self._make_volume(ctx, ctx.task.target, None, None, (0.0, 1.0))
        return {"volume": ctx.task.target}

    async def volume_import(self, ctx: TaskContext) -> dict[str, Any]:
        params = ctx.params(VolumeImportParams)
        path = Path(params.path)
        volume, _ = await self._volume(ctx.task.target)
        if volume.state != "ready" and not path.exists():
            await self._set_volume(volume.id, state="error", error=f"{path} does not exist")
            raise TaskFailed(f"{path} does not exist on node {self.node}")
        try:
            await self._make_volume(ctx, ctx.task.target, None, str(path), (0.0, 1.0))
        finally:
            if params.remove_source:
                path.unlink(missing_ok=True)
        return {"volume": ctx.task.target}

    async def volume_resize(self, ctx: TaskContext) -> dict[str, Any]:
        volume, pool = await self._volume(ctx.task.target)
        params = ctx.params(VolumeResizeParams)
        size, vm_id = params.size, params.vm
        online = False
        if vm_id is not None:
            rt = self.vms.runtime(vm_id)
            entry = await self.db.get(VM, keys.vm(vm_id))
            # What the running QEMU has: a disk given to it since waits for its next start.
            spec = self.vms.running_spec(vm_id) or (entry.value.spec if entry else None)
            disks = [d.volume for d in spec.disks] if spec else []
            if rt.qemu.running() and volume.id in disks:
                index = disks.index(volume.id)
                try:
                    if pool.capabilities.grows_by_reconnect:
                        await self._reconnect_grown(rt.qemu, pool, volume, index, size)
                    await rt.qemu.block_resize(f"disk{index}", size)
                except (QemuError, StorageError) as exc:
                    raise TaskFailed(str(exc)) from exc
                online = True
        if not online:
            try:
                await pool.resize(volume, size)
            except (QemuImgError, StorageError) as exc:
                raise TaskFailed(str(exc)) from exc
        await self._set_volume(volume.id, size=size)
        return {"volume": volume.id, "size": size, "online": online}

    async def _reconnect_grown(
        self, qemu: QemuVM, pool: PoolDriver, volume: Volume, index: int, size: int
    ) -> None:
        """QEMU learns an NBD export's size only when it connects ("Cannot grow NBD nodes"):
        the export grows first, then the disk's format node gets a new connection as its
        file, and block_resize then finds the room."""
        await pool.resize(volume, size)
        fresh = f"disk{index}-{new_id()[:8]}"
        await qemu.blockdev_add(fresh, pool.protocol(volume))
        options = format_node(f"disk{index}", volume.format, fresh)
        await qemu.blockdev_reopen([options])

    async def volume_delete(self, ctx: TaskContext) -> dict[str, Any]:
        entry = await self.db.get(Volume, keys.volume(ctx.task.target))
        if entry is None:
            return {"deleted": ctx.task.target}
        volume, pool = await self._volume(ctx.task.target)
        try:
            await pool.delete(volume)
        except StorageError as exc:
            raise TaskFailed(str(exc)) from exc
        await self.db.commit(
            Txn()
            .delete(keys.volume(volume.id))
            .delete(keys.volume_name(volume.pool, volume.name))
            .delete(keys.volume_health(volume.id))
        )
        return {"deleted": volume.id}

    # -- pools ---------------------------------------------------------------------------

    async def pool_scan(self, ctx: TaskContext) -> dict[str, Any]:
        """LUNs the array offers become volumes (raw, ready); known ones get their size."""
        name = ctx.task.target
        driver = await self._pool(name)
        try:
            found = await driver.scan()
        except StorageError as exc:
            raise TaskFailed(str(exc)) from exc
        await ctx.progress(0.5, f"{len(found)} LUN(s) offered")
        known = {
            e.value.location: e for e in await self.db.list(Volume, keys.VOLUMES)
            if e.value.pool == name
        }  # fmt: skip
        added, grown = [], []
        for lun in found:
            entry = known.pop(lun.location, None)
            if entry is None:
                volume = Volume(
                    id=new_id(),
                    pool=name,
                    name=lun.name,
                    format=VolumeFormat.raw,
                    size=lun.size,
                    location=lun.location,
                    state="ready",
                    created_at=time.time(),
                )
                index = keys.volume_name(name, lun.name)
                txn = Txn().require_absent(index).put(index, volume.id)
                with contextlib.suppress(Conflict):  # a concurrent scan added it
                    await self.db.commit(txn.put(keys.volume(volume.id), volume))
                    added.append(lun.name)
            elif entry.value.size != lun.size:
                await self._set_volume(entry.value.id, size=lun.size)
                grown.append(entry.value.name)
        missing = sorted(e.value.name for e in known.values())
        if missing:
            await ctx.log(f"no longer offered (kept): {', '.join(missing)}")
        return {"added": added, "resized": grown, "missing": missing}

    async def volume_rebuild(self, ctx: TaskContext) -> dict[str, Any]:
        """Follow heron-io rebuilding an ardfs volume's stale copies until none is left.

        heron-io does the work (rate-limited, from every healthy copy, resumable); this task
        is how it shows: progress, a log line per change, the end. Cancelling it only stops
        following; heron-io carries on, the volume must become redundant again."""
        started, first, last = time.monotonic(), None, None
        while True:
            entry = await self.db.get(Volume, keys.volume(ctx.task.target))
            if entry is None:
                raise TaskFailed(f"volume {ctx.task.target} was deleted")
            volume = entry.value
            if volume.owner != self.node:
                # Only the owner's heron-io rebuilds; the new owner's agent follows it there.
                await ctx.log(f"{volume.name} is now served by {volume.owner}, which follows on")
                return {"moved_to": volume.owner}
            seen = io_status(self.state_dir, volume.pool).get("volumes", {}).get(volume.id)
            if seen is None:
                raise TaskFailed(f"heron-io on {self.node} no longer serves {volume.name}")
            stale = seen["stale_chunks"] + seen.get("layers_stale_chunks", 0)
            rebuilt = seen["rebuilt_chunks"]
            first = rebuilt if first is None else first
            if stale == 0:
                await ctx.log(f"{volume.name} is redundant again")
                done = rebuilt - first
                return {"rebuilt_chunks": done, "seconds": round(time.monotonic() - started, 1)}
            done = rebuilt - first
            message = None if (stale, done) == last else f"{stale} chunk(s) to rebuild"
            last = (stale, done)
            await ctx.progress(done / (done + stale), message)
            await asyncio.sleep(1.0)  # heron-io rewrites its status every second

    async def volume_rebalance(self, ctx: TaskContext) -> dict[str, Any]:
        """Follow an ardfs volume moving onto other disks until they are its placement.

        The leader decided the move (`scheduler/rebalance.py`), the owner's heron-io makes the
        copies (rate-limited, from every healthy copy), the owner's agent switches the
        placement; this task shows it, from the ConfigDB, wherever the owner is meanwhile."""
        target = ctx.params(RebalanceParams).to
        started, first, last = time.monotonic(), 0, None
        while True:
            entry = await self.db.get(Volume, keys.volume(ctx.task.target))
            if entry is None:
                raise TaskFailed(f"volume {ctx.task.target} was deleted")
            volume = entry.value
            if volume.moving_to is None and [d.id for d in volume.placement or []] == target:
                await ctx.log(f"{volume.name} is placed on {', '.join(target)}")
                return {"disks": target, "seconds": round(time.monotonic() - started, 1)}
            if volume.moving_to is None or [d.id for d in volume.moving_to] != target:
                await ctx.log(f"{volume.name}: another move took over from this one")
                return {"superseded": True}
            health = await self.db.get(VolumeHealth, keys.volume_health(volume.id))
            left = health.value.move_left if health is not None else 0
            first = max(first, left)
            if first:
                message = None if left == last else f"{left} copies to make"
                await ctx.progress((first - left) / first, message)
            last = left
            await asyncio.sleep(1.0)  # the owner publishes what is left as it changes
