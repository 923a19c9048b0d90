"""Live migration between nodes over TCP, driven by the source node's agent.

The source writes a migration record and a `vm.receive` task for the target in one
transaction (one migration per VM at a time). The target starts the VM's QEMU with
`-incoming defer`, listens, and publishes its URI in the record. Disks on shared storage are
simply opened by both (QEMU hands the image over at the switch). Disks on the source's local
storage are first copied while the guest runs: the target creates empty volumes and exports
them over NBD, the source mirrors into them (`blockdev-mirror`, write-blocking so the copy
converges), and only when every mirror is in sync does the memory follow. On completion the
source gives the VM and its local volumes to the target in one transaction and drops its own,
now paused, QEMU and its old volume files. On failure or cancel the VM stays on the source and
the target drops what it made.

Both streams between the nodes, the memory and the disk copies over NBD, go over TLS with the
nodes' certificates when both nodes can (`MIGRATION_TLS` among their features): the target
decides, since it listens, and says so by the scheme of the URI it publishes ("tls+tcp:...";
a source of an older release never gets one). Each QEMU gets a `tls-creds-x509` object made
from a copy of its node's credentials taken for this migration (QEMU reads the files once, when
the object is made: a certificate renewed meanwhile does not touch a running migration); the
target's asks the source for a certificate of the cluster CA, the source's checks that the
target's names the target node.

The target closes the record (removes it) when it has dropped or taken what it made: only then
may the VM's next migration begin. A target that left the cluster and never comes back would
pin the VM for good, so the record may then be closed without it (`models.migration.takeover`
says when): by the source at the end of its task, or by whoever asks for the VM's next move.
A returning target acts only on the record written for its own `vm.receive` task
(`models.migration.receives`) and drops its side of any other.
"""

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from heron.agent.tasks import TaskContext, TaskFailed
from heron.agent.vms import VMController
from heron.audit import AuditLog
from heron.configdb import UNREACHABLE, ConfigDB, Txn, cas, keys
from heron.configdb.store import Conflict
from heron.hypervisor import command
from heron.hypervisor.qemu import QemuError, QemuVM
from heron.hypervisor.qmp_migration import MigrationInfo
from heron.models.migration import Migration, MigrationState, Verdict, pinned, receives, takeover
from heron.models.node import MIGRATION_TLS, Node
from heron.models.snapshot import Snapshot
from heron.models.storage import Pool, Volume, VolumeHealth
from heron.models.task import MigrateParams, Task, TaskKind, new_task
from heron.models.vm import VM
from heron.storage.driver import PoolDriver, StorageError
from heron.storage.ownership import claim
from heron.storage.registry import capabilities, driver_for
from heron.tls import NodeCredentials, TlsError
from heron.util.ports import free_port
from heron.util.wait import until

log = logging.getLogger(__name__)

PREPARE_TIMEOUT = 60.0
HANDOVER_TIMEOUT = 30.0
_POLL = 0.1
ARRIVAL_TIMEOUT = 60.0  # from the source's end of the transfer to the target's QEMU's
SOURCE_CHECK = 5.0  # how often one side of a move looks whether the other (or the VM) is there


class PlacedElsewhere(TaskFailed):
    """The VM being sent was deleted or given to another node meanwhile (HA restarted it
    there while this agent was away): the send stops, and nothing of it is claimed back."""


# Task progress: disks are copied in the first part, memory in the rest.
_DISKS_SHARE = 0.6
# The scheme of a target's URI when it listens with TLS (QEMU itself is given "tcp:...").
TLS_SCHEME = "tls+"


def tls_uri(uri: str) -> tuple[str, bool]:
    """(QEMU's URI, whether the stream is TLS) of the URI a target published."""
    if uri.startswith(TLS_SCHEME):
        return uri[len(TLS_SCHEME) :], True
    return uri, False


def creds_id(record: Migration) -> str:
    """The id of the migration's `tls-creds-x509` object, one per migration: a source QEMU
    that sent before keeps its old object, and the new one must not clash with it."""
    return f"heron-tls-{record.receive_task or record.vm}"


class NotOurs(Exception):
    """The migration record a `vm.receive` task was made for has been closed without it."""


