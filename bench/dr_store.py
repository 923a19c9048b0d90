"""The DR replica store (heron.dr.store): write, restore and verify speed against plain copies
of the same bytes, restore after 100 increments against after 1, and dedup of two clones.

A synthetic disk image of `--size-mib` (4 MiB pieces: 30 % zeros, 40 % compressible, i.e.
repeated low-entropy blocks as in binaries and logs, 30 % random) is written to a file, then:
- baselines, in the same run on the same bytes: `cp --sparse=always` of the image plus an
  fsync of the copy (what a restore must at least cost), and reading the image and hashing
  each 4 MiB piece with BLAKE3 on `--workers` threads (what a verification must at least cost);
- a full point of VM a from the image (MiB/s of the disk, fsync'ed chunks and point);
- `--increments` increments of `--changed` rewritten chunks each (chunks holding data, given
  new data of their kind), then restores of the full point, the point after 1 increment and
  the point after all of them, in turn, three times each, each round starting with another
  point, the best of each kept (an untimed restore first makes the target file, and an
  `os.sync()` before each run makes its fsync flush its own writes only); the ratio of
  the last two is the issue's "no slower after 100 increments than after 1"; the same for
  a verification of each of the two, which writes nothing;
- verify of the last point, and of the whole store;
- a full point of VM b, a clone of the image with 5 % of its chunks changed: stored bytes
  grow by about that much (dedup);
- the oldest half of VM a's points deleted and a garbage collection: what it freed, how long
  it took.
Everything is in the page cache (the machine has the memory): the figures are the store's
CPU and file-system costs, not a disk's.

Run from the repository root: `.venv/bin/python -m bench.dr_store [--size-mib 1024]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    BenchError,
    exit_on_sigterm,
    load_snapshot,
    print_rows,
    ratio,
    stats,
    write_result,
)
from heron.dr import chunks
from heron.dr.store import Stats, Store

MIB = 1 << 20
PIECE = chunks.CHUNK_SIZE


def piece(rng: np.random.Generator, kind: str, pool: np.ndarray) -> bytes:
    if kind == "zero":
        return bytes(PIECE)
    if kind == "random":
        return rng.bytes(PIECE)
    # Compressible: blocks of 256 bytes picked from a small pool of low-entropy blocks.
    picks = rng.integers(0, len(pool), PIECE // 256)
    return pool[picks].tobytes()


def make_image(path: Path, size: int, rng: np.random.Generator) -> list[str]:
    pool = rng.integers(0, 64, (1024, 256), dtype=np.uint8)
    kinds = rng.choice(["zero", "compressible", "random"], size // PIECE, p=[0.3, 0.4, 0.3])
    with open(path, "wb") as file:
        for kind in kinds:
            file.write(piece(rng, str(kind), pool))
    return [str(k) for k in kinds]


def timed(work: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def mib_s(size: int, seconds: float) -> float:
    return round(size / MIB / seconds, 1) if seconds > 0 else float("nan")


def copy_baseline(image: Path, target: Path) -> float:
    target.unlink(missing_ok=True)
    os.sync()  # earlier writes flushed first, as before each restore

    def copy() -> None:
        subprocess.run(["cp", "--sparse=always", str(image), str(target)], check=True)
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    seconds, _ = timed(copy)
    return seconds


def hash_baseline(image: Path, workers: int) -> float:
    def run() -> None:
        fd = os.open(image, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size

            def one(offset: int) -> bytes:
                return chunks.digest(os.pread(fd, PIECE, offset))

            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, range(0, size, PIECE)))
        finally:
            os.close(fd)

    seconds, _ = timed(run)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--increments", type=int, default=100)
    parser.add_argument("--changed", type=int, default=2, help="chunks rewritten an increment")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="where to work (default /tmp)")
    args = parser.parse_args()
    exit_on_sigterm()
    load_before = load_snapshot()
    rng = np.random.default_rng(19)
    size = args.size_mib * MIB // PIECE * PIECE
    work = Path(tempfile.mkdtemp(prefix="heron-bench-dr-", dir=args.dir))
    try:
        image = work / "a.img"
        kinds = make_image(image, size, rng)
        workers = args.workers

        # The baselines, three and two times (the first copy also warms the page cache).
        copies = [copy_baseline(image, work / "copy.img") for _ in range(3)]
        hashes = [hash_baseline(image, workers) for _ in range(2)]
        (work / "copy.img").unlink()

        store = Store.create(work / "store")
        with store.writer("vm-a") as writer:
            write_s, full = timed(lambda: writer.write_point({"disk0": image}, workers=workers))
            full_stats = store.stats()
            pool = rng.integers(0, 64, (1024, 256), dtype=np.uint8)
            parent = full.id
            ids = [full.id]
            increment_s = []
            changed_bytes = 0
            # Increments rewrite chunks that hold data, with data of the same kind: every
            # point then restores the same amount of the same kinds of data, and a restore's
            # time after N increments is comparable with its time after 1.
            written = [i for i, kind in enumerate(kinds) if kind != "zero"]
            for _ in range(args.increments):
                picks = rng.choice(written, args.changed, replace=False)
                changed = {int(i): piece(rng, kinds[int(i)], pool) for i in picks}
                changed_bytes += len(changed) * PIECE
                seconds, info = timed(
                    lambda changed=changed, parent=parent: writer.write_increment(
                        parent, {"disk0": changed}, workers=workers
                    )
                )
                increment_s.append(seconds)
                parent = info.id
                ids.append(info.id)

        after_1, after_n = ids[1], ids[-1]
        target = work / "restored.img"
        restored: dict[str, list[float]] = {full.id: [], after_1: [], after_n: []}
        store.restore("vm-a", full.id, "disk0", target, workers)  # makes the target: untimed
        order = list(restored)
        for round_ in range(3):
            # Each round starts with another point: the first restore of a round was seen
            # to be slower whichever point it restored.
            for point_id in order[round_:] + order[:round_]:
                times = restored[point_id]
                os.sync()  # earlier writes flushed first: the fsync at the end is this one's
                seconds, report = timed(
                    lambda point_id=point_id: store.restore(
                        "vm-a", point_id, "disk0", target, workers
                    )
                )
                times.append(seconds)
        target.unlink()
        restore_full, restore_1, restore_n = restored.values()
        verified_1, verified_n = [], []
        for _ in range(3):
            verified_1.append(timed(lambda: store.verify_point("vm-a", after_1, workers))[0])
            verified_n.append(timed(lambda: store.verify_point("vm-a", after_n, workers))[0])

        verify_s, verified = timed(lambda: store.verify_point("vm-a", after_n, workers))
        if not verified.ok:
            raise BenchError(f"the last point does not verify: {verified}")
        verify_all_s, verified_all = timed(lambda: store.verify(workers))
        if not verified_all.ok:
            raise BenchError(f"the store does not verify: {verified_all}")
        before_clone = store.stats()

        # VM b: a clone of the same image with 5 % of its chunks rewritten.
        clone = work / "b.img"
        shutil.copyfile(image, clone)
        count = max(1, len(kinds) // 20)
        with open(clone, "r+b") as file:
            for index in rng.choice(len(kinds), count, replace=False):
                file.seek(int(index) * PIECE)
                file.write(rng.bytes(PIECE))
        with store.writer("vm-b") as writer:
            clone_s, _ = timed(lambda: writer.write_point({"disk0": clone}, workers=workers))
        after_clone = store.stats()
        clone.unlink()

        # Retention: the oldest half of VM a's points go (the full copy among them); the
        # chunks that later increments replaced are what the collection can free.
        for point_id in ids[: len(ids) // 2]:
            store.delete_point("vm-a", point_id)
        gc_report = store.gc(margin=0)  # no writer runs: every unnamed chunk may go
        final = store.stats()
        if not store.verify(workers).ok:
            raise BenchError("the store does not verify after the collection")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    copy_s, hash_s = min(copies), min(hashes)
    restore_full_s, restore_1_s, restore_n_s = min(restore_full), min(restore_1), min(restore_n)
    results = {
        "image": {
            "size_mib": size // MIB,
            "kinds": {k: kinds.count(k) for k in ("zero", "compressible", "random")},
        },
        "baseline": {
            "cp_sparse_fsync_s": stats(copies),
            "cp_mib_s": mib_s(size, copy_s),
            "read_and_blake3_s": stats(hashes),
            "read_and_blake3_mib_s": mib_s(size, hash_s),
        },
        "write_full": {
            "seconds": round(write_s, 3),
            "mib_s": mib_s(size, write_s),
            "ratio_to_cp": ratio(copy_s, write_s),
            "stored_mib": round(full_stats.stored_bytes / MIB, 1),
            "compression_ratio": full_stats.compression_ratio,
        },
        "increments": {
            "count": args.increments,
            "chunks_each": args.changed,
            "seconds": stats(increment_s),
            "changed_mib_s": mib_s(changed_bytes, sum(increment_s)),
        },
        "restore": {
            "full_point_s": [round(s, 3) for s in restore_full],
            "full_point_mib_s": mib_s(size, restore_full_s),
            "ratio_to_cp": ratio(copy_s, restore_full_s),
            "chunks_read_after_n": report.chunks_read,
            "after_1_increment_s": [round(s, 3) for s in restore_1],
            "after_n_increments_s": [round(s, 3) for s in restore_n],
            "after_n_over_after_1": ratio(restore_n_s, restore_1_s),
            "verify_after_1_s": [round(s, 4) for s in verified_1],
            "verify_after_n_s": [round(s, 4) for s in verified_n],
            "verify_after_n_over_after_1": ratio(min(verified_n), min(verified_1)),
        },
        "verify": {
            "point_s": round(verify_s, 3),
            "point_mib_s": mib_s(verified.bytes_checked, verify_s),
            "ratio_to_read_and_hash": ratio(hash_s * verified.bytes_checked / size, verify_s),
            "store_s": round(verify_all_s, 3),
            "store_chunks": verified_all.chunks_checked,
            "store_mib_s": mib_s(verified_all.bytes_checked, verify_all_s),
        },
        "clone": {
            "chunks_changed": count,
            "write_s": round(clone_s, 3),
            "write_mib_s": mib_s(size, clone_s),
            "stored_growth_mib": round(
                (after_clone.stored_bytes - before_clone.stored_bytes) / MIB, 1
            ),
            "logical_growth_mib": round(
                (after_clone.logical_bytes - before_clone.logical_bytes) / MIB, 1
            ),
            "dedup_ratio_two_vms_full_points": two_vms_dedup(full_stats, before_clone, after_clone),
        },
        "gc": {
            "points_deleted": len(ids) // 2,
            "seconds": round(gc_report.seconds, 3),
            "chunks_removed": gc_report.chunks_removed,
            "freed_mib": round(gc_report.bytes_freed / MIB, 1),
        },
        "store": {
            "points": final.points,
            "logical_gib": round(final.logical_bytes / (1 << 30), 2),
            "stored_mib": round(final.stored_bytes / MIB, 1),
            "index_mib": round(final.index_bytes / MIB, 2),
            "dedup_ratio": final.dedup_ratio,
            "compression_ratio": final.compression_ratio,
            "total_ratio": final.total_ratio,
        },
    }
    path = write_result(
        "dr_store", {k: str(v) for k, v in vars(args).items()}, results, load_before
    )
    r = results
    print_rows(
        f"DR store, a {size // MIB} MiB image, {args.increments} increments of "
        f"{args.changed} chunks, {workers} workers",
        [
            ("baseline cp --sparse + fsync", f"{r['baseline']['cp_mib_s']} MiB/s"),
            ("baseline read + blake3", f"{r['baseline']['read_and_blake3_mib_s']} MiB/s"),
            ("write full point", f"{r['write_full']['mib_s']} MiB/s"),
            (
                "restore full point",
                f"{r['restore']['full_point_mib_s']} MiB/s ({r['restore']['ratio_to_cp']} x cp)",
            ),
            (
                "restore, verify: after N / after 1",
                f"{r['restore']['after_n_over_after_1']}, "
                f"{r['restore']['verify_after_n_over_after_1']}",
            ),
            (
                "verify point",
                f"{r['verify']['point_mib_s']} MiB/s "
                f"({r['verify']['ratio_to_read_and_hash']} x read+hash)",
            ),
            ("increment p50", f"{r['increments']['seconds']['p50']} s"),
            (
                "clone stored growth",
                f"{r['clone']['stored_growth_mib']} MiB for {r['clone']['logical_growth_mib']} MiB",
            ),
            ("dedup / compression", f"{final.dedup_ratio} / {final.compression_ratio}"),
            ("gc", f"{r['gc']['freed_mib']} MiB in {r['gc']['seconds']} s"),
            ("results", str(path)),
        ],
    )


def two_vms_dedup(first: Stats, before: Stats, after: Stats) -> float:
    """Dedup of the two VMs' full points alone: what both hold (non-zero) over the first's
    unique content and what the clone added to the store."""
    added = after.unique_bytes - before.unique_bytes
    return ratio(2 * first.referenced_bytes, first.unique_bytes + added)


if __name__ == "__main__":
    main()
