"""ARDFS snapshots and linked clones: their time against the volume's size.

On a cluster of three heron-io processes on loopback (as `bench/ardfs.py`), for each size a
replicated (RF=2) volume owned by node 1 is filled with data, then:

* snapshot: the volume's configuration gets a new top layer (what the pool driver writes
  while the VM is paused); the time from the reload signal until node 1 serves the new stack
  as its owner (its status says so), i.e. until the paused VM could go on;
* linked clone: a new volume whose stack is the frozen layer under a top of its own; the
  time until node 1 exports it (qemu-img info answers at its size);
* the baseline, in the same run: a full copy of the volume into a new one with `qemu-img
  convert` over NBD, what a snapshot or clone costs where the pool cannot share blocks.

Each snapshot and clone is measured `--rounds` times (a new layer each time), the full copy
once per size. Ratios: snapshot (clone) time / full copy time per size, and the growth of
each time from the smallest to the largest size (ARDFS: must not grow with the size).

Run from the repository root: `.venv/bin/python -m bench.ardfs_snapshot [--sizes-mib 64,512]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    exit_on_sigterm,
    load_snapshot,
    print_rows,
    ratio,
    wait_for,
    write_result,
)
from heron.ardfs.client import IoProcess, io_cluster
from heron.ardfs.config import Scheme, VolumeSpec

NAME = "ardfs_snapshot"
MiB = 1024 * 1024


def reconfigure(nodes: list[IoProcess], volumes: list[VolumeSpec]) -> None:
    for io in nodes:
        io.update(io.config.model_copy(update={"volumes": volumes}))


def served_as_owner(io: IoProcess, volume: VolumeSpec) -> bool:
    seen = io.status().get("volumes", {}).get(volume.name, {})
    return bool(seen.get("layers") == volume.chain and seen.get("owned"))


def exported(io: IoProcess, name: str, size: int) -> bool:
    said = subprocess.run(
        ["qemu-img", "info", "--output=json", "-f", "raw", io.uri(name)],
        capture_output=True,
        text=True,
        check=False,
    )
    return said.returncode == 0 and f'"virtual-size": {size}' in said.stdout


def measure_size(base: Path, size_mib: int, rounds: int) -> dict[str, Any]:
    size = size_mib * MiB
    owner = "n1"
    volume = VolumeSpec(name="v", size=size, scheme=Scheme(copies=2), owner=owner)
    copy = VolumeSpec(name="copy", size=size, scheme=Scheme(copies=2), owner=owner)
    with io_cluster(base / f"{size_mib}", 3, [volume, copy]) as nodes:
        first = nodes[0]
        wait_for(lambda: served_as_owner(first, volume), 60, "the volume served", 0.01)
        step = 64 * MiB
        fill = [f"write -P 0x5a {at} {min(step, size - at)}" for at in range(0, size, step)]
        subprocess.run(
            ["qemu-io", "-f", "raw", *(x for c in fill for x in ("-c", c)), first.uri("v")],
            check=True, capture_output=True,
        )  # fmt: skip
        # The baseline: every block copied into another volume.
        started = time.monotonic()
        subprocess.run(
            ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", "-W",
             first.uri("v"), first.uri("copy")],
            check=True, capture_output=True,
        )  # fmt: skip
        full_copy = time.monotonic() - started
        snapshots, clones = [], []
        current = volume
        others: list[VolumeSpec] = [copy]
        for index in range(rounds):
            current = current.model_copy(update={"layers": [*current.chain, uuid.uuid4().hex]})
            started = time.monotonic()
            reconfigure(nodes, [current, *others])
            wait_for(lambda v=current: served_as_owner(first, v), 60, "the new top", 0.002)
            snapshots.append(time.monotonic() - started)
            clone = VolumeSpec(
                name=f"clone{index}",
                size=size,
                scheme=Scheme(copies=2),
                owner=owner,
                layers=[*current.chain[:-1], uuid.uuid4().hex],
            )
            others.append(clone)
            started = time.monotonic()
            reconfigure(nodes, [current, *others])
            wait_for(lambda c=clone: exported(first, c.name, size), 60, "the clone", 0.002)
            clones.append(time.monotonic() - started)
        return {
            "size_mib": size_mib,
            "full_copy_s": round(full_copy, 3),
            "snapshot_s": round(statistics.median(snapshots), 4),
            "snapshot_all_s": [round(s, 4) for s in snapshots],
            "linked_clone_s": round(statistics.median(clones), 4),
            "linked_clone_all_s": [round(s, 4) for s in clones],
            "snapshot_to_full_copy": round(ratio(statistics.median(snapshots), full_copy), 4),
            "clone_to_full_copy": round(ratio(statistics.median(clones), full_copy), 4),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", default="64,256,1024", help="volume sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="snapshots and clones per size")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes_mib.split(",")]
    exit_on_sigterm()
    load = load_snapshot()
    with tempfile.TemporaryDirectory(prefix="heron-bench-snap-") as work:
        per_size = [measure_size(Path(work), size, args.rounds) for size in sizes]
    smallest, largest = per_size[0], per_size[-1]
    results = {
        "per_size": per_size,
        "growth_smallest_to_largest": {
            "size": round(largest["size_mib"] / smallest["size_mib"], 2),
            "full_copy": round(ratio(largest["full_copy_s"], smallest["full_copy_s"]), 2),
            "snapshot": round(ratio(largest["snapshot_s"], smallest["snapshot_s"]), 2),
            "linked_clone": round(ratio(largest["linked_clone_s"], smallest["linked_clone_s"]), 2),
        },
    }
    params = {"sizes_mib": sizes, "rounds": args.rounds, "nodes": 3, "scheme": "rf2"}
    path = write_result(NAME, params, results, load)
    rows = [
        (
            f"{r['size_mib']} MiB",
            f"snapshot {r['snapshot_s'] * 1000:.1f} ms, linked clone "
            f"{r['linked_clone_s'] * 1000:.1f} ms, full copy {r['full_copy_s']:.2f} s",
        )
        for r in per_size
    ]
    rows.append(("growth smallest -> largest", str(results["growth_smallest_to_largest"])))
    print_rows(f"ARDFS snapshots and linked clones vs a full copy ({path})", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
