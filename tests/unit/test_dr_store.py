"""heron.dr.store: the DR replica store on real files (tmp_path), with real crashes (a child
process that dies mid-write), real corruption and a collection running beside a writer.

Most tests use 64 KiB chunks so that images of a few MiB have many chunks; the format and
code paths are those of the 4 MiB default."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from heron.dr import chunks, points
from heron.dr import store as store_module
from heron.dr.errors import (
    ChunkCorrupt,
    GcBusy,
    InvalidArgument,
    PointBusy,
    PointCorrupt,
    PointNotFound,
    StoreNotFound,
    WriterBusy,
)
from heron.dr.store import Store

CHUNK = 64 << 10
HOUR_AGO = time.time() - 3600


def image_bytes(rng: random.Random, chunks_count: int, tail: int = 1000) -> bytearray:
    """A disk as VMs have them: random (incompressible), text-like (compressible) and
    all-zero chunks, and a size that is not a whole number of chunks."""
    out = bytearray()
    for i in range(chunks_count):
        kind = i % 4
        if kind == 0:
            out += rng.randbytes(CHUNK)
        elif kind == 1:
            line = f"log line {i} of a guest that writes text {rng.random()}\n".encode()
            out += (line * (CHUNK // len(line) + 1))[:CHUNK]
        else:
            out += bytes(CHUNK)
    out += rng.randbytes(tail)
    return out


def make_store(tmp_path: Path) -> Store:
    return Store.create(tmp_path / "store", chunk_size=CHUNK)


def write_image(tmp_path: Path, data: bytes, name: str = "disk.img") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def chunk_files(store: Store) -> list[Path]:
    return sorted(p for p in (store.root / "chunks").rglob("*") if chunks.is_name(p.name))


def age(path: Path, when: float = HOUR_AGO) -> None:
    os.utime(path, (when, when))


def test_a_point_restores_to_the_same_bytes_sparse(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = image_bytes(random.Random(1), 16)
    source = write_image(tmp_path, bytes(data))
    with store.writer("vm1") as writer:
        info = writer.write_point({"disk0": source})
    assert info.disks == {"disk0": len(data)}
    assert [p.id for p in store.points("vm1")] == [info.id]

    target = tmp_path / "restored.img"
    target.write_bytes(b"old content that must go" * 100000)
    report = store.restore("vm1", info.id, "disk0", target)
    assert target.read_bytes() == data
    assert report.zero_bytes == 8 * CHUNK  # half the chunks are zeros: not written
    assert report.bytes_written == len(data) - 8 * CHUNK
    assert os.stat(target).st_blocks * 512 < len(data)  # the zeros are holes
    # Zero chunks are not stored; the repeated text chunks compress.
    assert len(chunk_files(store)) == 9  # 4 random + 4 text + the tail
    stats = store.stats()
    assert stats.compression_ratio > 1.5
    assert stats.logical_bytes == len(data)
    assert stats.referenced_bytes == len(data) - 8 * CHUNK


def test_a_sparse_source_and_a_store_with_the_default_chunk_size(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "store")
    assert store.chunk_size == 4 << 20
    source = tmp_path / "sparse.img"
    with open(source, "wb") as file:
        file.truncate(20 << 20)
        file.seek(9 << 20)
        file.write(b"x" * 100)
    with store.writer("vm") as writer:
        info = writer.write_point({"d": source})
    point = store.load("vm", info.id)
    assert [i for i, _ in point.disks["d"].stored()] == [2]
    store.restore("vm", info.id, "d", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == source.read_bytes()


def test_two_vms_cloned_from_one_image_share_their_chunks(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    base = image_bytes(random.Random(2), 32)
    clone = bytearray(base)
    clone[5 * CHUNK : 5 * CHUNK + 10] = b"0123456789"  # the clone changed one chunk
    a, b = write_image(tmp_path, bytes(base), "a"), write_image(tmp_path, bytes(clone), "b")
    with store.writer("vm-a") as writer:
        writer.write_point({"disk": a})
    alone = len(chunk_files(store))
    with store.writer("vm-b") as writer:
        pb = writer.write_point({"disk": b})
    assert len(chunk_files(store)) == alone + 1
    stats = store.stats()
    assert stats.vms == 2 and stats.points == 2
    assert stats.dedup_ratio > 1.8  # 17 chunks' content for 2 x 16
    assert store.stats("vm-b").dedup_ratio == 1.0
    store.restore("vm-b", pb.id, "disk", tmp_path / "b.out")
    assert (tmp_path / "b.out").read_bytes() == clone


def test_a_hundred_increments_restore_as_expected_reading_each_chunk_once(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path)
    rng = random.Random(3)
    disk = image_bytes(rng, 24, tail=0)
    other = bytearray(rng.randbytes(3 * CHUNK))
    source = write_image(tmp_path, bytes(disk))
    with store.writer("vm") as writer:
        first = writer.write_point(
            {"root": source, "data": write_image(tmp_path, bytes(other), "o")}
        )
        parent = first.id
        expected_at: dict[str, bytes] = {first.id: bytes(disk)}
        for round_ in range(100):
            index = rng.randrange(24)
            content = rng.randbytes(CHUNK) if round_ % 3 else bytes(CHUNK)
            disk[index * CHUNK : (index + 1) * CHUNK] = content
            info = writer.write_increment(
                parent, {"root": {index: content}}, created=first.created + round_ + 1
            )
            assert info.parent == parent
            parent = info.id
            if round_ in (0, 49):
                expected_at[info.id] = bytes(disk)
    expected_at[parent] = bytes(disk)
    listed = store.points("vm")
    assert len(listed) == 101 and listed[-1].id == parent
    for point_id, expected in expected_at.items():
        out = tmp_path / f"{point_id}.img"
        report = store.restore("vm", point_id, "root", out)
        assert out.read_bytes() == expected
        distinct = {n for _, n in store.load("vm", point_id).disks["root"].stored()}
        assert report.chunks_read == len(distinct)  # not a walk through the history
        store.restore("vm", point_id, "data", out)
        assert out.read_bytes() == other
    assert store.verify().ok


def test_an_increment_checks_what_it_is_given_and_writes_nothing_otherwise(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path)
    source = write_image(tmp_path, bytes(image_bytes(random.Random(4), 4, tail=100)))
    with store.writer("vm") as writer:
        base = writer.write_point({"d": source}).id
        for changed in (
            {"d": {0: b"short"}},  # not a whole chunk
            {"d": {4: b"x" * 99}},  # the last chunk is 100 bytes
            {"d": {5: bytes(CHUNK)}},  # past the end
            {"e": {0: bytes(CHUNK)}},  # no such disk
        ):
            with pytest.raises(InvalidArgument):
                writer.write_increment(base, changed)
        with pytest.raises(InvalidArgument):
            writer.write_increment(base, {}, consistency="hopeful")
        with pytest.raises(PointNotFound):
            writer.write_increment("20200101T000000.000Z-000000", {})
        assert len(store.points("vm")) == 1
        grown = writer.write_increment(
            base, {"d": {5: b"y" * CHUNK}}, sizes={"d": 6 * CHUNK}, consistency="application"
        )
    out = tmp_path / "grown.img"
    store.restore("vm", grown.id, "d", out)
    expected = source.read_bytes() + bytes(CHUNK - 100) + b"y" * CHUNK
    assert out.read_bytes() == expected
    assert store.points("vm")[-1].consistency == "application"


def test_names_are_checked(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    source = write_image(tmp_path, b"x" * 10)
    for bad in ("../etc", ".hidden", "", "a/b", "x" * 200):
        with pytest.raises(InvalidArgument):
            store.writer(bad)
        with pytest.raises(ValueError):
            store.points(bad)
    with store.writer("vm") as writer, pytest.raises(InvalidArgument):
        writer.write_point({"../disk": source})
    with pytest.raises(StoreNotFound):
        Store(tmp_path / "nothing")
    with pytest.raises(InvalidArgument):
        Store.create(tmp_path / "store", chunk_size=CHUNK * 2)  # made with another size
    with pytest.raises(InvalidArgument):
        Store.create(tmp_path / "odd", chunk_size=3000)


def test_reading_chunks_and_ranges_for_an_export(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = bytes(image_bytes(random.Random(5), 8, tail=77))
    with store.writer("vm") as writer:
        info = writer.write_point({"d": write_image(tmp_path, data)})
    with store.open_point("vm", info.id) as reader:
        assert reader.read_chunk("d", 2) == bytes(CHUNK)  # a zero chunk
        assert reader.read_chunk("d", 8) == data[8 * CHUNK :]
        for offset, length in ((0, 10), (CHUNK - 5, 10), (3 * CHUNK - 1, 2 * CHUNK + 2)):
            assert reader.read("d", offset, length) == data[offset : offset + length]
        assert reader.read("d", len(data) - 3, 100) == data[-3:]
        with pytest.raises(InvalidArgument):
            reader.read_chunk("d", 9)
        with pytest.raises(InvalidArgument):
            reader.read_chunk("nope", 0)


def test_the_point_at_or_before_a_time(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    source = write_image(tmp_path, b"a" * CHUNK)
    with store.writer("vm") as writer:
        ids = [writer.write_point({"d": source}, created=1000.0 + 60 * i).id for i in range(3)]
    assert store.point_at("vm", 999.0) is None
    found = store.point_at("vm", 1000.0)
    assert found is not None and found.id == ids[0]
    found = store.point_at("vm", 1119.0)
    assert found is not None and found.id == ids[1]
    found = store.point_at("vm", 1e10)
    assert found is not None and found.id == ids[2]


def test_one_writer_per_vm_and_a_point_in_use_cannot_be_deleted(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    source = write_image(tmp_path, b"b" * CHUNK)
    with store.writer("vm") as writer:
        with pytest.raises(WriterBusy), store.writer("vm"):
            pass
        with store.writer("other") as second:  # another VM: at the same time
            second.write_point({"d": source})
        info = writer.write_point({"d": source})
    with store.open_point("vm", info.id):
        with pytest.raises(PointBusy):
            store.delete_point("vm", info.id)
        with store.writer("vm"), store.open_point("vm", info.id) as reader:  # many readers
            assert reader.read_chunk("d", 0) == b"b" * CHUNK
    store.delete_point("vm", info.id)
    with pytest.raises(PointNotFound):
        store.delete_point("vm", info.id)
    with pytest.raises(PointNotFound), store.open_point("vm", info.id):
        pass
    assert store.points("vm") == []


def test_the_parent_of_an_increment_being_written_cannot_be_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path)
    source = write_image(tmp_path, b"c" * CHUNK * 2)
    with store.writer("vm") as writer:
        base = writer.write_point({"d": source})
        real_commit = type(writer)._commit
        seen = []

        def commit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            with pytest.raises(PointBusy):
                store.delete_point("vm", base.id)
            seen.append(True)
            return real_commit(self, *args, **kwargs)

        monkeypatch.setattr(type(writer), "_commit", commit)
        writer.write_increment(base.id, {"d": {1: b"e" * CHUNK}})
    assert seen == [True]
    store.delete_point("vm", base.id)


def test_a_corrupt_chunk_is_found_by_verify_and_stops_a_restore(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = bytes(image_bytes(random.Random(6), 8))
    with store.writer("vm") as writer:
        info = writer.write_point({"d": write_image(tmp_path, data)})
    assert store.verify_point("vm", info.id).ok
    victim = store.load("vm", info.id).disks["d"].name(1)  # a compressed (text) chunk
    path = store.chunks.path(victim)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    path.write_bytes(bytes(blob))

    report = store.verify_point("vm", info.id)
    assert not report.ok and report.corrupt == [victim.hex()] and report.missing == []
    whole = store.verify()
    assert whole.corrupt == [victim.hex()] and whole.points_checked == 1
    with pytest.raises(ChunkCorrupt):
        store.restore("vm", info.id, "d", tmp_path / "out.img")

    # Quarantined, the damaged chunk no longer stands in for its content: the next point
    # holding that content stores it anew, which heals the older point too.
    assert store.verify_point("vm", info.id, quarantine=True).quarantined == 1
    assert store.verify_point("vm", info.id).missing == [victim.hex()]
    with store.writer("vm") as writer:
        writer.write_point({"d": write_image(tmp_path, data)})
    assert store.verify().ok
    store.restore("vm", info.id, "d", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == data


def test_a_missing_chunk_and_a_damaged_point_file_are_reported(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = bytes(image_bytes(random.Random(7), 4))
    with store.writer("vm") as writer:
        info = writer.write_point({"d": write_image(tmp_path, data)})
        second = writer.write_point({"d": write_image(tmp_path, data[::-1], "rev")})
    gone = store.load("vm", info.id).disks["d"].name(0)
    store.chunks.path(gone).unlink()
    assert store.verify_point("vm", info.id).missing == [gone.hex()]
    assert store.verify().missing == [gone.hex()]

    point_file = store.root / "points" / "vm" / f"{second.id}.point"
    damaged = bytearray(point_file.read_bytes())
    damaged[-40] ^= 1
    point_file.write_bytes(bytes(damaged))
    report = store.verify()
    assert len(report.bad_points) == 1 and second.id in report.bad_points[0]
    with pytest.raises(PointCorrupt):
        store.load("vm", second.id)
    # The collection cannot know what a damaged point needs: it removes nothing.
    with pytest.raises(PointCorrupt):
        store.gc()


def test_gc_frees_what_deleted_points_alone_used(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    rng = random.Random(8)
    shared = bytes(image_bytes(rng, 8, tail=0))
    own = rng.randbytes(4 * CHUNK)
    with store.writer("vm") as writer:
        keep = writer.write_point({"d": write_image(tmp_path, shared)})
        drop = writer.write_point({"d": write_image(tmp_path, shared + own, "more")})
    before = {p: p.stat().st_size for p in chunk_files(store)}
    store.delete_point("vm", drop.id)

    young = store.gc()  # just written: kept for writers that may be about to name them
    assert young.chunks_removed == 0 and young.kept_young == 4

    for path in before:
        age(path)
    report = store.gc()
    after = set(chunk_files(store))
    removed = set(before) - after
    assert len(removed) == 4 == report.chunks_removed
    assert report.bytes_freed == sum(before[p] for p in removed)
    assert report.points_marked == 1 and report.chunks_in_use == len(after)
    assert store.verify().ok
    store.restore("vm", keep.id, "d", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == shared

    lock = os.open(store.root / "gc.lock", os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(GcBusy):
            store.gc()
    finally:
        os.close(lock)


def test_gc_between_a_writers_chunks_and_its_point_keeps_the_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race that matters: an unnamed, old chunk that a writer is reusing (touched, not
    yet named by a point) while a collection runs. The collection is run exactly between the
    writer's chunks and its point, with a margin of a second (file times are coarse) against
    chunks an hour old."""
    store = make_store(tmp_path)
    rng = random.Random(9)
    old = rng.randbytes(2 * CHUNK)
    fresh = rng.randbytes(CHUNK)
    with store.writer("vm") as writer:
        gone = writer.write_point({"d": write_image(tmp_path, old)})
    store.delete_point("vm", gone.id)
    for path in chunk_files(store):
        age(path)  # garbage, and old: the next collection removes it unless touched

    with store.writer("vm") as writer:
        real_commit = type(writer)._commit
        reports = []

        def commit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            reports.append(store.gc(margin=1.0))
            return real_commit(self, *args, **kwargs)

        monkeypatch.setattr(type(writer), "_commit", commit)
        info = writer.write_point({"d": write_image(tmp_path, old + fresh, "new")})
    assert reports[0].chunks_removed == 0 and reports[0].kept_young == 3
    assert store.verify().ok
    store.restore("vm", info.id, "d", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == old + fresh

    # A writer that has begun but not yet touched the old chunks: the collection may take
    # them (they are older than the writer), and the writer then stores them again.
    store.delete_point("vm", info.id)
    for path in chunk_files(store):
        age(path)
    with store.writer("vm") as writer:
        assert store.gc(margin=1.0).chunks_removed == 3
        again = writer.write_point({"d": write_image(tmp_path, old, "again")})
    assert store.verify().ok
    store.restore("vm", again.id, "d", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == old


def test_gc_running_beside_writers_never_loses_a_chunk(tmp_path: Path) -> None:
    """Collections in a loop on one thread while another writes increments reusing the
    content of points deleted as it goes: every point left must verify and restore."""
    store = make_store(tmp_path)
    rng = random.Random(10)
    contents = [rng.randbytes(CHUNK) for _ in range(6)]
    stop = threading.Event()
    errors: list[BaseException] = []
    collections = 0
    # Ageing the chunks stands for time passing between collections, never during one: a
    # chunk touched after a collection began is never older than its cutoff.
    # One collection per round of the writer: a collector that took `between` back at once
    # starved the writer on a busy machine (Python's locks are not fair).
    between = threading.Lock()
    aged = threading.Event()

    def collect() -> None:
        nonlocal collections
        while not stop.is_set():
            try:
                with between:
                    store.gc(margin=1.0)
                collections += 1
            except BaseException as exc:
                errors.append(exc)
                return
            while not aged.wait(0.1) and not stop.is_set():
                pass
            aged.clear()

    thread = threading.Thread(target=collect)
    thread.start()
    try:
        with store.writer("vm") as writer:
            parent = writer.write_point({"d": write_image(tmp_path, b"".join(contents[:4]))})
            expected = bytearray(b"".join(contents[:4]))
            for round_ in range(40):
                index = round_ % 4
                content = contents[rng.randrange(6)]
                expected[index * CHUNK : (index + 1) * CHUNK] = content
                info = writer.write_increment(parent.id, {"d": {index: content}})
                store.delete_point("vm", parent.id)
                parent = info
                with between:
                    for path in chunk_files(store):  # everything unnamed is fair game
                        age(path)
                aged.set()
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert collections > 0
    report = store.verify()
    assert report.ok, report
    store.restore("vm", parent.id, "d", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == expected


CRASH = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from heron.dr.store import Store

    root, source, die_on = sys.argv[1], sys.argv[2], sys.argv[3]
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        # The process dies the instant before the rename that would name a chunk or the
        # point: what a kill -9 or a power cut at that line leaves.
        if str(dst).endswith(die_on):
            os._exit(9)
        return real_rename(src, dst, *args, **kwargs)

    os.rename = rename
    store = Store(Path(root))
    with store.writer("vm") as writer:
        writer.write_point({"d": Path(source)})
    """
)


def crash_writing(store: Store, source: Path, die_on: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CRASH, str(store.root), str(source), die_on],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 9, done.stderr


def temporaries(store: Store) -> list[Path]:
    return [p for p in store.root.rglob(".*.tmp")]


@pytest.mark.parametrize("die_on", [".point", "any chunk"])
def test_a_writer_killed_mid_write_leaves_the_old_state(tmp_path: Path, die_on: str) -> None:
    store = make_store(tmp_path)
    rng = random.Random(11)
    first = bytes(image_bytes(rng, 4))
    with store.writer("vm") as writer:
        kept = writer.write_point({"d": write_image(tmp_path, first)})
    second = bytes(image_bytes(rng, 6))
    source = write_image(tmp_path, second, "second")
    if die_on == "any chunk":
        # The name of the first new chunk of the second image: the child dies renaming it.
        die_on = chunks.digest(second[:CHUNK]).hex()
    crash_writing(store, source, die_on)

    left = temporaries(store)
    assert left  # the chunk or point being written (and another worker's chunk, maybe)
    assert [p.id for p in store.points("vm")] == [kept.id]  # no half point, ever
    report = store.verify()
    assert report.ok and report.points_checked == 1
    store.restore("vm", kept.id, "d", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == first

    # The writer's lock died with it; the next run writes the point whole.
    with store.writer("vm") as writer:
        retried = writer.write_point({"d": source})
    store.restore("vm", retried.id, "d", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == second

    # What the crash left is the collection's once older than its cutoff.
    assert store.gc().temp_removed == 0
    for path in left:
        age(path)
    assert store.gc().temp_removed == len(left)
    assert temporaries(store) == []
    assert store.verify().ok


@contextlib.contextmanager
def loop_device(backing: Path) -> Iterator[Path]:
    made = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"no loop device: {made.stderr.strip()}")
    device = Path(made.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=False)


def test_restore_to_a_block_device_zeroes_its_zero_chunks(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = bytes(image_bytes(random.Random(12), 8, tail=0))
    with store.writer("vm") as writer:
        info = writer.write_point({"d": write_image(tmp_path, data)})
    backing = tmp_path / "device.img"
    backing.write_bytes(b"\xff" * (len(data) + CHUNK))  # old content everywhere
    with loop_device(backing) as device:
        report = store.restore("vm", info.id, "d", device)
        assert report.zero_bytes == 4 * CHUNK
        with open(device, "rb") as file:
            assert file.read(len(data)) == data
            assert file.read(CHUNK) == b"\xff" * CHUNK  # past the disk: untouched
    small = tmp_path / "small.img"
    small.write_bytes(bytes(CHUNK))
    with loop_device(small) as device, pytest.raises(InvalidArgument):
        store.restore("vm", info.id, "d", device)


def test_point_files_round_trip_and_list_without_their_maps(tmp_path: Path) -> None:
    table = b"".join(chunks.digest(bytes([i])) for i in range(3))
    disk = points.DiskMap(2 * CHUNK + 5, CHUNK, table)
    info = points.PointInfo("vm", "p1", 12.5, "crash", None, {"d": disk.size})
    data = points.encode(points.Point(info, {"d": disk}))
    back = points.decode("vm/p1", data)
    assert back.info == info and back.disks["d"] == disk
    assert disk.length(2) == 5
    for cut in (len(data) - 1, 10):
        with pytest.raises(PointCorrupt):
            points.decode("vm/p1", data[:cut])
    with pytest.raises(InvalidArgument):
        points.DiskMap(CHUNK * 2, CHUNK, table)  # three entries for two chunks


def test_gc_cutoff_goes_back_to_the_oldest_running_writer(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    alone = store.gc(margin=2.0)
    assert alone.cutoff == alone.started - 2.0
    before = time.time()
    with store.writer("vm"):
        entered = time.time()
        report = store.gc(margin=0)
    assert before <= report.cutoff <= entered < report.started


def test_a_collection_looking_at_a_writer_never_makes_it_fail(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with store.writer("vm"):
        pass  # the writer's files exist now
    # A collection's look is a shared lock on `.live`, held for an instant: a writer entering
    # then waits for it instead of failing with WriterBusy.
    look = os.open(store.root / "writers" / "vm.live", os.O_RDONLY)
    fcntl.flock(look, fcntl.LOCK_SH)
    entered = threading.Event()
    failed: list[BaseException] = []

    def enter() -> None:
        try:
            with store.writer("vm"):
                entered.set()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=enter)
    thread.start()
    try:
        assert not entered.is_set()
    finally:
        os.close(look)
    thread.join(timeout=30)
    assert entered.is_set() and not failed


def test_a_point_deleted_while_a_collection_reads_the_points_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collection has listed a point P; before it reads P, a writer commits P's child C
    (which takes over P's first chunk, old and untouched) and P is deleted. Were the deletion
    not to wait, the collection would read neither P nor C and remove the chunk C needs."""
    store = make_store(tmp_path)
    rng = random.Random(13)
    first, second, new = (rng.randbytes(CHUNK) for _ in range(3))
    with store.writer("vm") as writer:
        parent = writer.write_point({"d": write_image(tmp_path, first + second)})
    for path in chunk_files(store):
        age(path)

    real_files, real_marking = store_module._point_files, Store._marking
    blocked_or_done = threading.Event()
    children: list[str] = []
    failed: list[BaseException] = []

    def marking(self: Store, exclusive: bool):  # type: ignore[no-untyped-def]
        if not exclusive:
            blocked_or_done.set()  # the deletion is about to wait for the mark phase
        return real_marking(self, exclusive)

    def commit_child_then_delete_parent() -> None:
        try:
            with store.writer("vm") as writer:
                children.append(writer.write_increment(parent.id, {"d": {1: new}}).id)
            store.delete_point("vm", parent.id)
        except BaseException as exc:
            failed.append(exc)
        finally:
            blocked_or_done.set()

    thread = threading.Thread(target=commit_child_then_delete_parent)
    armed = [True]

    def listing(folder: Path) -> list[Path]:
        found = real_files(folder)
        if armed and found:
            armed.clear()
            thread.start()
            assert blocked_or_done.wait(timeout=60)
        return found

    monkeypatch.setattr(Store, "_marking", marking)
    monkeypatch.setattr(store_module, "_point_files", listing)
    report = store.gc(margin=1.0)
    thread.join(timeout=60)
    assert not failed, failed
    assert report.points_marked == 1  # P, read before it went
    assert [p.id for p in store.points("vm")] == children
    assert store.verify().ok
    store.restore("vm", children[0], "d", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == first + new
