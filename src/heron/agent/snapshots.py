"""Snapshots of this node's VMs: the `snapshot.*` tasks.

Every disk of a snapshot is taken at one instant. qcow2 disks keep theirs inside the image
(one QMP transaction while the VM runs, qemu-img while it is off); disks of pools with
`native_snapshots` are snapshotted by their driver, with the guest paused (QMP `stop` drains
and flushes its I/O) so they and the qcow2 transaction share that instant. A memory snapshot
stops the guest, saves every qcow2 disk and the memory into one of them (`snapshot-save`),
takes the native ones, and lets it run again. A VM without a qcow2 disk has its memory
saved into a volume made for the snapshot (`Snapshot.state_volume`, storage/vmstate.py):
made and opened in QEMU (no guest device) before the guest is paused, closed after the
save or the load, deleted with the snapshot or with a create that failed.

Nothing is left half-made: a create that fails removes whatever it took (and the record says
why), and the guest never stays paused by us (`cont` in `finally`). Each handler is
idempotent: a task found running after an agent restart removes what the cut-off run took
and starts again (create), or simply does its work again (revert, delete).

The tag in the images and pools is the snapshot's id. Deleting a qcow2 snapshot frees its
memory state as well (it lives in the same internal snapshot), so a delete is one
`blockdev-snapshot-delete-internal-sync` per disk, whatever the snapshot's kind.
"""

import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heron.agent.tasks import TaskContext, TaskFailed
from heron.agent.vms import VMController, VMError
from heron.configdb import ConfigDB, Txn, keys
from heron.configdb.store import Conflict as StoreConflict
from heron.hypervisor.qemu import QemuError, QemuVM
from heron.hypervisor.qga import FreezeError, FreezeWindowExceeded, GuestAgentError, frozen
from heron.hypervisor.qmp_snapshot import Job
from heron.models.snapshot import (
    Consistency,
    Quiesce,
    Snapshot,
    SnapshotDisk,
    SnapshotHead,
    SnapshotState,
    head_after_delete,
    reparented,
)
from heron.models.storage import Pool, Volume
from heron.models.task import SnapshotParams
from heron.models.vm import VM, PowerState
from heron.storage import qemuimg, vmstate
from heron.storage.driver import PoolDriver, StorageError
from heron.storage.registry import driver_for

log = logging.getLogger(__name__)

SAVE_TIMEOUT = 600.0  # writing the guest's memory (TCG guests on a busy host are slow)
LOAD_TIMEOUT = 600.0
# Failures of snapshot-load that QEMU reports before it changed anything in the guest.
_LOAD_REFUSED = ("disk-only snapshot", "does not exist", "not found")


@dataclass
class Quiesced:
    """How consistent a snapshot taken inside `quiesced` is, and why; `freeze_ms` is known
    once the guest is thawed."""

    consistency: Consistency
    reason: str
    freeze_ms: int | None = None


AGENT_PING_S = 3.0  # a TCG guest on a busy host answers slowly


@contextlib.asynccontextmanager
async def quiesced(qemu: QemuVM, mode: Quiesce, limit_s: float) -> AsyncIterator[Quiesced]:
    """The guest's filesystems frozen (through its guest agent, hooks first) for the body,
    at most `limit_s` seconds: the one place a snapshot asks the guest agent.

    "off" freezes nothing; "auto" freezes when the agent answers a ping, otherwise the
    snapshot is crash-consistent and says so; "required" fails without an agent. Raises
    TaskFailed before the body when the freeze fails (a hook or a filesystem refused: the
    guest is thawed), and after it when the body outlasted the limit (the guest was thawed
    at the limit: the caller removes what it took, as for any error).
    """
    if mode == "off":
        yield Quiesced("crash", "quiesce was off")
        return
    agent = qemu.guest_agent()
    if not await agent.ping(timeout=AGENT_PING_S):
        if mode == "required":
            raise TaskFailed("quiesce is required, but no guest agent answered: nothing was taken")
        yield Quiesced("crash", "no guest agent answered")
        return
    quiet = Quiesced("application", "")
    try:
        async with frozen(agent, limit_s) as report:
            quiet.reason = f"{report.filesystems} filesystem(s) frozen by the guest agent"
            yield quiet
    except FreezeError as exc:
        raise TaskFailed(f"the guest could not be frozen, nothing was taken: {exc}") from exc
    except FreezeWindowExceeded as exc:
        raise TaskFailed(f"{exc}; the snapshot was removed") from exc
    except GuestAgentError as exc:
        raise TaskFailed(f"guest agent: {exc}") from exc
    if report.frozen_s is not None:
        quiet.freeze_ms = round(report.frozen_s * 1000)


