"""Run every benchmark, one after the other, and write `bench/results/summary.json`.

Each benchmark runs in a process of its own, so one that fails (its error is recorded) does not
stop the others and leaves nothing behind in this one. The summary holds the headline figures
and ratios of each; the full results stay in `bench/results/<name>.json`.

Run from the repository root: `.venv/bin/python -m bench.run_all [--only vm_boot ...]`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from typing import Any

from bench.common import RESULTS_DIR, ROOT, machine_info

BENCHMARKS = [
    "vm_boot",
    "api_list",
    "configdb_propagation",
    "ha_failover",
    "migration",
    "scale",
    "ardfs",
    "network",
    "clones",
    "snapshot_freeze",
]
DEADLINE = 900  # seconds for one benchmark before it is killed: a hung run, not a slow one


def headline(name: str, results: dict[str, Any]) -> dict[str, Any]:
    """The figures worth a line in the summary."""
    if name == "vm_boot":
        s = results["summary"]
        return {
            "bare_boot_s": {k: s["bare_boot_s"][k] for k in ("p50", "p90")},
            "heron_create_to_ready_s": {k: s["heron_create_to_ready_s"][k] for k in ("p50", "p90")},
            "heron_start_to_ready_s": {k: s["heron_start_to_ready_s"][k] for k in ("p50", "p90")},
            "ratios": s["ratios"],
        }
    if name == "api_list":
        return {
            "list_vms_ms": {k: results["list_vms_ms"][k] for k in ("p50", "p99")},
            "whoami_ms": {k: results["whoami_ms"][k] for k in ("p50", "p99")},
            "ratios": results["ratios"],
            "creates_per_s": results["define"]["creates_per_s"],
        }
    if name == "configdb_propagation":
        return {
            scenario: {
                "put_rtt_ms": {k: r["put_rtt_ms"][k] for k in ("p50", "p99")},
                "propagation_ms": {k: r["propagation_ms"][k] for k in ("p50", "p99")},
                "ratios": r["ratios"],
            }
            for scenario, r in results.items()
        }
    if name == "ha_failover":
        lead, fail = results["summary"]["leader"], results["summary"]["failover"]
        return {
            "kill_to_new_leader_ms": {
                k: lead["kill_to_new_leader_api_ms"][k] for k in ("p50", "max")
            },
            "leader_ratios": lead["ratios"],
            "node_kill_to_ready_s": {k: fail["kill_to_ready_s"][k] for k in ("p50", "max")},
            "node_kill_to_qemu_running_s": {
                k: fail["kill_to_qemu_running_s"][k] for k in ("p50", "max")
            },
            "bare_boot_s": {k: fail["bare_boot_s"][k] for k in ("p50", "max")},
            "failover_ratios": fail["ratios"],
        }
    if name == "migration":
        found: dict[str, Any] = {
            disk: {
                "heron_total_s": {k: part["heron_total_s"][k] for k in ("p50", "p90")},
                "bare_total_s": {k: part["bare_total_s"][k] for k in ("p50", "p90")},
                "heron_downtime_ms": {k: part["heron_downtime_ms"][k] for k in ("p50", "p90")},
                "bare_downtime_ms": {k: part["bare_downtime_ms"][k] for k in ("p50", "p90")},
                "ratios": part["ratios"],
                "continued": part["continued"],
            }
            for disk, part in results["summary"].items()
            if disk != "ardfs"
        }
        ardfs = results["summary"]["ardfs"]
        found["ardfs"] = {
            "heron_total_s": ardfs["heron_total_s"]["p50"],
            "heron_downtime_ms": ardfs["heron_downtime_ms"]["p50"],
            "ratios_to_bare_shared": ardfs["ratios_to_bare_shared"],
        }
        return found
    if name == "ardfs":
        return {
            "ratios_to_local": results["ratios_to_local"],
            "tls_to_plain": results.get("tls_to_plain"),
            "rebuild": results["rebuild"],
        }
    if name == "network":
        s = results["summary"]
        keys = ("throughput_ratio", "rtt_ratio", "migration_pings_lost", "port_groups_ratio")
        return {k: s[k] for k in keys}
    if name == "clones":
        c, m = results["clone"], results["mass"]
        return {
            "linked_32g_vs_1g": c["linked_32g_vs_1g"],
            "full_32g_vs_1g": c["full_32g_vs_1g"],
            "linked_1g_ratio_p50": c["linked_1g"]["ratio_p50"],
            "clones_per_s": m["clones_per_s"],
            "mass_ratio_until_done": m["ratio_until_done"],
        }
    if name == "snapshot_freeze":
        return {
            "heron_freeze_ms": {k: results["heron_freeze_ms"][k] for k in ("p50", "max")},
            "bare_freeze_ms": {k: results["bare_freeze_ms"][k] for k in ("p50", "max")},
            "ratios": results["ratios"],
        }
    if name == "scale":
        windows = {
            "real_nodes": results["window_real_nodes"],
            "all_nodes": results["window_all_nodes"],
            "all_nodes_all_vms": results["window_all_nodes_all_vms"],
        }
        detection = results["failure_detection"]["last_renewal_to_decision_s"] or {}
        return {
            "etcd_cpu_pct": {k: w["etcd_cpu_pct_total"] for k, w in windows.items()},
            "keepalives_per_s": {k: w["keepalive_msgs_per_s"] for k, w in windows.items()},
            "failure_detection_s": {k: detection.get(k) for k in ("p50", "max")},
            "failure_detection_decided": results["failure_detection"]["decided"],
            "ha_step_cpu_ms": results["cost_loaded"]["ha_step_cpu_ms"]["p50"],
            "creates_per_s": {
                "baseline": results["placement_baseline"]["creates_per_s"],
                "loaded": results["placement_loaded"]["creates_per_s"],
            },
            "ratios": results["ratios"],
        }
    return {}


def run_one(name: str) -> dict[str, Any]:
    print(f"== {name}", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", f"bench.{name}"], cwd=ROOT)
    code: int | str
    try:
        code = proc.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the benchmark's clean-up (devcluster down, QEMUs) runs on it.
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        code = f"stopped after {DEADLINE}s"
    entry: dict[str, Any] = {"exit": code, "duration_s": round(time.monotonic() - started, 1)}
    path = RESULTS_DIR / f"{name}.json"
    if code == 0 and path.exists():
        document = json.loads(path.read_text())
        entry.update(ok=True, date=document["date"], headline=headline(name, document["results"]))
    else:
        entry["ok"] = False
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run just these")
    args = parser.parse_args(argv)
    chosen = args.only or BENCHMARKS
    summary: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "benchmarks": {},
    }
    for name in chosen:
        summary["benchmarks"][name] = run_one(name)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    failed = [n for n, e in summary["benchmarks"].items() if not e["ok"]]
    print(f"summary: {path}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
