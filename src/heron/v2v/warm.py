"""Warm migration's copy loop (docs/v2v.md, "Warm migration"): a full copy while the source
VM runs, then only the areas changed-block tracking reports changed since the last round,
then a cutover (the source stopped, the last delta) whose duration is measured.

The loop works on a `WarmVm`: a snapshot of all its disks at one instant gives each disk a
change id, and each disk (`ChangeSource`) answers what vSphere's QueryChangedDiskAreas gives
on that snapshot, paged as it pages, and reads the snapshot's bytes. The agent's vSphere
session is one (heron.agent.vsphere.WarmSession); `RecordedSource` here is **an equivalent
recorded source** for the unit tests: a disk image file whose writes are recorded between
rounds and answered the way CBT answers. The checks of what a source answers (areas inside
the disk, in order, not overlapping, the pages covering the disk) hold for any source.
"""

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from heron.errors import V2VError

CHUNK = 1 << 20
ALL = "*"  # the change id that asks for every allocated area (the first, full copy)


class WarmError(V2VError):
    """A source answered what a disk cannot be: the copy stops rather than miss data."""


@dataclass(frozen=True)
class ChangedArea:
    start: int
    length: int


@dataclass(frozen=True)
class DiskChangeInfo:
    """One page of QueryChangedDiskAreas: the window it covers and the changed areas in it."""

    start_offset: int
    length: int
    areas: list[ChangedArea]


class ChangeSource(Protocol):
    """One disk, as of the VM's newest snapshot."""

    capacity: int

    def changed_areas(self, since: str, start: int) -> DiskChangeInfo:
        """The areas of the current view changed since change id `since`, from `start`."""

    def read(self, offset: int, length: int) -> bytes: ...


Write = Callable[[int, bytes], None]


class WarmVm(Protocol):
    @property
    def disks(self) -> Sequence[ChangeSource]: ...

    def snapshot(self) -> list[str]:
        """Freeze a view of all disks at one instant; each disk's change id."""

    def stop(self) -> None:
        """Stop the VM at its source: nothing writes to its disks any more."""


def changed_since(source: ChangeSource, since: str) -> list[ChangedArea]:
    """Every area changed since `since`, page after page until the disk's end, checked."""
    found: list[ChangedArea] = []
    offset = 0
    while offset < source.capacity:
        page = source.changed_areas(since, offset)
        if page.start_offset != offset or page.length <= 0:
            raise WarmError(
                f"a page of changes starts at {page.start_offset} (asked {offset}) and "
                f"covers {page.length} bytes"
            )
        end = page.start_offset + page.length
        for area in page.areas:
            last = found[-1].start + found[-1].length if found else 0
            if area.length <= 0 or area.start < max(offset, last) or area.start + area.length > end:
                raise WarmError(
                    f"changed area {area.start}+{area.length} is outside its page "
                    f"{offset}..{end} or overlaps the one before"
                )
            found.append(area)
        offset = end
    if found and found[-1].start + found[-1].length > source.capacity:
        raise WarmError("a changed area ends past the disk's end")
    return found


def copy_areas(source: ChangeSource, write: Write, areas: list[ChangedArea]) -> int:
    """Copy the areas from the source's view into the target; bytes copied."""
    moved = 0
    for area in areas:
        offset, end = area.start, area.start + area.length
        while offset < end:
            data = source.read(offset, min(CHUNK, end - offset))
            if not data:
                raise WarmError(f"the source ends at {offset}, inside a changed area")
            write(offset, data)
            offset += len(data)
            moved += len(data)
    return moved


@dataclass
class Round:
    bytes: int
    seconds: float


@dataclass
class WarmReport:
    rounds: list[Round] = field(default_factory=list)  # the full copy first, then deltas
    cutover_bytes: int = 0
    cutover_seconds: float = 0.0  # source stopped → last delta written