@dataclass(frozen=True)
class Part:
    """One disk of a snapshot, with what reaches it on this node."""

    disk: SnapshotDisk
    volume: Volume
    driver: PoolDriver

    @property
    def node(self) -> str:
        # The top node of the disk, as the command line names it. QEMU wants the root
        # ("Need a root block node"): should a filter (QoS throttling) be put above the
        # format node, its name is the one to give here (it passes snapshots down).
        return f"disk{self.disk.index}"

    @property
    def image(self) -> str:
        return self.driver.image(self.volume)


def _by_pool(parts: Sequence[Part]) -> list[tuple[PoolDriver, list[Volume]]]:
    grouped: dict[str, list[Part]] = defaultdict(list)
    for part in parts:
        grouped[part.volume.pool].append(part)
    return [(group[0].driver, [p.volume for p in group]) for group in grouped.values()]


class Snapshots:
    def __init__(self, db: ConfigDB, node: str, state_dir: Path, vms: VMController):
        self.db = db
        self.node = node
        self.state_dir = state_dir
        self.vms = vms

    # -- reads ---------------------------------------------------------------------------

    async def _snapshot(self, ctx: TaskContext) -> Snapshot | None:
        params = ctx.params(SnapshotParams)
        found = await self.db.get(Snapshot, keys.snapshot(ctx.task.target, params.snapshot))
        return found.value if found is not None else None

    async def _vm(self, vm_id: str) -> VM:
        entry = await self.db.get(VM, keys.vm(vm_id))
        if entry is None:
            raise TaskFailed("the VM no longer exists")
        if entry.value.node != self.node:
            raise TaskFailed(f"the VM is on node {entry.value.node}, not here")
        return entry.value

    async def _parts(self, snapshot: Snapshot) -> list[Part]:
        parts = []
        for disk in snapshot.disks:
            volume = await self.db.get(Volume, keys.volume(disk.volume))
            pool = await self.db.get(Pool, keys.pool(disk.pool))
            if volume is None or pool is None:
                raise TaskFailed(f"disk{disk.index}: its volume or pool no longer exists")
            parts.append(Part(disk, volume.value, await self._driver(pool.value)))
        return parts

    async def _state(self, snapshot: Snapshot) -> tuple[Volume, PoolDriver] | None:
        """The snapshot's memory-state volume and its pool's driver here; None if it has
        none (or it is gone)."""
        if snapshot.state_volume is None:
            return None
        volume = await self.db.get(Volume, keys.volume(snapshot.state_volume))
        if volume is None:
            return None
        pool = await self.db.get(Pool, keys.pool(volume.value.pool))
        if pool is None:
            raise TaskFailed(f"pool {volume.value.pool} of the memory state no longer exists")
        return volume.value, await self._driver(pool.value)

    async def _driver(self, pool: Pool) -> PoolDriver:
        """The pool's driver here, ready (a mounted pool mounted)."""
        driver = driver_for(pool, self.state_dir, self.db)
        try:
            await driver.prepare()
        except StorageError as exc:
            raise TaskFailed(str(exc)) from exc
        return driver

    async def _make_state(self, qemu: QemuVM, snapshot: Snapshot) -> str:
        """Make (again, after a restart) the snapshot's memory-state volume, an empty qcow2
        image, and open it in QEMU; returns its node."""
        found = await self._state(snapshot)
        if found is None:
            raise TaskFailed("the snapshot's memory-state volume is gone")
        volume, driver = found
        await driver.create(volume)
        await driver.attach(volume, self.node)
        if vmstate.needs_inner_image(volume.format):
            # Written over whatever a cut-off run left: a new image knows nothing of it.
            await qemuimg.create(driver.image(volume), "qcow2", vmstate.INNER_SIZE)
        await self._set_volume(volume.id, state="ready")
        node = state_node(snapshot.id)
        await qemu.open_image(node, driver.protocol(volume))
        return node

    async def _state_here(self, snapshot: Snapshot) -> tuple[Volume, PoolDriver]:
        """The snapshot's memory-state volume, which this node must reach."""
        found = await self._state(snapshot)
        if found is None:
            raise TaskFailed(f"the memory state of snapshot {snapshot.name} is gone")
        if found[0].node not in (None, self.node):
            raise TaskFailed(
                f"the memory state of snapshot {snapshot.name} is on node {found[0].node}'s "
                f"pool {found[0].pool}, not reachable here"
            )
        return found

    async def _open_state(self, qemu: QemuVM, snapshot: Snapshot) -> str:
        """Open the snapshot's memory-state volume in QEMU (to load it); returns its node."""
        volume, driver = await self._state_here(snapshot)
        await driver.attach(volume, self.node)  # ardfs: this node writes it now
        node = state_node(snapshot.id)
        await qemu.open_image(node, driver.protocol(volume))
        return node

    async def _drop_state(self, qemu: QemuVM | None, snapshot: Snapshot) -> None:
        """Close and delete the snapshot's memory-state volume, if it has one: its snapshot
        goes, or was never made."""
        if qemu is not None:
            try:
                await qemu.close_image(state_node(snapshot.id))
            except QemuError as exc:
                # A QEMU that errs here is no reason to keep a volume nothing will read:
                # its node fails any further I/O, and it goes with that QEMU.
                log.warning("closing the memory state of %s: %r", snapshot.id, exc)
        found = await self._state(snapshot)
        if found is not None:
            await delete_state_volume(self.db, *found)

    async def _set_volume(self, volume_id: str, **changes: Any) -> None:
        def change(record: Volume) -> Volume:
            return record.model_copy(update=changes)

        await self.db.update(Volume, keys.volume(volume_id), change)

    async def _set(self, snapshot: Snapshot, **changes: Any) -> None:
        def change(record: Snapshot) -> Snapshot:
            return record.model_copy(update=changes)

        with contextlib.suppress(KeyError):  # deleted meanwhile
            await self.db.update(Snapshot, keys.snapshot(snapshot.vm, snapshot.id), change)

    # -- create --------------------------------------------------------------------------

    async def create(self, ctx: TaskContext) -> dict[str, Any]:
        params = ctx.params(SnapshotParams)
        snapshot = await self._snapshot(ctx)
        if snapshot is None:
            raise TaskFailed("the snapshot's record is gone")
        if snapshot.state == SnapshotState.ready:
            return {"snapshot": snapshot.id}  # a repeat after a crash: done already
        if snapshot.state != SnapshotState.creating:
            raise TaskFailed(f"snapshot {snapshot.name} is {snapshot.state.value}")
        try:
            vm = await self._vm(snapshot.vm)
            parts = await self._parts(snapshot)
            rt = self.vms.runtime(vm.id)
            async with rt.lock:
                qemu = rt.qemu if rt.qemu.running() else None
                if ctx.resumed:
                    # Whatever the run cut off by the restart took is half-made: it goes.
                    # (A memory-state volume stays, to be made empty again.)
                    if await self._remove(qemu, snapshot, parts):
                        await ctx.log(
                            "QEMU's save of the guest's memory, left running by the run an "
                            "agent restart cut short, has ended: what it took is removed, "
                            "and the snapshot is taken again"
                        )
                    if qemu is not None:
                        await qemu.close_image(state_node(snapshot.id))
                    if qemu is not None and vm.power == PowerState.running:
                        await _resume_if_paused(qemu)
                state_size = None
                try:
                    if qemu is not None:
                        quiet, state_size = await self._take_live(
                            ctx, qemu, snapshot, parts, params
                        )
                    elif snapshot.memory:
                        raise TaskFailed("the VM is no longer running: it has no memory to save")
                    else:
                        quiet = await self._take_offline(ctx, snapshot, parts)
                except BaseException:
                    live = rt.qemu if rt.qemu.running() else None
                    try:
                        await self._remove(live, snapshot, parts)
                    except Exception as exc:  # the first error is the one to report
                        log.warning("removing half-made snapshot %s: %r", snapshot.id, exc)
                    try:
                        await self._drop_state(live, snapshot)
                    except Exception as exc:
                        log.warning("deleting the memory state of %s: %r", snapshot.id, exc)
                    raise
                disks, vm_state_size = await self._sizes(qemu, snapshot, parts)
        except (QemuError, StorageError, VMError) as exc:
            await self._set(snapshot, state=SnapshotState.error, error=str(exc))
            raise TaskFailed(str(exc)) from exc
        except Exception as exc:
            await self._set(snapshot, state=SnapshotState.error, error=str(exc) or "cancelled")
            raise
        if state_size is not None:
            vm_state_size = state_size
        done = snapshot.model_copy(
            update={
                "state": SnapshotState.ready,
                "error": "",
                "consistency": quiet.consistency,
                "consistency_reason": quiet.reason,
                "freeze_ms": quiet.freeze_ms,
                "disks": disks,
                "vm_state_size": vm_state_size,
            }
        )
        # The new snapshot is where the VM is now: the parent of the next one.
        await self.db.commit(
            Txn()
            .put(keys.snapshot(vm.id, snapshot.id), done)
            .put(keys.snapshot_head(vm.id), SnapshotHead(snapshot=snapshot.id))
        )
        await ctx.log(f"snapshot {snapshot.name} taken ({quiet.consistency}: {quiet.reason})")
        return {"snapshot": snapshot.id, "consistency": quiet.consistency}

    async def _take_live(
        self,
        ctx: TaskContext,
        qemu: QemuVM,
        snapshot: Snapshot,
        parts: list[Part],
        params: SnapshotParams,
    ) -> tuple[Quiesced, int | None]:
        """Take the snapshot of the running VM; returns how consistent it is, and the size
        of its memory state when that is in a volume of its own."""
        tag = snapshot.id
        qcow2 = [p for p in parts if p.disk.method == "qcow2"]
        native = [p for p in parts if p.disk.method == "native"]
        if snapshot.memory:
            # Not frozen: a revert brings back the running guest with its writes in flight,
            # and a guest frozen at the save would come back frozen.
            quiet = Quiesced("crash", "memory snapshot: the guest resumes where it was")
            devices = [p.node for p in qcow2]
            if snapshot.state_volume is not None:  # made while the guest still runs
                await ctx.progress(0.05, "making the volume for the memory state")
                vmstate_node = await self._make_state(qemu, snapshot)
                devices.append(vmstate_node)  # QEMU saves only into one of `devices`
            else:
                vmstate_node = next(p.node for p in qcow2 if p.disk.vm_state)
            paused = await _pause(qemu)
            try:
                for driver, volumes in _by_pool(native):
                    await driver.snapshot_create(volumes, tag)
                await ctx.progress(0.1, "saving the guest's memory")
                await self._save(ctx, qemu, tag, vmstate_node, devices)
            finally:
                if paused:
                    await qemu.resume()
            if snapshot.state_volume is None:
                return quiet, None
            size = await _vm_state_size_of(qemu, vmstate_node, tag)
            await qemu.close_image(vmstate_node)
            return quiet, size
        started = time.monotonic()
        async with quiesced(qemu, params.quiesce, params.freeze_limit_s) as quiet:
            # Native snapshots are the pool's: the guest must not write in between them and
            # the qcow2 transaction, so all are taken while it is paused.
            paused = await _pause(qemu) if native else False
            try:
                for driver, volumes in _by_pool(native):
                    await driver.snapshot_create(volumes, tag)
                if qcow2:
                    await qemu.snapshot_disks([p.node for p in qcow2], tag)
            finally:
                if paused:
                    await qemu.resume()
        await ctx.progress(0.9)
        log.info("snapshot %s of %s took %.2fs", tag, snapshot.vm, time.monotonic() - started)
        return quiet, None

    async def _save(
        self, ctx: TaskContext, qemu: QemuVM, tag: str, vmstate: str, devices: list[str]
    ) -> None:
        job_id = f"save-{tag}"

        async def follow(job: Job) -> None:
            if job.total:
                await ctx.progress(0.1 + 0.8 * job.current / job.total)

        await qemu.snapshot_save(job_id, tag, vmstate=vmstate, devices=devices)
        job = await qemu.wait_job(job_id, SAVE_TIMEOUT, follow)
        if job is None:
            raise TaskFailed(f"QEMU did not save the snapshot within {SAVE_TIMEOUT:.0f}s")
        if job.error:
            raise TaskFailed(f"QEMU could not save the snapshot: {job.error}")

    async def _take_offline(
        self, ctx: TaskContext, snapshot: Snapshot, parts: list[Part]
    ) -> Quiesced:
        tag = snapshot.id
        for part in parts:
            if part.disk.method == "qcow2":
                await qemuimg.snapshot_create(part.image, tag)
        for driver, volumes in _by_pool([p for p in parts if p.disk.method == "native"]):
            await driver.snapshot_create(volumes, tag)
        await ctx.progress(0.9)
        return Quiesced("crash", "taken while the VM was off: its disks as it left them")

    async def _sizes(
        self, qemu: QemuVM | None, snapshot: Snapshot, parts: list[Part]
    ) -> tuple[list[SnapshotDisk], int | None]:
        """Each disk's record with the size the pool gives, and the memory state's size."""
        disks, vm_state_size = [], None
        for part in parts:
            size = None
            if part.disk.method == "native":
                with contextlib.suppress(StorageError):
                    found = await part.driver.snapshots(part.volume)
                    size = next((s.size for s in found if s.name == snapshot.id), None)
            elif part.disk.vm_state:
                vm_state_size = await self._vm_state_size(qemu, part, snapshot.id)
            disks.append(part.disk.model_copy(update={"size": size}))
        return disks, vm_state_size

    async def _vm_state_size(self, qemu: QemuVM | None, part: Part, tag: str) -> int | None:
        if qemu is not None:
            return await _vm_state_size_of(qemu, part.node, tag)
        info = await qemuimg.info(part.image)
        for taken in info.get("snapshots", []):
            if taken.get("name") == tag:
                return int(taken.get("vm-state-size", 0))
        return None

    async def _remove(
        self, qemu: QemuVM | None, snapshot: Snapshot, parts: list[Part]
    ) -> list[str]:
        """Delete the snapshot from every disk that has it (none may): undoing a create,
        or a delete. Returns the ids of the QEMU jobs of this snapshot (a save, a load)
        that a run cut off by an agent restart left, waited for first."""
        tag = snapshot.id
        qcow2 = [p for p in parts if p.disk.method == "qcow2"]
        left = []
        if qemu is not None:
            for job in await qemu.jobs():
                if job.id in (f"save-{tag}", f"load-{tag}"):
                    # Left by a run cut off by an agent restart: QEMU carried on with it.
                    await qemu.wait_job(job.id, SAVE_TIMEOUT)
                    left.append(job.id)
            held = {n.node: n.names() for n in await qemu.disk_snapshots([p.node for p in qcow2])}
            for part in qcow2:
                if tag in held.get(part.node, []):
                    await qemu.delete_disk_snapshot(part.node, tag)
        else:
            for part in qcow2:
                if tag in await qemuimg.snapshot_names(part.image):
                    await qemuimg.snapshot_delete(part.image, tag)
        for part in [p for p in parts if p.disk.method == "native"]:
            if any(s.name == tag for s in await part.driver.snapshots(part.volume)):
                await part.driver.snapshot_delete(part.volume, tag)
        return left

    # -- revert --------------------------------------------------------------------------

    async def revert(self, ctx: TaskContext) -> dict[str, Any]:
        """Back to a snapshot. A memory snapshot: to exactly its running state, in the
        running QEMU when all disks are qcow2 (`snapshot-load`), otherwise in a new QEMU
        started paused once the pool's disks are reverted (the VM runs after, as when the
        snapshot was taken), its memory read from its qcow2 disk or its memory-state
        volume. Otherwise the disks are reverted with QEMU stopped, and the VM started
        again if it should run (a guest that ran boots from the reverted disks).
        """
        snapshot = await self._snapshot(ctx)
        if snapshot is None:
            raise TaskFailed("the snapshot no longer exists")
        if snapshot.state != SnapshotState.ready:
            raise TaskFailed(f"snapshot {snapshot.name} is {snapshot.state.value}")
        vm = await self._vm(snapshot.vm)
        parts = await self._parts(snapshot)
        qcow2 = [p for p in parts if p.disk.method == "qcow2"]
        rt = self.vms.runtime(vm.id)
        try:
            own_state = snapshot.memory and snapshot.state_volume is not None
            if own_state:
                await self._state_here(snapshot)  # before anything changes
            if snapshot.memory and not own_state and rt.qemu.running() and len(qcow2) == len(parts):
                async with rt.lock:
                    await self._load(ctx, rt.qemu, snapshot, qcow2, None)
            elif snapshot.memory:
                await self._power_on(vm.id)
                async with self.vms.offline(vm.id):
                    await ctx.progress(0.1, "QEMU stopped; reverting the pool's disks")
                    for part in parts:
                        if part.disk.method == "native":
                            await part.driver.snapshot_revert(part.volume, snapshot.id)
                    qemu = await self.vms.launch_paused(vm.id)
                    state = await self._open_state(qemu, snapshot) if own_state else None
                    try:
                        await self._load(ctx, qemu, snapshot, qcow2, state)
                    finally:
                        if state is not None:
                            await qemu.close_image(state)
            else:
                async with self.vms.offline(vm.id):
                    await ctx.progress(0.3, "QEMU stopped; reverting the disks")
                    for part in parts:
                        if part.disk.method == "qcow2":
                            await qemuimg.snapshot_revert(part.image, snapshot.id)
                        else:
                            await part.driver.snapshot_revert(part.volume, snapshot.id)
            state = await self.vms.reconcile(vm.id)
        except (QemuError, StorageError, VMError) as exc:
            raise TaskFailed(str(exc)) from exc
        await self.db.put(keys.snapshot_head(vm.id), SnapshotHead(snapshot=snapshot.id))
        await ctx.log(f"reverted to {snapshot.name}; the VM is {state.value}")
        return {"snapshot": snapshot.id, "memory": snapshot.memory, "state": state.value}

    async def _power_on(self, vm_id: str) -> None:
        """A memory snapshot was taken of a running guest: reverting to it runs the VM."""

        def on(vm: VM) -> VM:
            if vm.power == PowerState.stopped:
                vm.power = PowerState.running
                vm.generation += 1
            return vm

        await self.db.update(VM, keys.vm(vm_id), on)

    async def _load(
        self,
        ctx: TaskContext,
        qemu: QemuVM,
        snapshot: Snapshot,
        parts: list[Part],
        state: str | None,
    ) -> None:
        """Load the snapshot's memory (from the node `state`, its memory-state volume, or
        else its qcow2 disk that holds it) and its qcow2 disks into `qemu`."""
        tag = snapshot.id
        job_id = f"load-{tag}"
        if any(job.id == job_id for job in await qemu.jobs()):
            await qemu.wait_job(job_id, LOAD_TIMEOUT)  # a run before a restart left it
        devices = [p.node for p in parts]
        if state is not None:
            holder = state
            devices.append(state)
        else:
            holder = next(p.node for p in parts if p.disk.vm_state)

        async def follow(job: Job) -> None:
            if job.total:
                await ctx.progress(0.9 * job.current / job.total)

        # Only the qcow2 disks hold the tag: a pool's own disks were reverted by the pool.
        await qemu.snapshot_load(job_id, tag, vmstate=holder, devices=devices)
        job = await qemu.wait_job(job_id, LOAD_TIMEOUT, follow)
        if job is not None and not job.error:
            return
        # QEMU 7.2 leaves the guest stopped after a failed load: it must not stay so. When
        # the load failed half-way, the guest's memory is a mix: it restarts.
        why = job.error if job is not None else f"no end within {LOAD_TIMEOUT:.0f}s"
        if job is not None and not any(r in job.error for r in _LOAD_REFUSED):
            await qemu.reset()
            why += "; the guest was reset"
        await _resume_if_paused(qemu)
        raise TaskFailed(f"QEMU could not load the snapshot: {why}")

    # -- delete --------------------------------------------------------------------------

    async def delete(self, ctx: TaskContext) -> dict[str, Any]:
        """Delete a snapshot from every disk, the VM running or not; its children follow
        its parent, and the VM's current snapshot moves to its parent if it was this one."""
        params = ctx.params(SnapshotParams)
        vm_id = ctx.task.target
        snapshot = await self._snapshot(ctx)
        if snapshot is None:
            return {"deleted": params.snapshot}  # a repeat after a crash: gone already
        try:
            parts = await self._parts(snapshot)
            rt = self.vms.runtime(vm_id)
            async with rt.lock:
                live = rt.qemu if rt.qemu.running() else None
                await self._remove(live, snapshot, parts)
                await self._drop_state(live, snapshot)
        except (QemuError, StorageError) as exc:
            await self._set(snapshot, state=SnapshotState.error, error=f"delete: {exc}")
            raise TaskFailed(str(exc)) from exc
        await ctx.progress(0.8, "removed from the disks")
        for _ in range(10):  # a rename of a child meanwhile: read the tree again
            try:
                await self.db.commit(await forget_txn(self.db, snapshot))
                break
            except StoreConflict:
                continue
        else:
            raise TaskFailed("the snapshot tree kept changing; delete it again")
        return {"deleted": snapshot.id}


