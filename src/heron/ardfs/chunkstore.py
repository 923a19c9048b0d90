"""A chunk store: 4 MiB chunks of volumes kept as files in one directory (one disk).

Layout under the store's root:
    volumes/<volume id>/<chunk number, 16 hex digits>      the chunk's bytes, sparse
    volumes/<volume id>/<chunk number>.sum                 one CRC-32 per 4 KiB sector, and
                                                           for an EC parity chunk its mark
    volumes/<volume id>/epoch                              the newest owner epoch seen

An absent chunk reads as zeroes (thin provisioning). Writes go to the page cache and become
durable on `sync` (fdatasync of every chunk written since) or at once with `durable=True`.
The checksum table is written after the data: a crash between the two leaves sectors whose
checksum does not match, which read as an error (and are repaired from another copy), never as
wrong data.

The parity chunk of an erasure-coded stripe also keeps a mark of which data shards of its
stripe the volume holds (`Held`), eight bytes after the checksums in the same file: the writes
that change the parity say how the mark changes, so it is as current and as durable as the
parity itself. With one disk of a stripe not answering, the mark tells whether its data shard
was ever written (see erasure.py). A parity written by a writer that does not say (an older
heron-io) loses its mark: unknown, never a wrong answer.

The methods are synchronous and meant to be called on the event loop for page-cache I/O
(a thread hop per 4 KiB request costs more than the copy); `sync` is the one that waits for
the disk, and callers run it in a thread.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import ctypes.util
import errno
import mmap
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from heron.ardfs.checksum import (
    CHUNK_SIZE,
    SECTOR,
    SECTORS,
    ZERO_CRC,
    bad_sectors,
    sector_span,
    sector_sums,
)
from heron.ardfs.degraded import DegradedLog
from heron.ardfs.volume import ChecksumError, FencedError, VolumeError

# Large writes go to the page cache in pieces of this size. The kernel sizes a new page-cache
# folio after the write that creates it: one 4 MiB pwrite makes 2 MiB folios, and ext4 (6.16+,
# buffer heads) then walks all 512 block heads of a folio on every later 4 KiB write into it.
# Measured here with RF=3, 4 KiB random writes: 35-54 % of each heron-io's CPU went there, and
# 64 KiB pieces doubled the IOPS while 4 MiB sequential writes kept their speed.
PIECE = 64 * 1024

# How many chunks keep their files open; beyond that the least recently used are closed.
OPEN_CHUNKS = 1024

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Give the range's space back to the filesystem; it reads as zeroes afterwards."""
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    if _libc.fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        if code != errno.EOPNOTSUPP:
            raise OSError(code, os.strerror(code))
        os.pwrite(fd, bytes(length), offset)


TABLE = SECTORS * 4  # the checksum table's bytes
MARK_MAGIC = 0x444C4548  # "HELD": the two words after the table are a mark
MARKED_TABLE = TABLE + 8  # a table followed by a mark: magic u32, data shards held u32


@dataclass(frozen=True)
class Held:
    """How a write to an EC parity chunk changes its mark of the data shards written: those
    of `add` are written now, those of `remove` deleted (a whole-shard trim). `exact` says
    `add` is the whole truth (a rebuilt or moved parity): it gives a mark to a parity that
    had none."""

    add: int = 0
    remove: int = 0
    exact: bool = False

    def apply(self, held: int) -> int:
        return self.add if self.exact else (held & ~self.remove) | self.add


