"""HA failover: a new leader after the leader dies, and an HA VM's serial line after its node dies.

One 3-node devcluster (3 etcd members, 3 agents on loopback) with the test guest imported into a
shared `dir` pool. Two measurements:

* leader failover: the leader's herond is killed with SIGKILL; measured from the kill until
  `GET /api/v1/cluster` on a surviving node names another leader (polled every 10 ms). The
  killed agent is started again and re-registers before the next round. The baseline is the
  election's own timing, `heron.configdb.election.TIMEOUT` (silence after which a follower takes
  over) and `BEAT` (the leader's heartbeat period), with the heartbeat period as measured.
* node failure: an HA VM pinned to a node boots to its READY line; then the whole node dies
  (`DevCluster.kill_node`: SIGKILL of its agent, fence watchdog and QEMUs). Measured from the
  kill until `HERON-GUEST-READY uuid=<id>` is in the VM's console log on the node it was given
  to, split into lease expiry, the controller's margin, the start on the new node and the
  guest's boot. The baseline is the same guest booted on a bare QEMU command line (the helper
  of `bench/vm_boot.py`), in the same rounds, in a shuffled order. The victim node is started
  again and the VM deleted between rounds.

The split comes from a watch on the whole ConfigDB (`/heron/`), run in a thread of this
process, that timestamps every change as it arrives on the same monotonic clock as the kill:
the leader key's heartbeats and takeover, the deletion of the victim's node record (its lease
expired), the VM record naming another node (the leader's decision), the `vm.start` task and
the VM's status turning `running` on the new node (QEMU started). The API-visible figures
(polling `GET /nodes`, `GET /vms/{id}`, `GET /cluster`) are reported beside them.

Run from the repository root: `.venv/bin/python -m bench.ha_failover [--leader-rounds 10]
[--failover-rounds 5] [--victim follower|leader]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    READY_MARKER,
    TESTGUEST,
    Api,
    BenchError,
    Observer,
    Seen,
    exit_on_sigterm,
    line_after,
    load_snapshot,
    ms,
    print_rows,
    ratio,
    running_devcluster,
    shared_testguest,
    stats,
    wait_for,
    write_result,
)
from bench.vm_boot import HERON_DEVICES, bare_boot, qemu_img_convert
from heron.configdb import election as election_module
from heron.configdb import keys
from heron.devcluster import DevCluster
from heron.ha import controller as ha_controller
from heron.ha.fence import BEFORE_EXPIRY
from heron.herond import AgentConfig

NAME = "ha_failover"
NODES = 3
MEMORY_MIB = 128
LEADER_POLL = 0.01  # GET /cluster on a survivor while waiting for the new leader
FAILOVER_POLL = 0.02  # GET /nodes, GET /vms/{id} and the console log while failing over
# Deadlines for a broken run, not judgements on the figures.
LEADER_TIMEOUT = 30.0
FAILOVER_TIMEOUT = 120.0
BOOT_TIMEOUT = 120.0
RESTART_TIMEOUT = 60.0
GOAL_LEADER_S = 1.0  # the goals
GOAL_FAILOVER_S = 10.0


# -- the ConfigDB as it changes --------------------------------------------------------------


def is_leader_put(event: Seen, holder: str | None = None, other_than: str | None = None) -> bool:
    if event.key != keys.LEADER or event.type != "put":
        return False
    candidate = event.value.decode(errors="replace").split(" ", 1)[0]
    if holder is not None and candidate != holder:
        return False
    return other_than is None or candidate != other_than


def heartbeat_intervals(events: list[Seen], beat: float) -> list[float]:
    """Seconds between consecutive writes of the leader key by the same leader (token).

    The gap after a token's first write is left out: a new leader's heartbeat task writes at
    once after the takeover write, a few milliseconds later, and only then every `beat`.
    """
    writes: dict[bytes, list[float]] = {}
    for event in events:
        if is_leader_put(event):
            writes.setdefault(event.value, []).append(event.t)
    gaps = []
    for times in writes.values():
        gaps += [b - a for a, b in itertools.pairwise(times[1:]) if b - a < 10 * beat]
    return gaps


# -- the cluster -----------------------------------------------------------------------------


@dataclass
class Cluster:
    dc: DevCluster
    apis: dict[str, Api]
    observer: Observer

    def api_other_than(self, *names: str) -> Api:
        """A client on a node not among `names` (its agent runs)."""
        return next(api for name, api in self.apis.items() if name not in names)

    def leader(self, api: Api) -> str:
        return str(
            wait_for(lambda: api.ok("GET", "/cluster")["leader"], LEADER_TIMEOUT, "a leader")
        )

    def console(self, node: str, vm_id: str) -> Path:
        return Path(self.dc.node(node).state_dir) / "vms" / vm_id / "console.log"

    def restart(self, name: str, killed_at_wall: float) -> float:
        """Start a killed node's agent; returns seconds until it registered again."""
        start = time.monotonic()
        self.dc.start_node(name)
        self.dc.wait_api(self.dc.node(name), RESTART_TIMEOUT)
        api = self.api_other_than(name)

        def registered() -> bool:
            # started_at tells the new registration from the old record, whose lease may live on.
            nodes = api.ok("GET", "/nodes")
            return any(n["name"] == name and n["started_at"] > killed_at_wall for n in nodes)

        wait_for(registered, RESTART_TIMEOUT, f"{name} to register again", interval=0.05)
        return time.monotonic() - start