async def forget_txn(db: ConfigDB, snapshot: Snapshot) -> Txn:
    """The transaction that drops a snapshot's records: its children re-parented, the VM's
    current snapshot moved to its parent if it was this one."""
    vm_id = snapshot.vm
    entries = await db.list(Snapshot, keys.snapshots(vm_id))
    everything = [e.value for e in entries]
    revisions = {e.value.id: (e.key, e.revision) for e in entries}
    txn = (
        Txn()
        .delete(keys.snapshot(vm_id, snapshot.id))
        .delete(keys.snapshot_name(vm_id, snapshot.name))
    )
    for child in reparented(everything, snapshot.id):
        key, revision = revisions[child.id]
        txn.require_revision(key, revision).put(key, child)
    head = await db.get(SnapshotHead, keys.snapshot_head(vm_id))
    current = head.value.snapshot if head else None
    moved = head_after_delete(current, everything, snapshot.id)
    if head is not None and moved != current:
        txn.require_revision(head.key, head.revision)
        txn.put(head.key, SnapshotHead(snapshot=moved))
    return txn


async def forget_vm(db: ConfigDB, vm_id: str, txn: Txn) -> None:
    """Add to `txn` the removal of every snapshot record of a VM being deleted (its images
    go with its volumes, or keep their snapshots inside when the volumes are kept)."""
    for entry in await db.list(Snapshot, keys.snapshots(vm_id)):
        txn.delete(entry.key).delete(keys.snapshot_name(vm_id, entry.value.name))
    txn.delete(keys.snapshot_head(vm_id))