class Migrations:
    def __init__(
        self,
        db: ConfigDB,
        node: str,
        address: str,
        vms: VMController,
        audit: AuditLog | None = None,
        credentials: NodeCredentials | None = None,
    ):
        self.db = db
        self.node = node
        self.address = address
        self.vms = vms
        self.audit = audit
        # The node's certificate: migrations go over TLS with it (None: plain, as before).
        self.credentials = credentials
        # One vm.receive per VM at a time here: a receive left over from a move closed
        # without this node must have dropped its QEMU before the next one starts its own.
        self._receiving: dict[str, asyncio.Lock] = {}

    # -- shared ----------------------------------------------------------------------------

    async def _set(self, vm_id: str, **changes: Any) -> Migration:
        def change(record: Migration) -> Migration:
            return record.model_copy(update=changes)

        return (await self.db.update(Migration, keys.migration(vm_id), change)).value

    async def _wait(self, vm_id: str, states: set[MigrationState], timeout: float) -> Migration:
        target = "?"

        async def reached() -> Migration | None:  # polling the record the other node writes
            nonlocal target
            entry = await self.db.get(Migration, keys.migration(vm_id))
            if entry is None:
                # The target removes the record when it gives up preparing.
                raise TaskFailed("the target gave up preparing (see its vm.receive task)")
            target = entry.value.target
            if entry.value.state in states:
                return entry.value
            if await self.db.get_raw(keys.node(target)) is None:
                # Its lease ran out: a stopped or cut-off agent answers nothing in time.
                raise TaskFailed(f"no answer from node {target}: it is no longer in the cluster")
            return None

        found = await until(reached, timeout, _POLL)
        if found is None:
            raise TaskFailed(f"no answer from node {target} in {timeout:.0f}s")
        return found

    async def _wait_gone(self, vm_id: str, target: str, timeout: float = 30.0) -> bool:
        """Until the target has taken the VM over and removed the record: only then may the
        next migration of this VM begin. A target no longer in the cluster is not waited
        for: the caller closes the record without it when its own part is done
        (`_close_left`). Whether the target closed it."""

        async def gone() -> str | None:  # polling the record the target removes
            if await self.db.get_raw(keys.migration(vm_id)) is None:
                return "closed"
            return "away" if await self.db.get_raw(keys.node(target)) is None else None

        outcome = await until(gone, timeout, _POLL)
        if outcome != "closed":
            log.warning("node %s has not closed the migration of %s", target, vm_id)
        return outcome == "closed"

    async def _close_left(self, ctx: TaskContext, vm_id: str) -> None:
        """The source's part of a move is done (its QEMU cancelled or handed over, its ARDFS
        volumes back at a new epoch) and the target did not close the record: close it
        without the target if `takeover` allows, so the VM can move again. Never fails the
        task: the move's own outcome is the one to report."""
        try:
            vm = await self.db.get(VM, keys.vm(vm_id))
            if vm is None:
                return
            verdict = await close_stale(self.db, vm.value, self.audit, ctx.task.user, ctx.task.id)
            if verdict is not None:
                done = "closed the migration record" if verdict.close else "the record stays"
                await ctx.log(f"{done}: {verdict.why}")
        except Exception as exc:
            log.warning("could not close the migration record of %s: %r", vm_id, exc)

    async def _volumes(self, vm: VM, indexes: list[int]) -> list[tuple[Volume, PoolDriver]]:
        found = []
        for index in indexes:
            volume = await self.db.get(Volume, keys.volume(vm.spec.disks[index].volume))
            pool = await self.db.get(Pool, keys.pool(volume.value.pool)) if volume else None
            if volume is None or pool is None:
                raise TaskFailed(f"disk {index} lost its volume or pool")
            found.append((volume.value, driver_for(pool.value, self.vms.state_dir, self.db)))
        return found

    # -- source ----------------------------------------------------------------------------

    async def migrate(self, ctx: TaskContext) -> dict[str, Any]:
        vm_id, params = ctx.task.target, ctx.params(MigrateParams)
        target = params.target
        entry = await self.db.get(VM, keys.vm(vm_id))
        if entry is None:
            raise TaskFailed("the VM no longer exists")
        vm = entry.value
        if vm.node == target:
            return {"node": target}  # a repeat after a crash: already done
        running = self.vms.running_spec(vm_id)
        if running is not None:
            # The guest's hardware moves, not the edits made since it started: those wait
            # for its next start (the target's QEMU must match the source's).
            vm = vm.model_copy(update={"spec": running})
        if vm.node != self.node:
            raise TaskFailed(f"the VM runs on {vm.node}, not here")
        qemu = self.vms.runtime(vm_id).qemu
        if not qemu.running():
            raise TaskFailed("the VM is not running")
        if ctx.resumed:
            found = await self.db.get(Migration, keys.migration(vm_id))
            if found is not None and (found.value.source, found.value.target) == (
                self.node,
                target,
            ):
                return await self._resume(ctx, vm, qemu, found.value)
        if refused := await refusal(self.db, vm):  # asked by drain or DRS too
            raise TaskFailed(refused)
        local = set(await local_disks(self.db, vm))
        shared_volumes = await owned_volumes(self.db, vm)
        ram = await qemu.ram_kib()
        if command.loses_writes(ram, self.vms.accelerator, self.vms.qemu_version):
            # Started by a release before the TCG padding (docs/architecture.md).
            await ctx.log(
                "warning: this QEMU's RAM size lets a TCG live migration lose guest writes; "
                "stop and start the VM once to have it started with the padding"
            )
        record = Migration(
            vm=vm_id,
            source=self.node,
            target=target,
            **params.model_dump(exclude={"target"}),
            ram_kib=ram,
            spec=running,
            mirror=[i for i, disk in enumerate(vm.spec.disks) if disk.volume in local],
            created_at=time.time(),
        )
        receive = new_task(TaskKind.vm_receive, target, vm_id, ctx.task.user)
        record.receive_task = receive.id
        key = keys.migration(vm_id)
        txn = Txn().require_absent(key).put(key, record).put(keys.task(receive.id), receive)
        try:
            await self.db.commit(txn)
        except Conflict as exc:
            # Drains and DRS ask here, not through the API: a record its target will never
            # close is closed here as it would be there.
            verdict = await close_stale(self.db, vm, self.audit, ctx.task.user, ctx.task.id)
            if verdict is not None and not verdict.close:
                why = f"another migration of this VM is in progress: {verdict.why}"
                raise TaskFailed(why) from exc
            try:
                await self.db.commit(txn)
            except Conflict as exc:
                raise TaskFailed("another migration of this VM is in progress") from exc
        started = time.monotonic()
        try:
            for volume_id in shared_volumes:
                await self._set_standby(volume_id, target)
            ready = await self._wait(
                vm_id, {MigrationState.ready, MigrationState.failed}, PREPARE_TIMEOUT
            )
            if ready.state == MigrationState.failed:
                raise TaskFailed(f"the target could not prepare: {ready.error}")
            await ctx.progress(0.01, f"{target} listens on {ready.uri}")
            uri, tls = tls_uri(str(ready.uri))
            creds = await self._tls_creds(qemu, ready, server=False) if tls else None
            await ctx.log(
                "memory and disk copies go over TLS"
                if tls
                else f"{target} runs an older release: the migration goes plain"
            )
            await self._set(vm_id, state=MigrationState.running)
            if record.mirror:
                await self._mirror(ctx, qemu, record.mirror, str(ready.nbd), creds, target)
            downtime = await self._send(ctx, qemu, record, uri, shared_volumes, creds)
        except Exception as exc:  # whatever it was (etcd away too), the move is undone
            downtime = await self._after_error(ctx, qemu, record, exc, shared_volumes)
        return await self._complete(ctx, vm, record, downtime, started)

    async def _resume(
        self, ctx: TaskContext, vm: VM, qemu: QemuVM, record: Migration
    ) -> dict[str, Any]:
        """This agent died during the migration. QEMU carried on without it: follow the
        memory transfer to its end if it is still going or already done; a migration cut
        off before that (preparing, copying disks) is undone and the VM stays here."""
        started = time.monotonic()
        shared_volumes = await owned_volumes(self.db, vm)
        try:
            info = await qemu.outgoing_migration()
            status = info.status
            await ctx.log(f"resumed after an agent restart; QEMU's migration is {status}")
            if record.state != MigrationState.running or status == "none":
                raise TaskFailed("cut off by an agent restart before the memory transfer")
            downtime = await self._follow_send(ctx, qemu, record, shared_volumes)
        except Exception as exc:
            downtime = await self._after_error(ctx, qemu, record, exc, shared_volumes)
        return await self._complete(ctx, vm, record, downtime, started)

    async def _after_error(
        self,
        ctx: TaskContext,
        qemu: QemuVM,
        record: Migration,
        exc: Exception,
        shared_volumes: list[str],
    ) -> int | None:
        """After an error: QEMU's downtime if it finished the move all the same (the guest
        runs on the target then, and undoing that would kill it); otherwise the move is
        undone and the error raised."""
        try:
            info = await qemu.outgoing_migration()
        except QemuError:
            info = MigrationInfo()
        if info.status != "completed":
            await self._abort(ctx, qemu, record, exc, shared_volumes)
            raise exc
        await ctx.log(f"QEMU completed the migration despite an error, carried on: {exc}")
        return info.downtime_ms

    async def _abort(
        self,
        ctx: TaskContext,
        qemu: QemuVM,
        record: Migration,
        exc: BaseException,
        shared_volumes: list[str],
    ) -> None:
        """Stop QEMU's side, tell the target, and wait until it has dropped its own; ardfs
        volumes stay with (or come back to) this node. A target that left is not waited
        for: the record is closed without it once the volumes are back."""
        with contextlib.suppress(QemuError):
            await qemu.migrate_cancel()
        if isinstance(exc, PlacedElsewhere):
            shared_volumes = []  # they serve the VM where it runs now: not claimed back here
        for index in record.mirror:
            with contextlib.suppress(QemuError):
                await qemu.block_job_cancel(f"mirror{index}")
        closed = False
        with contextlib.suppress(Exception):
            await self._set(record.vm, state=MigrationState.failed, error=str(exc) or "cancelled")
            closed = await self._wait_gone(record.vm, record.target)
        for volume_id in shared_volumes:
            with contextlib.suppress(Exception):
                await claim(self.db, volume_id, self.node)
                await self._set_standby(volume_id, None)
        if not closed:
            await self._close_left(ctx, record.vm)

    async def _complete(
        self, ctx: TaskContext, vm: VM, record: Migration, downtime: int | None, started: float
    ) -> dict[str, Any]:
        # The guest runs on the target now: whatever happens, never undo that.
        for index in record.mirror:
            # Cancelling a mirror in sync ends it cleanly: the target has every block.
            with contextlib.suppress(QemuError):
                await self.vms.runtime(vm.id).qemu.block_job_cancel(f"mirror{index}")
        await self._hand_record_over(vm.id, record.target, downtime, record.mirror)
        closed = await self._wait_gone(vm.id, record.target)
        await self.vms.hand_over(vm.id)
        for volume, pool in await self._volumes(vm, record.mirror):
            await pool.delete(volume)  # the target holds the disk now
        if not closed:
            await self._close_left(ctx, vm.id)
        total = round((time.monotonic() - started) * 1000)
        await ctx.log(f"migrated to {record.target} in {total} ms, downtime {downtime} ms")
        return {
            "node": record.target,
            "downtime_ms": downtime,
            "total_ms": total,
            "disks_copied": len(record.mirror),
        }

    async def _tls_creds(self, qemu: QemuVM, record: Migration, *, server: bool) -> str:
        """Give `qemu` a `tls-creds-x509` object from a copy of this node's credentials made
        now; the copy is removed once QEMU has read it. Its id."""
        if self.credentials is None:
            raise TaskFailed("the target asked for TLS, and this node has no certificate")
        object_id = creds_id(record)
        directory = Path(tempfile.mkdtemp(prefix="migration-tls-", dir=self.vms.state_dir))
        try:
            await asyncio.to_thread(self.credentials.export_for_qemu, directory)
            await qemu.tls_creds_add(object_id, str(directory), server=server)
        except (TlsError, OSError) as exc:
            raise TaskFailed(f"this node's credentials cannot be given to QEMU: {exc}") from exc
        finally:
            await asyncio.to_thread(shutil.rmtree, directory, True)
        return object_id

    async def _mirror(
        self,
        ctx: TaskContext,
        qemu: QemuVM,
        disks: list[int],
        nbd: str,
        creds: str | None = None,
        target: str | None = None,
    ) -> None:
        """Copy local disks into the target's NBD exports until they are in sync (over TLS
        with the `tls-creds-x509` object `creds`, the server's certificate checked for the
        name of the node `target`)."""
        host, port = nbd.rsplit(":", 1)
        for index in disks:
            await qemu.blockdev_add_nbd(
                f"mirror{index}",
                host,
                port,
                export=f"disk{index}",
                tls_creds=creds,
                tls_hostname=target if creds is not None else None,
            )
            await qemu.blockdev_mirror(
                f"mirror{index}",
                device=f"disk{index}",
                target=f"mirror{index}",
                sync="full",
                copy_mode="write-blocking",
            )
        wanted = {f"mirror{i}" for i in disks}
        while True:
            jobs = {j.id: j for j in await qemu.query_block_jobs()}
            gone = wanted - set(jobs)
            if gone:
                raise TaskFailed(f"disk copy {sorted(gone)[0]} stopped before it was in sync")
            if all(jobs[name].ready for name in wanted):
                return
            total = sum(jobs[name].length for name in wanted) or 1
            done = sum(jobs[name].offset for name in wanted)
            await ctx.progress(0.01 + _DISKS_SHARE * done / total)
            await asyncio.sleep(_POLL)  # QEMU reports block job progress only when asked

    async def _send(
        self,
        ctx: TaskContext,
        qemu: QemuVM,
        record: Migration,
        uri: str,
        shared_volumes: list[str],
        creds: str | None = None,
    ) -> int | None:
        capabilities = {
            "auto-converge": record.auto_converge,
            "events": True,
            # ardfs volumes change owner while the guest is stopped, before the target runs.
            "pause-before-switchover": bool(shared_volumes),
        }
        await qemu.migrate_set_capabilities(capabilities)
        await qemu.migrate_set_parameters(
            downtime_limit_ms=record.max_downtime_ms,
            max_bandwidth=record.max_bandwidth_mib * 1024 * 1024,
            # Set either way: a QEMU that once sent or arrived over TLS keeps the setting,
            # and a target of an older release listens plain.
            tls_creds=creds or "",
            tls_hostname=record.target if creds else "",
        )
        await qemu.migrate(uri)
        return await self._follow_send(ctx, qemu, record, shared_volumes)

    async def _follow_send(
        self, ctx: TaskContext, qemu: QemuVM, record: Migration, shared_volumes: list[str]
    ) -> int | None:
        """Report the memory transfer's progress until QEMU says how it ended; hand the
        ardfs volumes over when QEMU pauses before the switch."""
        low = 0.01 + (_DISKS_SHARE if record.mirror else 0.0)
        continued = False
        checked = time.monotonic()
        while True:
            info = await qemu.outgoing_migration()
            status = info.status
            if status == "completed":
                return info.downtime_ms
            if time.monotonic() - checked > SOURCE_CHECK:
                # A send to a target that stopped answering never ends by itself, and this
                # task holds the VM: were it restarted elsewhere meanwhile (HA, while this
                # agent was away), the QEMU here would stay up beside the new one.
                with contextlib.suppress(*UNREACHABLE):  # etcd away: QEMU goes on, ask again
                    await self._still_here(qemu.vm_id)
                    checked = time.monotonic()
            # QEMU may still say pre-switchover just after migrate-continue: act once only.
            if status == "pre-switchover" and not continued:
                # The guest is stopped and its disks flushed: the target takes them over.
                await self._hand_over_volumes(ctx, shared_volumes, record.target)
                try:
                    await qemu.migrate_continue("pre-switchover")
                except QemuError:
                    # Sent already, by this agent before it was restarted: QEMU moved on.
                    if (await qemu.outgoing_migration()).status == "pre-switchover":
                        raise
                continued = True
                continue
            if status in ("failed", "cancelled", "none"):
                raise TaskFailed(f"QEMU migration {status}: {info.error}")
            if info.ram_total:
                done = min(info.ram_transferred / info.ram_total, 0.99)
                # Progress is told, not needed: etcd out of reach must not stop the send.
                with contextlib.suppress(*UNREACHABLE):
                    await ctx.progress(low + (0.99 - low) * done)
            await asyncio.sleep(_POLL)  # QEMU reports progress only when asked

    async def _still_here(self, vm_id: str) -> None:
        vm = await self.db.get(VM, keys.vm(vm_id))
        if vm is None or vm.value.node != self.node:
            where = "deleted" if vm is None else f"placed on {vm.value.node}"
            raise PlacedElsewhere(f"the VM was {where} while it was being sent")

    async def _set_standby(self, volume_id: str, node: str | None) -> None:
        def change(volume: Volume) -> Volume:
            return volume.model_copy(update={"standby": node})

        await self.db.update(Volume, keys.volume(volume_id), change)

    async def _hand_over_volumes(
        self, ctx: TaskContext, volume_ids: list[str], target: str
    ) -> None:
        """Make `target` the owner of each volume and wait until its heron-io serves them as
        their owner (its chunk stores claimed, stale notes merged)."""
        epochs = {v: (await claim(self.db, v, target)).epoch for v in volume_ids}

        async def served_by_target() -> bool:  # polling what the target's agent reports
            reported = {
                v: await self.db.get(VolumeHealth, keys.volume_health(v)) for v in volume_ids
            }
            return all(
                h is not None and (h.value.node, h.value.epoch) == (target, epochs[v])
                for v, h in reported.items()
            )

        if await until(served_by_target, HANDOVER_TIMEOUT, _POLL) is None:
            raise TaskFailed(f"{target} did not take the ardfs volumes over in time")
        await ctx.log(f"{len(volume_ids)} ardfs volume(s) handed over to {target}")

    async def _hand_record_over(
        self, vm_id: str, target: str, downtime: int | None, mirrored: list[int]
    ) -> None:
        """The VM (and its copied volumes) belong to the target now, all in one step."""

        async def attempt() -> None:
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
            for index in mirrored:
                disks = (record.value.spec or vm.value.spec).disks
                volume = await self.db.get(Volume, keys.volume(disks[index].volume))
                if volume is None:
                    raise TaskFailed(f"the volume of disk {index} vanished")
                txn.require_revision(volume.key, volume.revision)
                txn.put(volume.key, volume.value.model_copy(update={"node": target}))
            await self.db.commit(txn)

        try:
            await cas.retry(attempt, f"VM {vm_id}")
        except Conflict as exc:
            raise TaskFailed("the VM record kept changing; could not hand it over") from exc

    # -- target ----------------------------------------------------------------------------

    async def receive(self, ctx: TaskContext) -> dict[str, Any]:
        vm_id = ctx.task.target
        async with self._receiving.setdefault(vm_id, asyncio.Lock()):
            try:
                return await self._receive(ctx, vm_id)
            except NotOurs as exc:
                raise TaskFailed(
                    "the migration was closed without this node while it was away; dropped "
                    "what it had made for it"
                ) from exc

    async def _receive(self, ctx: TaskContext, vm_id: str) -> dict[str, Any]:
        mine = ctx.task.id
        entry = await self.db.get(Migration, keys.migration(vm_id))
        vm = await self.db.get(VM, keys.vm(vm_id))
        if entry is None or vm is None or not receives(entry.value, self.node, mine):
            if ctx.resumed:
                # Cut off by an agent restart, and the move was closed meanwhile: the
                # restart stopped the QEMU of a VM placed elsewhere, not the disk copies.
                await self._drop_stale(vm_id, None)
            return {"skipped": "no migration to this node"}
        record = entry.value
        arriving = vm.value.model_copy(update={"spec": record.spec or vm.value.spec})
        copies = await self._volumes(arriving, record.mirror)
        try:
            if record.state == MigrationState.preparing:
                try:
                    await self._prepare(arriving, record, copies, mine)
                except NotOurs:
                    raise
                except Exception as exc:  # whatever it was, nothing half-made may stay here
                    await self._answer(vm_id, mine, state=MigrationState.failed, error=str(exc))
                    try:
                        await self._drop(vm_id, copies)
                    finally:
                        # Nothing of the move runs here: the next migration may begin.
                        await self._close(vm_id, mine)
                    raise TaskFailed(str(exc)) from exc
            end = await self._until_done(vm_id, record.source, mine)
        except NotOurs:
            await self._drop_stale(vm_id, copies)
            raise
        qemu = self.vms.runtime(vm_id).qemu
        if end.state == MigrationState.completed:
            if record.mirror:
                with contextlib.suppress(QemuError):
                    await qemu.nbd_server_stop()
            # The record is ours: let the guest run (reconcile resumes it, or keeps it
            # paused if the VM is), once QEMU has loaded all of the state.
            await until(lambda: self._arrived(qemu), ARRIVAL_TIMEOUT, _POLL)
            await self.vms.reconcile(vm_id)
            await self._close(vm_id, mine)
            return {"node": self.node, "downtime_ms": end.downtime_ms}
        await self._drop(vm_id, copies)
        await self._close(vm_id, mine)
        raise TaskFailed(f"the migration failed: {end.error}")

    async def _answer(self, vm_id: str, mine: str, **changes: Any) -> Migration:
        """Write the target's side into the record, if it is still this task's
        (`receives`); raises NotOurs otherwise."""

        def change(record: Migration) -> Migration:
            if not receives(record, self.node, mine):
                raise NotOurs(vm_id)
            return record.model_copy(update=changes)

        try:
            return (await self.db.update(Migration, keys.migration(vm_id), change)).value
        except KeyError as exc:
            raise NotOurs(vm_id) from exc

    async def _close(self, vm_id: str, mine: str) -> None:
        """Remove the record this task was made for, and only that one (compare-and-swap):
        a record that is not its own is the VM's next migration."""
        entry = await self.db.get(Migration, keys.migration(vm_id))
        if entry is not None and receives(entry.value, self.node, mine):
            with contextlib.suppress(Conflict):  # changed meanwhile: no longer ours either
                await self.db.delete(entry.key, revision=entry.revision)

    async def _prepare(
        self, vm: VM, record: Migration, copies: list[tuple[Volume, PoolDriver]], mine: str
    ) -> None:
        for volume, pool in copies:
            await pool.create(volume)  # empty, the same size: the mirror fills it
        ram = record.ram_kib or vm.spec.memory_mib * 1024
        qemu = await self.vms.start_incoming(vm, record.source, ram)
        tls = await self._tls_with(record.source)
        creds = await self._tls_creds(qemu, record, server=True) if tls else None
        nbd = None
        if record.mirror:
            port = free_port(self.address)
            await qemu.nbd_server_start(self.address, port, tls_creds=creds)
            for index in record.mirror:
                await qemu.block_export_add_nbd(
                    f"export{index}", node_name=f"disk{index}", name=f"disk{index}", writable=True
                )
            nbd = f"{self.address}:{port}"
        uri = f"tcp:{self.address}:{free_port(self.address)}"
        await qemu.migrate_set_capabilities({"events": True})
        if creds is not None:
            await qemu.migrate_set_parameters(tls_creds=creds)
        await qemu.migrate_incoming(uri)
        published = TLS_SCHEME + uri if creds is not None else uri
        await self._answer(vm.id, mine, state=MigrationState.ready, uri=published, nbd=nbd)

    async def _tls_with(self, source: str) -> bool:
        """Whether a migration from `source` goes over TLS: both nodes can (this one has its
        certificate, the source's release announces MIGRATION_TLS). A source of an older
        release sends plain; it would not understand the URI's scheme."""
        if self.credentials is None or self.credentials.certificate() is None:
            return False
        found = await self.db.get(Node, keys.node(source))
        return found is not None and MIGRATION_TLS in found.value.features

    async def _drop(self, vm_id: str, copies: list[tuple[Volume, PoolDriver]]) -> None:
        """Undo the target's side: its incoming QEMU and the partial disk copies."""
        await self.vms.hand_over(vm_id)
        for volume, pool in copies:
            try:
                await pool.delete(volume)
            except (StorageError, OSError) as exc:
                # An unfinished copy that stays behind holds nothing anyone needs.
                log.warning("could not delete the partial copy of %s: %s", volume.name, exc)

    async def _drop_stale(self, vm_id: str, copies: list[tuple[Volume, PoolDriver]] | None) -> None:
        """Undo what this node made for a move that was closed without it (its copies;
        None: whichever of the VM's node-local disks it may hold). A VM whose record has
        since put it here (the move completed before it was closed) is this node's own:
        it is reconciled instead, never stopped."""
        vm = await self.db.get(VM, keys.vm(vm_id))
        if vm is not None and vm.value.node == self.node:
            await self.vms.reconcile(vm_id)
            return
        log.warning("migration of VM %s was closed without this node: dropping its side", vm_id)
        if copies is None:
            copies = await self._node_local_disks(vm.value) if vm is not None else []
        kept = []
        for volume, pool in copies:
            now = await self.db.get(Volume, keys.volume(volume.id))
            if now is None or now.value.node != self.node:
                kept.append((volume, pool))  # a copy: the disk itself lives elsewhere
        await self._drop(vm_id, kept)

    async def _node_local_disks(self, vm: VM) -> list[tuple[Volume, PoolDriver]]:
        local = set(await local_disks(self.db, vm))
        indexes = [i for i, d in enumerate(vm.spec.disks) if d.volume in local]
        with contextlib.suppress(TaskFailed):  # a volume or pool gone: nothing copied here
            return await self._volumes(vm, indexes)
        return []

    @staticmethod
    async def _arrived(qemu: QemuVM) -> bool:
        with contextlib.suppress(QemuError):
            return await qemu.run_state() != "inmigrate"
        return False

    async def _until_done(self, vm_id: str, source: str, mine: str) -> Migration:
        """Wait for the source's verdict. None will come from a source whose lease expired,
        nor once the source's migrate task has ended without one (cut off from the ConfigDB
        while it failed), nor for a VM placed on another node meanwhile (restarted there by
        HA): the migration is failed then. Raises NotOurs if the record was closed without
        this node meanwhile."""
        checked = time.monotonic()
        while True:
            entry = await self.db.get(Migration, keys.migration(vm_id))
            if entry is None or not receives(entry.value, self.node, mine):
                raise NotOurs(vm_id)
            if entry.value.state in (MigrationState.completed, MigrationState.failed):
                return entry.value
            why = None
            if await self.db.get(Node, keys.node(source)) is None:
                why = f"source node {source} failed"
            vm = await self.db.get(VM, keys.vm(vm_id))
            if vm is not None and vm.value.node not in (source, self.node):
                why = f"the VM was placed on {vm.value.node} meanwhile"
            if why is None and time.monotonic() - checked > SOURCE_CHECK:
                checked = time.monotonic()
                if not await self._source_sends(vm_id, source):
                    why = f"the migrate task on {source} ended without a verdict"
            if why is not None:
                return await self._answer(vm_id, mine, state=MigrationState.failed, error=why)
            await asyncio.sleep(_POLL)  # polling the record the source writes

    async def _source_sends(self, vm_id: str, source: str) -> bool:
        """Whether a migrate task of the VM on `source` is unfinished (a resumed one too)."""
        return any(
            t.value.kind == TaskKind.vm_migrate
            and t.value.node == source
            and t.value.target == vm_id
            and not t.value.state.finished
            for t in await self.db.list(Task, keys.TASKS)
        )


