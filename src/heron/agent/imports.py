"""V2V on a node: scanning an import source, and carrying out one VM's import.

An import was planned with its VM and volumes (services/imports.py); here each source disk
is converted into its volume by qemu-img with its format given (never guessed), compared
byte for byte with its source, and the guest is fixed to boot on virtio when asked. When
anything fails, or the import is cancelled, the VM and its volumes are removed again:
nothing half-imported stays. A source is read where it is: a directory of this node, or an
NFS export mounted read-only under `<state>/mnt/import-<source>`. A vsphere source is read
over its API (agent/vsphere.py): its VM is powered off (or the import refused), its disks'
files downloaded into `<state>/import-staging/<task>` and converted from there; the staging
folder is removed when the import ends, whether it succeeded or not.
"""

import asyncio
import json
import logging
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from heron.agent import vsphere
from heron.agent.tasks import TaskContext, TaskFailed
from heron.agent.vsphere_warm import copy_warm
from heron.configdb import ConfigDB, keys
from heron.models.imports import ImportDisk, ImportSource, ScanResult
from heron.models.settings import ClusterSettings
from heron.models.storage import Volume
from heron.models.task import ImportParams, ScanParams
from heron.models.v2v import ScanFailure, ScanReport
from heron.models.vm import VM, PowerState, RunState
from heron.storage import qemuimg
from heron.storage.dirpool import mount_nfs
from heron.storage.driver import PoolDriver, StorageError
from heron.tls.pinned import PinMismatch
from heron.v2v import chains
from heron.v2v.common import ParseError
from heron.v2v.guestfix import Drive, GuestFixError, fix_linux
from heron.v2v.scan import inside, scan_directory
from heron.v2v.vsphere import scanned_vm
from heron.v2v.warm import WarmError, WarmReport

log = logging.getLogger(__name__)

# A scan is stored whole in one ConfigDB record: a source with more than this is refused
# with a word on scanning its folders one by one.
MAX_SCAN_BYTES = 1024 * 1024
# Of a disk's share of the progress, the copy takes this much and the comparison the rest.
COPY_SHARE = 0.7
# A vsphere source's download takes this much of the progress, before the conversion.
DOWNLOAD_SHARE = 0.3
# The guest fix boots libguestfs' appliance (about 2 minutes under TCG, docs/v2v.md).
FIX_TIMEOUT = 900.0

VolumeOf = Callable[[str], Awaitable[tuple[Volume, PoolDriver]]]
SetVolume = Callable[..., Awaitable[None]]
DeleteVm = Callable[[str, bool, Callable[[float, str], Awaitable[None]]], Awaitable[Any]]
Reconcile = Callable[[str], Awaitable[RunState]]


