"""V2V import throughput against a bare `qemu-img convert` of the same disks, in one run.

A datastore folder of VMware VMs whose disks are monolithicSparse VMDKs, each `--size-mib`
large with `--data-mib` of random data (the rest unallocated, as thin disks are). The bare
baseline converts each disk to qcow2 with qemu-img, then also compares it (what an import
does after its copy), one at a time and all at once. Heron imports the same VMs into a
1-node devcluster's local pool through the API (scan, then one request), with
`imports.parallel` 1 and then as many as there are disks, and is timed from the request to
the last task's end. The issue's goal: throughput at least 0.9 of the bare convert's.

The sources are read once before anything is timed (so no run pays for the page cache's
first fill), and each of the four measurements is taken `--rounds` times, interleaved; the
fastest of each counts.

Run from the repository root: `.venv/bin/python -m bench.v2v_import [--disks 4]`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import (
    Api,
    exit_on_sigterm,
    load_snapshot,
    print_rows,
    ratio,
    running_devcluster,
    write_result,
)

VMX = """displayName = "{name}"
guestOS = "debian12-64"
numvcpus = "1"
memsize = "128"
scsi0.present = "TRUE"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "{name}.vmdk"
"""
MIB = 1024**2


def datastore(root: Path, disks: int, size_mib: int, data_mib: int) -> list[Path]:
    made = []
    for i in range(disks):
        folder = root / f"vm{i}"
        folder.mkdir(parents=True)
        raw = folder / "data.raw"
        with raw.open("wb") as file:
            for _ in range(data_mib):
                file.write(os.urandom(MIB))
            file.truncate(size_mib * MIB)
        disk = folder / f"vm{i}.vmdk"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o",
                        "subformat=monolithicSparse", str(raw), str(disk)], check=True)  # fmt: skip
        raw.unlink()
        (folder / f"vm{i}.vmx").write_text(VMX.format(name=f"vm{i}"))
        made.append(disk)
    return made


def bare(disks: list[Path], out: Path, parallel: int) -> tuple[float, float]:
    """Seconds to convert all disks with `parallel` at once; and to convert and compare."""
    out.mkdir(parents=True, exist_ok=True)
    targets = [out / f"{d.stem}.qcow2" for d in disks]

    def run_all(commands: list[list[str]]) -> None:
        for start in range(0, len(commands), parallel):
            running = [subprocess.Popen(c) for c in commands[start : start + parallel]]
            for proc in running:
                if proc.wait() != 0:
                    raise SystemExit(f"{proc.args} failed")

    started = time.monotonic()
    run_all([["qemu-img", "convert", "-f", "vmdk", "-O", "qcow2", str(d), str(t)]
             for d, t in zip(disks, targets, strict=True)])  # fmt: skip
    converted = time.monotonic() - started
    run_all([["qemu-img", "compare", "-q", "-f", "vmdk", "-F", "qcow2", str(d), str(t)]
             for d, t in zip(disks, targets, strict=True)])  # fmt: skip
    both = time.monotonic() - started
    for target in targets:
        target.unlink()
    return converted, both


def heron(api: Api, disks: list[Path], parallel: int, round_: str) -> float:
    api.ok("PUT", "/cluster/settings", json={"imports": {"parallel": parallel}})
    found = api.ok("GET", "/imports/sources/ds/scan")["report"]["vms"]
    items = [{"vm": vm["path"], "name": f"{vm['name']}-r{round_}"} for vm in found]
    started = time.monotonic()
    reply = api.ok("POST", "/imports", json={"source": "ds", "pool": "local",
                                             "guest_fix": "none", "vms": items})  # fmt: skip
    for vm in reply["vms"]:
        api.wait_task(vm["task"], timeout=3600)
    return time.monotonic() - started


def remove_imported(api: Api) -> None:
    """The round's VMs and their volumes go, so that every round writes into the same pool."""
    for vm in api.ok("GET", "/vms"):
        api.wait_task(api.ok("DELETE", f"/vms/{vm['id']}", params={"volumes": True})["task"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disks", type=int, default=4)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--data-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    exit_on_sigterm()
    load_before = load_snapshot()
    with tempfile.TemporaryDirectory(prefix="heron-bench-v2v-") as tmp:
        root = Path(tmp)
        disks = datastore(root / "ds", args.disks, args.size_mib, args.data_mib)
        for disk in disks:
            disk.read_bytes()  # into the page cache, for every run alike
        runs: dict[str, list[float]] = {}
        with running_devcluster(root / "cluster", 1) as (cluster, token):
            api = Api(cluster.nodes[0].url, token, cluster.tls())
            api.ok("POST", "/imports/sources", json={"name": "ds", "type": "directory",
                   "path": str(root / "ds"), "node": cluster.nodes[0].name})  # fmt: skip
            api.wait_task(api.ok("POST", "/imports/sources/ds/scan")["task"])
            for round_ in range(args.rounds):
                for parallel in (1, args.disks):
                    converted, verified = bare(disks, root / "bare", parallel)
                    runs.setdefault(f"bare {parallel}", []).append(converted)
                    runs.setdefault(f"verified {parallel}", []).append(verified)
                    imported = heron(api, disks, parallel, f"{round_}-{parallel}")
                    runs.setdefault(f"heron {parallel}", []).append(imported)
                    remove_imported(api)
            api.close()
        bare_1, bare_n = min(runs["bare 1"]), min(runs[f"bare {args.disks}"])
        bare_1_verified = min(runs["verified 1"])
        bare_n_verified = min(runs[f"verified {args.disks}"])
        heron_1, heron_n = min(runs["heron 1"]), min(runs[f"heron {args.disks}"])
    data = args.disks * args.data_mib
    results = {
        "data_mib": data,
        "rounds": {name: [round(x, 2) for x in times] for name, times in runs.items()},
        "bare_convert_s": {"1": round(bare_1, 2), str(args.disks): round(bare_n, 2)},
        "bare_convert_and_compare_s": {
            "1": round(bare_1_verified, 2), str(args.disks): round(bare_n_verified, 2)},
        "heron_import_s": {"1": round(heron_1, 2), str(args.disks): round(heron_n, 2)},
        # Throughput ratios (the bare time over Heron's): 1.0 is as fast as qemu-img alone.
        "throughput_vs_convert": {
            "1": ratio(bare_1, heron_1), str(args.disks): ratio(bare_n, heron_n)},
        "throughput_vs_convert_and_compare": {
            "1": ratio(bare_1_verified, heron_1),
            str(args.disks): ratio(bare_n_verified, heron_n)},
    }  # fmt: skip
    path = write_result("v2v_import", vars(args), results, load_before)
    print_rows(
        f"V2V import of {args.disks} disks ({data} MiB of data) against bare qemu-img",
        [
            ("bare convert, 1 / all at once", f"{bare_1:.1f} / {bare_n:.1f} s"),
            ("bare convert+compare", f"{bare_1_verified:.1f} / {bare_n_verified:.1f} s"),
            ("Heron import (verified)", f"{heron_1:.1f} / {heron_n:.1f} s"),
            ("throughput vs convert", str(results["throughput_vs_convert"])),
            ("vs convert+compare", str(results["throughput_vs_convert_and_compare"])),
            ("results", str(path)),
        ],
    )


if __name__ == "__main__":
    main()