# -- leader failover -------------------------------------------------------------------------


def leader_round(cluster: Cluster, index: int) -> dict[str, Any]:
    dc, observer = cluster.dc, cluster.observer
    leader = cluster.leader(cluster.api_other_than())

    # The leader has been beating for a while (its election settled) before it is killed. This
    # holds at once after the previous round's restart, so the kill falls at a random point
    # of the heartbeat period, as a real failure would; waiting here for a fresh heartbeat
    # would put every kill just after one, the worst case (measured apart as the silence).
    def settled() -> bool:
        puts = [e for e in observer.snapshot() if is_leader_put(e)]
        if not puts or not is_leader_put(puts[-1], holder=leader):
            return False
        return sum(1 for e in puts if e.value == puts[-1].value) >= 3  # this term's writes

    wait_for(settled, 10, f"heartbeats of {leader}", interval=0.01)
    survivor = cluster.api_other_than(leader)
    pid = dc.herond_pid(dc.node(leader))
    if pid is None:
        raise BenchError(f"no herond runs for the leader {leader}")
    wall = time.time()
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    def new_leader() -> str | None:
        found = survivor.ok("GET", "/cluster")["leader"]
        return found if found not in (None, leader) else None

    successor = wait_for(new_leader, LEADER_TIMEOUT, "a new leader", interval=LEADER_POLL)
    api_s = time.monotonic() - killed
    takeover = observer.find(
        lambda e: is_leader_put(e, other_than=leader), killed, 10, "the takeover in the watch"
    )
    last_beat = observer.last(lambda e: is_leader_put(e, holder=leader), killed)
    if last_beat is None:
        raise BenchError(f"no heartbeat of {leader} seen before the kill")
    restart_s = cluster.restart(leader, wall)
    found = {
        "killed": leader,
        "new_leader": successor,
        "kill_to_api_s": api_s,
        "kill_to_takeover_s": takeover.t - killed,
        "last_beat_to_kill_s": killed - last_beat.t,
        "silence_s": takeover.t - last_beat.t,  # last heartbeat -> takeover write
        "restart_to_registered_s": restart_s,
    }
    print(
        f"  leader round {index}: {leader} killed, {successor} leads after "
        f"{api_s * 1000:.0f} ms (API), {found['kill_to_takeover_s'] * 1000:.0f} ms (watch); "
        f"silence since its last heartbeat {found['silence_s'] * 1000:.0f} ms",
        flush=True,
    )
    return found


# -- node failure ----------------------------------------------------------------------------