async def live_names(db: ConfigDB) -> set[str]:
    """The nodes holding a lease now."""
    return {e.value.name for e in await db.list(Node, keys.NODES)}


async def close_stale(
    db: ConfigDB, vm: VM, audit: AuditLog | None, user: str, asking: str | None = None
) -> Verdict | None:
    """The VM's migration record, if one stands in the way of a new move: closed when
    `models.migration.takeover` allows (audited), else the reason it stays and what clears
    it. None: there is none (any more). `asking` is the migrate task that asks, if any
    (it does not count as the record's own)."""
    entry = await db.get(Migration, keys.migration(vm.id))
    if entry is None:
        return None
    record = entry.value
    unfinished = [
        t.value
        for t in await db.list(Task, keys.TASKS)
        if t.value.target == vm.id and not t.value.state.finished and t.value.id != asking
    ]
    source_busy = any(t.kind == TaskKind.vm_migrate for t in unfinished)
    target_busy = any(
        t.kind == TaskKind.vm_receive
        and t.node == record.target
        and record.receive_task in (None, t.id)
        for t in unfinished
    )
    live = await live_names(db)
    verdict = takeover(record, live, vm.node, source_busy, target_busy)
    if not verdict.close:
        return verdict
    try:
        await db.delete(entry.key, revision=entry.revision)
    except Conflict:
        return Verdict(False, "its migration record changed meanwhile; try again")
    log.warning("closed the migration record of VM %s: %s", vm.id, verdict.why)
    audit_takeover(audit, user, vm.id, verdict)
    return verdict