class Imports:
    def __init__(
        self,
        db: ConfigDB,
        node: str,
        state_dir: Path,
        volume: VolumeOf,
        set_volume: SetVolume,
        delete_vm: DeleteVm,
        reconcile: Reconcile,
    ):
        self.db = db
        self.node = node
        self.state_dir = state_dir
        self.volume = volume
        self.set_volume = set_volume
        self.delete_vm = delete_vm
        self.reconcile = reconcile

    async def _source(self, name: str) -> ImportSource:
        found = await self.db.get(ImportSource, keys.import_source(name))
        if found is None:
            raise TaskFailed(f"import source {name} does not exist")
        return found.value

    async def root(self, source: ImportSource) -> Path:
        """Where this node reads the source: its folder, or its NFS export mounted."""
        if source.type == "directory":
            if source.node != self.node:
                raise TaskFailed(f"source {source.name} is a folder of node {source.node}")
            path = Path(source.path or "")
        elif source.type == "vsphere":
            raise TaskFailed(f"source {source.name} is read over its API, not as a folder")
        else:
            path = self.state_dir / "mnt" / f"import-{source.name}"
            try:
                # Read-only, and soft: a datastore that stops answering fails the scan or
                # the import with an error instead of hanging them for good.
                await mount_nfs(
                    f"{source.server}:{source.path}", path, "ro,soft,timeo=150,retrans=3"
                )
            except StorageError as exc:
                raise TaskFailed(str(exc)) from exc
        if not path.is_dir():
            raise TaskFailed(f"{path} is not a folder on node {self.node}")
        return path

    async def scan(self, ctx: TaskContext) -> dict[str, Any]:
        source = await self._source(ctx.params(ScanParams).source)
        if source.type == "vsphere":
            await ctx.progress(0.1, f"reading {source.host}'s inventory")
            report = await _call(_vsphere_scan, source)
        else:
            root = await self.root(source)
            await ctx.progress(0.1, f"reading {root}")
            report = await scan_directory(root)
        result = ScanResult(
            source=source.name, node=self.node, scanned_at=time.time(), report=report
        )
        if len(result.model_dump_json()) > MAX_SCAN_BYTES:
            raise TaskFailed(
                f"{len(report.vms)} VMs are too many for one scan: make a source of each folder"
            )
        await self.db.put(keys.import_scan(source.name), result)
        return {"vms": len(report.vms), "failures": len(report.failures)}

    async def run(self, ctx: TaskContext) -> dict[str, Any]:
        """Convert, verify, fix, and start if asked; on any failure remove what was made."""
        params = ctx.params(ImportParams)
        vm_id = ctx.task.target
        staging = self.state_dir / "import-staging" / ctx.task.id
        warm: dict[str, Any] = {}
        try:
            await ctx.progress(0.0, "started")  # cancelled while it was queued: undone here
            source = await self._source(params.source)
            if source.type == "vsphere" and params.warm is not None:
                sources, warm = await self._warm(ctx, source, params, staging)
                await self._disks(ctx, params, staging, sources, DOWNLOAD_SHARE, raw=True)
            elif source.type == "vsphere":
                sources = await self._fetch(ctx, source, params, staging)
                await self._disks(ctx, params, staging, sources, DOWNLOAD_SHARE)
            else:
                await self._disks(ctx, params, await self.root(source), staging=staging)
            if params.guest_fix == "auto":
                await self._fix_guest(ctx, params, vm_id)
            state = await self._finish(vm_id, params.start)
        except Exception as exc:  # a failure or a cancel; an agent stopping (CancelledError)
            # leaves the task to resume at its restart, with what it made
            log.warning("import of %s failed (%r): removing what it made", vm_id, exc)
            await self.delete_vm(vm_id, True, _quiet)
            if isinstance(exc, StorageError):
                raise TaskFailed(str(exc)) from exc
            raise
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        return {"vm": vm_id, "state": state.value, **({"warm": warm} if warm else {})}

    async def _fetch(
        self, ctx: TaskContext, source: ImportSource, params: ImportParams, staging: Path
    ) -> list[str]:
        """Power the source VM off (or refuse), then download each disk with what it reads
        into `staging`: the local files the conversion reads."""
        found = [await self.volume(d.volume) for d in params.disks]
        if all(volume.state == "ready" for volume, _ in found):
            return [d.source for d in params.disks]  # converted before a restart
        await asyncio.to_thread(shutil.rmtree, staging, True)
        staging.mkdir(parents=True)
        await ctx.progress(0.0, f"connecting to {source.host}")
        total = sum(v.size for v, _ in found) or 1
        loop = asyncio.get_running_loop()
        moved, shown = [0], [0.0]

        def progress(n: int) -> None:  # in the download's thread
            moved[0] += n
            share = min(moved[0] / total, 1.0) * DOWNLOAD_SHARE
            if share - shown[0] >= 0.02:  # a record write per 2 %, not per MiB
                shown[0] = share
                asyncio.run_coroutine_threadsafe(ctx.progress(share), loop)

        def fetch() -> tuple[bool, list[str], float]:
            with vsphere.Session(source) as session:
                vm, datacenter = session.find(params.vm)
                was_on = session.power_off(vm, params.power_off)
                if was_on:
                    said = ctx.log(f"{params.vm} was running: powered off at the source")
                    asyncio.run_coroutine_threadsafe(said, loop).result(timeout=60)
                started = time.monotonic()
                local = []
                for index, disk in enumerate(params.disks):
                    into = staging / str(index)  # each disk apart: base names may repeat
                    into.mkdir()
                    local.append(str(session.fetch_disk(disk.source, datacenter, into, progress)))
                return was_on, local, time.monotonic() - started

        _, local, seconds = await _call(fetch)
        size = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
        rate = size / max(seconds, 1e-3) / 1e6
        await ctx.log(f"downloaded {size} bytes in {seconds:.1f} s ({rate:.1f} MB/s)")
        return local

    async def _warm(
        self, ctx: TaskContext, source: ImportSource, params: ImportParams, staging: Path
    ) -> tuple[list[str], dict[str, Any]]:
        """Copy the running VM's disks warm into raw files in `staging` (rounds of changed
        blocks, then the cutover that stops it at the source): the files the conversion
        reads, and what the rounds copied and how long the cutover took."""
        options = params.warm
        assert options is not None
        found = [await self.volume(d.volume) for d in params.disks]
        if all(volume.state == "ready" for volume, _ in found):
            return [d.source for d in params.disks], {}  # converted before a restart
        await asyncio.to_thread(shutil.rmtree, staging, True)
        staging.mkdir(parents=True)
        await ctx.progress(0.0, f"connecting to {source.host}")
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        files = [staging / f"disk{index}.raw" for index in range(len(params.disks))]

        def say(line: str) -> None:  # in the copy's thread
            asyncio.run_coroutine_threadsafe(ctx.log(line), loop).result(timeout=60)

        def progress(fraction: float) -> None:  # in the copy's thread
            asyncio.run_coroutine_threadsafe(ctx.progress(fraction * DOWNLOAD_SHARE), loop)

        def copy() -> tuple[WarmReport, str]:
            disks = [d.source for d in params.disks]
            return copy_warm(source, params.vm, disks, files, options, say, progress, cancelled)

        try:
            report, how = await _call(copy)
        finally:
            cancelled.set()  # a cancelled task: its thread stops at its next write or wait
        last = report.rounds[-1]
        await ctx.log(
            f"round {len(report.rounds)}: {_mib(last.bytes)} copied in {last.seconds:.1f} s"
        )
        await ctx.log(
            f"cutover: {params.vm} {how} at the source; its last changes, "
            f"{_mib(report.cutover_bytes)}, copied in {report.cutover_seconds:.1f} s"
        )
        return [str(f) for f in files], {
            "rounds": [r.bytes for r in report.rounds],
            "cutover_bytes": report.cutover_bytes,
            "cutover_seconds": round(report.cutover_seconds, 3),
        }

    async def _disks(
        self,
        ctx: TaskContext,
        params: ImportParams,
        root: Path,
        sources: list[str] | None = None,
        start: float = 0.0,
        raw: bool = False,
        staging: Path | None = None,
    ) -> None:
        """Convert and verify each disk; its progress runs from `start` (after a download).
        `raw`: the sources are raw files (a warm copy's), whatever the disks were. A
        differencing chain is first merged into a raw file in `staging`."""
        found = [await self.volume(d.volume) for d in params.disks]
        total = sum(max(v.size, 1) for v, _ in found) or 1
        done = 0
        for index, (disk, (volume, pool)) in enumerate(zip(params.disks, found, strict=True)):
            low = start + (1 - start) * done / total
            share = (1 - start) * max(volume.size, 1) / total
            done += max(volume.size, 1)
            if volume.state == "ready":
                continue  # converted before a restart cut the task short
            source = sources[index] if sources is not None else _rerooted(disk, params, root)
            fmt = "raw" if raw else disk.format
            if disk.chain and staging is not None:
                chain = [_moved(p, params.root, root) for p in disk.chain]
                source = await self._merge(ctx, source, chain, disk.format, root, staging, index)
                fmt = "raw"
            else:
                await self._inside(source, fmt, root, volume.name)
            await ctx.progress(low, f"{volume.name}: converting from {source.split('/')[-1]}")

            async def copied(fraction: float, low: float = low, share: float = share) -> None:
                await ctx.progress(low + share * COPY_SHARE * fraction)

            async def compared(fraction: float, low: float = low, share: float = share) -> None:
                await ctx.progress(low + share * (COPY_SHARE + (1 - COPY_SHARE) * fraction))

            try:
                size = await pool.import_image(volume, source, copied, fmt)
                await ctx.log(f"{volume.name}: copied, comparing with the source")
                target = pool.image(volume)
                await qemuimg.compare(source, fmt, target, volume.format.value, compared)
            except StorageError as exc:
                raise TaskFailed(f"{volume.name}: {exc}") from exc
            await self.set_volume(volume.id, state="ready", size=size, error="")
            await ctx.log(f"{volume.name}: verified")

    async def _merge(
        self,
        ctx: TaskContext,
        top: str,
        chain: list[str],
        fmt: str | None,
        root: Path,
        staging: Path,
        index: int,
    ) -> str:
        """A differencing chain (`top` on `chain`, nearest first) merged into a raw file:
        qemu-img converts its base, then each image above writes what it holds over it
        (heron.v2v.chains). The file's path."""
        layers = [top, *chain]
        for layer in layers:
            if not inside(layer, str(root)) or not Path(layer).is_file():
                raise TaskFailed(f"{layer} is not a file inside the source any more")
        staging.mkdir(parents=True, exist_ok=True)
        merged = staging / f"disk{index}-merged.raw"
        await ctx.log(f"merging {top} with the {len(chain)} image(s) below it")
        try:
            await qemuimg.convert(layers[-1], fmt, merged, "raw")
            for layer in reversed(layers[:-1]):
                written = await asyncio.to_thread(chains.overlay, Path(layer), fmt or "", merged)
                await ctx.log(f"{layer}: {written} bytes written over the images below")
        except (ParseError, OSError) as exc:
            raise TaskFailed(f"merging the chain of {top}: {exc}") from exc
        return str(merged)

    async def _inside(self, source: str, fmt: str | None, root: Path, name: str) -> None:
        """The scan refused disks that read files outside the source; their files may have
        changed since (a descriptor naming /etc/shadow as an extent, a data file cut short,
        which qemu-img would read on as zeroes): checked again here."""
        try:
            files = await qemuimg.files_read(source, fmt)
        except StorageError as exc:
            raise TaskFailed(f"{name}: the source cannot be read: {exc}") from exc
        outside = [f for f, _ in files if not inside(f, str(root))]
        if outside:
            raise TaskFailed(f"{name}: the source reads files outside it: {', '.join(outside)}")
        for path, least in files:
            try:
                held = Path(path).stat().st_size
            except OSError as exc:
                raise TaskFailed(f"{name}: {path}: {exc.strerror}") from exc
            if held < least:
                raise TaskFailed(
                    f"{name}: {path} holds {held} bytes of the {least} its descriptor says"
                )

    async def _fix_guest(self, ctx: TaskContext, params: ImportParams, vm_id: str) -> None:
        """Fix the Linux guest on its disks to boot on virtio (heron.v2v.guestfix). When it
        cannot be fixed, its disks become SATA and its NICs e1000, which every Linux has
        drivers for, and the task's log says why: the import itself goes on."""
        drives = []
        for disk in params.disks:
            volume, pool = await self.volume(disk.volume)
            drives.append(Drive(pool.image(volume), volume.format.value))
        found = await self.db.get(VM, keys.vm(vm_id))
        macs = [nic.mac for nic in found.value.spec.nics if nic.mac] if found else []
        await ctx.progress(ctx.task.progress, "fixing the guest to boot on virtio")
        said: list[str] = []
        try:
            report = await asyncio.to_thread(
                fix_linux, drives, timeout=FIX_TIMEOUT, log=said.append, macs=macs
            )
        except GuestFixError as exc:
            await self._plain_buses(ctx, vm_id, str(exc))
            return
        changed = "; ".join(f"{c.kind} {c.path}" for c in report.changes) or "nothing to change"
        await ctx.log(f"guest fixed ({report.product}, {report.duration_seconds:.0f} s): {changed}")
        for warning in report.warnings:
            await ctx.log(f"guest fix: {warning}")

    async def _plain_buses(self, ctx: TaskContext, vm_id: str, why: str) -> None:
        def plain(vm: VM) -> VM:
            disks = [d.model_copy(update={"bus": "sata"}) for d in vm.spec.disks]
            nics = [n.model_copy(update={"model": "e1000"}) for n in vm.spec.nics]
            return vm.model_copy(update={"spec": vm.spec.model_copy(
                update={"disks": disks, "nics": nics})})  # fmt: skip

        await self.db.update(VM, keys.vm(vm_id), plain)
        await ctx.log(f"guest not fixed ({why}): its disks are SATA and its NICs e1000")

    async def _finish(self, vm_id: str, start: bool) -> RunState:
        if start:

            def running(vm: VM) -> VM:
                return vm.model_copy(update={"power": PowerState.running})

            await self.db.update(VM, keys.vm(vm_id), running)
        return await self.reconcile(vm_id)


