"""ARDFS data path: fio's nbd engine against ARDFS volumes and against the local limit.

In one run, on this machine:

* local (the baseline): `qemu-nbd` exporting a raw file on the same filesystem as the chunk
  stores, page cache on (QEMU's default, and what heron-io does): the most an NBD client here
  can get from this disk without any storage layer of ours.
* ARDFS RF=2, RF=3 and EC 2+1: one volume each on a cluster of three heron-io processes on
  loopback (one per simulated node, each with its own chunk store directory), used through
  node 1's NBD socket as a VM on node 1 would.
* the same three with TLS between the peers ("rf2 tls", ...): a second cluster of three
  whose heron-io hold node certificates of one CA and require TLS (ardfs/peertls.py), as
  herond runs them once every node has this release. "tls / plain" is the ratio per scheme,
  within a round, median over rounds: what encrypting the peer traffic costs here.

Then the rebuild: node 3 is killed, the RF=2 volume overwritten (degraded), node 3 restarted,
and the time until node 1 reports the volume healthy again gives the rebuild speed. Last, the
move: node 3 is killed for good and the RF=2 volume moved onto nodes 1 and 2 (what the leader
does after the grace); the time until every copy node 3 held is made again gives its speed.

For each: sequential 4 MiB writes then reads (MB/s, fio iodepth 8), then 4 KiB random reads
and writes (IOPS and p99 completion latency, iodepth 16), each for `--runtime` seconds over
the first `--size-mib` MiB. Ratios are ARDFS / local within a round, median over rounds.
Every pattern runs on every target before the next pattern, in a rotating order per round,
so drift on the machine hits all alike. Sizes are modest on purpose: the machine is shared.

Run from the repository root: `.venv/bin/python -m bench.ardfs [--size-mib 256 --runtime 8]`.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    BenchError,
    exit_on_sigterm,
    load_snapshot,
    print_rows,
    ratio,
    wait_for,
    write_result,
)
from heron.ardfs.checksum import CHUNK_SIZE
from heron.ardfs.client import IoProcess, io_cluster, nbd_uri, start
from heron.ardfs.config import PlacedDisk, Scheme, VolumeSpec
from heron.ardfs.nbdtools import fio
from heron.tls import NodeCredentials, issue, make_authority

NAME = "ardfs"
MiB = 1024 * 1024

SCHEMES = {
    "rf2": Scheme(kind="replicated", copies=2),
    "rf3": Scheme(kind="replicated", copies=3),
    "ec2+1": Scheme(kind="ec", data=2),
}
PATTERNS = ["seq_write", "seq_read", "rand_read", "rand_write"]


def fio_options(pattern: str, size_mib: int, runtime: int) -> list[str]:
    # Every pattern runs for `runtime` seconds over the first `size_mib` MiB: a single pass
    # at 1 GB/s would last a quarter of a second and measure mostly the start.
    common = [f"--size={size_mib}M", "--time_based", f"--runtime={runtime}"]
    if pattern == "seq_write":
        return ["--rw=write", "--bs=4M", "--iodepth=8", *common]
    if pattern == "seq_read":
        return ["--rw=read", "--bs=4M", "--iodepth=8", *common]
    rw = "randread" if pattern == "rand_read" else "randwrite"
    return [f"--rw={rw}", "--bs=4k", "--iodepth=16", "--randrepeat=0", "--norandommap", *common]


def measure(uri: str, pattern: str, size_mib: int, runtime: int) -> dict[str, float]:
    report = fio(uri, *fio_options(pattern, size_mib, runtime), timeout=600)
    job = report["jobs"][0]
    if job["error"]:
        raise BenchError(f"fio {pattern} on {uri}: error {job['error']}")
    side = job["write" if "write" in pattern else "read"]
    return {
        "mb_s": round(side["bw_bytes"] / 1e6, 1),
        "iops": round(side["iops"]),
        "p99_ms": round(side["clat_ns"]["percentile"]["99.000000"] / 1e6, 3),
        "p50_ms": round(side["clat_ns"]["percentile"]["50.000000"] / 1e6, 3),
    }


@contextlib.contextmanager
def local_limit(directory: Path, size_mib: int) -> Iterator[str]:
    """qemu-nbd exporting a raw file in `directory`: the baseline."""
    image = directory / "local.raw"
    subprocess.run(["truncate", "-s", f"{size_mib * 2}M", str(image)], check=True)
    sock = directory / "qemu-nbd.sock"
    process = subprocess.Popen(
        ["qemu-nbd", "-f", "raw", "-k", str(sock), "-x", "local", "--persistent",
         "--shared=16", "--cache=writeback", "--discard=unmap", str(image)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: sock.exists() or process.poll() is not None, 30, "qemu-nbd")
        if process.poll() is not None:
            raise BenchError("qemu-nbd exited")
        yield nbd_uri(sock, "local")
    finally:
        process.terminate()
        process.wait(timeout=30)


def certify(directory: Path, nodes: int) -> Path:
    """Node credentials for n1..n`nodes` from a CA made for the run, as herond keeps them."""
    now = time.time()
    authority = make_authority("bench", now)
    for i in range(nodes):
        name = f"n{i + 1}"
        node = NodeCredentials(directory / name)
        node.write(issue(authority, [name, "127.0.0.1"], now), authority.certificate)
    return directory


def run(size_mib: int, runtime: int, rounds: int, keep: bool) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="heron-bench-ardfs-", dir="/var/tmp"))
    volumes = [
        VolumeSpec(name=label, size=size_mib * 2 * MiB, scheme=scheme, owner="n1")
        for label, scheme in SCHEMES.items()
    ]
    raw: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        tls = certify(directory / "tls", 3)
        with (
            local_limit(directory, size_mib) as local_uri,
            io_cluster(directory / "cluster", 3, volumes) as nodes,
            io_cluster(
                directory / "cluster-tls", 3, volumes, settings={"peer_tls": "require"}, tls=tls
            ) as sealed,
        ):
            uris = {"local": local_uri}
            uris |= {label: nodes[0].uri(label) for label in SCHEMES}
            uris |= {f"{label} tls": sealed[0].uri(label) for label in SCHEMES}
            targets = list(uris)
            for n in range(rounds):
                for pattern in PATTERNS:
                    order = targets[n % len(targets) :] + targets[: n % len(targets)]
                    for target in order:
                        started = time.monotonic()
                        figures = measure(uris[target], pattern, size_mib, runtime)
                        figures["seconds"] = round(time.monotonic() - started, 1)
                        raw.setdefault(target, {}).setdefault(pattern, []).append(figures)
                        print(f"round {n + 1} {pattern:10} {target:6} {figures}", flush=True)
            rebuild = measure_rebuild(nodes, directory / "cluster", size_mib)
            print(f"rebuild {rebuild}", flush=True)
            move = measure_move(nodes)
            print(f"move {move}", flush=True)
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
    results = summarise(raw)
    results["rebuild"] = rebuild
    results["move"] = move
    return results


def measure_rebuild(nodes: list[IoProcess], base: Path, size_mib: int) -> dict[str, float]:
    """Kill node 3, overwrite the RF=2 volume (degraded), bring node 3 back, time the rebuild
    of every copy it missed: from its restart to the owner reporting the volume healthy."""
    owner, victim = nodes[0], nodes[2]
    victim.kill()
    fio(owner.uri("rf2"), "--rw=write", "--bs=4M", "--iodepth=8", f"--size={2 * size_mib}M")
    stale = wait_for(
        lambda: owner.status().get("volumes", {}).get("rf2", {}).get("stale_chunks"),
        30,
        "the degraded status",
    )
    started = time.monotonic()
    nodes[2] = start(victim.config, base / victim.config.node)

    def healthy() -> bool:
        return owner.status().get("volumes", {}).get("rf2", {}).get("state") == "healthy"

    wait_for(healthy, 600, "the rebuild", interval=0.05)
    seconds = time.monotonic() - started
    inside = wait_for(
        lambda: owner.status()["volumes"]["rf2"].get("last_rebuild_bytes_per_s"), 10, "the rate"
    )
    return {
        "stale_chunks": stale,
        # from the restart of the node (process start included) to "healthy" in the status
        "seconds": round(seconds, 2),
        "mb_s": round(stale * CHUNK_SIZE / seconds / 1e6, 1),
        # as the owner measured it, from the first rebuilt chunk to the last
        "owner_measured_mb_s": round(inside / 1e6, 1),
        "rate_limit_mb_s": owner.config.rebuild_mb_s,
        "parallel": owner.config.rebuild_parallel,
    }


def measure_move(nodes: list[IoProcess]) -> dict[str, float]:
    """Kill node 3 for good and move the RF=2 volume onto the other two nodes' disks, as the
    leader does after the grace: the time until the owner has made every copy that node 3
    held (the blocks it held, copied from the surviving copy while the volume stays open)."""
    owner, victim = nodes[0], nodes[2]
    spec = next(v for v in owner.config.volumes if v.name == "rf2")
    held = sum(
        1
        for disk in victim.config.me.disks
        if disk.path is not None and (disk.path / "volumes" / spec.id).is_dir()
        for p in (disk.path / "volumes" / spec.id).iterdir()
        if len(p.name) == 16
    )
    victim.kill()

    def placed(io_nodes: list[IoProcess]) -> list[PlacedDisk]:
        return [PlacedDisk(id=d.id, node=io.config.node) for io in io_nodes
                for d in io.config.me.disks]  # fmt: skip

    moving = spec.model_copy(update={"placement": placed(nodes), "moving_to": placed(nodes[:2])})
    started = time.monotonic()
    for io in nodes[:2]:
        volumes = [moving if v.name == "rf2" else v for v in io.config.volumes]
        io.update(io.config.model_copy(update={"volumes": volumes}))

    def moved() -> bool:
        seen = owner.status().get("volumes", {}).get("rf2", {})
        return seen.get("moving_to") is not None and seen.get("move_left") == 0

    wait_for(moved, 600, "the move", interval=0.05)
    seconds = time.monotonic() - started
    return {
        "chunks_held_by_the_lost_node": held,
        "seconds": round(seconds, 2),
        "mb_s": round(held * CHUNK_SIZE / seconds / 1e6, 1),
        "rate_limit_mb_s": owner.config.rebuild_mb_s,
    }


def best(runs: list[dict[str, float]], key: str) -> float:
    """The median of the rounds."""
    return round(statistics.median(r[key] for r in runs), 3)


def summarise(raw: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, Any]:
    table: dict[str, dict[str, dict[str, float]]] = {}
    for target, patterns in raw.items():
        table[target] = {}
        for pattern, runs in patterns.items():
            table[target][pattern] = {
                key: best(runs, key) for key in ("mb_s", "iops", "p99_ms", "p50_ms")
            }
    # Ratios are taken within a round (ARDFS and local measured minutes apart at most) and
    # the median over rounds is reported: the machine's speed drifts more between rounds.
    measures = {
        "seq_write_mb_s": ("seq_write", "mb_s"),
        "seq_read_mb_s": ("seq_read", "mb_s"),
        "rand_read_iops": ("rand_read", "iops"),
        "rand_write_iops": ("rand_write", "iops"),
    }
    ratios: dict[str, dict[str, float]] = {}
    for target in SCHEMES:
        ratios[target] = {}
        for name, (pattern, key) in measures.items():
            per_round = [
                ratio(mine[key], local[key])
                for mine, local in zip(raw[target][pattern], raw["local"][pattern], strict=True)
            ]
            ratios[target][name] = round(statistics.median(per_round), 2)
    tls_cost: dict[str, dict[str, float]] = {}
    for target in SCHEMES:
        if f"{target} tls" not in raw:
            continue
        tls_cost[target] = {}
        for name, (pattern, key) in measures.items():
            per_round = [
                ratio(sealed[key], plain[key])
                for sealed, plain in zip(
                    raw[f"{target} tls"][pattern], raw[target][pattern], strict=True
                )
            ]
            tls_cost[target][name] = round(statistics.median(per_round), 2)
    goals = {
        target: {
            "sequential_at_least_0.5": min(r["seq_write_mb_s"], r["seq_read_mb_s"]) >= 0.5,
            "random_4k_at_least_0.3": min(r["rand_read_iops"], r["rand_write_iops"]) >= 0.3,
        }
        for target, r in ratios.items()
    }
    return {
        "figures": table,
        "ratios_to_local": ratios,
        "tls_to_plain": tls_cost,
        "goals": goals,
        "rounds": raw,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="bytes per sequential pass")
    parser.add_argument("--runtime", type=int, default=8, help="seconds per random pattern")
    parser.add_argument("--rounds", type=int, default=1, help="measured rounds")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    load = load_snapshot()
    params = {
        "size_mib": args.size_mib,
        "runtime_s": args.runtime,
        "rounds": args.rounds,
        "nodes": 3,
        "fio": "nbd engine; 4M iodepth 8 sequential, 4k iodepth 16 random",
        "baseline": "qemu-nbd --cache=writeback on a raw file on the same filesystem",
    }
    results = run(args.size_mib, args.runtime, args.rounds, args.keep)
    path = write_result(NAME, params, results, load)
    rows = []
    for target, figures in results["figures"].items():
        rows.append(
            (
                target,
                f"write {figures['seq_write']['mb_s']} MB/s, read {figures['seq_read']['mb_s']}"
                f" MB/s, 4k randread {figures['rand_read']['iops']} IOPS"
                f" (p99 {figures['rand_read']['p99_ms']} ms), 4k randwrite"
                f" {figures['rand_write']['iops']} IOPS (p99 {figures['rand_write']['p99_ms']} ms)",
            )
        )
    for target, r in results["ratios_to_local"].items():
        rows.append((f"{target} / local", str(r)))
    for target, r in results["tls_to_plain"].items():
        rows.append((f"{target}: tls / plain", str(r)))
    rows.append(("rebuild (rf2)", str(results["rebuild"])))
    rows.append(("move off a lost node (rf2)", str(results["move"])))
    print_rows(f"ARDFS vs qemu-nbd ({path})", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
