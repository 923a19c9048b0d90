"""The directory source: a directory on a node (a copied datastore, an export, an NFS datastore
mounted read-only) walked for VMs, read with the pure parsers, checked with qemu-img.

Found: VMware VM folders (every .vmx or template .vmtx, its .vmdk descriptors, extents and
snapshot chains), OVF envelopes and OVA archives, Hyper-V exports (a folder with "Virtual
Machines/" and "Virtual Hard Disks/") and VHD/VHDX files that belong to none of them. Each
disk is opened with `qemu-img info` with its format given (never guessed: a fixed VHD would
read as raw, 512 bytes too large) and a time limit, and its capacity and chain are compared
with what the descriptors said. A description that does not parse is a failure of the
report; a disk that is missing or that qemu-img cannot read is a blocker of its VM: nothing
found in a directory raises out of the scan. The walk is bounded in depth and follows a
symlinked directory once.
"""

import asyncio
import contextlib
import json
import os
import posixpath
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heron.models.v2v import DiskBus, ScanFailure, ScannedDisk, ScannedVm, ScanReport
from heron.v2v import hyperv, ovf, vmdk, vmx
from heron.v2v.common import ParseError
from heron.v2v.findings import chain_warning

DEFAULT_DEPTH = 8
DEFAULT_TIMEOUT = 30.0
MAX_VMX = 4 << 20  # a .vmx is a few KiB
MAX_XML = 16 << 20
# Errors a file can cause while it is read: turned into failures and blockers.
_READ_ERRORS = (ParseError, OSError, UnicodeError, ValueError, struct.error)


@dataclass
class _Walk:
    vmx: list[str] = field(default_factory=list)
    ovf: list[str] = field(default_factory=list)
    ova: list[str] = field(default_factory=list)
    hyperv_exports: list[str] = field(default_factory=list)  # folders with Virtual Machines/
    hard_disks: list[str] = field(default_factory=list)  # every .vhd/.vhdx
    notes: list[str] = field(default_factory=list)


def _walk(root: str, max_depth: int) -> _Walk:
    found = _Walk()
    seen: set[tuple[int, int]] = set()

    def visit(directory: str, depth: int) -> None:
        try:
            stat = os.stat(directory)
        except OSError as e:
            found.notes.append(f"{directory}: not readable ({e.strerror})")
            return
        if (stat.st_dev, stat.st_ino) in seen:
            found.notes.append(f"{directory}: already scanned (a symbolic link loops back)")
            return
        seen.add((stat.st_dev, stat.st_ino))
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as e:
            found.notes.append(f"{directory}: not readable ({e.strerror})")
            return
        subdirs = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
                is_file = entry.is_file()
            except OSError:
                continue
            name = entry.name.lower()
            if is_dir:
                if entry.name.lower() == "virtual machines":
                    found.hyperv_exports.append(directory)
                subdirs.append(entry.path)
            elif is_file:
                if name.endswith((".vmx", ".vmtx")):  # .vmtx: a template, read alike
                    found.vmx.append(entry.path)
                elif name.endswith(".ovf"):
                    found.ovf.append(entry.path)
                elif name.endswith(".ova"):
                    found.ova.append(entry.path)
                elif name.endswith((".vhd", ".vhdx", ".avhd", ".avhdx")):
                    found.hard_disks.append(entry.path)
        if depth >= max_depth:
            if subdirs:
                found.notes.append(f"{directory}: not entered below depth {max_depth}")
            return
        for subdir in subdirs:
            visit(subdir, depth + 1)

    visit(root, 0)
    return found


