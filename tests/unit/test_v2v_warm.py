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

    def writes(round_: int) -> None:  # the guest writes less each round
        for _ in range(max(8 >> round_, 1)):
            offset = guest.randrange(0, source.capacity - 4096)
            source.write(offset, guest.randbytes(4096))

    report = warm_copy(source, write, source.stop, small_enough=2 * (64 << 10), between=writes)
    assert report.rounds[0].bytes == source.capacity  # the full copy
    assert all(r.bytes < source.capacity for r in report.rounds[1:])
    assert target.read_bytes() == source.path.read_bytes()
    assert source.stopped and report.cutover_seconds >= 0
    with pytest.raises(WarmError, match="stopped"):
        source.write(0, b"x")


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

    def snapshot(self) -> str:
        return "1"

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
