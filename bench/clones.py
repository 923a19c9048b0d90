"""Clones: disk snapshots, linked and full clones of a template's disk against its size, and
mass deployment of linked clones from a template through `/vms/batch`, on a 1-node
devcluster (dir pool).

Clone time against the volume size: a template with one qcow2 disk of 1 GiB and one of
32 GiB, each with 1/32 of it written (1 MiB every 32 MiB, so a full copy has data to copy
across the whole disk). Measured: `POST /vms/{tpl}/clone` until its `vm.clone` task is done,
linked and full, `--runs` times each (the clone deleted in between). The baseline, in the same
run on the same files: qemu-img alone doing what the pool driver does (an overlay with
`qemu-img create -b`, a copy with `qemu-img convert`). A linked clone must not grow with the
size; a full one does, with the data. Before each disk becomes a template, `--runs` disk
snapshots of its (stopped) VM through the API, against `qemu-img snapshot -c` on the same
file: an internal qcow2 snapshot copies tables, not data.

Mass deployment: `POST /vms/batch` of `--count` linked clones of a template (one 1 GiB
disk), until the reply and until every `vm.clone` task is done. The baseline: as many VMs
defined without disks (`/vms/batch` of plain VMs) in the same run.

Run from the repository root: `.venv/bin/python -m bench.clones [--runs 3 --count 100]`.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    Api,
    BenchError,
    exit_on_sigterm,
    load_snapshot,
    print_rows,
    ratio,
    running_devcluster,
    stats,
    wait_for,
    write_result,
)

NAME = "clones"
GiB = 1024**3
MiB = 1024**2
SIZES_GIB = (1, 32)
STRIDE = 32 * MiB


def qemu(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(args[:3])}: {done.stderr.strip()}")


def fill(image: Path, size: int) -> None:
    """1 MiB of data every 32 MiB of the image."""
    commands: list[str] = []
    for offset in range(0, size, STRIDE):
        commands += ["-c", f"write -P 0x5a {offset} 1M"]
    qemu("qemu-io", "-f", "qcow2", *commands, str(image))


def template(api: Api, pool: Path, name: str, size: int, snapshot_runs: int = 0) -> Any:
    """A template with one filled qcow2 disk of `size`; before it becomes one, the times of
    `snapshot_runs` disk snapshots of it (taken and deleted through the API, and by qemu-img
    alone on the same file), or None."""
    reply = api.ok(
        "POST",
        "/vms",
        json={"name": name, "memory_mib": 16, "disks": [{"pool": "local", "size": size}]},
    )
    api.wait_task(reply["task"])
    image = pool / f"{name}-disk0.qcow2"
    fill(image, size)
    found = None
    if snapshot_runs:
        heron, qemu_img = [], []
        for run in range(snapshot_runs):
            start = time.perf_counter()
            taken = api.ok("POST", f"/vms/{name}/snapshots", json={"name": f"s{run}"})
            api.wait_task(taken["task"], timeout=1800)
            heron.append(time.perf_counter() - start)
            api.wait_task(api.ok("DELETE", f"/vms/{name}/snapshots/s{run}")["task"])
            start = time.perf_counter()
            qemu("qemu-img", "snapshot", "-c", "bare", str(image))
            qemu_img.append(time.perf_counter() - start)
            qemu("qemu-img", "snapshot", "-d", "bare", str(image))
        found = {
            "heron_s": stats(heron),
            "qemu_img_s": stats(qemu_img),
            "ratio_p50": ratio(stats(heron)["p50"], stats(qemu_img)["p50"]),
        }
    api.ok("PUT", f"/vms/{name}/template", json={"template": True})
    return found


def timed_clone(api: Api, source: str, name: str, linked: bool) -> float:
    start = time.perf_counter()
    reply = api.ok("POST", f"/vms/{source}/clone", json={"name": name, "linked": linked})
    api.wait_task(reply["task"], timeout=1800)
    elapsed = time.perf_counter() - start
    api.wait_task(api.ok("DELETE", f"/vms/{name}", params={"volumes": "true"})["task"])
    return elapsed


def bare(pool: Path, source: str, linked: bool) -> float:
    target = pool / "bare.qcow2"
    target.unlink(missing_ok=True)
    start = time.perf_counter()
    if linked:
        qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", source, "-F", "qcow2", str(target))
    else:
        qemu("qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", str(pool / source), str(target))
    elapsed = time.perf_counter() - start
    target.unlink()
    return elapsed


def clone_times(api: Api, pool: Path, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for gib in SIZES_GIB:
        name = f"tpl{gib}g"
        out[f"snapshot_{gib}g"] = template(api, pool, name, gib * GiB, runs)
        for kind, linked in (("linked", True), ("full", False)):
            heron, qemu_img = [], []
            for run in range(runs):
                heron.append(timed_clone(api, name, f"c{gib}g-{kind}-{run}", linked))
                qemu_img.append(bare(pool, f"{name}-disk0.qcow2", linked))
            out[f"{kind}_{gib}g"] = {
                "heron_s": stats(heron),
                "qemu_img_s": stats(qemu_img),
                "ratio_p50": ratio(stats(heron)["p50"], stats(qemu_img)["p50"]),
            }
    for kind in ("snapshot", "linked", "full"):
        small, big = out[f"{kind}_1g"]["heron_s"]["p50"], out[f"{kind}_32g"]["heron_s"]["p50"]
        out[f"{kind}_32g_vs_1g"] = ratio(big, small)
    return out


def batch(api: Api, body: dict[str, Any], count: int) -> dict[str, float]:
    start = time.perf_counter()
    reply = api.ok("POST", "/vms/batch", json={**body, "count": count})
    replied = time.perf_counter() - start
    tasks = {item["task"] for item in reply["vms"]}

    def all_done() -> bool:
        states = {t["id"]: t["state"] for t in api.ok("GET", "/tasks") if t["id"] in tasks}
        failed = [i for i, s in states.items() if s in ("failed", "cancelled")]
        if failed:
            raise BenchError(f"task {failed[0]} did not succeed")
        return len(states) == len(tasks) and all(s == "succeeded" for s in states.values())

    wait_for(all_done, 1800, f"{count} tasks", interval=0.2)
    done = time.perf_counter() - start
    return {"until_reply_s": round(replied, 3), "until_done_s": round(done, 3)}


def mass(api: Api, pool: Path, count: int) -> dict[str, Any]:
    template(api, pool, "desktop", GiB)
    clones = batch(api, {"name": "desk", "template": "desktop", "linked": True}, count)
    plain = batch(api, {"name": "plain", "memory_mib": 16}, count)
    used = sum(p.stat().st_blocks * 512 for p in pool.glob("desk-*-disk0.qcow2"))
    return {
        "linked_clones": clones,
        "plain_vms": plain,
        "ratio_until_done": ratio(clones["until_done_s"], plain["until_done_s"]),
        "clones_per_s": round(count / clones["until_done_s"], 1),
        "bytes_on_disk_all_clones": used,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="clones of each kind and size")
    parser.add_argument("--count", type=int, default=100, help="linked clones in the batch")
    parser.add_argument("--keep", action="store_true", help="keep the devcluster directory")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    load = load_snapshot()
    directory = Path(tempfile.mkdtemp(prefix="heron-bench-clones-"))
    with running_devcluster(directory, 1, keep=args.keep) as (cluster, token):
        api = Api(cluster.nodes[0].url, token, cluster.tls())
        pool = Path(cluster.nodes[0].state_dir) / "pools" / "local"
        try:
            results = {
                "clone": clone_times(api, pool, args.runs),
                "mass": mass(api, pool, args.count),
            }
        finally:
            api.close()
    path = write_result(NAME, {"runs": args.runs, "count": args.count}, results, load)
    rows = []
    for key, value in results["clone"].items():
        if isinstance(value, dict):
            rows.append(
                (
                    key.replace("_", " "),
                    f"p50 {value['heron_s']['p50'] * 1000:.0f} ms (qemu-img alone "
                    f"{value['qemu_img_s']['p50'] * 1000:.0f} ms, {value['ratio_p50']}x)",
                )
            )
        else:
            rows.append((key.replace("_", " "), f"{value}x"))
    m = results["mass"]
    rows.append(
        (
            f"{args.count} linked clones (/vms/batch)",
            f"{m['linked_clones']['until_reply_s']:.1f}s to the reply, "
            f"{m['linked_clones']['until_done_s']:.1f}s until all done ({m['clones_per_s']}/s)",
        )
    )
    rows.append(
        (
            f"{args.count} plain VMs (baseline)",
            f"{m['plain_vms']['until_done_s']:.1f}s until all done; ratio {m['ratio_until_done']}x",
        )
    )
    rows.append(("disk used by all clones", f"{m['bytes_on_disk_all_clones'] / MiB:.1f} MiB"))
    rows.append(("results", str(path)))
    print_rows("clones", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