def inside(path: str, root: str) -> bool:
    """Whether `path`, its symbolic links followed, is `root` or under it: a description
    from outside the cluster must not make Heron read (or import) the node's own files."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def _read_bytes(path: str, limit: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ParseError(f"larger than {limit} bytes: not a description", path=path)
    return data


def _read_text(path: str, limit: int) -> str:
    data = _read_bytes(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # older Workstation files: the host's code page


def _reader(f: Any) -> hyperv.Reader:
    def read(offset: int, length: int) -> bytes:
        f.seek(offset)
        data: bytes = f.read(length)
        return data

    return read


def read_vmdk_descriptor(path: str) -> vmdk.VmdkDescriptor:
    """The descriptor of a .vmdk: its text, or the text embedded in a sparse file."""
    with open(path, "rb") as f:
        head = f.read(512)
        if head[:4] == vmdk.SPARSE_MAGIC:
            header = vmdk.parse_sparse_header(head, path)
            # Only the descriptor's sectors are read, wherever the header puts them (its
            # size is bounded by parse_sparse_header): never the data before them.
            f.seek(header.descriptor_offset * vmdk.SECTOR)
            blob = f.read(header.descriptor_sectors * vmdk.SECTOR)
            return vmdk.parse_descriptor(vmdk.descriptor_sectors(blob, header, path), path)
        if head[:4] == vmdk.COWD_MAGIC:
            raise ParseError(
                "a vmfsSparse data extent, not a descriptor (the .vmx names its descriptor)",
                path=path,
            )
        if not vmdk.looks_like_text_descriptor(head):
            raise ParseError("neither a text descriptor nor a sparse VMDK", path=path)
        f.seek(0)
        data = f.read(vmdk.MAX_DESCRIPTOR + 1)
    if len(data) > vmdk.MAX_DESCRIPTOR:
        raise ParseError("too large for a descriptor", path=path)
    return vmdk.parse_descriptor(data.rstrip(b"\0").decode("utf-8", errors="replace"), path)


def _vmfs_relative(name: str, root: str) -> Iterator[str]:
    """Where a datastore path (/vmfs/volumes/<datastore>/<vm>/<file>) is in the copy: `root`
    is the datastore, or the directory that holds several datastores by name."""
    parts = name.split("/")
    if name.startswith("/vmfs/volumes/") and len(parts) > 4:
        yield posixpath.join(root, *parts[4:])
        yield posixpath.join(root, *parts[3:])


def _resolver(vmx_path: str, root: str) -> vmx.DiskResolver:
    vm_dir = posixpath.dirname(vmx_path)

    def resolve(name: str) -> vmx.Resolved | None:
        candidates = [
            name,
            *_vmfs_relative(name, root),
            posixpath.join(vm_dir, posixpath.basename(name)),
        ]
        for candidate in dict.fromkeys(candidates):
            if os.path.isfile(candidate):
                if not inside(candidate, root):
                    raise ParseError("outside the scanned directory: not read", path=candidate)
                try:
                    return vmx.Resolved(candidate, read_vmdk_descriptor(candidate))
                except ParseError:
                    raise
                except _READ_ERRORS as e:
                    raise ParseError(str(e), path=candidate) from None
        return None

    return resolve


def qemu_source(disk: ScannedDisk) -> str:
    """The name qemu-img and QEMU open the disk by: its file, or for a member of an archive
    a json: name reading the member's bytes in place through a raw offset (no extraction).
    A json: name carries its format; a file is opened with `-f disk.format`."""
    if disk.member is None:
        return disk.file
    spec = {
        "driver": disk.format or "raw",
        "file": {
            "driver": "raw",
            "offset": disk.member_offset or 0,
            "size": disk.member_size or 0,
            "file": {"driver": "file", "filename": disk.file},
        },
    }
    return "json:" + json.dumps(spec)


async def qemu_info(disk: ScannedDisk, timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
    """`qemu-img info --backing-chain` of the disk, top first, with its format given.
    Raises ParseError with qemu-img's message, or on the time limit."""
    args = ["info", "--output=json", "--backing-chain", "-U"]
    source = qemu_source(disk)
    if disk.member is None and disk.format:
        args += ["-f", disk.format]
    proc = await asyncio.create_subprocess_exec(
        "qemu-img",
        *args,
        source,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise ParseError(f"qemu-img info took longer than {timeout:g} s", path=disk.file) from None
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise ParseError(lines[-1] if lines else "qemu-img info failed", path=disk.file)
    chain = json.loads(out)
    return chain if isinstance(chain, list) else [chain]


async def _check_disk(vm: ScannedVm, disk: ScannedDisk, root: str, timeout: float) -> None:
    """Compares the disk with what qemu-img reads; a disk it cannot read is a blocker."""
    if any(b.device == disk.device for b in vm.blockers) or not disk.file:
        return  # already known not to import: nothing more to learn
    outside = [f for f in (disk.file, *disk.extents, *disk.chain) if not inside(f, root)]
    if outside:
        vm.block(
            "outside-source",
            f"{outside[0]} is outside the scanned directory: a source's files only are read",
            disk.device,
        )
        return
    for extent in disk.extents:
        if not os.path.isfile(extent):
            vm.block("missing-disk", f"the extent {extent} is not there", disk.device)
            return
    # A VHD or VHDX chain is merged by the import (heron.v2v.chains): qemu-img reads its base.
    merged = disk.format in ("vpc", "vhdx") and bool(disk.chain)
    probe = disk.model_copy(update={"file": disk.chain[-1], "chain": []}) if merged else disk
    try:
        chain = await qemu_info(probe, timeout)
    except (ParseError, OSError, ValueError) as e:
        reason = e.reason if isinstance(e, ParseError) else str(e)
        vm.block("unreadable-disk", f"qemu-img cannot read it: {reason}", disk.device)
        return
    top = chain[0]
    size = top.get("virtual-size")
    if isinstance(size, int):
        if disk.capacity is not None and disk.capacity != size:
            vm.warn(
                "capacity-mismatch",
                f"the description says {disk.capacity} bytes, the image {size}: the image's "
                "size is the one imported",
                disk.device,
            )
        disk.capacity = size
    if disk.format is None and isinstance(top.get("format"), str):
        disk.format = top["format"]
    below = len(chain) - 1
    if disk.member is None and not merged and below != len(disk.chain):
        vm.warn(
            "chain-mismatch",
            f"the descriptors give {len(disk.chain)} image(s) below it, qemu-img {below}",
            disk.device,
        )


# ---- Hyper-V -------------------------------------------------------------------------------


@dataclass
class _HardDisk:
    path: str
    format: str  # vpc or vhdx
    subformat: str
    size: int
    parents: list[str]  # parent name candidates, nearest guess first


def _read_hard_disk(path: str) -> _HardDisk:
    with open(path, "rb") as f:
        read = _reader(f)
        if read(0, 8) == hyperv.VHDX_SIGNATURE:
            info = hyperv.read_vhdx(read, path)
            hyperv.refuse_pending_log(info, path)
            names = [
                info.parent.get(key, "")
                for key in ("relative_path", "absolute_win32_path", "volume_path")
            ]
            parents = (
                hyperv.parent_candidates(posixpath.dirname(path), names) if info.has_parent else []
            )
            return _HardDisk(path, "vhdx", info.subformat, info.size, parents)
        size = os.fstat(f.fileno()).st_size
        vhd = hyperv.read_vhd(read, size, path)
        names = []
        for code, offset, length in vhd.locators:
            names.append(hyperv.decode_vhd_locator(code, read(offset, min(length, 4096))))
        if vhd.parent_name:
            names.append(vhd.parent_name)
        parents = (
            hyperv.parent_candidates(posixpath.dirname(path), names)
            if vhd.kind == "differencing"
            else []
        )
        return _HardDisk(path, "vpc", vhd.kind, vhd.size, parents)


class _HardDisks:
    """Every VHD/VHDX of the walk, read once; chains resolved among them and the disk."""

    def __init__(self, paths: list[str], root: str) -> None:
        self.paths, self.root = paths, root
        self.read: dict[str, _HardDisk | str] = {}

    def get(self, path: str) -> _HardDisk | str:
        if path not in self.read:
            try:
                self.read[path] = _read_hard_disk(path)
            except _READ_ERRORS as e:
                self.read[path] = e.reason if isinstance(e, ParseError) else str(e)
        return self.read[path]

    def parent_of(self, disk: _HardDisk) -> str | None:
        return next((p for p in disk.parents if os.path.isfile(p) and inside(p, self.root)), None)

    def scanned(
        self,
        vm: ScannedVm,
        path: str,
        device: str,
        bus: DiskBus = "scsi",
        controller: int = 0,
        unit: int | None = None,
    ) -> ScannedDisk:
        """The disk at `path` with its chain; blockers go to `vm`."""
        disk = ScannedDisk(device=device, file=path, bus=bus, controller=controller, unit=unit)
        read = self.get(path)
        if isinstance(read, str):
            vm.block("unreadable-disk", f"{path} does not read: {read}", device)
            return disk
        disk.format, disk.subformat, disk.capacity = read.format, read.subformat, read.size
        current = read
        while current.parents:
            parent = self.parent_of(current)
            if parent is None:
                vm.block(
                    "missing-disk",
                    f"the parent of {current.path} ({current.parents[0]}) is not there (or "
                    "not inside the scanned directory)",
                    device,
                )
                break
            if parent in disk.chain or parent == path:
                vm.block("chain-loop", f"the chain of {path} loops at {parent}", device)
                break
            disk.chain.append(parent)
            found = self.get(parent)
            if isinstance(found, str):
                vm.block("unreadable-disk", f"{parent} does not read: {found}", device)
                break
            if (found.format, found.size) != (read.format, read.size):
                vm.block(
                    "chain-incompatible",
                    f"{parent} ({found.format}, {found.size} bytes) below {current.path} "
                    f"({read.format}, {read.size} bytes): a chain's images must all be the "
                    "same format and size",
                    device,
                )
                break
            current = found
        if disk.chain:
            # qemu-img does not follow a VHD or VHDX parent: the import merges the chain
            # (heron.v2v.chains).
            chain_warning(vm, len(disk.chain), device)
        return disk

    def tops(self, paths: list[str]) -> list[str]:
        """The disks among `paths` that no other one of them has as its parent."""
        parents = set()
        for path in paths:
            read = self.get(path)
            if isinstance(read, _HardDisk) and (parent := self.parent_of(read)):
                parents.add(os.path.normpath(parent))
        return [p for p in paths if os.path.normpath(p) not in parents]


def _under(path: str, directory: str) -> bool:
    return os.path.normpath(path).startswith(os.path.normpath(directory) + os.sep)


def _hyperv_export(folder: str, disks: _HardDisks, report: ScanReport) -> set[str]:
    """The VMs of a Hyper-V export folder; returns the disks it claimed."""
    claimed: set[str] = set()
    own = [p for p in disks.paths if _under(p, folder)]
    vm_dir = os.path.join(
        folder,
        next(
            (e for e in os.listdir(folder) if e.lower() == "virtual machines"), "Virtual Machines"
        ),
    )
    try:
        entries = sorted(os.listdir(vm_dir))
    except OSError as e:
        report.failures.append(ScanFailure(path=vm_dir, reason=f"not readable ({e.strerror})"))
        return claimed
    xml_files = [os.path.join(vm_dir, e) for e in entries if e.lower().endswith(".xml")]
    vmcx_files = [os.path.join(vm_dir, e) for e in entries if e.lower().endswith(".vmcx")]
    by_name = {os.path.basename(p).lower(): p for p in own}
    for path in xml_files:
        try:
            config = hyperv.parse_legacy_config(_read_bytes(path, MAX_XML), path)
        except _READ_ERRORS as e:
            report.failures.append(ScanFailure(path=path, reason=str(e)))
            continue
        vm = hyperv.vm_from_config(config, path, [])
        for drive in config.drives:
            device = f"{drive.bus}{drive.controller}:{drive.unit}"
            local = by_name.get(posixpath.basename(drive.path.replace("\\", "/")).lower())
            if local is None:
                vm.disks.append(
                    ScannedDisk(
                        device=device,
                        file=drive.path,
                        bus=drive.bus,
                        controller=drive.controller,
                        unit=drive.unit,
                    )
                )
                vm.block("missing-disk", f"{drive.path} is not in the export", device)
                continue
            disk = disks.scanned(vm, local, device, drive.bus, drive.controller, drive.unit)
            vm.disks.append(disk)
            claimed.update([local, *disk.chain])
        report.vms.append(vm)
    if xml_files:
        unused = sorted(set(own) - claimed)
        claimed.update(own)  # the export's own: not loose disks of VMs of their own
        if unused:
            report.notes.append(
                f"{folder}: disks no configuration names, not listed: {', '.join(unused)}"
            )
    else:
        # A .vmcx export (2012 R2 and later), or no configuration at all: the disks alone.
        why = (
            "the configuration is a binary .vmcx, whose format is not documented"
            if vmcx_files
            else "the export holds no configuration"
        )
        path = vmcx_files[0] if vmcx_files else folder
        vm = hyperv.vm_without_config(os.path.basename(os.path.normpath(folder)), path, [], why)
        for index, top in enumerate(disks.tops(own)):
            disk = disks.scanned(vm, top, f"disk{index}")
            vm.disks.append(disk)
            claimed.update([top, *disk.chain])
        claimed.update(own)
        report.vms.append(vm)
    return claimed


# ---- the scan ------------------------------------------------------------------------------


async def scan_directory(
    root: Path | str, *, max_depth: int = DEFAULT_DEPTH, timeout: float = DEFAULT_TIMEOUT
) -> ScanReport:
    """The VMs under `root`: VMware folders, OVF/OVA files, Hyper-V exports and loose VHD/VHDX
    files, each disk checked with qemu-img (at most `timeout` seconds per file). Never raises
    for what it finds: unreadable descriptions are `failures`, unreadable disks blockers."""
    root = os.path.abspath(str(root))
    report = ScanReport(root=root)
    if not os.path.isdir(root):
        report.failures.append(ScanFailure(path=root, reason="not a directory"))
        return report
    walk = await asyncio.to_thread(_walk, root, max_depth)
    report.notes.extend(walk.notes)
    for path in walk.vmx:
        try:
            text = await asyncio.to_thread(_read_text, path, MAX_VMX)
            vm = await asyncio.to_thread(vmx.parse_vmx, text, path, _resolver(path, root))
        except _READ_ERRORS as e:
            report.failures.append(ScanFailure(path=path, reason=str(e)))
            continue
        report.vms.append(vm)
    for path in walk.ovf:
        try:
            data = await asyncio.to_thread(_read_bytes, path, ovf.MAX_OVF)
            vms = ovf.parse_ovf(data, path, _ovf_locator(path))
        except _READ_ERRORS as e:
            report.failures.append(ScanFailure(path=path, reason=str(e)))
            continue
        report.vms.extend(vms)
    for path in walk.ova:
        try:
            vms = await asyncio.to_thread(ovf.read_ova, Path(path))
        except _READ_ERRORS as e:
            report.failures.append(ScanFailure(path=path, reason=str(e)))
            continue
        report.vms.extend(vms)
    for vm in report.vms:
        for disk in vm.disks:
            await _check_disk(vm, disk, root, timeout)
    disks = _HardDisks(walk.hard_disks, root)
    claimed: set[str] = set()
    for folder in walk.hyperv_exports:
        try:
            claimed |= await asyncio.to_thread(_hyperv_export, folder, disks, report)
        except OSError as e:  # the folder went away or became unreadable since the walk
            report.failures.append(ScanFailure(path=folder, reason=f"not readable ({e})"))
    loose = [p for p in walk.hard_disks if p not in claimed]
    for top in await asyncio.to_thread(disks.tops, loose):
        name = os.path.splitext(os.path.basename(top))[0]
        vm = hyperv.vm_without_config(name, top, [], "a disk file without a configuration")
        vm.disks.append(await asyncio.to_thread(disks.scanned, vm, top, "disk0"))
        report.vms.append(vm)
    for vm in report.vms:
        if vm.kind == "hyperv":
            for disk in vm.disks:
                await _check_disk(vm, disk, root, timeout)
    return report


def _ovf_locator(path: str) -> ovf.FileLocator:
    base = posixpath.dirname(path)

    def locate(href: str) -> ovf.Located | None:
        file = posixpath.normpath(posixpath.join(base, href))
        return ovf.Located(file=file) if os.path.isfile(file) else None

    return locate


@dataclass(frozen=True)
class SourceCapabilities:
    """What a source can do, for callers to ask instead of testing its type."""

    files: bool  # its disks are files on the node that scanned (qemu-img opens them in place)
    warm: bool  # it can copy a running VM's disks and then their changes (CBT)


class DirectorySource:
    """A directory on a node as a V2V source: a copied datastore, an export, or an NFS
    datastore the node mounted (read-only, soft)."""

    kind = "directory"
    capabilities = SourceCapabilities(files=True, warm=False)

    def __init__(
        self, root: Path | str, max_depth: int = DEFAULT_DEPTH, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.root, self.max_depth, self.timeout = Path(root), max_depth, timeout

    async def scan(self) -> ScanReport:
        return await scan_directory(self.root, max_depth=self.max_depth, timeout=self.timeout)

    def contains(self, path: str) -> bool:
        """Whether the import may read `path`: inside the directory, links followed. The
        import checks each file again when it opens it (the directory may change)."""
        return inside(path, str(self.root))
