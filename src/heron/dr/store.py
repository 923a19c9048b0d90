"""The DR replica store: VMs' disks at points in time, deduplicated, compressed, verifiable.

Layout under the store's directory (docs/dr.md explains each choice):

    store.json                  format, chunk size, hash, compression: fixed at creation
    chunks/ab/.lock             the lock writers (shared) and GC (exclusive) take, per prefix
    chunks/ab/cd/<hash>         one chunk (heron.dr.chunks)
    points/<vm>/<id>.point      one point: metadata and every disk's complete map
    writers/<vm>.lock           held (flock) by the VM's writer: one at a time
    writers/<vm>.live           held by the VM's writer too; says when it started (GC reads it)
    gc.lock                     held by the running garbage collection
    marks.lock                  held by it while it reads the points; deletions wait for it

Guarantees:
- A point's file appears only after every chunk it names is on disk (fsync'ed, and so are
  the directories naming them); it is written to a temporary file, fsync'ed and renamed. A
  crash at any instant leaves the store as it was, or with the new point complete; what a
  crash leaves behind (temporary files, chunks no point names) is removed by `gc`.
- One writer per VM (`Store.writer` raises WriterBusy for a second one), any number of
  readers and writers of other VMs at once, in threads or processes: every lock is an flock
  on a file of the store.
- A point being read (`open_point`) or used as the parent of an increment being written
  cannot be deleted (PointBusy), so its chunks stay.
- Garbage collection removes only chunks that no point names and that no writer touched
  since the collection began (or since the oldest running writer began, if earlier); points
  are not deleted while it reads them (a deletion waits for that phase).

The API is synchronous and blocking (file I/O, hashing, compression); it is thread-safe, and
BLAKE3, zstd and file I/O release the GIL, so the work of one call is spread over `workers`
threads, and asyncio callers run calls with `asyncio.to_thread`.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import json
import os
import secrets
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from heron.dr import chunks, points
from heron.dr.chunks import ChunkDir
from heron.dr.errors import (
    ChunkCorrupt,
    ChunkMissing,
    GcBusy,
    InvalidArgument,
    PointBusy,
    PointCorrupt,
    PointNotFound,
    StoreNotFound,
    WriterBusy,
)
from heron.dr.points import DiskMap, Point, PointInfo, check_name
from heron.errors import DRError

FORMAT = 1
WORKERS = 2
# Writers' and GC's clocks are the kernel's file times and time.time(), which can differ by
# a tick (file times are coarse): GC's cutoff is moved this much earlier.
GC_MARGIN = 5.0
BLKZEROOUT = 0x127F  # _IO(0x12, 127): zero a range of a block device (thin devices unmap)
_START = struct.Struct("<q")  # a writer's start, nanoseconds since the epoch

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class RestoreReport:
    disk: str
    size: int
    chunks_read: int  # each distinct chunk once, however many places of the disk hold it
    bytes_written: int
    zero_bytes: int  # skipped (a file) or zeroed (a device)
    seconds: float


@dataclass
class VerifyReport:
    """What a verification found; `ok` when nothing is missing or damaged."""

    chunks_checked: int = 0
    bytes_checked: int = 0  # uncompressed content re-hashed
    missing: list[str] = field(default_factory=list)  # chunk names (hex)
    corrupt: list[str] = field(default_factory=list)
    bad_points: list[str] = field(default_factory=list)  # "<vm>/<id>: reason"
    points_checked: int = 0
    unreferenced: int = 0  # chunks no point names (the next GC removes them): not an error
    quarantined: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.bad_points)


@dataclass(frozen=True)
class GcReport:
    started: float
    cutoff: float  # chunks and temporary files older than this, and unnamed, were removed
    points_marked: int
    chunks_in_use: int
    chunks_removed: int
    bytes_freed: int
    kept_young: int  # unnamed but touched after the cutoff: a writer may be about to name it
    temp_removed: int  # crashed writers' temporary files
    bad_removed: int  # quarantined corrupt chunks
    seconds: float


@dataclass(frozen=True)
class Stats:
    vms: int
    points: int
    logical_bytes: int  # the disks' sizes, summed over every point
    referenced_bytes: int  # the same, less all-zero chunks
    unique_bytes: int  # the content of the distinct chunks the points name
    stored_bytes: int  # chunk files (those named) as they lie on disk
    index_bytes: int  # point files
    chunks: int
    dedup_ratio: float  # referenced / unique
    compression_ratio: float  # unique / stored
    total_ratio: float  # logical / (stored + index)


def _bounded(
    pool: ThreadPoolExecutor, work: Callable[[T], R], items: Iterable[T], limit: int
) -> Iterator[R]:
    """`work` over `items` on the pool with at most `limit` in flight (bounded memory: each
    holds a chunk), results in order; the first error is raised once running work ends."""
    pending: collections.deque[Future[R]] = collections.deque()
    try:
        for item in items:
            if len(pending) >= limit:
                yield pending.popleft().result()
            pending.append(pool.submit(work, item))
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


class Store:
    """A replica store in a directory. `Store.create` makes one, `Store(root)` opens it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        try:
            config = json.loads((self.root / "store.json").read_text())
        except FileNotFoundError:
            raise StoreNotFound(f"no DR store at {self.root} (no store.json)") from None
        if config.get("format") != FORMAT:
            raise DRError(f"{self.root}: store format {config.get('format')}, not {FORMAT}")
        self.chunk_size: int = int(config["chunk_size"])
        self.level: int = int(config["level"])
        self.chunks = ChunkDir(self.root / "chunks")

    @classmethod
    def create(
        cls, root: Path, chunk_size: int = chunks.CHUNK_SIZE, level: int = chunks.LEVEL
    ) -> Store:
        """Make a store at `root` (an empty or missing directory), or open the one there if
        it was made with the same chunk size."""
        root = Path(root)
        if chunk_size < 4096 or chunk_size & (chunk_size - 1) or chunk_size > 64 << 20:
            raise InvalidArgument(f"chunk size {chunk_size}: a power of two, 4 KiB to 64 MiB")
        if not 1 <= level <= 19:
            raise InvalidArgument(f"zstd level {level}: 1 to 19")
        if (root / "store.json").exists():
            store = cls(root)
            if store.chunk_size != chunk_size:
                raise InvalidArgument(
                    f"{root} holds a store of {store.chunk_size}-byte chunks, not {chunk_size}"
                )
            return store
        root.mkdir(parents=True, exist_ok=True)
        ChunkDir.make(root / "chunks")
        for sub in ("points", "writers"):
            (root / sub).mkdir(exist_ok=True)
        (root / "gc.lock").touch()
        (root / "marks.lock").touch()
        config = {
            "format": FORMAT,
            "chunk_size": chunk_size,
            "hash": "blake3",
            "compression": "zstd",
            "level": level,
        }
        _write_durably(root / "store.json", json.dumps(config, indent=1).encode() + b"\n")
        return cls(root)

    # -- points ----------------------------------------------------------------------------

    def _point_path(self, vm: str, point_id: str) -> Path:
        check_name("VM", vm)
        check_name("point", point_id)
        return self.root / "points" / vm / f"{point_id}{points.SUFFIX}"

    def vms(self) -> list[str]:
        """The VMs that have (or had) points here."""
        return sorted(
            p.name
            for p in (self.root / "points").iterdir()
            if p.is_dir() and points.NAME.fullmatch(p.name)
        )

    def points(self, vm: str) -> list[PointInfo]:
        """A VM's points, oldest first (only their headers are read)."""
        folder = self.root / "points" / check_name("VM", vm)
        found = []
        for path in _point_files(folder):
            with contextlib.suppress(FileNotFoundError):  # deleted while listed
                found.append(_read_info(path))
        return sorted(found, key=lambda info: (info.created, info.id))

    def point_at(self, vm: str, when: float) -> PointInfo | None:
        """The VM's latest point taken at or before `when` (what a failover to a time uses)."""
        before = [info for info in self.points(vm) if info.created <= when]
        return before[-1] if before else None

    def load(self, vm: str, point_id: str) -> Point:
        """A point with its maps; PointNotFound, PointCorrupt."""
        path = self._point_path(vm, point_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PointNotFound(f"no point {vm}/{point_id}") from None
        return points.decode(f"{vm}/{point_id}", data)

    @contextlib.contextmanager
    def open_point(self, vm: str, point_id: str) -> Iterator[PointReader]:
        """A point held open for reading: it cannot be deleted (nor its chunks collected)
        until the block ends."""
        fd, point = self._hold(vm, point_id)
        try:
            yield PointReader(self, point)
        finally:
            os.close(fd)

    def _hold(self, vm: str, point_id: str) -> tuple[int, Point]:
        """A point's file open with a shared lock, checked to be still the point's file after
        locking (a delete may have unlinked it in between), and the point read from it."""
        path = self._point_path(vm, point_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise PointNotFound(f"no point {vm}/{point_id}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                raise PointNotFound(f"no point {vm}/{point_id} (deleted)")
            with os.fdopen(os.dup(fd), "rb") as file:
                point = points.decode(f"{vm}/{point_id}", file.read())
            return fd, point
        except BaseException:
            os.close(fd)
            raise

    def delete_point(self, vm: str, point_id: str) -> None:
        """Delete a point (its chunks go at the next `gc` unless other points name them).
        PointBusy while it is read or is the parent of an increment being written."""
        path = self._point_path(vm, point_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise PointNotFound(f"no point {vm}/{point_id}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PointBusy(f"point {vm}/{point_id} is being read or written from") from None
            # Not while a collection reads the points (it waits for that phase to end): a
            # point the collection listed must still be there when it reads it, or a child
            # committed after the listing could lose the chunks it took over from it.
            with self._marking(exclusive=False):
                os.unlink(path)
            chunks.fsync_dir(path.parent)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _marking(self, exclusive: bool) -> Iterator[None]:
        """The lock of the mark phase: a collection holds it exclusively while it lists and
        reads the points, deletions hold it shared."""
        fd = os.open(self.root / "marks.lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def writer(self, vm: str) -> Writer:
        """The VM's writer: `with store.writer(vm) as w: w.write_point(...)`. WriterBusy if
        another one (in any process) is open."""
        return Writer(self, check_name("VM", vm))

    # -- reading ---------------------------------------------------------------------------

    def restore(
        self, vm: str, point_id: str, disk: str, target: Path, workers: int = WORKERS
    ) -> RestoreReport:
        """Write a point's disk to `target` (see PointReader.restore)."""
        with self.open_point(vm, point_id) as reader:
            return reader.restore(disk, target, workers)

    def verify_point(
        self, vm: str, point_id: str, workers: int = WORKERS, quarantine: bool = False
    ) -> VerifyReport:
        """Re-hash every chunk the point needs (each once); report missing and corrupt ones.
        With `quarantine`, corrupt chunks are moved aside (ChunkDir.quarantine)."""
        started = time.monotonic()
        report = VerifyReport(points_checked=1)
        with self.open_point(vm, point_id) as reader:
            names = sorted(reader.point.names())
            self._check_chunks(names, report, workers, quarantine)
        report.seconds = time.monotonic() - started
        return report

    def verify(self, workers: int = WORKERS, quarantine: bool = False) -> VerifyReport:
        """The whole store: every point file against its checksum, every chunk file against
        its name (each read once), every chunk a point names present."""
        started = time.monotonic()
        report = VerifyReport()
        named: set[bytes] = set()
        for vm in self.vms():
            for path in _point_files(self.root / "points" / vm):
                where = f"{vm}/{path.name.removesuffix(points.SUFFIX)}"
                try:
                    point = points.decode(where, path.read_bytes())
                except FileNotFoundError:
                    continue
                except PointCorrupt as exc:
                    report.bad_points.append(str(exc))
                    continue
                report.points_checked += 1
                named |= point.names()
        present: list[bytes] = []
        for prefix in chunks.PREFIXES:
            present.extend(name for name, _ in self.chunks.names(prefix))
        self._check_chunks(sorted(present), report, workers, quarantine)
        report.unreferenced = len(set(present) - named)
        report.missing.extend(sorted(n.hex() for n in named - set(present)))
        report.seconds = time.monotonic() - started
        return report

    def _check_chunks(
        self, names: list[bytes], report: VerifyReport, workers: int, quarantine: bool
    ) -> None:
        def one(name: bytes) -> tuple[bytes, int, str | None]:
            try:
                data = self.chunks.get(name, verify=True)
            except ChunkMissing:
                return name, 0, "missing"
            except ChunkCorrupt:
                return name, 0, "corrupt"
            return name, len(data), None

        with ThreadPoolExecutor(max(1, workers)) as pool:
            for name, size, problem in _bounded(pool, one, names, 2 * workers):
                report.chunks_checked += 1
                report.bytes_checked += size
                if problem == "missing":
                    report.missing.append(name.hex())
                elif problem == "corrupt":
                    report.corrupt.append(name.hex())
                    if quarantine and self.chunks.quarantine(name):
                        report.quarantined += 1

    # -- garbage collection ----------------------------------------------------------------

    def gc(self, margin: float = GC_MARGIN) -> GcReport:
        """Remove chunks no point names, safely while writers run (docs/dr.md, "Garbage
        collection"): GcBusy if another collection runs."""
        started_mono = time.monotonic()
        lock = os.open(self.root / "gc.lock", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise GcBusy(f"a garbage collection of {self.root} is running") from None
            started = time.time()
            # Writers running now may name chunks they touched since they began, in points
            # not yet written: the cutoff goes back to the oldest one's start. A writer
            # starting after this line touches chunks after `started`.
            cutoff = min([started, *self._running_writers()]) - margin
            named: set[bytes] = set()
            marked = temp = 0
            # Mark: no point is deleted meanwhile (delete_point waits), so every point listed
            # is read. A point committed after the listing began names chunks its writer
            # touched (after the cutoff) and chunks of its parent, which was listed and read,
            # or was itself committed after the listing began (and so on up to a listed
            # point, or a full point whose writer touched every chunk).
            with self._marking(exclusive=True):
                for vm in self.vms():
                    folder = self.root / "points" / vm
                    for path in _point_files(folder):
                        where = f"{vm}/{path.name}"
                        # A damaged point file stops the collection (PointCorrupt): which
                        # chunks it needs cannot be known, and removing them would lose it.
                        named |= points.decode(where, path.read_bytes()).names()
                        marked += 1
                    temp += _remove_old_temporaries(folder, cutoff)
            removed = freed = young = bad = 0
            for prefix in chunks.PREFIXES:
                with self.chunks.locked(prefix, exclusive=True):
                    for sub in sorted(os.listdir(self.chunks.root / prefix)):
                        folder = self.chunks.root / prefix / sub
                        if len(sub) != 2 or not folder.is_dir():
                            continue
                        for entry in os.scandir(folder):
                            info = entry.stat()
                            if chunks.is_name(entry.name):
                                if bytes.fromhex(entry.name) in named:
                                    continue
                                if info.st_mtime >= cutoff:
                                    young += 1
                                    continue
                                os.unlink(entry.path)
                                removed += 1
                                freed += info.st_size
                            elif info.st_mtime < cutoff and entry.name.endswith(chunks.TMP_SUFFIX):
                                os.unlink(entry.path)
                                temp += 1
                            elif info.st_mtime < cutoff and entry.name.endswith(chunks.BAD_SUFFIX):
                                os.unlink(entry.path)
                                bad += 1
            return GcReport(
                started=started,
                cutoff=cutoff,
                points_marked=marked,
                chunks_in_use=len(named),
                chunks_removed=removed,
                bytes_freed=freed,
                kept_young=young,
                temp_removed=temp,
                bad_removed=bad,
                seconds=time.monotonic() - started_mono,
            )
        finally:
            os.close(lock)

    def _running_writers(self) -> list[float]:
        """The start times of the writers holding their lock now."""
        starts = []
        for path in sorted((self.root / "writers").glob("*.live")):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    continue  # nobody writes: an old session's file
                except BlockingIOError:
                    pass
                raw = os.pread(fd, _START.size, 0)
                # A writer that has not yet written its start (or a short read) counts as
                # started at 0: the collection then removes nothing young, which is safe.
                starts.append(_START.unpack(raw)[0] / 1e9 if len(raw) == _START.size else 0.0)
            finally:
                os.close(fd)
        return starts

    # -- stats -----------------------------------------------------------------------------

    def stats(self, vm: str | None = None) -> Stats:
        """Sizes and ratios of the whole store, or of one VM's points (its chunks counted
        as if no other VM shared them)."""
        vms = self.vms() if vm is None else [check_name("VM", vm)]
        logical = referenced = index = count = 0
        sizes: dict[bytes, int] = {}
        for name in vms:
            for path in _point_files(self.root / "points" / name):
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                point = points.decode(f"{name}/{path.name}", data)
                count += 1
                index += len(data)
                for disk in point.disks.values():
                    logical += disk.size
                    for i, chunk in disk.stored():
                        length = disk.length(i)
                        referenced += length
                        sizes[chunk] = length
        unique = sum(sizes.values())
        stored = 0
        for chunk in sizes:
            with contextlib.suppress(FileNotFoundError):
                stored += os.stat(self.chunks.path(chunk)).st_size
        return Stats(
            vms=len([v for v in vms if any(_point_files(self.root / "points" / v))]),
            points=count,
            logical_bytes=logical,
            referenced_bytes=referenced,
            unique_bytes=unique,
            stored_bytes=stored,
            index_bytes=index,
            chunks=len(sizes),
            dedup_ratio=round(referenced / unique, 3) if unique else 1.0,
            compression_ratio=round(unique / stored, 3) if stored else 1.0,
            total_ratio=round(logical / (stored + index), 3) if stored + index else 1.0,
        )


class PointReader:
    """A point held open (Store.open_point): its chunks, a range of a disk, a restore."""

    def __init__(self, store: Store, point: Point):
        self.store = store
        self.point = point

    @property
    def info(self) -> PointInfo:
        return self.point.info

    def disk(self, name: str) -> DiskMap:
        try:
            return self.point.disks[name]
        except KeyError:
            raise InvalidArgument(
                f"point {self.info.vm}/{self.info.id} has no disk {name!r} "
                f"(it has {', '.join(sorted(self.point.disks)) or 'none'})"
            ) from None

    def read_chunk(self, disk: str, index: int, verify: bool = True) -> bytes:
        """Chunk `index` of a disk, zeros included (its full length)."""
        found = self.disk(disk)
        name = found.name(index)
        if name == chunks.ZERO:
            return bytes(found.length(index))
        return self.store.chunks.get(name, verify)

    def read(self, disk: str, offset: int, length: int, verify: bool = True) -> bytes:
        """`length` bytes of a disk from `offset` (cut at the disk's end)."""
        found = self.disk(disk)
        if offset < 0 or length < 0:
            raise InvalidArgument(f"offset {offset}, length {length}")
        end = min(offset + length, found.size)
        parts = []
        position = offset
        while position < end:
            index = position // found.chunk_size
            data = self.read_chunk(disk, index, verify)
            start = position - index * found.chunk_size
            piece = data[start : start + end - position]
            parts.append(piece)
            position += len(piece)
        return b"".join(parts)

    def restore(
        self, disk: str, target: Path, workers: int = WORKERS, verify: bool = True
    ) -> RestoreReport:
        """Write the disk to `target`: a regular file (made or replaced, sparse: zero chunks
        are holes) or a block device at least as large (zero chunks are zeroed, with
        BLKZEROOUT where the device has it). Each distinct chunk is read once and, with
        `verify`, re-hashed: a damaged chunk stops the restore (ChunkCorrupt) instead of
        landing in a VM's disk. The target is fsync'ed before this returns."""
        started = time.monotonic()
        found = self.disk(disk)
        target = Path(target)
        try:
            device = stat.S_ISBLK(os.stat(target).st_mode)
        except FileNotFoundError:
            device = False
        places: dict[bytes, list[int]] = {}
        zero_runs: list[tuple[int, int]] = []
        zero_bytes = 0
        for index, name in found.entries():
            if name == chunks.ZERO:
                start, length = index * found.chunk_size, found.length(index)
                zero_bytes += length
                if zero_runs and sum(zero_runs[-1]) == start:
                    zero_runs[-1] = (zero_runs[-1][0], zero_runs[-1][1] + length)
                else:
                    zero_runs.append((start, length))
            else:
                places.setdefault(name, []).append(index)
        flags = os.O_WRONLY | os.O_CLOEXEC | (0 if device else os.O_CREAT)
        fd = os.open(target, flags, 0o600)
        try:
            if device:
                capacity = os.lseek(fd, 0, os.SEEK_END)
                if capacity < found.size:
                    raise InvalidArgument(
                        f"{target} holds {capacity} bytes, the disk needs {found.size}"
                    )
                for start, length in zero_runs:
                    _zero_range(fd, start, length)
            else:
                os.ftruncate(fd, 0)  # whatever the file held goes: its holes are zeros
                os.ftruncate(fd, found.size)

            def one(item: tuple[bytes, list[int]]) -> int:
                name, indexes = item
                data = self.store.chunks.get(name, verify)
                for index in indexes:
                    _write_at(fd, data, index * found.chunk_size)
                return len(data) * len(indexes)

            written = 0
            with ThreadPoolExecutor(max(1, workers)) as pool:
                for count in _bounded(pool, one, places.items(), 2 * workers):
                    written += count
            os.fsync(fd)
        finally:
            os.close(fd)
        return RestoreReport(
            disk=disk,
            size=found.size,
            chunks_read=len(places),
            bytes_written=written,
            zero_bytes=zero_bytes,
            seconds=time.monotonic() - started,
        )


class Writer:
    """Writes a VM's points; one at a time per VM (its lock is held from `__enter__` to
    `__exit__`). Changed chunks are hashed, compressed and stored on `workers` threads."""

    def __init__(self, store: Store, vm: str):
        self.store = store
        self.vm = vm
        self._fd: int | None = None
        self._live = -1
        self._dirs: set[Path] = set()
        self._counting = threading.Lock()
        # Chunks this writer wrote (not found in the store already), and their bytes.
        self.chunks_written = 0
        self.bytes_written = 0

    def __enter__(self) -> Writer:
        folder = self.store.root / "writers"
        fd = os.open(folder / f"{self.vm}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WriterBusy(f"another writer is writing points of VM {self.vm}") from None
        # The file a collection looks at is another one: its look (a shared lock taken and
        # dropped at once) must never make a writer's own lock fail. Only this writer locks
        # it exclusively, so waiting for it waits only for such a look.
        live = os.open(folder / f"{self.vm}.live", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(live, fcntl.LOCK_EX)
        # Taken after the lock: a collection that saw the file unlocked began before this,
        # and so before any chunk this writer touches.
        os.pwrite(live, _START.pack(time.time_ns()), 0)
        self._fd, self._live = fd, live
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._live)
            os.close(self._fd)
            self._fd = None

    def _check_open(self) -> None:
        if self._fd is None:
            raise DRError("a Writer is used inside `with store.writer(vm) as writer:`")

    def write_point(
        self,
        disks: Mapping[str, Path],
        consistency: str = "crash",
        created: float | None = None,
        parent: str | None = None,
        workers: int = WORKERS,
    ) -> PointInfo:
        """A full point from images: each disk (a file or a block device) read whole, its
        chunks stored unless the store has them already. Holes of sparse files are not read.
        `parent` is only recorded (what this point followed), nothing is taken from it."""
        self._check_open()
        if not disks:
            raise InvalidArgument("a point needs at least one disk")
        maps = {}
        for name, source in disks.items():
            check_name("disk", name)
            maps[name] = self._store_image(Path(source), workers)
        return self._commit(maps, consistency, created, parent)

    def write_increment(
        self,
        parent: str,
        changed: Mapping[str, Mapping[int, bytes]],
        consistency: str = "crash",
        created: float | None = None,
        sizes: Mapping[str, int] | None = None,
        workers: int = WORKERS,
    ) -> PointInfo:
        """A point made of `parent` (a point of this VM) with the chunks `changed` replaced:
        {disk: {chunk index: its whole new content}}; disks not named are the parent's. A disk
        in `sizes` is resized first (chunks past its old end read as zeros). The new point's
        map is complete: it does not depend on the parent once written. The parent cannot be
        deleted while this runs."""
        self._check_open()
        fd, base = self.store._hold(self.vm, check_name("point", parent))
        try:
            sizes = dict(sizes or {})
            unknown = (set(changed) | set(sizes)) - set(base.disks)
            if unknown:
                raise InvalidArgument(
                    f"point {self.vm}/{parent} has no disk {', '.join(sorted(unknown))}"
                )
            maps = {}
            for name, disk in base.disks.items():
                size = sizes.get(name, disk.size)
                if size < 0:
                    raise InvalidArgument(f"disk {name}: size {size}")
                news = changed.get(name, {})
                shape = DiskMap(
                    size, disk.chunk_size, bytes(_count(size, disk.chunk_size) * chunks.DIGEST_SIZE)
                )
                for index, data in news.items():
                    if not 0 <= index < shape.count:
                        raise InvalidArgument(
                            f"disk {name}: chunk {index} of a disk of {shape.count} chunks"
                        )
                    if len(data) != shape.length(index):
                        raise InvalidArgument(
                            f"disk {name}: chunk {index} of {len(data)} bytes, "
                            f"not {shape.length(index)}"
                        )
                last = disk.count - 1
                if size > disk.size and disk.size % disk.chunk_size and last not in news:
                    # The old last chunk was short: grown, it must be whole (zeros after).
                    name_ = disk.name(last)
                    if name_ != chunks.ZERO:
                        old = self.store.chunks.get(name_)
                        news = {**news, last: old + bytes(shape.length(last) - len(old))}
                names = self._store_chunks(news.items(), workers)
                maps[name] = disk.changed(names, size)
            return self._commit(maps, consistency, created, parent)
        finally:
            os.close(fd)

    def write_chunks(
        self,
        sizes: Mapping[str, int],
        changed: Mapping[str, Iterable[tuple[int, bytes]]],
        parent: str | None = None,
        consistency: str = "crash",
        created: float | None = None,
        labels: Mapping[str, str] | None = None,
        workers: int = WORKERS,
    ) -> PointInfo:
        """A point from chunks given as a stream (what replication reads from a VM's disks):
        each disk of `sizes` is `parent`'s (resized to its size) or, without a parent, all
        zeros, with the chunks `changed` yields, (index, whole content), stored as they
        come, so that the stream is never held in memory. With a parent, the disks must be
        the parent's; a disk that shrinks to a cut last chunk must give that chunk. An
        exception raised by a stream (a failed read, a caller's cancellation) stops the
        write: no point is made (the chunks already stored go at a GC unless named)."""
        self._check_open()
        if not sizes:
            raise InvalidArgument("a point needs at least one disk")
        unknown = set(changed) - set(sizes)
        if unknown:
            raise InvalidArgument(f"chunks of disks not in the point: {', '.join(sorted(unknown))}")
        held = -1
        base: Point | None = None
        if parent is not None:
            held, base = self.store._hold(self.vm, check_name("point", parent))
        try:
            if base is not None and set(base.disks) != set(sizes):
                raise InvalidArgument(
                    f"point {self.vm}/{parent} has the disks {sorted(base.disks)}, "
                    f"not {sorted(sizes)}"
                )
            maps = {}
            for name, size in sizes.items():
                check_name("disk", name)
                if size < 0:
                    raise InvalidArgument(f"disk {name}: size {size}")
                if base is not None:
                    start = base.disks[name]
                else:
                    count = _count(size, self.store.chunk_size)
                    start = DiskMap(size, self.store.chunk_size, bytes(count * chunks.DIGEST_SIZE))
                shape = DiskMap(
                    size,
                    start.chunk_size,
                    bytes(_count(size, start.chunk_size) * chunks.DIGEST_SIZE),
                )

                def checked(
                    items: Iterable[tuple[int, bytes]], shape: DiskMap = shape, disk: str = name
                ) -> Iterator[tuple[int, bytes]]:
                    for index, data in items:
                        if not 0 <= index < shape.count:
                            raise InvalidArgument(
                                f"disk {disk}: chunk {index} of a disk of {shape.count} chunks"
                            )
                        if len(data) != shape.length(index):
                            raise InvalidArgument(
                                f"disk {disk}: chunk {index} of {len(data)} bytes, "
                                f"not {shape.length(index)}"
                            )
                        yield index, data

                names = self._store_chunks(checked(changed.get(name, ())), workers)
                maps[name] = start.changed(names, size)
            return self._commit(maps, consistency, created, parent, labels)
        finally:
            if held >= 0:
                os.close(held)

    def _store_one(self, data: bytes) -> bytes:
        if chunks.is_zero(data):
            return chunks.ZERO
        name = chunks.digest(data)
        written, folders = self.store.chunks.put(name, data, self.store.level)
        with self._counting:
            self._dirs.update(folders)
            if written:
                self.chunks_written += 1
                self.bytes_written += len(data)
        return name

    def _store_chunks(self, items: Iterable[tuple[int, bytes]], workers: int) -> dict[int, bytes]:
        def one(item: tuple[int, bytes]) -> tuple[int, bytes]:
            return item[0], self._store_one(item[1])

        with ThreadPoolExecutor(max(1, workers)) as pool:
            return dict(_bounded(pool, one, items, 2 * workers))

    def _store_image(self, source: Path, workers: int) -> DiskMap:
        chunk_size = self.store.chunk_size
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            regular = stat.S_ISREG(os.fstat(fd).st_mode)

            def pieces() -> Iterator[tuple[int, bytes]]:
                for index in range(_count(size, chunk_size)):
                    offset = index * chunk_size
                    length = min(chunk_size, size - offset)
                    if regular and _hole(fd, offset, length):
                        yield index, b""
                    else:
                        yield index, _read_at(fd, offset, length)

            def one(item: tuple[int, bytes]) -> tuple[int, bytes]:
                index, data = item
                return index, chunks.ZERO if not data else self._store_one(data)

            table = bytearray(_count(size, chunk_size) * chunks.DIGEST_SIZE)
            with ThreadPoolExecutor(max(1, workers)) as pool:
                for index, name in _bounded(pool, one, pieces(), 2 * workers):
                    table[index * chunks.DIGEST_SIZE : (index + 1) * chunks.DIGEST_SIZE] = name
            return DiskMap(size, chunk_size, bytes(table))
        finally:
            os.close(fd)

    def _commit(
        self,
        maps: dict[str, DiskMap],
        consistency: str,
        created: float | None,
        parent: str | None,
        labels: Mapping[str, str] | None = None,
    ) -> PointInfo:
        if consistency not in points.CONSISTENCIES:
            raise InvalidArgument(
                f"consistency {consistency!r}: one of {', '.join(points.CONSISTENCIES)}"
            )
        if parent is not None:
            check_name("point", parent)
        when = time.time() if created is None else float(created)
        info = PointInfo(
            vm=self.vm,
            id=_point_id(when),
            created=when,
            consistency=consistency,
            parent=parent,
            disks={name: m.size for name, m in maps.items()},
            labels=dict(labels or {}),
        )
        # Every chunk the point names is fsync'ed (ChunkDir.put); their directory entries
        # are made durable here, before the point that relies on them exists.
        for folder in sorted(self._dirs):
            chunks.fsync_dir(folder)
        self._dirs.clear()
        folder = self.store.root / "points" / self.vm
        new_folder = not folder.exists()
        folder.mkdir(exist_ok=True)
        if new_folder:
            chunks.fsync_dir(folder.parent)
        _write_durably(folder / f"{info.id}{points.SUFFIX}", points.encode(Point(info, maps)))
        return info


def _count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def _point_id(when: float) -> str:
    """Sortable by time and unique: `20261205T131500.123Z-1a2b3c`."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when))
    return f"{stamp}.{int(when * 1000) % 1000:03d}Z-{secrets.token_hex(3)}"


def _point_files(folder: Path) -> list[Path]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return [
        folder / n for n in sorted(names) if n.endswith(points.SUFFIX) and not n.startswith(".")
    ]


def _read_info(path: Path) -> PointInfo:
    with open(path, "rb") as file:
        header, _ = points.parse_header(str(path), file.read(points.PREAMBLE), file.read)
    return points.info_of(str(path), header)


def _remove_old_temporaries(folder: Path, cutoff: float) -> int:
    """A crashed writer's partial point files (never a point: they have no `.point` name)."""
    removed = 0
    for name in os.listdir(folder):
        if name.startswith(".") and name.endswith(chunks.TMP_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                if os.stat(folder / name).st_mtime < cutoff:
                    os.unlink(folder / name)
                    removed += 1
    return removed


def _write_durably(path: Path, data: bytes) -> None:
    """`data` as `path`, all or nothing, and durable (file and directory fsync'ed)."""
    chunks.write_whole(path, data)
    chunks.fsync_dir(path.parent)


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done


def _read_at(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise DRError(f"source ended at {offset + len(data)}, {length - len(data)} short")
        data += more
    return data


def _hole(fd: int, offset: int, length: int) -> bool:
    """Whether [offset, offset + length) of a regular file is all hole (reads as zeros)."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) >= offset + length
    except OSError as exc:  # ENXIO: nothing but holes from offset on; else: cannot tell
        return exc.errno == errno.ENXIO


def _zero_range(fd: int, start: int, length: int) -> None:
    try:
        fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", start, length))
        return
    except OSError:
        pass
    zeros = bytes(min(length, chunks.CHUNK_SIZE))
    end = start + length
    while start < end:
        piece = zeros[: min(len(zeros), end - start)]
        _write_at(fd, piece, start)
        start += len(piece)
