"""Warm migration from vSphere (docs/v2v.md, "Warm migration"): a running VM's disks read
through one snapshot at a time, with changed-block tracking saying what changed since the
last round; heron.v2v.warm runs the rounds and the cutover.

Each round takes a snapshot, so the base disk's flat extent is frozen at it: its bytes are
the snapshot's, and are read over the datastore's HTTPS file access with ranges. Once they
are copied the snapshot is removed (its delta merged into the base disk, whose changes CBT
goes on tracking), so there is never more than one, and none while the copy waits. A VM
that has snapshots of its own is refused (its current state is a chain of deltas, which a
range of one file does not read): a cold import reads chains.

Calls block; the agent runs them in a thread.
"""

import contextlib
import http.client
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pyVmomi import vim

from heron.agent.vsphere import (
    FAULTS,
    MAX_DESCRIPTOR,
    SPACE_CHECK,
    TIMEOUT,
    WARM_SNAPSHOT,
    Session,
    VsphereError,
    check_space,
    said,
)
from heron.models.imports import ImportSource, WarmOptions
from heron.tls.pinned import pinned_connection
from heron.v2v import vmdk
from heron.v2v.common import ParseError
from heron.v2v.vsphere import folder_url, sibling
from heron.v2v.warm import ChangedArea, DiskChangeInfo, Round, WarmError, WarmReport, warm_copy


class WarmDisk:
    """One disk of the VM, as of its newest warm snapshot (a `ChangeSource`)."""

    def __init__(self, vm: "WarmSession", key: int, capacity: int, flat: str) -> None:
        self.vm, self.key, self.capacity, self.flat = vm, key, capacity, flat
        self._connection: http.client.HTTPSConnection | None = None

    def changed_areas(self, since: str, start: int) -> DiskChangeInfo:
        try:
            info = self.vm.vm.QueryChangedDiskAreas(
                snapshot=self.vm.current, deviceKey=self.key, startOffset=start, changeId=since
            )
        except FAULTS as exc:
            raise VsphereError(f"changed blocks of disk {self.key}: {said(exc)}") from exc
        areas = [ChangedArea(int(a.start), int(a.length)) for a in info.changedArea or []]
        return DiskChangeInfo(int(info.startOffset), int(info.length), areas)

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of the flat extent, with one retry on a fresh connection."""
        for attempt in (1, 2):
            try:
                return self._read(offset, length)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt == 2:
                    raise VsphereError(f"{self.flat} at {offset}: {exc}") from exc
        raise AssertionError("unreachable")

    def _read(self, offset: int, length: int) -> bytes:
        session = self.vm.session
        url = urlsplit(folder_url(session.base, self.flat, self.vm.datacenter))
        if self._connection is None:
            connection_class = pinned_connection(session.source.fingerprint or "")
            self._connection = connection_class(url.hostname or "", url.port, timeout=TIMEOUT)
        headers = {"Cookie": session.stub.cookie, "Range": f"bytes={offset}-{offset + length - 1}"}
        self._connection.request("GET", f"{url.path}?{url.query}", headers=headers)
        response = self._connection.getresponse()
        data = response.read()
        if response.status != 206:
            raise VsphereError(
                f"{self.flat}: the datastore answers {response.status} {response.reason} "
                "to a range: it cannot be read warm"
            )
        said_range = response.getheader("Content-Range") or ""
        if not said_range.startswith(f"bytes {offset}-") or len(data) != length:
            raise VsphereError(f"{self.flat}: asked {length} bytes at {offset}, got {said_range}")
        return data

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class WarmSession:
    """A VM being copied warm (a `WarmVm`); `with WarmSession(...) as vm:` removes the warm
    snapshot at the end, whatever happened."""

    def __init__(self, session: Session, vm: Any, datacenter: str, files: list[str]) -> None:
        self.session, self.vm, self.datacenter = session, vm, datacenter
        self.current: Any = None
        self.how_stopped = ""
        self.disks = self._disks(files)

    def __enter__(self) -> "WarmSession":
        return self

    def __exit__(self, *_: object) -> None:
        for disk in self.disks:
            disk.close()
        with contextlib.suppress(VsphereError, *FAULTS):
            self._drop_snapshot()

    def prepare(self) -> list[str]:
        """Refuse a VM with snapshots of its own, remove a warm snapshot a run cut short left
        behind, and turn changed-block tracking on. What was done, in sentences."""
        done: list[str] = []
        tree = self.session.properties(self.vm, "snapshot").get("snapshot")
        snapshots = self._snapshots(tree.rootSnapshotList if tree else [])
        foreign = [s.name for s in snapshots if s.name != WARM_SNAPSHOT]
        if foreign:
            raise VsphereError(
                f"{self.vm.name} has snapshots ({', '.join(foreign)}): a warm copy reads one "
                "flat disk. Remove them in vSphere, or import it cold"
            )
        for snapshot in snapshots:
            self.session.wait(
                snapshot.snapshot.RemoveSnapshot_Task(removeChildren=False),
                "removing a warm snapshot left behind",
            )
            done.append("removed a warm snapshot an earlier run left behind")
        if not self.vm.config.changeTrackingEnabled:
            spec = vim.vm.ConfigSpec(changeTrackingEnabled=True)  # type: ignore[no-untyped-call]
            self.session.wait(self.vm.ReconfigVM_Task(spec=spec), "turning on change tracking")
            done.append("changed-block tracking turned on")
        return done

    def snapshot(self) -> list[str]:
        """The previous snapshot merged, a new one taken: each disk's change id at it."""
        self._drop_snapshot()
        self.current = self.session.wait(
            self.vm.CreateSnapshot_Task(
                name=WARM_SNAPSHOT,
                description="Heron warm migration: removed when the import ends",
                memory=False,
                quiesce=False,
            ),
            f"snapshotting {self.vm.name}",
        )
        ids = {
            d.key: getattr(d.backing, "changeId", None)
            for d in self.current.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualDisk)
        }
        missing = [d.key for d in self.disks if not ids.get(d.key)]
        if missing:
            raise VsphereError(
                f"{self.vm.name}: disks {missing} have no change id at the snapshot: "
                "changed-block tracking is not on for them"
            )
        return [str(ids[d.key]) for d in self.disks]

    def stop(self) -> None:
        self.release()
        self.how_stopped = self.session.shut_down(self.vm)

    def release(self) -> None:
        """Remove the round's snapshot once its changes are copied: the VM does not run on a
        growing delta while the copy waits for its next round (CBT's change ids stay valid)."""
        self._drop_snapshot()

    def _drop_snapshot(self) -> None:
        if self.current is not None:
            self.session.wait(
                self.current.RemoveSnapshot_Task(removeChildren=False),
                "removing the previous warm snapshot",
            )
            self.current = None

    def _snapshots(self, trees: list[Any]) -> list[Any]:
        found: list[Any] = []
        for tree in trees:
            found += [tree, *self._snapshots(tree.childSnapshotList)]
        return found

    def _disks(self, files: list[str]) -> list[WarmDisk]:
        """Each disk asked (by its datastore path, as scanned) with its flat extent."""
        devices: dict[str, Any] = {
            getattr(d.backing, "fileName", ""): d
            for d in self.vm.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualDisk)
        }
        disks = []
        with tempfile.TemporaryDirectory(prefix="heron-warm-") as scratch:
            for file in files:
                device = devices.get(file)
                if device is None:
                    raise VsphereError(f"{self.vm.name} has no disk {file} any more: scan again")
                capacity = device.capacityInBytes or device.capacityInKB * 1024
                disks.append(WarmDisk(self, device.key, capacity, self._flat(file, Path(scratch))))
        return disks

    def _flat(self, file: str, scratch: Path) -> str:
        """The datastore path of a disk's one flat extent."""
        local = self.session.download(file, self.datacenter, scratch, limit=MAX_DESCRIPTOR)
        head = local.read_bytes()
        if not vmdk.looks_like_text_descriptor(head[:512]):
            raise VsphereError(f"{file} is a sparse disk: only flat disks are copied warm")
        try:
            descriptor = vmdk.parse_descriptor(head.decode("utf-8", "replace"), file)
        except ParseError as exc:
            raise VsphereError(f"{file}: {exc}") from exc
        extents = descriptor.extents
        if len(extents) != 1 or extents[0].type not in ("FLAT", "VMFS") or extents[0].offset:
            kinds = ", ".join(e.type for e in extents)
            raise VsphereError(f"{file} has extents {kinds}: only one flat extent is copied warm")
        return sibling(file, extents[0].file or "")


