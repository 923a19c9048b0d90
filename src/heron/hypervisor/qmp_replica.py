"""Replicating a running VM's disks into the DR store (issue 19): one round, full or
incremental, from QEMU's own dirty bitmaps, read through a fleecing view while the guest runs.

A round (docs/dr.md, "Replication rounds"):

1. Per disk, a temporary qcow2 image (the fleecing target) is opened, and a
   `copy-before-write` filter over the disk's format node with that target
   (`on-cbw-error: break-snapshot`: a full or failing target breaks the view, never a guest
   write).
2. At one instant for all disks: a new persistent dirty bitmap is added to every disk (one
   `transaction`), and each guest device is switched onto its filter (`qom-set drive`). From
   then on a guest write first copies the old data to the target, so the view stays as it
   was at that instant, however slowly it is read. A VM with several disks is paused for
   these few commands (QMP `stop` drains its I/O), so that no write lands between two disks'
   switches: QEMU 7.2 has no transaction action that inserts a filter. The new bitmap
   exists before the view starts: a write between the two is in both (sent twice, never
   lost).
3. A `snapshot-access` node over each filter is the view; QEMU's NBD server (on a Unix
   socket in the VM's run directory) exports it, with the previous round's bitmap
   (`qemu:dirty-bitmap:NAME`) for an incremental round.
4. In a worker thread, heron.dr.replicate reads the chunks the bitmap marks (incremental),
   the allocated ones (full), or every allocated one compared by hash with the previous point
   (resync), and writes the point.
5. Success: the point names the new bitmap (label "bitmap"), the old bitmap is removed.
   Failure: the new bitmap is merged into the old one and removed, so the next round sends
   the changes again (the old one kept recording all along: the merge only makes sure).
   Either way the export, the server, the filters and the temporary images go.

A bitmap lives in the qcow2 image: it survives a clean shutdown (QEMU writes it at close)
and an agent restart (the next round finds it by the name its point gives). After a crash
of QEMU it is marked inconsistent; then, or when it is missing, the round is a resync.
Raw images (ARDFS volumes are raw over NBD) cannot hold persistent bitmaps: their rounds
need change tracking in heron-io (ReplicationUnsupported).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heron.dr.replicate import Kind, Progress, RoundReport, write_round
from heron.dr.store import Store, Writer
from heron.hypervisor.qmp_base import QemuError, QMPCommandError, QMPCommands
from heron.nbd import proto
from heron.nbd.client import NBDClient, NBDError
from heron.util.wait import until

if TYPE_CHECKING:
    from heron.hypervisor.qemu import QemuVM

log = logging.getLogger(__name__)

PREFIX = "heron-dr-"  # of our bitmaps, nodes and exports; nothing else uses it
SOCKET = "dr-nbd.sock"
GRANULARITY = 64 * 1024  # QEMU's qcow2 default (a cluster); divides the 4 MiB chunks
CBW_TIMEOUT = 60  # seconds a guest write may wait for its copy; then the view breaks
READ_PIECE = 8 << 20  # the largest NBD read (QEMU's server takes 32 MiB)


class ReplicationError(QemuError):
    """A round could not be set up or failed; nothing of it stays (no point, no filter)."""


class ReplicationUnsupported(ReplicationError):
    """A disk cannot be replicated from QEMU's dirty bitmaps (not a qcow2 image)."""


@dataclass(frozen=True)
class ReplicaDisk:
    """A disk of the VM: its name in the store, its format node (`disk0`), and the qdev path
    of the device backend using it (command.disk_backend)."""

    name: str
    node: str
    qdev: str

    @property
    def fleece(self) -> str:
        return f"{PREFIX}fl-{self.name}"

    @property
    def cbw(self) -> str:
        return f"{PREFIX}cbw-{self.name}"

    @property
    def view(self) -> str:
        return f"{PREFIX}view-{self.name}"

    @property
    def export(self) -> str:
        return f"{PREFIX}{self.name}"


