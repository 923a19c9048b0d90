"""DRS on measured demand: a CPU-bound guest on a busy node moves, idle guests with more
memory do not.

A 3-node devcluster (nodes of 4 GiB); on node1 four test guests from a shared pool: two that
spin a CPU (`hog*`, 256 MiB) and two idle ones given more memory (`idle*`, 768 MiB); node2 and
node3 run nothing. DRS in mode advise is asked for its move twice over the same placement:

* baseline, basis `allocated` (Heron's balancing before measured demand, and what a
  memory-only balancer does): it proposes an idle guest, the most memory to take off node1;
* basis `demand`: once every node has published a minute of measurements, it proposes a
  CPU-bound guest, the CPU node1's guests want being the larger imbalance.

Then DRS runs automatic on demand until it stops: each decision, with its reason, and the
placement it leaves are recorded. Pass: every move is of a hog, no idle guest moved, and the
CPU-demand imbalance fell. Ratios, not seconds: the imbalance after against before.

The devcluster's nodes share this machine's cores, so node1's hogs slow every node; the
balancer reads each node's VMs' own figures (CPU time and run delay of their QEMUs), which
stay the VM's whatever else runs.

Run from the repository root: `.venv/bin/python -m bench.drs_demand`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    READY_MARKER,
    TESTGUEST,
    Api,
    BenchError,
    exit_on_sigterm,
    line_after,
    load_snapshot,
    print_rows,
    ratio,
    running_devcluster,
    shared_testguest,
    wait_for,
    write_result,
)
from heron.testguest.net import CommandChannel

GUESTS = {"hog1": 256, "hog2": 256, "idle1": 768, "idle2": 768}
NODE_MEMORY_MIB = 4096  # node1's guests are given half of it
SPIN = "sh -c 'while :; do :; done' >/dev/null 2>&1 &"
BOOT_TIMEOUT = 300.0
MEASURED_TIMEOUT = 180.0  # half a minute per write, a minute's window, slow rounds
SETTLE_TIMEOUT = 600.0


def drs(api: Api) -> dict[str, Any]:
    return api.ok("GET", "/cluster/drs")


def placement(api: Api) -> dict[str, str]:
    return {v["name"]: v["node"] for v in api.ok("GET", "/vms")}


def settings(api: Api, **changes: Any) -> None:
    current = api.ok("GET", "/cluster/settings")
    wanted = {k: v for k, v in current["drs"].items() if k != "enabled"} | changes
    api.ok("PUT", "/cluster/settings", json={**current, "drs": wanted})


def loads(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        n["node"]: {k: n[k] for k in ("cpu_demand", "memory_demand_mib", "memory_used_mib")}
        for n in status["loads"]
    }


def run(work: Path) -> dict[str, Any]:
    if not TESTGUEST.exists():
        raise BenchError(f"no test guest at {TESTGUEST}: run scripts/install-deps")
    with running_devcluster(work / "cluster", 3, memory_mib=NODE_MEMORY_MIB) as (cluster, token):
        api = Api(cluster.nodes[0].url, token, cluster.tls())
        shared_testguest(api, work)
        settings(api, mode="advise", basis="allocated", threshold=0.2, interval=5, hysteresis=1)
        ids = {}
        for name, memory in GUESTS.items():
            reply = api.ok(
                "POST",
                "/vms",
                json={"name": name, "memory_mib": memory, "node": "node1", "start": True,
                      "disks": [{"pool": "shared", "source": "shared/testguest"}]},
            )  # fmt: skip
            api.wait_task(reply["task"])
            ids[name] = reply["vm"]
        state = Path(cluster.nodes[0].state_dir)
        for name, vm in ids.items():
            log = state / "vms" / vm / "console.log"
            wait_for(lambda log=log: line_after(log, READY_MARKER), BOOT_TIMEOUT, f"{name} boot", 1)
        for name in ("hog1", "hog2"):
            with CommandChannel(state / "vms" / ids[name] / "serial.sock") as console:
                result = console.run(SPIN, 60)
                if result.rc != 0:
                    raise BenchError(f"{name}: the spinning loop did not start: {result.output}")

        allocated = drs(api)
        if allocated["proposal"] is None:
            raise BenchError(f"basis allocated proposes nothing: {allocated['why_none']}")
        settings(api, basis="demand")
        started = time.monotonic()

        def measured() -> dict[str, Any] | None:
            status = drs(api)
            cpu = (loads(status).get("node1") or {}).get("cpu_demand") or 0
            # A minute's window: wait until the hogs' spinning fills it.
            return status if status["basis"] == "demand" and cpu > 1.0 else None

        demand = wait_for(measured, MEASURED_TIMEOUT, "measured demand of node1's guests", 2)
        measured_after_s = time.monotonic() - started
        if demand["proposal"] is None:
            raise BenchError(f"basis demand proposes nothing: {demand['why_none']}")

        settings(api, mode="automatic")

        def settled() -> dict[str, Any] | None:
            status = drs(api)
            busy = [t for t in api.ok("GET", "/tasks") if t["kind"] == "vm.migrate"
                    and t["state"] not in ("succeeded", "failed", "cancelled")]  # fmt: skip
            done = status["decisions"] and status["proposal"] is None and not busy
            return status if done else None

        final = wait_for(settled, SETTLE_TIMEOUT, "DRS to stop moving", 5)
        settings(api, mode="off")
        where = placement(api)
        api.close()
    moved = sorted({d["vm_name"] for d in final["decisions"]})
    before_spread, after_spread = demand["spread"], final["spread"]
    return {
        "allocated_proposal": allocated["proposal"]["vm_name"],
        "allocated_explanation": allocated["proposal"]["explanation"],
        "demand_proposal": demand["proposal"]["vm_name"],
        "demand_explanation": demand["proposal"]["explanation"],
        "measured_after_s": round(measured_after_s, 1),
        "loads_before": loads(demand),
        "loads_after": loads(final),
        "decisions": [
            {k: d[k] for k in ("vm_name", "source", "destination", "reason")}
            for d in reversed(final["decisions"])
        ],
        "moved": moved,
        "placement_after": where,
        "imbalance_before": round(before_spread, 3),
        "imbalance_after": round(after_spread, 3),
        "imbalance_after_to_before": ratio(after_spread, before_spread),
        "pass": (
            allocated["proposal"]["vm_name"].startswith("idle")
            and demand["proposal"]["vm_name"].startswith("hog")
            and bool(moved)
            and all(name.startswith("hog") for name in moved)
            and where["idle1"] == where["idle2"] == "node1"
            and after_spread < before_spread
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    exit_on_sigterm()
    load_before = load_snapshot()
    with tempfile.TemporaryDirectory(prefix="hbd-") as tmp:
        results = run(Path(tmp))
    path = write_result("drs_demand", {"guests": GUESTS}, results, load_before)
    print_rows(
        "DRS on measured demand (node1: two CPU-bound guests of 256 MiB, two idle of 768 MiB)",
        [
            ("basis allocated proposes", results["allocated_proposal"]),
            ("basis demand proposes", results["demand_proposal"]),
            ("moved (automatic)", ", ".join(results["moved"])),
            ("placement after", str(results["placement_after"])),
            (
                "CPU imbalance before -> after",
                f"{results['imbalance_before']:.0%} -> {results['imbalance_after']:.0%}",
            ),
            ("pass", str(results["pass"])),
            ("results", str(path)),
        ],
    )
    if not results["pass"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
