"""Chunks: the pieces a disk is cut into, named by their hash, compressed, one file each.

A chunk's name is the BLAKE3 hash (32 bytes) of its uncompressed content: equal content is
stored once, whichever VM, disk or point it comes from, and a chunk proves its own integrity
(verification re-hashes the content and compares it with the name). An all-zero chunk is
never stored: maps say ZERO instead of a hash.

A chunk file is a 12-byte header (magic `HRNC`, format 1, encoding, the raw length) and the
payload: the content compressed with zstd, or the content itself where zstd saves less than
1/64 of it (random or already compressed data: storing it raw costs nothing to read back).

Files live at `chunks/ab/cd/<64 hex digits>`: two levels of 256 directories keep any one
directory small (a 100 TiB store of 4 MiB chunks has ~400 files a directory). A chunk is
written to a temporary name in its directory, fsync'ed and renamed: a name never holds half
a chunk, whatever crashes when; a temporary file left by a crash is removed by the next
garbage collection.

Garbage collection and writers meet on a lock per top-level directory (`chunks/ab/.lock`,
flock): a writer holds it shared while it checks whether its chunk exists and either touches
it (sets its mtime to now) or writes it; the collector holds it exclusively while it sweeps
that directory. So a chunk a writer decided to reuse is either touched before the collector
looks at it (and kept: it is younger than the collection's cutoff) or was removed before the
writer looked (and is written again). docs/dr.md, "Garbage collection", has the whole
argument.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import blake3
import zstandard

from heron.dr.errors import ChunkCorrupt, ChunkMissing

# 4 MiB, as Proxmox Backup Server's fixed index for VM images: large enough that a chunk's
# fixed costs (a file, an fsync, a lock, a map entry: 8 KiB of map per GiB of disk) vanish
# against its bytes and restore and verify stream at disk speed; small enough that an
# increment of a few scattered writes stays small and that clones of one image share most
# of their chunks. The price is write amplification of small random writes (a 4 KiB write
# costs a 4 MiB chunk in the next increment); a store can be made with a smaller size.
CHUNK_SIZE = 4 << 20
DIGEST_SIZE = 32
ZERO = bytes(DIGEST_SIZE)  # a map's entry for an all-zero chunk: nothing is stored for it
# zstd level 1: about 3x as fast as level 3 on this machine (820 against 290 MB/s on mixed
# data), for a few per cent of size; restore speed is the same (decompression barely depends
# on the level).
LEVEL = 1

MAGIC = b"HRNC"
FORMAT = 1
ENCODING_RAW = 0
ENCODING_ZSTD = 1
_HEADER = struct.Struct("<4sBBHI")  # magic, format, encoding, reserved, raw length
HEADER_SIZE = _HEADER.size
PREFIXES = [f"{i:02x}" for i in range(256)]
TMP_SUFFIX = ".tmp"
BAD_SUFFIX = ".bad"


def digest(data: bytes | bytearray | memoryview) -> bytes:
    """A chunk's name: BLAKE3 of its content (releases the GIL: threads hash in parallel)."""
    return blake3.blake3(data).digest()


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    if len(data) == CHUNK_SIZE:
        return data == _ZEROS
    return data == bytes(len(data))


_ZEROS = bytes(CHUNK_SIZE)


class _Codecs(threading.local):
    """zstd contexts are not thread-safe: one pair per thread."""

    def __init__(self) -> None:
        self.compressors: dict[int, zstandard.ZstdCompressor] = {}
        self.decompressor = zstandard.ZstdDecompressor()

    def compressor(self, level: int) -> zstandard.ZstdCompressor:
        found = self.compressors.get(level)
        if found is None:
            found = self.compressors[level] = zstandard.ZstdCompressor(level=level)
        return found


_codecs = _Codecs()


def encode(data: bytes, level: int = LEVEL) -> bytes:
    """The file content of a chunk holding `data`: compressed unless that saves too little."""
    packed = _codecs.compressor(level).compress(data)
    if len(packed) < len(data) - len(data) // 64:
        return _HEADER.pack(MAGIC, FORMAT, ENCODING_ZSTD, 0, len(data)) + packed
    return _HEADER.pack(MAGIC, FORMAT, ENCODING_RAW, 0, len(data)) + data