def create_ha_vm(api: Api, name: str, node: str) -> tuple[str, float]:
    """Create and start an HA VM on `node`; returns its id and seconds until the task ended."""
    body = {
        "name": name,
        "memory_mib": MEMORY_MIB,
        "node": node,
        "start": True,
        "ha": {"enabled": True},
        "disks": [{"pool": "shared", "source": "shared/testguest"}],
    }
    start = time.monotonic()
    reply = api.ok("POST", "/vms", json=body)
    api.wait_task(reply["task"])
    return str(reply["vm"]), time.monotonic() - start


def choose_victim(cluster: Cluster, index: int, kind: str) -> tuple[str, str]:
    leader = cluster.leader(cluster.api_other_than())
    if kind == "leader":
        return leader, leader
    followers = sorted(n for n in cluster.apis if n != leader)
    return followers[index % len(followers)], leader


def failover_round(cluster: Cluster, index: int, victim_kind: str) -> dict[str, Any]:
    dc, observer = cluster.dc, cluster.observer
    victim, leader = choose_victim(cluster, index, victim_kind)
    # Create through, and later poll, a node that survives (the leader unless it is the victim).
    api = cluster.apis[leader] if leader != victim else cluster.api_other_than(victim)
    created = time.monotonic()
    vm_id, create_s = create_ha_vm(api, f"bench-ha-{index}", victim)
    marker = f"{READY_MARKER} uuid={vm_id}"
    wait_for(
        lambda: line_after(cluster.console(victim, vm_id), marker),
        BOOT_TIMEOUT,
        f"the first boot of VM {vm_id} on {victim}",
        interval=FAILOVER_POLL,
    )
    create_to_ready_s = time.monotonic() - created

    wall = time.time()
    killed = time.monotonic()
    dc.kill_node(victim)

    seen: dict[str, float] = {}
    target: str | None = None

    def progress() -> bool:
        """One poll: each API moment is stamped when the reply that shows it has arrived."""
        nonlocal target
        if "node_gone_api" not in seen:
            names = {n["name"] for n in api.ok("GET", "/nodes")}
            if victim not in names:
                seen["node_gone_api"] = time.monotonic()
        if "node_gone_api" in seen and "moved_api" not in seen:
            vm = api.ok("GET", f"/vms/{vm_id}")
            if vm["node"] != victim:
                seen["moved_api"] = time.monotonic()
                target = str(vm["node"])
        if target is not None and line_after(cluster.console(target, vm_id), marker):
            seen["ready"] = time.monotonic()
            return True
        return False

    wait_for(progress, FAILOVER_TIMEOUT, f"VM {vm_id}'s READY line after failover", FAILOVER_POLL)
    if target is None:
        raise BenchError("READY without a new node")  # cannot happen: progress() sets it first

    # The same moments as the ConfigDB saw them (all happened by now: no waiting in practice).
    gone = observer.find(
        lambda e: e.key == keys.node(victim) and e.type == "delete", killed, 10, "lease expiry"
    )
    moved = observer.find(
        lambda e: e.key == keys.vm(vm_id) and e.type == "put" and e.record().get("node") == target,
        killed,
        10,
        "the VM record naming the new node",
    )
    claimed = observer.find(
        lambda e: (
            e.key.startswith(keys.TASKS)
            and e.record().get("target") == vm_id
            and e.record().get("kind") == "vm.start"
            and e.record().get("state") == "running"
        ),
        moved.t,
        10,
        "the HA vm.start task claimed by the new node",
    )
    running = observer.find(
        lambda e: (
            e.key == keys.vm_status(vm_id)
            and e.type == "put"
            and e.record().get("node") == target
            and e.record().get("state") == "running"
        ),
        killed,
        10,
        "the VM's status running on the new node",
    )
    ha_task = claimed.record()
    vm_after = api.ok("GET", f"/vms/{vm_id}")
    if vm_after["state"] != "running":
        raise BenchError(f"VM {vm_id} is {vm_after['state']} on {target} after failover")

    restart_s = cluster.restart(victim, wall)
    # The victim is back: the VM must stay where HA put it, with one QEMU.
    after_restart = api.ok("GET", f"/vms/{vm_id}")
    still_there = after_restart["node"] == target and after_restart["state"] == "running"
    qemus_on_victim = vm_id in dc.qemu_pids(victim)
    reply = api.ok("DELETE", f"/vms/{vm_id}", params={"volumes": "true"})
    api.wait_task(reply["task"])

    found = {
        "victim": victim,
        "victim_was_leader": victim == leader,
        "leader": leader,
        "target": target,
        "vm": vm_id,
        "create_task_s": create_s,
        "create_to_ready_s": create_to_ready_s,  # the first boot, on the victim
        "kill_to_ready_s": seen["ready"] - killed,
        # as the ConfigDB saw it
        "lease_expiry_s": gone.t - killed,
        "margin_s": moved.t - gone.t,
        "start_s": running.t - moved.t,
        "task_claim_s": claimed.t - moved.t,
        "guest_boot_s": seen["ready"] - running.t,
        "kill_to_decision_s": moved.t - killed,
        "kill_to_qemu_running_s": running.t - killed,
        # as the API showed it
        "kill_to_node_gone_api_s": seen["node_gone_api"] - killed,
        "kill_to_moved_api_s": seen["moved_api"] - killed,
        "ha_task": ha_task.get("id"),
        "restart_to_registered_s": restart_s,
        "vm_stayed_after_victim_restart": still_there,
        "qemu_on_victim_after_restart": qemus_on_victim,
    }
    print(
        f"    failover: {victim}{' (leader)' if victim == leader else ''} killed, VM on {target}: "
        f"READY after {found['kill_to_ready_s']:.2f}s = lease {found['lease_expiry_s']:.2f}s "
        f"+ margin {found['margin_s']:.2f}s + start {found['start_s']:.2f}s "
        f"+ boot {found['guest_boot_s']:.2f}s",
        flush=True,
    )
    return found