def audit_takeover(audit: AuditLog | None, user: str, vm_id: str, verdict: Verdict) -> None:
    if audit is not None:
        audit.record(
            user=user,
            method="MIGRATION",
            path=f"/vms/{vm_id}/migration",
            status=0,
            result="closed",
            target=vm_id,
            reason=verdict.why,
        )


async def refusal(db: ConfigDB, vm: VM) -> str | None:
    """Why `vm` may not be live-migrated (`models.migration.pinned`), if it may not."""
    pools = await db.list(Pool, keys.POOLS)
    shared = {e.value.name for e in pools if capabilities(e.value).shared}
    snapshots = [e.value for e in await db.list(Snapshot, keys.snapshots(vm.id))]
    states = [s.state_volume for s in snapshots if s.state_volume is not None]
    volumes = {}
    for volume_id in [*(d.volume for d in vm.spec.disks), *states]:
        if (volume := await db.get(Volume, keys.volume(volume_id))) is not None:
            volumes[volume_id] = volume.value
    return pinned(vm, volumes, shared, snapshots)


async def local_disks(db: ConfigDB, vm: VM) -> list[str]:
    """The VM's volumes that only its node can reach."""
    pools = await db.list(Pool, keys.POOLS)
    shared = {e.value.name for e in pools if capabilities(e.value).shared}
    local = []
    for disk in vm.spec.disks:
        volume = await db.get(Volume, keys.volume(disk.volume))
        if volume is None or volume.value.pool not in shared:
            local.append(disk.volume)
    return local


async def owned_volumes(db: ConfigDB, vm: VM) -> list[str]:
    """The VM's volumes on pools with one writing node per volume: they change owner at the
    switch."""
    found = []
    for disk in vm.spec.disks:
        volume = await db.get(Volume, keys.volume(disk.volume))
        pool = await db.get(Pool, keys.pool(volume.value.pool)) if volume else None
        if pool is not None and capabilities(pool.value).owned:
            found.append(disk.volume)
    return found