def copy_warm(
    source: ImportSource,
    vm_path: str,
    disks: list[str],
    files: list[Path],
    options: WarmOptions,
    say: Callable[[str], None],
    progress: Callable[[float], None],
    cancelled: threading.Event,
) -> tuple[WarmReport, str]:
    """Copy the VM at `vm_path` warm: each of its `disks` (datastore paths, as scanned) into
    the raw file of the same index in `files`, rounds of changes while it runs, then the
    cutover that stops it. `say` logs a line, `progress` the first round's share (0 to 1);
    `cancelled` stops the copy at its next write or wait. The report, and how the VM was
    stopped."""
    with Session(source) as session:
        vm, datacenter = session.find(vm_path)
        with (
            WarmSession(session, vm, datacenter, disks) as warm_vm,
            contextlib.ExitStack() as stack,
        ):
            for line in warm_vm.prepare():
                say(line)
            handles = [stack.enter_context(f.open("wb")) for f in files]
            for handle, disk in zip(handles, warm_vm.disks, strict=True):
                handle.truncate(disk.capacity)
            total = sum(d.capacity for d in warm_vm.disks) or 1
            moved, shown = [0], [0.0]

            def writer(fd: int) -> Callable[[int, bytes], None]:
                def write(offset: int, data: bytes) -> None:
                    if cancelled.is_set():
                        raise WarmError("cancelled")
                    os.pwrite(fd, data, offset)
                    moved[0] += len(data)
                    if moved[0] % SPACE_CHECK < len(data):
                        check_space(files[0].parent)
                    if moved[0] / total - shown[0] >= 0.05:  # a record write per 5 %
                        shown[0] = min(moved[0] / total, 1.0)
                        progress(shown[0])

                return write

            def between(number: int, done: Round) -> None:
                warm_vm.release()
                say(
                    f"round {number + 1}: {done.bytes / (1 << 20):.1f} MiB copied in "
                    f"{done.seconds:.1f} s while the VM runs; the next in "
                    f"{options.interval_seconds} s"
                )
                if cancelled.wait(options.interval_seconds):
                    raise WarmError("cancelled")

            report = warm_copy(
                warm_vm,
                [writer(h.fileno()) for h in handles],
                small_enough=options.small_enough_mib << 20,
                max_rounds=options.max_rounds,
                between=between,
            )
            for handle in handles:
                os.fsync(handle.fileno())
            return report, warm_vm.how_stopped