# -- the run ---------------------------------------------------------------------------------


def measure(
    work: Path, leader_rounds: int, failover_rounds: int, victim: str, keep: bool
) -> dict[str, Any]:
    with running_devcluster(work / "cluster", NODES, keep=keep) as (dc, token):
        apis = {n.name: Api(n.url, token, dc.tls()) for n in dc.nodes}
        observer = Observer(dc.endpoints)
        try:
            observer.start()
            cluster = Cluster(dc, apis, observer)
            shared_testguest(cluster.api_other_than(), work)
            master = work / "master.qcow2"
            qemu_img_convert(TESTGUEST, master)

            t0 = time.monotonic()
            leader = [leader_round(cluster, i) for i in range(leader_rounds)]
            beats = heartbeat_intervals(
                [e for e in observer.snapshot() if e.t >= t0], election_module.BEAT
            )

            bare_boot(work, master, "warmup", [])  # page cache, not counted
            failover: list[dict[str, Any]] = []
            for index in range(failover_rounds):
                steps: dict[str, Callable[[], dict[str, Any]]] = {
                    "failover": lambda index=index: failover_round(cluster, index, victim),
                    "bare": lambda index=index: bare_boot(work, master, f"{index}", []),
                    "bare_heron_devices": lambda index=index: bare_boot(
                        work, master, f"{index}-devices", HERON_DEVICES
                    ),
                }
                order = list(steps)
                random.Random(index).shuffle(order)
                print(f"  failover round {index} ({', '.join(order)})", flush=True)
                found = {name: steps[name]() for name in order}
                print(
                    f"    bare boot {found['bare']['boot_s']:.2f}s, "
                    f"with Heron's devices {found['bare_heron_devices']['boot_s']:.2f}s",
                    flush=True,
                )
                failover.append({"order": order, **found})
        finally:
            observer.stop()
            for api in apis.values():
                api.close()
    return {"leader_rounds": leader, "heartbeat_intervals_s": beats, "failover_rounds": failover}


