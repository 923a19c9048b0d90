"""One replication round into the store: a view of a VM's disks at one instant becomes a point.

The view (heron.hypervisor.qmp_replica makes one from a running QEMU) gives, per disk, its
size, its allocated extents, the extents changed since the previous point (from a dirty
bitmap), and reads. This module turns them into chunks of the store's size and writes:

* **full**: every chunk holding allocated data, read whole; the rest of the disk is zeros
  (nothing read, nothing stored). No parent.
* **incremental**: the chunks a changed extent touches, read whole, over the previous point
  (`Writer.write_chunks` with the parent): only those are sent to the store.
* **resync** (a bitmap lost or inconsistent, e.g. after QEMU crashed): every allocated chunk
  is read and hashed, and only those whose hash differs from the previous point's entry are
  sent, with zeros where the previous point had data the view no longer has. The store
  would dedup the others anyway; what a resync saves is storing and, across sites later,
  sending them.

The round reads one chunk at a time in the calling thread and hands it to the writer's
workers (hash, compress, store). `progress` is called after each chunk read, in that thread;
an exception it raises stops the round with no point written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from heron.dr import chunks
from heron.dr.errors import InvalidArgument
from heron.dr.points import DiskMap, PointInfo
from heron.dr.store import Writer

Kind = Literal["full", "incremental", "resync"]


class DiskView(Protocol):
    """One disk at the round's instant."""

    @property
    def size(self) -> int: ...

    def allocated(self) -> Iterable[tuple[int, int]]:
        """(offset, length) of the extents that may hold data (not known to read as zeros)."""

    def changed(self) -> Iterable[tuple[int, int]]:
        """(offset, length) of the extents written since the previous point."""

    def read(self, offset: int, length: int) -> bytes: ...


@dataclass
class Progress:
    disk: str
    chunks_done: int  # of this disk
    chunks_total: int  # of this disk: those to read (a resync: every allocated one)
    bytes_read: int  # of the whole round so far


@dataclass
class RoundReport:
    kind: Kind
    point: PointInfo
    chunks_read: int = 0
    bytes_read: int = 0
    chunks_sent: int = 0  # given to the store as this point's new content
    chunks_written: int = 0  # of those, not already in the store
    bytes_written: int = 0
    seconds: float = 0.0


def chunk_range(offset: int, length: int, chunk_size: int) -> range:
    """The indexes of the chunks that [offset, offset + length) touches."""
    if length <= 0:
        return range(0)
    return range(offset // chunk_size, (offset + length - 1) // chunk_size + 1)


def chunk_indexes(extents: Iterable[tuple[int, int]], chunk_size: int, size: int) -> list[int]:
    """The chunks the extents touch, in order, each once, cut at the disk's end."""
    count = -(-size // chunk_size)
    found: set[int] = set()
    for offset, length in extents:
        found.update(i for i in chunk_range(offset, length, chunk_size) if i < count)
    return sorted(found)


def chunk_length(index: int, chunk_size: int, size: int) -> int:
    return min(chunk_size, size - index * chunk_size)


def write_round(
    writer: Writer,
    views: Mapping[str, DiskView],
    kind: Kind,
    parent: str | None = None,
    created: float | None = None,
    labels: Mapping[str, str] | None = None,
    progress: Callable[[Progress], None] | None = None,
    workers: int = 2,
) -> RoundReport:
    """Write the point of one round (see the module's doc); `created` is the view's instant.
    The consistency is "crash": the disks as a power cut at that instant would leave them."""
    if kind == "full":
        if parent is not None:
            raise InvalidArgument("a full round has no parent")
    elif parent is None:
        raise InvalidArgument(f"an {kind} round needs the previous point as its parent")
    started = time.monotonic()
    store = writer.store
    chunk_size = store.chunk_size
    base = store.load(writer.vm, parent).disks if kind == "resync" and parent else {}
    counts = {"read": 0, "bytes": 0, "sent": 0}
    written_before = (writer.chunks_written, writer.bytes_written)

    def stream(name: str, view: DiskView) -> Iterator[tuple[int, bytes]]:
        size = view.size
        if kind == "incremental":
            wanted = chunk_indexes(view.changed(), chunk_size, size)
        else:
            wanted = chunk_indexes(view.allocated(), chunk_size, size)
        done = 0
        if kind == "resync":
            old = base.get(name)
            allocated = set(wanted)
            for index in range(-(-size // chunk_size)):
                length = chunk_length(index, chunk_size, size)
                if index in allocated:
                    data = view.read(index * chunk_size, length)
                    counts["read"] += 1
                    counts["bytes"] += len(data)
                    done += 1
                    if progress is not None:
                        progress(Progress(name, done, len(wanted), counts["bytes"]))
                    if _same(old, index, data):
                        continue
                    counts["sent"] += 1
                    yield index, data
                elif not _same_zero(old, index, length):
                    counts["sent"] += 1
                    yield index, bytes(length)
            return
        for index in wanted:
            data = view.read(index * chunk_size, chunk_length(index, chunk_size, size))
            counts["read"] += 1
            counts["bytes"] += len(data)
            counts["sent"] += 1
            done += 1
            if progress is not None:
                progress(Progress(name, done, len(wanted), counts["bytes"]))
            yield index, data

    sizes = {name: view.size for name, view in views.items()}
    changed = {name: stream(name, view) for name, view in views.items()}
    point = writer.write_chunks(
        sizes,
        changed,
        parent=None if kind == "full" else parent,
        consistency="crash",
        created=created,
        labels=labels,
        workers=workers,
    )
    return RoundReport(
        kind=kind,
        point=point,
        chunks_read=counts["read"],
        bytes_read=counts["bytes"],
        chunks_sent=counts["sent"],
        chunks_written=writer.chunks_written - written_before[0],
        bytes_written=writer.bytes_written - written_before[1],
        seconds=time.monotonic() - started,
    )


def _same(old: DiskMap | None, index: int, data: bytes) -> bool:
    """Whether the previous point held exactly `data` as chunk `index`."""
    if old is None or index >= old.count or old.length(index) != len(data):
        return False
    name = chunks.ZERO if chunks.is_zero(data) else chunks.digest(data)
    return old.name(index) == name


def _same_zero(old: DiskMap | None, index: int, length: int) -> bool:
    if old is None:
        return True  # a disk the parent lacks cannot be resynced (write_chunks refuses it)
    return index < old.count and old.length(index) == length and old.name(index) == chunks.ZERO
