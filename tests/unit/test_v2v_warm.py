"""Warm migration's copy loop against an equivalent recorded source (not VMware, not the
vcsim stand-in: a file whose writes are recorded and answered as changed-block tracking
answers): full copy, deltas while the guest writes, cutover; bad answers stop the copy."""

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from heron.v2v.warm import (
    ALL,
    ChangedArea,
    DiskChangeInfo,
    RecordedSource,
    RecordedVm,
    WarmError,
    changed_since,
    warm_copy,
)

MIB = 1 << 20


def disk(tmp_path: Path, size: int = 4 * MIB) -> Path:
    path = tmp_path / "source.raw"
    path.write_bytes(random.Random(1).randbytes(size))
    return path


def target_of(tmp_path: Path, size: int) -> tuple[Path, Callable[[int, bytes], None]]:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "target.raw"
    path.write_bytes(b"\0" * size)

    def write(offset: int, data: bytes) -> None:
        with path.open("r+b") as f:
            f.seek(offset)
            f.write(data)

    return path, write


def test_deltas_then_cutover_leave_the_target_equal(tmp_path: Path) -> None:
    source = RecordedSource(disk(tmp_path), block=64 << 10, page=MIB)
    target, write = target_of(tmp_path, source.capacity)
    guest = random.Random(2)
    seen: list[int] = []

    def writes(number: int, _: object) -> None:  # the guest writes less each round
        seen.append(number)
        for _ in range(max(8 >> number, 1)):
            offset = guest.randrange(0, source.capacity - 4096)
            source.write(offset, guest.randbytes(4096))

    report = warm_copy(RecordedVm([source]), [write], small_enough=2 * (64 << 10), between=writes)
    assert report.rounds[0].bytes == source.capacity  # the full copy
    assert all(r.bytes < source.capacity for r in report.rounds[1:])
    assert seen == list(range(len(report.rounds) - 1))  # none after the last round
    assert target.read_bytes() == source.path.read_bytes()
    assert source.stopped and report.cutover_seconds >= 0
    with pytest.raises(WarmError, match="stopped"):
        source.write(0, b"x")


def test_two_disks_at_one_instant_and_writes_before_the_cutover(tmp_path: Path) -> None:
    """Two disks, the rounds bounded: what the guest writes after the last precopy round
    is copied at the cutover, once the source is stopped."""
    first = RecordedSource(disk(tmp_path), page=MIB)
    (tmp_path / "second").mkdir()
    second = RecordedSource(disk(tmp_path / "second", 2 * MIB), page=MIB)
    targets = [target_of(tmp_path / "t1", first.capacity), target_of(tmp_path, second.capacity)]
    vm = RecordedVm([first, second])
    stop = vm.stop

    def stopped_after_a_write() -> None:
        second.write(MIB + 5, b"last words")
        stop()

    vm.stop = stopped_after_a_write  # type: ignore[method-assign]

    def writes(number: int, _: object) -> None:
        first.write(number * 4096, b"a" * 100)
        second.write(number * 8192, b"b" * 100)

    report = warm_copy(vm, [w for _, w in targets], small_enough=0, max_rounds=3, between=writes)
    assert len(report.rounds) == 3
    assert report.rounds[0].bytes == first.capacity + second.capacity
    assert report.rounds[1].bytes == 2 * (64 << 10)  # a block of each disk
    assert report.rounds[2].bytes == 2 * (64 << 10)
    assert report.cutover_bytes == 64 << 10  # only the write made as the source stopped
    assert targets[0][0].read_bytes() == first.path.read_bytes()
    assert targets[1][0].read_bytes() == second.path.read_bytes()


def test_pages_cover_the_disk_and_merge_adjacent_blocks(tmp_path: Path) -> None:
    source = RecordedSource(disk(tmp_path, 3 * MIB), block=64 << 10, page=MIB)
    first = source.snapshot()
    source.write(MIB - 10, b"y" * 20)  # straddles a page
    source.snapshot()
    areas = changed_since(source, first)
    assert areas == [ChangedArea(MIB - (64 << 10), 64 << 10), ChangedArea(MIB, 64 << 10)]
    assert sum(a.length for a in changed_since(source, ALL)) == 3 * MIB


class Liar:
    """A source whose answers a disk cannot have."""

    capacity = 2 * MIB

    def __init__(self, pages: list[DiskChangeInfo]) -> None:
        self.pages = pages

    def changed_areas(self, since: str, start: int) -> DiskChangeInfo:
        return self.pages.pop(0)

    def read(self, offset: int, length: int) -> bytes:
        return b"\0" * length


@pytest.mark.parametrize(
    "pages",
    [
        [DiskChangeInfo(0, 0, [])],  # a page that covers nothing: would loop for ever
        [DiskChangeInfo(4096, MIB, [])],  # not where asked
        [DiskChangeInfo(0, MIB, [ChangedArea(MIB - 10, 20)])],  # past its page
        [DiskChangeInfo(0, MIB, [ChangedArea(100, 50), ChangedArea(120, 10)])],  # overlapping
        [DiskChangeInfo(0, MIB, [ChangedArea(100, 0)])],  # empty
    ],
)
def test_an_impossible_answer_stops_the_copy(pages: list[DiskChangeInfo]) -> None:
    with pytest.raises(WarmError):
        changed_since(Liar(pages), ALL)