def summarize(raw: dict[str, Any], constants: dict[str, Any]) -> dict[str, Any]:
    timeout = constants["election_timeout_s"]
    leader = raw["leader_rounds"]

    def lseries(field: str) -> list[float]:
        return [r[field] for r in leader]

    leader_summary: dict[str, Any] = {
        "kill_to_new_leader_api_ms": stats(ms(lseries("kill_to_api_s")), 1),
        "kill_to_takeover_watch_ms": stats(ms(lseries("kill_to_takeover_s")), 1),
        "last_beat_to_kill_ms": stats(ms(lseries("last_beat_to_kill_s")), 1),
        "silence_to_takeover_ms": stats(ms(lseries("silence_s")), 1),
        "heartbeat_interval_ms": stats(ms(raw["heartbeat_intervals_s"]), 1),
        "restart_to_registered_s": stats(lseries("restart_to_registered_s"), 2),
    }
    api_ms = leader_summary["kill_to_new_leader_api_ms"]
    leader_summary["ratios"] = {
        "new_leader_api_vs_timeout_p50": ratio(api_ms["p50"] / 1000, timeout),
        "new_leader_api_vs_timeout_max": ratio(api_ms["max"] / 1000, timeout),
        "silence_vs_timeout_p50": ratio(
            leader_summary["silence_to_takeover_ms"]["p50"] / 1000, timeout
        ),
        "heartbeat_vs_beat_p50": ratio(
            leader_summary["heartbeat_interval_ms"]["p50"] / 1000, constants["election_beat_s"]
        ),
    }
    leader_summary["within_goal"] = sum(1 for v in lseries("kill_to_api_s") if v <= GOAL_LEADER_S)

    rounds = raw["failover_rounds"]

    def fseries(field: str) -> list[float]:
        return [r["failover"][field] for r in rounds]

    bare = [r["bare"]["boot_s"] for r in rounds]
    devices = [r["bare_heron_devices"]["boot_s"] for r in rounds]
    fields = [
        "kill_to_ready_s",
        "lease_expiry_s",
        "margin_s",
        "start_s",
        "task_claim_s",
        "guest_boot_s",
        "kill_to_decision_s",
        "kill_to_qemu_running_s",
        "kill_to_node_gone_api_s",
        "kill_to_moved_api_s",
        "restart_to_registered_s",
        "create_task_s",
        "create_to_ready_s",
    ]
    failover_summary: dict[str, Any] = {f: stats(fseries(f), 3) for f in fields}
    failover_summary["bare_boot_s"] = stats(bare, 3)
    failover_summary["bare_heron_devices_boot_s"] = stats(devices, 3)
    p50 = {k: v["p50"] for k, v in failover_summary.items()}
    failover_summary["ratios"] = {
        "kill_to_ready_vs_bare_boot_p50": ratio(p50["kill_to_ready_s"], p50["bare_boot_s"]),
        "kill_to_ready_vs_bare_heron_devices_p50": ratio(
            p50["kill_to_ready_s"], p50["bare_heron_devices_boot_s"]
        ),
        "guest_boot_vs_bare_heron_devices_p50": ratio(
            p50["guest_boot_s"], p50["bare_heron_devices_boot_s"]
        ),
    }
    failover_summary["detection_plus_start_minus_bare_p50_s"] = round(
        p50["kill_to_ready_s"] - p50["bare_boot_s"], 3
    )
    failover_summary["within_goal"] = sum(
        1 for v in fseries("kill_to_ready_s") if v <= GOAL_FAILOVER_S
    )
    failover_summary["checks"] = {
        "vm_stayed_after_victim_restart": all(
            r["failover"]["vm_stayed_after_victim_restart"] for r in rounds
        ),
        "no_qemu_on_victim_after_restart": not any(
            r["failover"]["qemu_on_victim_after_restart"] for r in rounds
        ),
    }
    return {"leader": leader_summary, "failover": failover_summary}


def constants() -> dict[str, Any]:
    lease_ttl = next(f.default for f in dataclasses.fields(AgentConfig) if f.name == "lease_ttl")
    return {
        "election_beat_s": election_module.BEAT,
        "election_timeout_s": election_module.TIMEOUT,
        "lease_ttl_s": lease_ttl,
        "fence_deadline_s": lease_ttl - BEFORE_EXPIRY,
        "ha_margin_s": ha_controller.MARGIN,
        "ha_controller_tick_s": ha_controller._TICK,
    }