def _copy_round(vm: WarmVm, writes: Sequence[Write], since: list[str]) -> tuple[list[str], int]:
    """Snapshot, then copy each disk's changes since its change id in `since`."""
    current = vm.snapshot()
    if len(current) != len(vm.disks):
        raise WarmError(f"the snapshot gave {len(current)} change ids for {len(vm.disks)} disks")
    moved = sum(
        copy_areas(disk, write, changed_since(disk, change))
        for disk, write, change in zip(vm.disks, writes, since, strict=True)
    )
    return current, moved


def warm_copy(
    vm: WarmVm,
    writes: Sequence[Write],
    *,
    small_enough: int,
    max_rounds: int = 8,
    between: Callable[[int, Round], None] | None = None,
) -> WarmReport:
    """Copy in full, repeat deltas until one is at most `small_enough` bytes (or
    `max_rounds` rounds were made), then stop the source and copy the last delta.
    `writes[i]` writes disk i's bytes at an offset of the target. `between(number, round)`
    runs after each round but the last (the source VM goes on writing meanwhile)."""
    report = WarmReport()
    change = [ALL] * len(vm.disks)
    for number in range(max_rounds):
        started = time.monotonic()
        change, moved = _copy_round(vm, writes, change)
        report.rounds.append(Round(moved, time.monotonic() - started))
        if (number > 0 and moved <= small_enough) or number == max_rounds - 1:
            break
        if between is not None:
            between(number, report.rounds[-1])
    started = time.monotonic()
    vm.stop()
    _, report.cutover_bytes = _copy_round(vm, writes, change)
    report.cutover_seconds = time.monotonic() - started
    return report


class RecordedSource:
    """An equivalent recorded source, named as such: a raw image file whose writes are
    recorded (`write`), answering `changed_areas` as CBT does, in pages of `page` bytes,
    rounded out to `block`-byte blocks. Change ids are the snapshots' numbers."""

    def __init__(self, path: Path, block: int = 64 << 10, page: int = 1 << 20) -> None:
        self.path = path
        self.capacity = path.stat().st_size
        self.block, self.page = block, page
        self.dirty: list[set[int]] = [set(range(-(-self.capacity // block)))]  # all, at first
        self.stopped = False

    def write(self, offset: int, data: bytes) -> None:
        """The running guest writes: recorded against the next snapshot."""
        if self.stopped:
            raise WarmError("the source VM is stopped: it writes nothing more")
        with self.path.open("r+b") as f:
            f.seek(offset)
            f.write(data)
        first, last = offset // self.block, (offset + len(data) - 1) // self.block
        self.dirty[-1].update(range(first, last + 1))

    def snapshot(self) -> str:
        self.dirty.append(set())
        return str(len(self.dirty) - 1)

    def changed_areas(self, since: str, start: int) -> DiskChangeInfo:
        # blocks written after snapshot `since`, up to the newest snapshot
        first = 0 if since == ALL else int(since)
        blocks = set().union(*self.dirty[first : len(self.dirty) - 1])
        end = min(start + self.page, self.capacity)
        areas: list[ChangedArea] = []
        for block in sorted(b for b in blocks if start <= b * self.block < end):
            low, high = block * self.block, min((block + 1) * self.block, end)
            if areas and areas[-1].start + areas[-1].length == low:
                areas[-1] = ChangedArea(areas[-1].start, high - areas[-1].start)
            else:
                areas.append(ChangedArea(low, high - low))
        return DiskChangeInfo(start, end - start, areas)

    def read(self, offset: int, length: int) -> bytes:
        with self.path.open("rb") as f:
            return os.pread(f.fileno(), length, offset)

    def stop(self) -> None:
        self.stopped = True


class RecordedVm:
    """A VM of recorded disks (`RecordedSource`), each snapshotted in turn: the same instant,
    since nothing writes to them between two of these calls."""

    def __init__(self, disks: Sequence[RecordedSource]) -> None:
        self.disks = disks

    def snapshot(self) -> list[str]:
        return [disk.snapshot() for disk in self.disks]

    def stop(self) -> None:
        for disk in self.disks:
            disk.stop()