@dataclass
class OpenChunk:
    data_fd: int
    sum_fd: int
    table: mmap.mmap  # the .sum file, shared-mapped: updating a CRC is a store, not a syscall
    sums: memoryview  # the table as SECTORS unsigned 32-bit CRCs
    mark: memoryview | None = None  # [magic, data shards held] of a parity chunk
    dirty: bool = False

    def held(self) -> int | None:
        """The data shards the mark says are written; None: no mark (unknown)."""
        if self.mark is None or self.mark[0] != MARK_MAGIC:
            return None
        return int(self.mark[1])

    def set_held(self, held: Held | None) -> None:
        """Change the mark as a write says; a write that says nothing makes it unknown."""
        if self.mark is None:
            return
        known = self.held()
        if held is None or (known is None and not held.exact):
            self.mark[0] = 0
            return
        self.mark[1] = held.apply(known or 0)
        self.mark[0] = MARK_MAGIC

    def close(self) -> None:
        self.sums.release()
        if self.mark is not None:
            self.mark.release()
        self.table.close()
        os.close(self.data_fd)
        os.close(self.sum_fd)


@dataclass
class ChunkStore:
    """One directory's chunks. Not safe for concurrent use from several processes."""

    root: Path
    open_chunks: int = OPEN_CHUNKS  # each open chunk holds two descriptors and a mapping
    _open: OrderedDict[tuple[str, int], OpenChunk] = field(default_factory=OrderedDict)
    _epochs: dict[str, int] = field(default_factory=dict)
    _stale: dict[str, DegradedLog] = field(default_factory=dict)

    def __post_init__(self) -> None:
        (self.root / "volumes").mkdir(parents=True, exist_ok=True)

    # -- paths and open files ----------------------------------------------------------------

    def volume_dir(self, volume: str) -> Path:
        if not volume or "/" in volume or volume.startswith("."):
            raise VolumeError(f"bad volume id {volume!r}", errno.EINVAL)
        return self.root / "volumes" / volume

    def chunk_path(self, volume: str, chunk: int) -> Path:
        return self.volume_dir(volume) / f"{chunk:016x}"

    def _get(self, volume: str, chunk: int, create: bool, marked: bool = False) -> OpenChunk | None:
        """The open chunk; `create` makes it if absent, with a mark (empty) if `marked`."""
        key = (volume, chunk)
        found = self._open.get(key)
        if found is not None:
            self._open.move_to_end(key)
            return found
        path = self.chunk_path(volume, chunk)
        sum_path = path.with_suffix(".sum")
        try:
            data_fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            if not create:
                return None
            path.parent.mkdir(parents=True, exist_ok=True)
            # The checksum table first: a data file never exists without one.
            fd = os.open(sum_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            empty = array.array("I", [ZERO_CRC]) * SECTORS
            if marked:
                empty.extend([MARK_MAGIC, 0])
            os.pwrite(fd, empty, 0)
            os.close(fd)
            data_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.ftruncate(data_fd, CHUNK_SIZE)
        try:
            sum_fd = os.open(sum_path, os.O_RDWR)
            length = os.fstat(sum_fd).st_size
            if length not in (TABLE, MARKED_TABLE):
                os.close(sum_fd)
                raise ChecksumError(f"checksum table of {volume}/{chunk} is damaged")
            table = mmap.mmap(sum_fd, length)
        except BaseException:
            os.close(data_fd)
            raise
        whole = memoryview(table)
        mark = whole[TABLE:].cast("I") if length == MARKED_TABLE else None
        entry = OpenChunk(data_fd, sum_fd, table, whole[:TABLE].cast("I"), mark)
        whole.release()
        self._open[key] = entry
        while len(self._open) > self.open_chunks:
            _, old = self._open.popitem(last=False)
            # Always, not only when dirty: a sync running in a thread may have taken the dirty
            # mark already and would find the descriptor closed.
            os.fdatasync(old.data_fd)
            os.fdatasync(old.sum_fd)
            old.close()
        return entry

    # -- fencing -----------------------------------------------------------------------------

    def check_epoch(self, volume: str, epoch: int) -> None:
        """Refuse a write from an owner older than the newest one seen; remember a newer one."""
        known = self._epochs.get(volume)
        if known is None:
            try:
                known = int((self.volume_dir(volume) / "epoch").read_text())
            except FileNotFoundError:
                known = 0
            self._epochs[volume] = known
        if epoch < known:
            raise FencedError(f"volume {volume}: owner epoch {epoch} is older than {known}")
        if epoch > known:
            directory = self.volume_dir(volume)
            directory.mkdir(parents=True, exist_ok=True)
            tmp = directory / "epoch.tmp"
            with open(tmp, "w") as handle:
                handle.write(str(epoch))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, directory / "epoch")
            self._epochs[volume] = epoch

    # -- stale copies, as the owner tells them --------------------------------------------

    def stale_log(self, volume: str) -> DegradedLog:
        """The volume's stale copies as recorded here by its owner: a copy of the owner's
        degraded log on the disks that hold good copies, for a new owner to take over."""
        found = self._stale.get(volume)
        if found is None:
            found = DegradedLog(self.volume_dir(volume) / "stale.log")
            self._stale[volume] = found
        return found

    # -- the volume's placement, as first pinned ------------------------------------------

    def read_pin(self, volume: str) -> bytes:
        try:
            return (self.volume_dir(volume) / "placement.json").read_bytes()
        except FileNotFoundError:
            return b""

    def write_pin(self, volume: str, pin: bytes) -> bytes:
        """Keep `pin` unless one is already kept (the first pin wins); the pin kept."""
        kept = self.read_pin(volume)
        if kept:
            return kept
        directory = self.volume_dir(volume)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "placement.tmp"
        with open(tmp, "wb") as handle:
            handle.write(pin)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, directory / "placement.json")
        self._sync_dir(directory)
        return pin

    # -- data --------------------------------------------------------------------------------

    def exists(self, volume: str, chunk: int) -> bool:
        return (volume, chunk) in self._open or self.chunk_path(volume, chunk).exists()

    def read_into(self, volume: str, chunk: int, offset: int, view: memoryview) -> None:
        """Fill `view` with the chunk's bytes at `offset`, every sector verified."""
        _check_range(offset, len(view))
        entry = self._get(volume, chunk, create=False)
        if entry is None:
            view[:] = bytes(len(view))
            return
        first, count = sector_span(offset, len(view))
        aligned = offset % SECTOR == 0 and len(view) % SECTOR == 0
        target = view if aligned else memoryview(bytearray(count * SECTOR))
        start = first * SECTOR
        got = os.preadv(entry.data_fd, [target], start)
        if got != len(target):
            raise ChecksumError(f"chunk {volume}/{chunk} is short ({got} bytes at {start})")
        bad = bad_sectors(target, entry.sums[first : first + count], first)
        if bad:
            raise ChecksumError(f"chunk {volume}/{chunk}: checksum mismatch in sectors {bad[:8]}")
        if not aligned:
            skip = offset - start
            view[:] = target[skip : skip + len(view)]

    def write(
        self,
        volume: str,
        chunk: int,
        offset: int,
        data: memoryview,
        durable: bool,
        epoch: int = 0,
        held: Held | None = None,
    ) -> None:
        """Store `data` at `offset` in the chunk, creating it if needed; `held`: how the mark
        of a parity chunk changes (see Held; None: unknown from now on)."""
        _check_range(offset, len(data))
        self.check_epoch(volume, epoch)
        entry = self._get(volume, chunk, create=True, marked=held is not None)
        assert entry is not None
        if entry.mark is None and held is not None and held.exact and len(data) == CHUNK_SIZE:
            # A whole parity whose mark is known (a rebuild, a move): made again with one.
            self.delete(volume, chunk)
            entry = self._get(volume, chunk, create=True, marked=True)
            assert entry is not None
        first, count = sector_span(offset, len(data))
        start = first * SECTOR
        if offset % SECTOR or len(data) % SECTOR:
            # Part of a sector: its checksum covers the whole sector, so merge with what is there.
            merged = memoryview(bytearray(count * SECTOR))
            head = merged[:SECTOR]
            self.read_into(volume, chunk, start, head)
            if count > 1:
                self.read_into(volume, chunk, start + (count - 1) * SECTOR, merged[-SECTOR:])
            merged[offset - start : offset - start + len(data)] = data
            data = merged
        for at in range(0, len(data), PIECE):
            os.pwrite(entry.data_fd, data[at : at + PIECE], start + at)
        # After the data: a crash in between leaves a mismatch (an error), never wrong data.
        entry.sums[first : first + count] = memoryview(array.array("I", sector_sums(data)))
        entry.set_held(held)
        self._settle(entry, durable)

    def trim(
        self,
        volume: str,
        chunk: int,
        offset: int,
        length: int,
        durable: bool,
        epoch: int = 0,
        held: Held | None = None,
    ) -> None:
        """Make the range read as zeroes and free its space; a whole chunk is deleted, unless
        it is a parity whose mark still holds data shards (their stripe is not empty: an
        absent parity says that no data shard of it was ever written)."""
        _check_range(offset, length)
        self.check_epoch(volume, epoch)
        everything = offset == 0 and length == CHUNK_SIZE
        if everything and held is None:
            self.delete(volume, chunk)
            return
        entry = self._get(volume, chunk, create=False)
        if entry is None:
            return  # already reads as zeroes
        if everything:
            known = entry.held()
            if held is None or known is None or not held.apply(known):
                self.delete(volume, chunk)
                return
        head = min(length, (-offset) % SECTOR)
        if head:
            self.write(volume, chunk, offset, memoryview(bytes(head)), False, epoch, held)
            offset, length = offset + head, length - head
        whole = length - length % SECTOR
        if whole:
            punch_hole(entry.data_fd, offset, whole)
            first, count = offset // SECTOR, whole // SECTOR
            entry.sums[first : first + count] = memoryview(array.array("I", [ZERO_CRC]) * count)
        if length - whole:
            tail = memoryview(bytes(length - whole))
            self.write(volume, chunk, offset + whole, tail, False, epoch, held)
        entry.set_held(held)
        self._settle(entry, durable)

    def delete(self, volume: str, chunk: int) -> None:
        entry = self._open.pop((volume, chunk), None)
        if entry is not None:
            entry.close()
        path = self.chunk_path(volume, chunk)
        # Data first: a checksum table without data is harmless, data without one is not.
        for victim in (path, path.with_suffix(".sum")):
            with contextlib.suppress(FileNotFoundError):
                victim.unlink()

    def _settle(self, entry: OpenChunk, durable: bool) -> None:
        if durable:
            os.fdatasync(entry.data_fd)
            os.fdatasync(entry.sum_fd)
            entry.dirty = False
        else:
            entry.dirty = True

    def _sync_dir(self, directory: Path) -> None:
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def dirty_files(self, volume: str | None = None) -> list[int]:
        """The descriptors a sync must flush, marking their chunks clean (call on the loop)."""
        fds: list[int] = []
        for (vol, _), entry in self._open.items():
            if entry.dirty and (volume is None or vol == volume):
                fds += [entry.data_fd, entry.sum_fd]
                entry.dirty = False
        return fds

    def chunk_fds(self, volume: str, chunk: int) -> list[int]:
        """The descriptors of one open chunk, for a sync of just that chunk."""
        entry = self._open.get((volume, chunk))
        return [entry.data_fd, entry.sum_fd] if entry is not None else []

    def sync_volume_dir(self, volume: str) -> None:
        """Make created and deleted chunk files durable (blocking: run in a thread)."""
        self._sync_dir(self.volume_dir(volume))

    def sync(self, volume: str | None = None) -> None:
        """fdatasync every chunk written since the last sync (blocking: for tools and tests)."""
        for fd in self.dirty_files(volume):
            os.fdatasync(fd)
        if volume is not None:
            self._sync_dir(self.volume_dir(volume))

    # -- listing, scrubbing ------------------------------------------------------------------

    def allocated(self, volume: str, first: int, count: int) -> list[bool]:
        """Which of the chunks first..first+count-1 exist."""
        if count <= 64:
            return [self.exists(volume, first + i) for i in range(count)]
        present = set(self.chunks(volume))
        return [first + i in present for i in range(count)]

    def adopt_mark(self, volume: str, chunk: int, held: int, epoch: int = 0) -> None:
        """Give a parity its whole mark (`held`, the data shards its stripe holds), one
        written before marks too: its table grows by the mark. Not synced here: lost in a
        crash, the parity is as before, without a mark. The caller (the owner) holds the
        stripe's lock and asked its data shards. Nothing if the chunk is absent."""
        self.check_epoch(volume, epoch)
        entry = self._get(volume, chunk, create=False)
        if entry is None:
            return
        if entry.mark is None:
            entry.sums.release()
            try:
                entry.table.resize(MARKED_TABLE)  # the new words are zeroes: no mark until set
            except (BufferError, OSError) as exc:
                raise VolumeError(f"{volume}/{chunk}: no room for a mark: {exc}") from exc
            finally:
                whole = memoryview(entry.table)
                entry.sums = whole[:TABLE].cast("I")
                entry.mark = whole[TABLE:].cast("I") if len(whole) == MARKED_TABLE else None
                whole.release()
        entry.set_held(Held(add=held, exact=True))
        entry.dirty = True

    def marks(self, volume: str, first: int, count: int, step: int) -> list[int | None]:
        """The data shards the marks of chunks first, first + step, ... (count of them) say
        are written (None: the chunk is absent, or has no mark)."""
        chunks = [first + i * step for i in range(count)]
        present = set(self.chunks(volume)) if count > 64 else None
        found: list[int | None] = []
        for chunk in chunks:
            if present is not None and chunk not in present:
                found.append(None)
                continue
            entry = self._open.get((volume, chunk))
            if entry is not None:
                found.append(entry.held())
                continue
            path = self.chunk_path(volume, chunk)
            try:
                with open(path.with_suffix(".sum"), "rb") as handle:
                    handle.seek(TABLE)
                    raw = handle.read(8)
            except FileNotFoundError:
                raw = b""
            words = array.array("I", raw if len(raw) == 8 else bytes(8))
            known = words[0] == MARK_MAGIC and path.exists()
            found.append(words[1] if known else None)
        return found

    def chunks(self, volume: str) -> list[int]:
        try:
            names = os.listdir(self.volume_dir(volume))
        except FileNotFoundError:
            return []
        return sorted(int(name, 16) for name in names if len(name) == 16)

    def volumes(self) -> list[str]:
        return sorted(os.listdir(self.root / "volumes"))

    def verify(self, volume: str, chunk: int, first: int = 0, count: int = SECTORS) -> list[int]:
        """Sectors (of first..first+count-1) whose bytes no longer match their checksum.

        Synchronous on purpose: bytes and checksums are read in one step, so a write cannot
        come between them and look like corruption. The scrubber calls it a slice at a time.
        """
        entry = self._get(volume, chunk, create=False)
        if entry is None:
            return []
        data = memoryview(bytearray(count * SECTOR))
        got = os.preadv(entry.data_fd, [data], first * SECTOR)
        if got != len(data):
            return list(range(first + got // SECTOR, first + count))
        return bad_sectors(data, entry.sums[first : first + count], first)

    def abandon(self) -> None:
        """Close every file without syncing: the disk failed (a sync would fail or hang)."""
        while self._open:
            _, entry = self._open.popitem()
            with contextlib.suppress(OSError):
                entry.close()

    def close(self) -> None:
        while self._open:
            _, entry = self._open.popitem()
            if entry.dirty:
                os.fdatasync(entry.data_fd)
                os.fdatasync(entry.sum_fd)
            entry.close()


def _check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0 or offset + length > CHUNK_SIZE:
        raise VolumeError(f"range {offset}+{length} is outside a chunk", errno.EINVAL)