def run(
    leader_rounds: int, failover_rounds: int, victim: str, keep: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    if not TESTGUEST.exists():
        raise BenchError(f"no test guest at {TESTGUEST}: run scripts/install-deps")
    work = Path(tempfile.mkdtemp(prefix="heron-bench-ha-"))
    try:
        raw = measure(work, leader_rounds, failover_rounds, victim, keep)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    fixed = constants()
    return {"summary": summarize(raw, fixed), **raw}, fixed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leader-rounds", type=int, default=10, help="leader kills")
    parser.add_argument("--failover-rounds", type=int, default=5, help="node kills")
    parser.add_argument(
        "--victim",
        choices=["follower", "leader"],
        default="follower",
        help="which node dies in the node-failure rounds (followers take turns)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.leader_rounds < 1 or args.failover_rounds < 1:
        parser.error("at least one round of each")
    exit_on_sigterm()
    load = load_snapshot()
    results, fixed = run(args.leader_rounds, args.failover_rounds, args.victim, args.keep)
    params = {
        "leader_rounds": args.leader_rounds,
        "failover_rounds": args.failover_rounds,
        "victim": args.victim,
        "memory_mib": MEMORY_MIB,
        "nodes": NODES,
        "constants": fixed,
    }
    path = write_result(NAME, params, results, load)
    s = results["summary"]
    lead, fail = s["leader"], s["failover"]

    def msfmt(key: str) -> str:
        v = lead[key]
        return (
            f"min {v['min']:.0f}  median {v['p50']:.0f}  p90 {v['p90']:.0f}  max {v['max']:.0f} ms"
        )

    def sfmt(key: str) -> str:
        v = fail[key]
        return (
            f"min {v['min']:.2f}  median {v['p50']:.2f}  p90 {v['p90']:.2f}  max {v['max']:.2f} s"
        )

    print_rows(
        f"ha_failover ({args.leader_rounds} leader kills, {args.failover_rounds} node kills)",
        [
            (
                "election TIMEOUT / BEAT",
                f"{fixed['election_timeout_s']} s / {fixed['election_beat_s']} s",
            ),
            ("heartbeat period measured", msfmt("heartbeat_interval_ms")),
            ("kill -> new leader (API)", msfmt("kill_to_new_leader_api_ms")),
            ("kill -> takeover (watch)", msfmt("kill_to_takeover_watch_ms")),
            ("last heartbeat -> takeover", msfmt("silence_to_takeover_ms")),
            (
                "new leader / TIMEOUT",
                f"{lead['ratios']['new_leader_api_vs_timeout_p50']}x median, "
                f"{lead['ratios']['new_leader_api_vs_timeout_max']}x max; "
                f"{lead['within_goal']}/{args.leader_rounds} within {GOAL_LEADER_S:.0f} s",
            ),
            ("bare qemu boot (baseline)", sfmt("bare_boot_s")),
            ("bare, Heron's devices", sfmt("bare_heron_devices_boot_s")),
            ("node kill -> READY on new node", sfmt("kill_to_ready_s")),
            ("  lease expiry (node gone)", sfmt("lease_expiry_s")),
            ("  + margin (VM reassigned)", sfmt("margin_s")),
            ("  + start (QEMU running)", sfmt("start_s")),
            ("  + guest boot", sfmt("guest_boot_s")),
            ("kill -> gone from GET /nodes", sfmt("kill_to_node_gone_api_s")),
            ("kill -> GET /vms/{id} moved", sfmt("kill_to_moved_api_s")),
            (
                "kill->READY / bare boot",
                f"{fail['ratios']['kill_to_ready_vs_bare_boot_p50']}x median; "
                f"{fail['within_goal']}/{args.failover_rounds} within {GOAL_FAILOVER_S:.0f} s",
            ),
            ("checks", json.dumps(fail["checks"])),
            ("results", str(path)),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
