"""Live-migration integrity through Heron: hundreds of moves per storage kind, each checked.

A 2-node devcluster with one self-checking test guest per storage kind (`heron.testguest`:
128 MiB, its memory checker on 48 MiB with 256 hot pages; see `build.variant`):

* shared: the disk on a shared `dir` pool (both nodes open the same file);
* local: the disk on the source's `local` pool, copied by `blockdev-mirror` before the memory;
* ardfs: the disk on an RF2 ARDFS volume that changes owner while QEMU pauses at the switch.

The three guests move back and forth between the nodes at the same time, each from its own
thread, `--moves` times, through `POST /vms/{id}/actions/migrate`. The moves cycle through
`--settings`: Heron's defaults, a 32 MiB/s cap (many dirty-sync rounds, like a slow network),
and no auto-converge. After every move the guest's console on its new node must show two
full memory verifications and nothing wrong: no MISMATCH, kernel oops/panic, new boot or
counter that does not go on (`heron.testguest.console`). A corrupted move is written down with
its lines and the soak goes on.

Reports, per kind: migrations, corruptions, QEMU's downtime and the task's total time
(p50/p90/p99/max). Nothing asserts on time.

  .venv/bin/python -m bench.migration_soak --moves 500        # docs/benchmarks.md's figures
  .venv/bin/python -m bench.migration_soak --moves 1000 --kinds shared

Results: bench/results/migration_soak.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    HERON_CACHE,
    RESULTS_DIR,
    Api,
    BenchError,
    cpu_hogs,
    end_hogs,
    exit_on_sigterm,
    load_snapshot,
    print_rows,
    running_devcluster,
    stats,
    wait_for,
    write_result,
)
from heron.devcluster import DevCluster
from heron.testguest import build, console

NAME = "migration_soak"
NODES = ("node1", "node2")
MEMORY_MIB = 128
MEMCHECK = "48:256:1024"
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "capped": {"max_bandwidth_mib": 32},
    "no-converge": {"auto_converge": False},
}
BOOT_TIMEOUT = 180.0
CHECK_TIMEOUT = 60.0


def console_log(cluster: DevCluster, vm_id: str, node: str) -> Path:
    return Path(cluster.node(node).state_dir) / "vms" / vm_id / "console.log"


def checked(log: Path, booted_here: bool) -> console.GuestReport:
    """The console once it shows two full memory verifications, or a problem."""

    def ready() -> console.GuestReport | None:
        report = console.read_log(log, booted_here=booted_here)
        return report if report.problems or report.verifications >= 2 else None

    try:
        return wait_for(ready, CHECK_TIMEOUT, f"two memory checks in {log}", interval=0.1)
    except BenchError:
        report = console.read_log(log, booted_here=booted_here)
        report.problems.append(f"no memory verification within {CHECK_TIMEOUT:.0f}s")
        return report


def keep_evidence(api: Api, cluster: DevCluster, vm_id: str, name: str) -> None:
    """Copy what tells how a move went wrong (the guest's console and QEMU's log on every node,
    the agents' logs, the VM's tasks) into bench/results/migration_soak-NAME/."""
    folder = RESULTS_DIR / f"{NAME}-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(BenchError, OSError):
        tasks = [t for t in api.ok("GET", "/tasks?limit=1000") if t["target"] == vm_id]
        (folder / "tasks.json").write_text(json.dumps(tasks[:6], indent=2))
    for node in cluster.nodes:
        state = Path(node.state_dir)
        for source in (state / "herond.log", *(state / "vms" / vm_id).glob("*.log")):
            with contextlib.suppress(OSError):
                shutil.copyfile(source, folder / f"{node.name}-{source.name}")


def soak(
    api: Api, cluster: DevCluster, kind: str, vm_id: str, moves: int, settings: list[str]
) -> list[dict[str, Any]]:
    node = NODES[0]
    results = []
    for move in range(moves):
        target = NODES[(NODES.index(node) + 1) % 2]
        ticks = console.read_log(console_log(cluster, vm_id, node), booted_here=True).ticks
        setting = settings[move % len(settings)]
        try:
            reply = api.ok(
                "POST",
                f"/vms/{vm_id}/actions/migrate",
                json={"target": target, **SETTINGS[setting]},
            )
            task = api.wait_task(reply["task"], timeout=600)
        except BenchError as exc:
            results.append({"move": move + 1, "setting": setting, "failed": str(exc)})
            print(f"{kind} {move + 1}: migration failed: {exc}", flush=True)
            keep_evidence(api, cluster, vm_id, f"{kind}-{move + 1}-failed")
            if [r.get("failed") for r in results[-3:]].count(None) == 0 and move >= 2:
                print(f"{kind}: three failures in a row, the guest is stuck: stopped", flush=True)
                break
            continue  # the VM stays where it was; that is not a corruption
        node = target
        report = checked(console_log(cluster, vm_id, node), booted_here=False)
        problems = report.problems + console.follows(ticks[-1] if ticks else None, report)
        result = task["result"]
        results.append(
            {
                "move": move + 1,
                "setting": setting,
                "downtime_ms": result.get("downtime_ms"),
                "total_ms": result.get("total_ms"),
                "problems": problems[:20],
            }
        )
        if problems:
            keep_evidence(api, cluster, vm_id, f"{kind}-{move + 1}")
        if problems or (move + 1) % 50 == 0:
            mark = "CORRUPT" if problems else "ok"
            print(f"{kind} {move + 1}: {mark}", *problems[:5], sep="\n  ", flush=True)
    return results


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    moved = [r for r in results if "failed" not in r]
    corrupt = [r for r in moved if r["problems"]]
    downtimes = [r["downtime_ms"] for r in moved if r["downtime_ms"] is not None]
    totals = [r["total_ms"] for r in moved if r["total_ms"] is not None]
    return {
        "migrations": len(moved),
        "failed": len(results) - len(moved),
        "corrupted": len(corrupt),
        "corrupted_moves": [(r["move"], r["setting"]) for r in corrupt],
        "downtime_ms": stats(downtimes) if downtimes else {},
        "total_ms": stats(totals) if totals else {},
    }


def run(moves: int, kinds: list[str], settings: list[str], keep: bool) -> dict[str, Any]:
    image = build.variant(HERON_CACHE / "testguest", MEMCHECK)
    work = Path(tempfile.mkdtemp(prefix="hms-"))  # short: QEMU's socket paths are limited
    with running_devcluster(work / "cluster", len(NODES), keep=keep) as (cluster, token):
        api = Api(cluster.nodes[0].url, token, cluster.tls())
        shared = work / "shared"
        shared.mkdir()
        api.ok("POST", "/pools", json={"name": "shared", "path": str(shared), "shared": True})
        api.wait_task(
            api.ok("POST", "/pools/shared/volumes/import", json={"name": "tg", "path": str(image)})[
                "task"
            ]
        )
        if "ardfs" in kinds:
            api.ok("POST", "/pools", json={"name": "hci", "type": "ardfs", "protection": "rf2"})
            for node in cluster.nodes:
                disk = f"{node.state_dir}/ardfs-disk0"
                api.ok("POST", "/pools/hci/disks", json={"node": node.name, "path": disk})
        pools = {"shared": "shared", "local": "local", "ardfs": "hci"}
        vms = {}
        for kind in kinds:
            reply = api.ok(
                "POST",
                "/vms",
                json={
                    "name": f"soak-{kind}",
                    "memory_mib": MEMORY_MIB,
                    "node": NODES[0],
                    "start": True,
                    "disks": [{"pool": pools[kind], "source": "shared/tg"}],
                },
            )
            api.wait_task(reply["task"], timeout=300)
            vms[kind] = reply["vm"]
        for kind, vm_id in vms.items():
            booted = wait_for(
                lambda vm_id=vm_id: (
                    (
                        r := console.read_log(
                            console_log(cluster, vm_id, NODES[0]), booted_here=True
                        )
                    ).verifications
                    >= 2
                    and r
                ),
                BOOT_TIMEOUT,
                f"the {kind} guest to boot",
            )
            if booted.problems:
                raise BenchError(f"the {kind} guest did not boot cleanly: {booted.problems[:3]}")

        found: dict[str, list[dict[str, Any]]] = {}
        errors: list[BaseException] = []

        def worker(kind: str) -> None:
            client = Api(cluster.nodes[0].url, token, cluster.tls())
            try:
                found[kind] = soak(client, cluster, kind, vms[kind], moves, settings)
            except BaseException as exc:
                errors.append(exc)
            finally:
                client.close()

        started = time.monotonic()
        threads = [threading.Thread(target=worker, args=(kind,)) for kind in kinds]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        api.close()
        if errors:
            raise errors[0]
    return {
        "elapsed_s": round(time.monotonic() - started),
        "summary": {kind: summarize(found[kind]) for kind in kinds},
        "moves": found,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.migration_soak", description=__doc__)
    parser.add_argument("--moves", type=int, default=500, help="migrations per storage kind")
    parser.add_argument("--kinds", default="shared,local,ardfs")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="cycled move by move")
    parser.add_argument("--load", type=int, default=0, help="busy processes during the soak")
    parser.add_argument("--keep", action="store_true", help="keep the devcluster's files")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",")
    settings = args.settings.split(",")
    if not set(kinds) <= {"shared", "local", "ardfs"} or not set(settings) <= set(SETTINGS):
        parser.error("unknown storage kind or setting")
    exit_on_sigterm()
    load_before = load_snapshot()
    hogs = cpu_hogs(args.load)
    try:
        results = run(args.moves, kinds, settings, args.keep)
    except BenchError as exc:
        print(f"migration_soak: {exc}", file=sys.stderr)
        return 1
    finally:
        end_hogs(hogs)
    name = NAME + (f"-{args.tag}" if args.tag else "")
    path = write_result(name, vars(args), results, load_before)
    rows = []
    for kind, s in results["summary"].items():
        d, t = s["downtime_ms"], s["total_ms"]
        rows.append(
            (
                kind,
                f"{s['migrations']} moves, {s['corrupted']} corrupted, {s['failed']} failed; "
                f"downtime p50 {d.get('p50')} p99 {d.get('p99')} max {d.get('max')} ms; "
                f"total p50 {t.get('p50')} ms",
            )
        )
    print_rows(f"Live migration soak ({path}, {results['elapsed_s']} s)", rows)
    corrupted = sum(s["corrupted"] for s in results["summary"].values())
    return 0 if corrupted == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