def state_node(snapshot_id: str) -> str:
    """The QEMU node of a snapshot's memory-state volume while it is open."""
    return f"mem-{snapshot_id}"


async def _vm_state_size_of(qemu: QemuVM, node: str, tag: str) -> int | None:
    for found in await qemu.disk_snapshots([node]):
        for taken in found.snapshots:
            if taken.name == tag:
                return taken.vm_state_size
    return None


async def delete_state_volume(db: ConfigDB, volume: Volume, driver: PoolDriver) -> None:
    """Delete a memory-state volume's data and records (no QEMU has it open)."""
    await driver.delete(volume)
    await db.commit(
        Txn()
        .delete(keys.volume(volume.id))
        .delete(keys.volume_name(volume.pool, volume.name))
        .delete(keys.volume_health(volume.id))
    )


async def drop_state_volumes(db: ConfigDB, state_dir: Path, vm_id: str) -> list[str]:
    """Delete the memory-state volumes of a deleted VM's snapshots (with their records, the
    states mean nothing); returns their names. One that cannot be deleted now stays, listed
    in its pool with the snapshot it held, to be deleted as a volume."""
    deleted = []
    for entry in await db.list(Snapshot, keys.snapshots(vm_id)):
        if entry.value.state_volume is None:
            continue
        volume = await db.get(Volume, keys.volume(entry.value.state_volume))
        pool = await db.get(Pool, keys.pool(volume.value.pool)) if volume else None
        if volume is None or pool is None:
            continue
        try:
            await delete_state_volume(db, volume.value, driver_for(pool.value, state_dir, db))
        except StorageError as exc:
            log.warning("memory-state volume %s stays: %s", volume.value.name, exc)
            continue
        deleted.append(volume.value.name)
    return deleted


async def _pause(qemu: QemuVM) -> bool:
    """Pause a running guest (QMP `stop` drains and flushes its I/O); whether we did."""
    if await qemu.run_state() == "running":
        await qemu.pause()
        return True
    return False


async def _resume_if_paused(qemu: QemuVM) -> None:
    if await qemu.run_state() in ("paused", "restore-vm"):
        await qemu.resume()