@dataclass(frozen=True)
class DirtyBitmap:
    """One entry of a node's `dirty-bitmaps` (query-named-block-nodes)."""

    name: str
    recording: bool
    persistent: bool
    busy: bool
    inconsistent: bool
    granularity: int
    count: int  # dirty bytes

    @classmethod
    def from_qmp(cls, reply: Mapping[str, Any]) -> DirtyBitmap:
        return cls(
            name=str(reply.get("name", "")),
            recording=bool(reply.get("recording", False)),
            persistent=bool(reply.get("persistent", False)),
            busy=bool(reply.get("busy", False)),
            inconsistent=bool(reply.get("inconsistent", False)),
            granularity=int(reply.get("granularity", 0)),
            count=int(reply.get("count", 0)),
        )


@dataclass(frozen=True)
class NodeInfo:
    node: str
    driver: str  # "qcow2", "raw", "copy-before-write"...
    size: int
    bitmaps: tuple[DirtyBitmap, ...]


class ReplicaCommands(QMPCommands):
    """The QMP commands of a replication round."""

    async def block_nodes(self) -> dict[str, NodeInfo]:
        """Every named node: its driver, size and dirty bitmaps (unnamed ones left out).

        Raises QMPSessionError."""
        found = {}
        for entry in await self.execute("query-named-block-nodes", {"flat": True}):
            image = entry.get("image") or {}
            found[str(entry["node-name"])] = NodeInfo(
                node=str(entry["node-name"]),
                driver=str(entry.get("drv", "")),
                size=int(image.get("virtual-size", 0)),
                bitmaps=tuple(
                    DirtyBitmap.from_qmp(b)
                    for b in entry.get("dirty-bitmaps") or []
                    if b.get("name")
                ),
            )
        return found

    async def device_roots(self) -> dict[str, str]:
        """The node each guest device's backend uses now, by the backend's qdev path.

        Raises QMPSessionError."""
        roots = {}
        for entry in await self.execute("query-block"):
            inserted = entry.get("inserted")
            if entry.get("qdev") and inserted:
                roots[str(entry["qdev"])] = str(inserted.get("node-name", ""))
        return roots

    async def set_device_node(self, qdev: str, node: str) -> None:
        """Switch the device backend `qdev` onto the node `node` (its in-flight I/O drained).

        Raises QMPCommandError when there is no such device or node, or the node cannot take
        the device's I/O; QMPSessionError."""
        await self.execute("qom-set", {"path": qdev, "property": "drive", "value": node})

    async def bitmap_transaction(self, actions: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Dirty bitmap actions ("block-dirty-bitmap-add", "-remove", "-merge"...) with their
        data, all at once or none.

        Raises QMPCommandError (nothing done); QMPSessionError."""
        if actions:
            await self.execute(
                "transaction",
                {"actions": [{"type": kind, "data": dict(data)} for kind, data in actions]},
            )

    async def nbd_server_start_unix(self, path: Path) -> None:
        """Start QEMU's NBD server on the Unix socket `path`.

        Raises QMPCommandError when one runs already ("NBD server already running");
        QMPSessionError."""
        await self.execute(
            "nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(path)}}}
        )

    async def export_view(
        self, export_id: str, node: str, name: str, bitmaps: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Export the node `node` read-only as `name`, with the dirty bitmaps (node, bitmap)
        as the meta contexts `qemu:dirty-bitmap:BITMAP`.

        Raises QMPCommandError when no NBD server runs, or the node or a bitmap is missing;
        QMPSessionError."""
        arguments: dict[str, Any] = {
            "type": "nbd",
            "id": export_id,
            "node-name": node,
            "name": name,
            "writable": False,
        }
        if bitmaps:
            arguments["bitmaps"] = [{"node": n, "name": b} for n, b in bitmaps]
        await self.execute("block-export-add", arguments)

    async def block_exports(self) -> list[str]:
        """The ids of the block exports.

        Raises QMPSessionError."""
        return [str(e["id"]) for e in await self.execute("query-block-exports")]

    async def block_export_del(self, export_id: str) -> None:
        """Remove an export, its clients disconnected; it is gone only once
        `block_exports` no longer lists it.

        Raises QMPCommandError when there is no such export; QMPSessionError."""
        await self.execute("block-export-del", {"id": export_id, "mode": "hard"})

    async def blockdev_del(self, node: str) -> None:
        """Close the node `node` (added by blockdev-add; its inline children go with it).

        Raises QMPCommandError when it is in use or missing; QMPSessionError."""
        await self.execute("blockdev-del", {"node-name": node})


async def replicate(
    qemu: QemuVM,
    vm: str,
    disks: Sequence[ReplicaDisk],
    store: Store,
    run_dir: Path,
    scratch: Path | None = None,
    progress: Callable[[Progress], None] | None = None,
    workers: int = 2,
) -> RoundReport:
    """One replication round of the running VM `vm` (its QEMU: `qemu`, a QemuVM) into
    `store`: full at first, then incremental; a resync when the bitmap of the last point is
    missing or inconsistent. `scratch` holds the temporary images (the run directory by
    default): a guest writing fast during a slow round makes them grow up to the disks'
    sizes. `progress` is called from a worker thread after each chunk read; an exception it
    raises ends the round like any failure: no point, the changes kept for the next round.

    Raises ReplicationUnsupported (a disk that is not qcow2), ReplicationError, the store's
    errors (WriterBusy: a round of this VM runs already), QemuError."""
    if not disks:
        raise ReplicationError("a round needs at least one disk")
    scratch = run_dir if scratch is None else scratch
    socket_path = run_dir / SOCKET
    with store.writer(vm) as writer:
        await _teardown(qemu, vm, disks, scratch, socket_path, leftovers=True)
        nodes = await qemu.block_nodes()
        roots = await qemu.device_roots()
        for disk in disks:
            info = nodes.get(disk.node)
            if info is None:
                raise ReplicationError(f"disk {disk.name}: QEMU has no node {disk.node}")
            if info.driver != "qcow2":
                raise ReplicationUnsupported(
                    f"disk {disk.name} is a {info.driver} image: QEMU keeps persistent dirty "
                    "bitmaps only in qcow2 images; a raw or ARDFS (NBD) volume needs change "
                    "tracking in heron-io"
                )
            if roots.get(disk.qdev) != disk.node:
                raise ReplicationError(
                    f"disk {disk.name}: its device uses {roots.get(disk.qdev)!r}, not "
                    f"{disk.node} (a block job such as a storage move runs on it?)"
                )
        kind, parent, old = _plan(store, vm, disks, nodes)
        stale = [
            (disk, bitmap.name)
            for disk in disks
            for bitmap in nodes[disk.node].bitmaps
            if bitmap.name.startswith(PREFIX) and bitmap.name != old
        ]
        if kind == "resync" and old is not None:
            stale += [(d, old) for d in disks if _bitmap(nodes[d.node], old) is not None]
            old = None
        await qemu.bitmap_transaction(
            [("block-dirty-bitmap-remove", {"node": d.node, "name": name}) for d, name in stale]
        )
        new = f"{PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
        granularity = min(GRANULARITY, store.chunk_size)
        added = False
        copy: asyncio.Future[RoundReport] | None = None
        try:
            for disk in disks:
                image = _scratch_image(scratch, vm, disk)
                await _create_image(image, nodes[disk.node].size)
                await qemu.blockdev_add(
                    disk.fleece,
                    {"driver": "qcow2", "file": {"driver": "file", "filename": str(image)}},
                )
                await qemu.blockdev_add(
                    disk.cbw,
                    {
                        "driver": "copy-before-write",
                        "file": disk.node,
                        "target": disk.fleece,
                        "on-cbw-error": "break-snapshot",
                        "cbw-timeout": CBW_TIMEOUT,
                    },
                )
            paused = len(disks) > 1 and await qemu.run_state() == "running"
            if paused:
                await qemu.pause()
            try:
                await qemu.bitmap_transaction(
                    [
                        (
                            "block-dirty-bitmap-add",
                            {
                                "node": d.node,
                                "name": new,
                                "persistent": True,
                                "granularity": granularity,
                            },
                        )
                        for d in disks
                    ]
                )
                added = True
                for disk in disks:
                    await qemu.set_device_node(disk.qdev, disk.cbw)
                created = time.time()
            finally:
                if paused:
                    await qemu.resume()
            for disk in disks:
                await qemu.blockdev_add(disk.view, {"driver": "snapshot-access", "file": disk.cbw})
            await qemu.nbd_server_start_unix(socket_path)
            for disk in disks:
                bitmaps = [(disk.node, old)] if old is not None else []
                await qemu.export_view(disk.export, disk.view, disk.name, bitmaps)
            copy = asyncio.ensure_future(
                asyncio.to_thread(
                    _copy,
                    writer,
                    socket_path,
                    disks,
                    kind,
                    parent,
                    old,
                    created,
                    {"bitmap": new},
                    progress,
                    workers,
                )
            )
            # Shielded: a cancelled round still waits for its thread (below), which holds
            # the VM's writer and must not commit a point after the round has given up.
            report = await asyncio.shield(copy)
        except BaseException:
            with contextlib.suppress(QemuError):
                await _teardown(qemu, vm, disks, scratch, socket_path)
            if copy is not None and not copy.done():
                # The export is gone: the thread's next read fails and it ends.
                with contextlib.suppress(BaseException):
                    await copy
            if added:
                undo: list[tuple[str, Mapping[str, Any]]] = []
                for disk in disks:
                    if old is not None:
                        undo.append(
                            (
                                "block-dirty-bitmap-merge",
                                {"node": disk.node, "target": old, "bitmaps": [new]},
                            )
                        )
                    undo.append(("block-dirty-bitmap-remove", {"node": disk.node, "name": new}))
                try:
                    await qemu.bitmap_transaction(undo)
                except QemuError as exc:  # the next round removes it, or resyncs
                    log.warning(
                        "VM %s: dirty bitmap %s stays after a failed round: %s", vm, new, exc
                    )
            raise
        await _teardown(qemu, vm, disks, scratch, socket_path)
        if old is not None:
            try:
                await qemu.bitmap_transaction(
                    [("block-dirty-bitmap-remove", {"node": d.node, "name": old}) for d in disks]
                )
            except QemuError as exc:  # the next round removes it as stale
                log.warning("VM %s: old dirty bitmap %s stays: %s", vm, old, exc)
        return report


def _bitmap(info: NodeInfo, name: str) -> DirtyBitmap | None:
    return next((b for b in info.bitmaps if b.name == name), None)


def _plan(
    store: Store, vm: str, disks: Sequence[ReplicaDisk], nodes: Mapping[str, NodeInfo]
) -> tuple[Kind, str | None, str | None]:
    """(kind, parent point, bitmap holding the changes since it) of the next round."""
    points = store.points(vm)
    if not points:
        return "full", None, None
    latest = points[-1]
    if set(latest.disks) != {d.name for d in disks}:
        return "full", None, None
    token = latest.labels.get("bitmap")
    usable = token is not None
    for disk in disks:
        info = nodes[disk.node]
        bitmap = _bitmap(info, token) if token else None
        if (
            bitmap is None
            or bitmap.inconsistent
            or not bitmap.recording
            or info.size != latest.disks[disk.name]
        ):
            usable = False
    return ("incremental", latest.id, token) if usable else ("resync", latest.id, token)


class _View:
    """One disk's export, as heron.dr.replicate reads it."""

    def __init__(self, client: NBDClient, bitmap: str | None):
        self.client = client
        self.bitmap = bitmap

    @property
    def size(self) -> int:
        return self.client.size

    def allocated(self) -> Iterator[tuple[int, int]]:
        for extent in self.client.extents(proto.BASE_ALLOCATION):
            if not extent.flags & proto.STATE_ZERO:
                yield extent.offset, extent.length

    def changed(self) -> Iterator[tuple[int, int]]:
        if self.bitmap is None:
            raise ReplicationError("an incremental round without a bitmap")
        context = proto.DIRTY_BITMAP_PREFIX + self.bitmap
        for extent in self.client.extents(context):
            if extent.flags & proto.STATE_DIRTY:
                yield extent.offset, extent.length

    def read(self, offset: int, length: int) -> bytes:
        pieces = []
        end = offset + length
        while offset < end:
            piece = min(READ_PIECE, end - offset)
            pieces.append(self.client.read(offset, piece))
            offset += piece
        return b"".join(pieces)


def _copy(
    writer: Writer,
    socket_path: Path,
    disks: Sequence[ReplicaDisk],
    kind: Kind,
    parent: str | None,
    bitmap: str | None,
    created: float,
    labels: Mapping[str, str],
    progress: Callable[[Progress], None] | None,
    workers: int,
) -> RoundReport:
    """The round's reading and writing, in a worker thread."""
    contexts = [proto.BASE_ALLOCATION]
    if bitmap is not None:
        contexts.append(proto.DIRTY_BITMAP_PREFIX + bitmap)
    with contextlib.ExitStack() as stack:
        views = {}
        for disk in disks:
            try:
                client = NBDClient.unix(str(socket_path), disk.name, contexts)
            except (NBDError, OSError) as exc:
                raise ReplicationError(f"disk {disk.name}: cannot read its view: {exc}") from exc
            stack.enter_context(client)
            missing = set(contexts) - set(client.contexts)
            if missing:
                raise ReplicationError(f"disk {disk.name}: the export lacks {sorted(missing)}")
            views[disk.name] = _View(client, bitmap)
        try:
            return write_round(
                writer,
                views,
                kind,
                parent=parent,
                created=created,
                labels=labels,
                progress=progress,
                workers=workers,
            )
        except NBDError as exc:
            # A broken view (the scratch image full, a guest write that waited too long for
            # its copy: on-cbw-error break-snapshot) fails reads with EACCES.
            raise ReplicationError(f"reading the view failed: {exc}") from exc


def _scratch_image(scratch: Path, vm: str, disk: ReplicaDisk) -> Path:
    """A disk's temporary image (the fleecing target): named after the VM too, so that VMs
    may share a scratch directory."""
    return scratch / f"{PREFIX}{vm}-{disk.name}.qcow2"


async def _create_image(path: Path, size: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        str(path),
        str(size),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise ReplicationError(f"cannot create {path}: {out.decode(errors='replace').strip()}")


async def _teardown(
    qemu: QemuVM,
    vm: str,
    disks: Sequence[ReplicaDisk],
    scratch: Path,
    socket_path: Path,
    leftovers: bool = False,
) -> None:
    """Remove what a round set up, whatever of it exists (`leftovers`: what a round that
    died with its agent left): exports, the NBD server, views, filters (each device back on
    its disk's node), temporary images. Raises the first QemuError after trying the rest."""
    errors: list[QemuError] = []

    async def attempt(step: Coroutine[Any, Any, None]) -> None:
        try:
            await step
        except QemuError as exc:
            errors.append(exc)

    ours = {d.export for d in disks}
    exports = [e for e in await qemu.block_exports() if e in ours]
    for export in exports:
        await attempt(qemu.block_export_del(export))

    async def gone() -> bool:
        return not ours & set(await qemu.block_exports())

    if exports and not await until(gone, 30, 0.05):
        errors.append(ReplicationError(f"exports {sorted(ours)} still there after 30 s"))
    if exports or socket_path.exists():
        try:
            await qemu.nbd_server_stop()
        except QMPCommandError as exc:
            if "not running" not in exc.desc:
                errors.append(exc)
        socket_path.unlink(missing_ok=True)
    nodes = await qemu.block_nodes()
    roots = await qemu.device_roots()
    for disk in disks:
        if disk.view in nodes:
            await attempt(qemu.blockdev_del(disk.view))
        if roots.get(disk.qdev) == disk.cbw:
            await attempt(qemu.set_device_node(disk.qdev, disk.node))
        if disk.cbw in nodes:
            await attempt(qemu.blockdev_del(disk.cbw))
        if disk.fleece in nodes:
            await attempt(qemu.blockdev_del(disk.fleece))
        _scratch_image(scratch, vm, disk).unlink(missing_ok=True)
    if errors:
        if leftovers:
            raise ReplicationError(f"what an earlier round left cannot be removed: {errors[0]}")
        raise errors[0]