def decode(name: bytes, blob: bytes) -> bytes:
    """The content of chunk file `blob` (of chunk `name`, for the errors); ChunkCorrupt if its
    header or payload is damaged. The content's hash is not checked here (see `check`)."""
    if len(blob) < HEADER_SIZE:
        raise ChunkCorrupt(name, f"{len(blob)} bytes, shorter than a header")
    magic, version, encoding, _, length = _HEADER.unpack_from(blob)
    if magic != MAGIC or version != FORMAT:
        raise ChunkCorrupt(name, "not a chunk file of format 1")
    payload = memoryview(blob)[HEADER_SIZE:]
    if encoding == ENCODING_RAW:
        data = bytes(payload)
    elif encoding == ENCODING_ZSTD:
        try:
            data = _codecs.decompressor.decompress(payload, max_output_size=length)
        except zstandard.ZstdError as exc:
            raise ChunkCorrupt(name, f"zstd: {exc}") from None
    else:
        raise ChunkCorrupt(name, f"unknown encoding {encoding}")
    if len(data) != length:
        raise ChunkCorrupt(name, f"{len(data)} bytes where the header says {length}")
    return data


def check(name: bytes, data: bytes) -> None:
    """ChunkCorrupt unless `data` hashes to `name`."""
    if digest(data) != name:
        raise ChunkCorrupt(name, "content does not match its hash")


def is_name(filename: str) -> bool:
    return len(filename) == 2 * DIGEST_SIZE and all(c in "0123456789abcdef" for c in filename)


class ChunkDir:
    """The `chunks/` directory of a store: where each chunk lives, putting and getting them,
    and the per-prefix locks garbage collection and writers share."""

    def __init__(self, root: Path):
        self.root = root

    @staticmethod
    def make(root: Path) -> None:
        """The 256 top-level directories and their lock files (made once, with the store)."""
        for prefix in PREFIXES:
            (root / prefix).mkdir(parents=True, exist_ok=True)
            (root / prefix / ".lock").touch()

    def path(self, name: bytes) -> Path:
        text = name.hex()
        return self.root / text[:2] / text[2:4] / text

    @contextlib.contextmanager
    def locked(self, prefix: str, exclusive: bool) -> Iterator[None]:
        """The lock of a top-level directory. flock locks belong to an open file description,
        so every holder opens the file itself: two threads never share (and release) one."""
        fd = os.open(self.root / prefix / ".lock", os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def put(self, name: bytes, data: bytes, level: int = LEVEL) -> tuple[bool, list[Path]]:
        """Store chunk `name` holding `data` unless it is there already, in which case its
        mtime is set to now (garbage collection keeps chunks younger than its cutoff).
        Returns whether it was written and the directories whose entries must be made
        durable (fsync'ed) before a point names it: its own, and its parent if that entry
        was made now. The chunk file is fsync'ed before it takes its name."""
        path = self.path(name)
        with self.locked(path.parent.parent.name, exclusive=False):
            try:
                os.utime(path)
                return False, [path.parent]
            except FileNotFoundError:
                pass
            folders = [path.parent]
            try:
                path.parent.mkdir()
                folders.append(path.parent.parent)
            except FileExistsError:
                pass
            write_whole(path, encode(data, level))
            return True, folders

    def get(self, name: bytes, verify: bool = True) -> bytes:
        """The content of chunk `name`: ChunkMissing, or ChunkCorrupt (with `verify`, also
        when it does not hash to its name)."""
        try:
            with open(self.path(name), "rb") as file:
                blob = file.read()
        except FileNotFoundError:
            raise ChunkMissing(name) from None
        data = decode(name, blob)
        if verify:
            check(name, data)
        return data

    def quarantine(self, name: bytes) -> bool:
        """Move a corrupt chunk out of its name (to `<name>.bad`, kept for a post-mortem until
        the next garbage collection), so that the next writer holding its content stores it
        anew instead of reusing the damaged one. False if it was gone."""
        path = self.path(name)
        with self.locked(path.parent.parent.name, exclusive=True):
            try:
                os.rename(path, path.with_name(path.name + BAD_SUFFIX))
            except FileNotFoundError:
                return False
        return True

    def names(self, prefix: str) -> Iterator[tuple[bytes, os.stat_result]]:
        """Every chunk under a top-level directory, with its stat."""
        for sub in _listdir(self.root / prefix):
            if len(sub) != 2:
                continue
            for entry in _scandir(self.root / prefix / sub):
                if is_name(entry.name):
                    with contextlib.suppress(FileNotFoundError):
                        yield bytes.fromhex(entry.name), entry.stat()


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _scandir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_whole(path: Path, data: bytes) -> None:
    """`data` as `path`, all or nothing: written under a temporary name of its own (which
    garbage collection recognises, `TMP_SUFFIX`), fsync'ed, then renamed. The directory's
    entry is the caller's to make durable."""
    partial = path.parent / f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