def _rerooted(disk: ImportDisk, params: ImportParams, root: Path) -> str:
    """The disk's qemu-img name on this node: the scan read the source under `params.root`
    (an NFS export is mounted under each node's own state folder)."""
    if params.root == str(root):
        return disk.source
    if disk.source.startswith("json:"):
        spec = json.loads(disk.source[5:])
        inner = spec["file"]["file"]
        inner["filename"] = _moved(inner["filename"], params.root, root)
        return "json:" + json.dumps(spec)
    return _moved(disk.source, params.root, root)


def _moved(path: str, old: str, new: Path) -> str:
    relative = Path(path).relative_to(old)
    return str(new / relative)


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    """A blocking vSphere call in a thread, its errors made the task's."""
    try:
        return await asyncio.to_thread(function, *args)
    except (vsphere.VsphereError, PinMismatch, WarmError) as exc:
        raise TaskFailed(str(exc)) from exc
    except vsphere.FAULTS as exc:  # the server's fault, or the connection lost mid-way
        raise TaskFailed(f"the vSphere server: {vsphere.said(exc)}") from exc


def _vsphere_scan(source: ImportSource) -> ScanReport:
    report = ScanReport(root=f"vsphere://{source.host}:{source.port}")
    with vsphere.Session(source) as session:
        for vm, datacenter, path in session.vms():
            try:
                report.vms.append(scanned_vm(vsphere.vm_facts(vm, datacenter, path)))
            except Exception as exc:  # one VM the API describes oddly: a failure of the report
                report.failures.append(ScanFailure(path=path, reason=str(exc) or repr(exc)))
    return report


def _mib(count: int) -> str:
    return f"{count / (1 << 20):.1f} MiB"


async def _quiet(fraction: float, message: str) -> None:
    """Progress of the clean-up after a failure: the task's own record says why it failed."""


async def import_slots(db: ConfigDB) -> int:
    """How many imports may run at once on a node (the cluster settings' `imports`)."""
    found = await db.get(ClusterSettings, keys.SETTINGS)
    return (found.value if found else ClusterSettings()).imports.parallel
