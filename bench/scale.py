"""Scale: 1024 nodes (3 real agents, 1021 simulated) and 10 000 VMs on a real 3-member etcd.

A 3-node devcluster (3 etcd members, 3 herond agents on loopback) provides the API, the leader
and its HA controller. The other 1021 nodes are simulated in worker processes of this module:
each is `heron.agent.registration.LeaseKeeper` itself, the agent's own code, putting a Node
record under a lease with herond's TTL (3 s) and renewing it every TTL/6 s. The workers hold a
few `ConfigDB` clients, made as herond makes its own (all etcd endpoints, gRPC's `ipv4:`
target). Simulated nodes run no QEMU and no task runner: the tasks addressed to them stay
queued. VMs beyond those placed through the API are written straight into etcd (the VM record,
its name index and a status record, as their node would have written), spread over the
simulated nodes, stopped, 256 MiB each.

The run, in one go, each figure with its baseline from the same run:

1. Placement baseline: 1000 `POST /api/v1/vms` (no disks, `start: false`, 12 concurrent
   clients spread over the three nodes, as `bench/api_list.py`) with only the 3 real nodes and
   no other VMs; timed until the last reply and until every `vm.create` task was carried out.
2. Heartbeat load: etcd's CPU (`/proc/<pid>/stat` of each member), its keepalive messages per
   second and its traffic (its `/metrics`) over a window with only the 3 real nodes, then over a
   window with all 1024 nodes renewing (same 1000 VMs), then again once 9000 more VMs are stored
   (10 000 in all). The workers report whether the renewals kept up: the gaps between a node's
   renewals against the period, the fence watchdog's deadline (TTL-0.5 s) and the TTL, the time
   each renewal call took, and how late their own event loop ran (a simulation artefact if
   high). Leader-key silences longer than the election timeout, node leases that expired and
   the real nodes' fence-deadline misses (their `fence.log`) are counted in every window.
3. Failure detection: the simulated node holding a running HA VM stops renewing (just after a
   renewal); measured on one monotonic clock from that last renewal until etcd deletes the node
   record (lease expiry) and until the leader's HA controller writes the VM record with another
   node (its decision; the `vm.start` task it addresses to a simulated node is not carried out).
   Baseline: the lease TTL plus `heron.ha.controller.MARGIN`. A round with no decision within
   30 s is recorded as such. One HA controller step (`FailoverController.step`, read-only here)
   and the placement computation of a create (`node_loads` + `choose_node`) are timed in this
   process, wall and CPU time, with 1000 VMs on 3 nodes and with 10 000 VMs on 1024 nodes.
4. Placement under load: more `POST /api/v1/vms` as in 1., now with 1024 nodes and 10 000 VMs
   in etcd, until 1000 are placed or the time budget (`--place-budget`) is spent (requests in
   flight then still finish); creates/s until the last reply against the baseline's. Refused
   creates (e.g. 503) are counted, not retried.

Run from the repository root: `.venv/bin/python -m bench.scale [--nodes 1024 --vms 10000
--place 1000 --place-budget 30 --window 15 --rounds 3 --workers 2 --clients 4]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import queue
import random
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import heron
from bench.common import (
    ROOT,
    Api,
    BenchError,
    Observer,
    Seen,
    exit_on_sigterm,
    load_snapshot,
    ms,
    print_rows,
    ratio,
    running_devcluster,
    stats,
    wait_for,
    write_result,
)
from heron.agent import registration as registration_module
from heron.audit import AuditLog
from heron.configdb import ConfigDB, Txn, keys
from heron.configdb import election as election_module
from heron.configdb.election import Election
from heron.configdb.etcd import EtcdMember
from heron.configdb.lease import LeaseKeeper
from heron.devcluster import DevCluster
from heron.ha import controller as ha_controller
from heron.ha.fence import BEFORE_EXPIRY
from heron.herond import AgentConfig
from heron.models.common import new_id
from heron.models.node import Node
from heron.models.vm import VM, HAPolicy, PowerState, RunState, VMSpec, VMStatus
from heron.scheduler.inventory import Inventory
from heron.scheduler.placement import choose_node, node_loads

NAME = "scale"
REAL_NODES = 3
CONCURRENCY = 12  # four API clients per real node, as bench/api_list.py
TTL = AgentConfig.__dataclass_fields__["lease_ttl"].default  # herond's default, 3 s
SIM_CPUS = 32
SIM_MEMORY_MIB = 256 * 1024
VM_MEMORY_MIB = 256
TXN_VMS = 40  # VMs per etcd transaction: 3 puts each, under etcd's 128 operations
WRITE_PARALLEL = 4
STEP_SAMPLES = 5
COMPUTE_SAMPLES = 3
# Deadlines for a broken run, not judgements on the figures.
WORKER_TIMEOUT = 120.0
EXPIRY_TIMEOUT = 30.0
DECISION_TIMEOUT = 30.0
SETTLE_TIMEOUT = 300.0


# == the simulated nodes: a worker process ===================================================


class _Failures(logging.Handler):
    """Counts the renewal failures `LeaseKeeper.run` logs (it retries on its own)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        self.last = record.getMessage()[:300]


class LoopLag:
    """How late a short timer fires in this event loop: how long the loop was kept busy."""

    def __init__(self, period: float = 0.01):
        self.period = period
        self.lags: list[float] = []
        self._job: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.period
            await asyncio.sleep(self.period)  # the probe's own period
            self.lags.append(loop.time() - due)

    def start(self) -> None:
        self._job = asyncio.create_task(self._tick(), name="loop-lag")

    async def stop(self) -> None:
        if self._job is not None:
            self._job.cancel()
            await asyncio.gather(self._job, return_exceptions=True)

    def take(self) -> list[float]:
        lags, self.lags = self.lags, []
        return lags


class TimedConfigDB(ConfigDB):
    """A ConfigDB that notes how long each lease renewal took, from call to reply."""

    def __init__(self, endpoints: list[str], sink: list[float]):
        super().__init__(endpoints)
        self.sink = sink

    async def refresh(self, lease_id: int) -> int:
        begin = time.monotonic()
        try:
            return await super().refresh(lease_id)
        finally:
            self.sink.append(time.monotonic() - begin)


class SimNodes:
    """Many nodes' registrations in one asyncio loop, and what their renewals looked like."""

    def __init__(self, dbs: list[ConfigDB], names: list[str], ttl: int, refreshes: list[float]):
        self.dbs = dbs
        self.refreshes = refreshes  # filled by the TimedConfigDB clients
        self.lag = LoopLag()
        self.names = names
        self.ttl = ttl
        self.regs: dict[str, LeaseKeeper] = {}
        self.jobs: dict[str, asyncio.Task[None]] = {}
        self.last: dict[str, float] = {}
        self.leases: dict[str, int] = {}
        self.stopping: dict[str, asyncio.Future[float]] = {}
        self.gaps: list[float] = []
        self.renewals = 0
        self.reregistered = 0
        self.failures = _Failures()
        logging.getLogger(registration_module.__name__).addHandler(self.failures)

    def node(self, name: str) -> Node:
        return Node(
            name=name,
            address="127.0.0.1",
            api_url="http://127.0.0.1:9",  # the discard port: nothing answers there
            cpus=SIM_CPUS,
            memory_mib=SIM_MEMORY_MIB,
            accelerator="kvm",
            versions={"heron": heron.__version__, "simulated": "bench.scale"},
            started_at=time.time(),
        )

    def start(self, name: str, delay: float = 0.0) -> LeaseKeeper:
        index = self.names.index(name)
        reg = LeaseKeeper(
            self.dbs[index % len(self.dbs)],
            keys.node(name),
            self.node(name),
            self.ttl,
            on_renewed=lambda: self._renewed(name),
        )
        self.regs[name] = reg
        self.last.pop(name, None)
        self.leases.pop(name, None)

        async def run() -> None:
            # Spread the nodes over the renewal period, as independent hosts would be.
            await asyncio.sleep(delay)  # a start offset, not a wait for anything
            await reg.run()

        self.jobs[name] = asyncio.create_task(run(), name=f"sim-{name}")
        return reg

    def _renewed(self, name: str) -> None:
        now = time.monotonic()
        previous = self.last.get(name)
        if previous is not None:
            self.gaps.append(now - previous)
        self.last[name] = now
        self.renewals += 1
        lease = self.regs[name].lease
        if self.leases.get(name, lease) != lease:
            self.reregistered += 1  # the lease had expired: the node registered anew
        self.leases[name] = lease
        stopping = self.stopping.pop(name, None)
        if stopping is not None:
            # Go silent right after a renewal, so the lease's expiry is TTL from `now`.
            self.jobs[name].cancel()
            self.last.pop(name, None)
            stopping.set_result(now)

    async def stop(self, name: str) -> float:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.stopping[name] = future
        return await asyncio.wait_for(future, 10 * self.ttl)

    def window(self) -> dict[str, Any]:
        """The renewals since the previous call; starts a new window."""
        now = time.monotonic()
        open_gaps = [now - t for t in self.last.values()]
        cpu = os.times()
        found = {
            "t": now,
            "active": len(self.last),
            "renewals": self.renewals,
            "gaps": [round(g, 4) for g in self.gaps],
            "refresh_s": [round(r, 4) for r in self.refreshes],
            "loop_lag_s": [round(lag, 4) for lag in self.lag.take()],
            "open_gap_max": round(max(open_gaps, default=0.0), 4),
            "reregistered": self.reregistered,
            "failures": self.failures.count,
            "last_failure": self.failures.last,
            "cpu_s": cpu.user + cpu.system,
        }
        self.gaps = []
        del self.refreshes[:]
        self.renewals = self.reregistered = self.failures.count = 0
        return found


async def worker_main(args: argparse.Namespace) -> None:
    logging.basicConfig(level="WARNING", stream=sys.stderr)
    endpoints = args.endpoints.split(",")
    names = args.names.split(",")
    refreshes: list[float] = []
    dbs: list[ConfigDB] = [TimedConfigDB(endpoints, refreshes) for _ in range(args.clients)]
    for db in dbs:
        await db.connect()
    sims = SimNodes(dbs, names, args.ttl, refreshes)
    sims.lag.start()
    period = min(registration_module.RENEW_INTERVAL, args.ttl / 6)

    def reply(**fields: Any) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    try:
        started = time.monotonic()
        regs = [sims.start(name, random.uniform(0, period)) for name in names]
        await asyncio.wait_for(asyncio.gather(*(r.registered.wait() for r in regs)), WORKER_TIMEOUT)
        reply(event="ready", register_s=time.monotonic() - started)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():  # EOF: the benchmark is gone, so are we
            command = json.loads(line)
            if command["cmd"] == "window":
                reply(**sims.window())
            elif command["cmd"] == "stop":
                reply(last_renewal=await sims.stop(command["name"]))
            elif command["cmd"] == "start":
                reg = sims.start(command["name"])
                await asyncio.wait_for(reg.registered.wait(), WORKER_TIMEOUT)
                reply(started=command["name"])
            elif command["cmd"] == "quit":
                break
    finally:
        await sims.lag.stop()
        for job in sims.jobs.values():
            job.cancel()
        await asyncio.gather(*sims.jobs.values(), return_exceptions=True)
        for db in dbs:
            await db.close()


class Worker:
    """The benchmark's end of a worker process: one JSON line per command and reply."""

    def __init__(self, index: int, names: list[str], endpoints: list[str], args: Any, log: Path):
        self.names = set(names)
        self.log = log
        command = [sys.executable, "-m", "bench.scale", "--worker", "--endpoints",
                   ",".join(endpoints), "--names", ",".join(names), "--ttl", str(TTL),
                   "--clients", str(args.clients)]  # fmt: skip
        with open(log, "ab") as stderr:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, name=f"worker-{index}", daemon=True)
        self.reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.replies.put(json.loads(line))
        self.replies.put(None)

    def reply(self, timeout: float) -> dict[str, Any]:
        try:
            found = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"worker {self.pid}: no reply in {timeout:.0f}s") from None
        if found is None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise BenchError(f"worker {self.pid} exited ({self.proc.poll()}):\n{tail}")
        return found

    def request(self, timeout: float = WORKER_TIMEOUT, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.reply(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self.reader.join(timeout=5)


# == observing the cluster ===================================================================


class ClusterObserver(Observer):
    """Watches the node records, VM records and leader key."""

    PREFIXES = (keys.NODES, keys.VMS, keys.LEADER)

    def leader_write_gaps(self, since: float, until: float) -> list[float]:
        """Seconds between consecutive writes of the leader key (heartbeats, takeovers)."""
        times = [e.t for e in self.between(since, until) if e.key == keys.LEADER]
        return [b - a for a, b in itertools.pairwise(times)]

    def node_expiries(self, since: float, until: float) -> dict[str, int]:
        """Node records deleted in [since, until): leases that ran out."""
        gone = [e.key for e in self.between(since, until) if e.type == "delete"]
        nodes = [k.removeprefix(keys.NODES) for k in gone if k.startswith(keys.NODES)]
        return {
            "real": sum(1 for n in nodes if not n.startswith("sim")),
            "simulated": sum(1 for n in nodes if n.startswith("sim")),
        }

    def leader_changes(self, since: float, until: float) -> int:
        """How often the leader key changed hands in [since, until).

        A node keeps its token across its own terms, so losing the lead and winning it back
        is not counted; the silences of the key (`leader_write_gaps`) show those."""
        tokens: list[str] = []
        for e in self.snapshot():
            if e.key == keys.LEADER and e.type == "put" and since <= e.t < until:
                token = e.value.decode(errors="replace")
                if not tokens or tokens[-1] != token:
                    tokens.append(token)
        return max(0, len(tokens) - 1)


# == measuring processes and etcd ============================================================

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time of a process so far (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime: fields 14 and 15


METRICS = {
    "keepalive_msgs": ("grpc_server_msg_received_total", 'grpc_method="LeaseKeepAlive"'),
    "keepalive_streams": ("grpc_server_started_total", 'grpc_method="LeaseKeepAlive"'),
    "range_calls": ("grpc_server_started_total", 'grpc_method="Range"'),
    "txn_calls": ("grpc_server_started_total", 'grpc_method="Txn"'),
    "grpc_sent_bytes": ("etcd_network_client_grpc_sent_bytes_total", ""),
    "grpc_received_bytes": ("etcd_network_client_grpc_received_bytes_total", ""),
    "proposals_committed": ("etcd_server_proposals_committed_total", ""),
    "db_bytes": ("etcd_mvcc_db_total_size_in_bytes", ""),
    "db_in_use_bytes": ("etcd_mvcc_db_total_size_in_use_in_bytes", ""),
    "keys": ("etcd_debugging_mvcc_keys_total", ""),
    "is_leader": ("etcd_server_is_leader", ""),
}


def etcd_metrics(member: EtcdMember) -> dict[str, float]:
    with urllib.request.urlopen(member.client_url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found = dict.fromkeys(METRICS, 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for label, (metric, selector) in METRICS.items():
            if name == metric and selector in line:
                found[label] += float(line.rsplit(" ", 1)[1])
    return found


def fence_misses(cluster: DevCluster) -> int:
    """How often the real nodes' fence watchdogs saw no renewal in time (so far)."""
    count = 0
    for node in cluster.nodes:
        with contextlib.suppress(FileNotFoundError):
            log = (Path(node.state_dir) / "fence.log").read_text(errors="replace")
            count += log.count("no lease renewal for")
    return count


@dataclass
class Bench:
    cluster: DevCluster
    token: str
    observer: Observer
    workers: list[Worker]
    directory: Path
    args: argparse.Namespace

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.cluster.nodes]

    def pids(self) -> dict[str, int | None]:
        found: dict[str, int | None] = {m.name: m.pid() for m in self.cluster.members()}
        found |= {n.name: self.cluster.herond_pid(n) for n in self.cluster.nodes}
        found |= {f"worker{i + 1}": w.pid for i, w in enumerate(self.workers)}
        found["bench"] = os.getpid()
        return found

    def worker_of(self, name: str) -> Worker:
        return next(w for w in self.workers if name in w.names)

    def leader(self) -> str:
        api = Api(self.urls[0], self.token, self.cluster.tls())
        try:
            return str(wait_for(lambda: api.ok("GET", "/cluster")["leader"], 30, "a leader"))
        finally:
            api.close()


def renewal_summary(replies: list[dict[str, Any]], window: float) -> dict[str, Any]:
    period = min(registration_module.RENEW_INTERVAL, TTL / 6)
    gaps = [g for r in replies for g in r["gaps"]]
    refreshes = [g for r in replies for g in r["refresh_s"]]
    lags = [g for r in replies for g in r["loop_lag_s"]]
    renewals = sum(r["renewals"] for r in replies)
    return {
        "nodes": sum(r["active"] for r in replies),
        "renewals": renewals,
        "renewals_per_s": round(renewals / window, 1),
        "period_s": period,
        "gap_s": stats(gaps, 3) if gaps else None,
        "refresh_call_s": stats(refreshes, 3) if refreshes else None,
        "worker_loop_lag_s": stats(lags, 3) if lags else None,
        "gaps_over_2_periods": sum(1 for g in gaps if g > 2 * period),
        "gaps_over_fence_deadline": sum(1 for g in gaps if g > TTL - BEFORE_EXPIRY),
        "gaps_over_ttl": sum(1 for g in gaps if g > TTL),
        "longest_open_gap_s": max(r["open_gap_max"] for r in replies),
        "leases_lost_and_registered_again": sum(r["reregistered"] for r in replies),
        "renewal_failures_logged": sum(r["failures"] for r in replies),
        "last_failure": next((r["last_failure"] for r in replies if r["last_failure"]), ""),
        "worker_cpu_s": [round(r["cpu_s"], 2) for r in replies],
    }


def leader_writes(observer: Observer, since: float, until: float) -> dict[str, Any]:
    gaps = observer.leader_write_gaps(since, until)
    return {
        "leader_write_gap_s": stats(gaps, 3) if gaps else None,
        "leader_write_gaps_over_election_timeout": sum(
            1 for g in gaps if g > election_module.TIMEOUT
        ),
    }


def measure_window(bench: Bench, label: str) -> dict[str, Any]:
    """Everything the cluster does for `--window` seconds, with nothing else asked of it."""
    seconds = bench.args.window
    members = bench.cluster.members()
    pids = bench.pids()
    for worker in bench.workers:
        worker.request(cmd="window")  # starts the workers' window
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    metrics_before = {m.name: etcd_metrics(m) for m in members}
    fenced_before = fence_misses(bench.cluster)
    start = time.monotonic()
    # The window is a fixed span by definition; meanwhile the API's cheapest call is timed
    # on every node, to see how responsive the agents stay.
    whoami: dict[str, list[float]] = {n.name: [] for n in bench.cluster.nodes}
    apis = {n.name: Api(n.url, bench.token, bench.cluster.tls()) for n in bench.cluster.nodes}
    try:
        while time.monotonic() - start < seconds:
            for name, api in apis.items():
                begin = time.perf_counter()
                api.ok("GET", "/auth/whoami")
                whoami[name].append(time.perf_counter() - begin)
            time.sleep(0.25)  # the sampling period of the responsiveness probe
    finally:
        for api in apis.values():
            api.close()
    elapsed = time.monotonic() - start
    cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    metrics_after = {m.name: etcd_metrics(m) for m in members}
    replies = [w.request(cmd="window") for w in bench.workers]
    end = time.monotonic()

    def rate(member: str, metric: str) -> float:
        return (metrics_after[member][metric] - metrics_before[member][metric]) / elapsed

    cpu = {name: round(100 * (cpu_after[name] - cpu_before[name]) / elapsed, 1) for name in pids}
    etcd_names = [m.name for m in members]
    per_member = {
        name: {
            "cpu_pct": cpu[name],
            "is_raft_leader": bool(metrics_after[name]["is_leader"]),
            "keepalive_msgs_per_s": round(rate(name, "keepalive_msgs"), 1),
            "keepalive_streams_per_s": round(rate(name, "keepalive_streams"), 1),
            "range_calls_per_s": round(rate(name, "range_calls"), 1),
            "txn_calls_per_s": round(rate(name, "txn_calls"), 1),
            "grpc_sent_kib_per_s": round(rate(name, "grpc_sent_bytes") / 1024, 1),
            "proposals_per_s": round(rate(name, "proposals_committed"), 1),
            "db_bytes": int(metrics_after[name]["db_bytes"]),
            "db_in_use_bytes": int(metrics_after[name]["db_in_use_bytes"]),
            "keys": int(metrics_after[name]["keys"]),
        }
        for name in etcd_names
    }
    all_whoami = [t for v in whoami.values() for t in v]
    result: dict[str, Any] = {
        "window_s": round(elapsed, 1),
        "etcd_cpu_pct_total": round(sum(cpu[n] for n in etcd_names), 1),
        "keepalive_msgs_per_s": round(sum(rate(n, "keepalive_msgs") for n in etcd_names), 1),
        "grpc_sent_kib_per_s": round(sum(rate(n, "grpc_sent_bytes") for n in etcd_names) / 1024, 1),
        "etcd": per_member,
        "herond_cpu_pct": {n.name: cpu[n.name] for n in bench.cluster.nodes},
        "worker_cpu_pct": [cpu[f"worker{i + 1}"] for i in range(len(bench.workers))],
        "bench_cpu_pct": cpu["bench"],
        "leader_changes": bench.observer.leader_changes(start, end),
        **leader_writes(bench.observer, start, end),
        "node_leases_expired": bench.observer.node_expiries(start, end),
        "real_node_fence_deadline_misses": fence_misses(bench.cluster) - fenced_before,
        "whoami_ms": stats(ms(all_whoami), 1),
        "whoami_p50_ms_per_node": {
            n: round(stats(ms(v), 1)["p50"], 1) for n, v in whoami.items() if v
        },
    }
    renewals = ""
    if replies:
        result["renewals"] = r = renewal_summary(replies, end - start)
        gap = r["gap_s"] or {}
        renewals = (
            f"; renewal gap p50 {gap.get('p50')} s p99 {gap.get('p99')} s max "
            f"{gap.get('max')} s, {r['gaps_over_ttl']} over the TTL"
        )
    print(
        f"  window {label}: etcd CPU {result['etcd_cpu_pct_total']} % "
        f"({', '.join(str(per_member[n]['cpu_pct']) for n in etcd_names)}), "
        f"{result['keepalive_msgs_per_s']} keepalives/s, herond CPU "
        f"{list(result['herond_cpu_pct'].values())} %, workers {result['worker_cpu_pct']} %, "
        f"{result['leader_changes']} leader change(s) "
        f"({result['leader_write_gaps_over_election_timeout']} leader-key silences over "
        f"{election_module.TIMEOUT} s), leases expired "
        f"{result['node_leases_expired']}{renewals}",
        flush=True,
    )
    return result


# == writing and placing VMs =================================================================


def stored_vm(name: str, node: str, ha: bool = False) -> tuple[VM, VMStatus]:
    now = time.time()
    vm = VM(
        id=new_id(),
        spec=VMSpec(name=name, memory_mib=VM_MEMORY_MIB, ha=HAPolicy(enabled=ha)),
        node=node,
        power=PowerState.running if ha else PowerState.stopped,
        created_at=now,
    )
    status = VMStatus(
        state=RunState.running if ha else RunState.shutoff,
        node=node,
        observed_generation=vm.generation,
        updated_at=now,
    )
    return vm, status


async def write_vms(endpoints: list[str], vms: list[tuple[VM, VMStatus]]) -> float:
    """Store VMs as their creation and their node would have; returns the seconds it took."""
    batches = [vms[i : i + TXN_VMS] for i in range(0, len(vms), TXN_VMS)]
    pending: asyncio.Queue[list[tuple[VM, VMStatus]]] = asyncio.Queue()
    for batch in batches:
        pending.put_nowait(batch)
    async with ConfigDB(endpoints) as db:

        async def writer() -> None:
            while not pending.empty():
                batch = pending.get_nowait()
                txn = Txn()
                for vm, status in batch:
                    txn.require_absent(keys.vm_name(vm.spec.name))
                    txn.put(keys.vm_name(vm.spec.name), vm.id)
                    txn.put(keys.vm(vm.id), vm)
                    txn.put(keys.vm_status(vm.id), status)
                await db.commit(txn)

        start = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(WRITE_PARALLEL)))
        return time.perf_counter() - start


async def place(
    urls: list[str],
    token: str,
    prefix: str,
    count: int,
    budget: float,
    tls: ssl.SSLContext | bool = True,
) -> dict:
    """Create up to `count` VMs through the API; no new create starts after `budget` s."""
    headers = {"authorization": f"Bearer {token}"}
    todo: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        todo.put_nowait(index)
    latencies: list[tuple[int, float]] = []
    refused: Counter[str] = Counter()
    first_refusal: dict[str, str] = {}
    start = time.perf_counter()

    async def worker(url: str) -> None:
        async with httpx.AsyncClient(
            base_url=f"{url}/api/v1", headers=headers, timeout=120, verify=tls
        ) as c:
            while time.perf_counter() - start < budget:
                try:
                    index = todo.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = {"name": f"{prefix}{index + 1:04d}", "memory_mib": 16}
                begin = time.perf_counter()
                reply = await c.post("/vms", json=body)
                if reply.status_code == 202:
                    latencies.append((index, time.perf_counter() - begin))
                    continue
                # Recorded, not fatal: an overloaded agent's refusals are part of the result.
                code = str(reply.status_code)
                refused[code] += 1
                first_refusal.setdefault(code, reply.text[:300])
                if sum(refused.values()) > count // 10:
                    raise BenchError(f"create {body['name']}: {reply.status_code} {reply.text}")

    await asyncio.gather(*(worker(urls[i % len(urls)]) for i in range(CONCURRENCY)))
    wall = time.perf_counter() - start
    ordered = [latency for _, latency in sorted(latencies)]
    tenth = max(1, len(ordered) // 10)
    return {
        "asked": count,
        "placed": len(ordered),
        "refused": dict(refused),
        "first_refusal": first_refusal,
        "budget_s": budget if budget != float("inf") else None,
        "until_last_reply_s": round(wall, 2),
        "creates_per_s": round(len(ordered) / wall, 3),
        "create_latency_ms": stats(ms(ordered), 1),
        "create_latency_first_tenth_ms": stats(ms(ordered[:tenth]), 1),
        "create_latency_last_tenth_ms": stats(ms(ordered[-tenth:]), 1),
    }


async def placement_and_step_cost(endpoints: list[str], directory: Path) -> dict[str, Any]:
    """Time, in this process, what a create and an HA controller step compute on this state."""
    async with ConfigDB(endpoints) as db:
        begin = time.perf_counter()
        inventory = await Inventory(db).ready()  # once per agent, then fed by watches
        read_s = time.perf_counter() - begin
        nodes, vms = inventory.live_nodes(), inventory.vms.values()
        compute, compute_cpu = [], []
        for _ in range(COMPUTE_SAMPLES):
            begin, begin_cpu = time.perf_counter(), time.thread_time()
            # What a create computes: the copies' current contents, then the choice.
            choose_node(node_loads(inventory.live_nodes(), inventory.vms.values()), 16, 1)
            compute.append(time.perf_counter() - begin)
            compute_cpu.append(time.thread_time() - begin_cpu)
        # margin=inf: the probe never fails anything over, so its step only reads.
        probe = ha_controller.FailoverController(
            inventory, AuditLog(directory / "probe-audit.jsonl", "bench"), margin=float("inf")
        )
        election = Election(db, keys.LEADER, "bench-probe")
        steps, steps_cpu = [], []
        lag = LoopLag(0.005)
        lag.start()
        for _ in range(STEP_SAMPLES):
            begin, begin_cpu = time.perf_counter(), time.thread_time()
            await probe.step(election)
            steps.append(time.perf_counter() - begin)
            steps_cpu.append(time.thread_time() - begin_cpu)
        await lag.stop()
        stalls = lag.take()
        await inventory.stop()
    found = {
        "nodes": len(nodes),
        "vms": len(vms),
        "inventory_load_ms": round(read_s * 1000, 1),
        "node_loads_and_choose_ms": stats(ms(compute), 1),
        # CPU time of this thread: what the work costs, whatever else the machine runs.
        "node_loads_and_choose_cpu_ms": stats(ms(compute_cpu), 1),
        "ha_step_ms": stats(ms(steps), 1),
        "ha_step_cpu_ms": stats(ms(steps_cpu), 1),
        # The longest the event loop went without running anything else during the steps:
        # an agent's election heartbeat and lease renewal wait as long.
        "ha_step_longest_loop_stall_ms": round(1000 * max(stalls, default=0.0), 1),
    }
    print(
        f"  {found['nodes']} nodes, {found['vms']} VMs: HA step p50 "
        f"{found['ha_step_ms']['p50']} ms ({found['ha_step_cpu_ms']['p50']} ms CPU; loop "
        f"stalled up to {found['ha_step_longest_loop_stall_ms']} ms), placement compute p50 "
        f"{found['node_loads_and_choose_ms']['p50']} ms "
        f"({found['node_loads_and_choose_cpu_ms']['p50']} ms CPU)",
        flush=True,
    )
    return found


def wait_tasks_done(bench: Bench, prefix: str, count: int) -> None:
    """Every VM named `prefix`* has the status its node wrote after its vm.create task."""
    api = Api(bench.urls[0], bench.token, bench.cluster.tls())

    def done() -> bool:
        vms = [v for v in api.ok("GET", "/vms") if v["name"].startswith(prefix)]
        return len(vms) == count and all(v["state"] == "shutoff" for v in vms)

    try:
        wait_for(done, SETTLE_TIMEOUT, "every vm.create task", interval=0.5)
    finally:
        api.close()


def placed_on(bench: Bench, prefix: str) -> dict[str, int]:
    async def read() -> dict[str, int]:
        async with ConfigDB(bench.cluster.endpoints) as db:
            found = Counter(
                "real" if e.value.node.startswith("node") else "simulated"
                for e in await db.list(VM, keys.VMS)
                if e.value.spec.name.startswith(prefix)
            )
        return dict(found)

    return asyncio.run(read())


# == failure detection =======================================================================


def current_node(bench: Bench, vm_id: str) -> str:
    async def read() -> str:
        async with ConfigDB(bench.cluster.endpoints) as db:
            entry = await db.get(VM, keys.vm(vm_id))
            if entry is None:
                raise BenchError(f"VM {vm_id} is gone")
            return entry.value.node

    return asyncio.run(read())


def failover_round(bench: Bench, index: int, vm: VM) -> dict[str, Any]:
    """Silence the node the HA VM is on now; time the lease's expiry and the HA decision."""
    observer = bench.observer
    # The VM may have moved since it was stored (a lease that ran out on its own).
    victim = current_node(bench, vm.id)
    if not victim.startswith("sim"):
        return {"vm": vm.spec.name, "victim": victim, "skipped": "not on a simulated node"}
    worker = bench.worker_of(victim)
    last = float(worker.request(cmd="stop", name=victim)["last_renewal"])
    found: dict[str, Any] = {"vm": vm.spec.name, "victim": victim}
    try:
        expired = observer.find(
            lambda e: e.type == "delete" and e.key == keys.node(victim),
            last,
            EXPIRY_TIMEOUT,
            f"the expiry of {victim}'s lease",
        )
        found["last_renewal_to_expiry_s"] = round(expired.t - last, 3)

        def moved(e: Seen) -> bool:
            return (
                e.type == "put"
                and e.key == keys.vm(vm.id)
                and json.loads(e.value)["node"] != victim
            )

        decided = observer.find(moved, last, DECISION_TIMEOUT, f"the HA decision on {vm.spec.name}")
        found["target"] = json.loads(decided.value)["node"]
        found["expiry_to_decision_s"] = round(decided.t - expired.t, 3)
        found["last_renewal_to_decision_s"] = round(decided.t - last, 3)
    except BenchError as exc:
        found["failed"] = str(exc)  # a figure too: no decision within the deadline
    found["leader_changes"] = observer.leader_changes(last, time.monotonic())
    # The node comes back (a new lease), so the next rounds run with all nodes again.
    worker.request(cmd="start", name=victim)
    if "failed" in found:
        print(
            f"  failover {index}: {victim} silent; {found['failed']}; "
            f"{found['leader_changes']} leader change(s)",
            flush=True,
        )
    else:
        print(
            f"  failover {index}: {victim} silent; lease gone after "
            f"{found['last_renewal_to_expiry_s']:.2f}s, VM given to {found['target']} after "
            f"{found['last_renewal_to_decision_s']:.2f}s; "
            f"{found['leader_changes']} leader change(s)",
            flush=True,
        )
    return found


# == the run =================================================================================


def measure(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    endpoints = bench.cluster.endpoints
    results: dict[str, Any] = {}
    members = bench.cluster.members()

    print(f"placing {args.place} VMs with the {REAL_NODES} real nodes only", flush=True)
    start = time.perf_counter()
    base = asyncio.run(
        place(bench.urls, bench.token, "base", args.place, float("inf"), bench.cluster.tls())
    )
    wait_tasks_done(bench, "base", args.place)
    base["until_all_tasks_done_s"] = round(time.perf_counter() - start, 2)
    base["placed_on"] = placed_on(bench, "base")
    results["placement_baseline"] = base
    print(f"  {base['creates_per_s']} creates/s", flush=True)
    results["cost_baseline"] = asyncio.run(placement_and_step_cost(endpoints, bench.directory))

    results["window_real_nodes"] = measure_window(bench, f"{REAL_NODES} real nodes")

    sims = args.nodes - REAL_NODES
    names = [f"sim{i + 1:04d}" for i in range(sims)]
    print(f"starting {sims} simulated nodes in {args.workers} worker(s)", flush=True)
    started = time.monotonic()
    shares = [names[i :: args.workers] for i in range(args.workers)]
    for i, share in enumerate(shares):
        log = bench.directory / f"worker{i + 1}.log"
        bench.workers.append(Worker(i, share, endpoints, args, log))
    ready = [w.reply(WORKER_TIMEOUT) for w in bench.workers]
    results["simulated_nodes"] = {
        "count": sims,
        "workers": args.workers,
        "configdb_clients_per_worker": args.clients,
        "registered_in_s": round(time.monotonic() - started, 2),
        "worker_register_s": [round(r["register_s"], 2) for r in ready],
    }
    results["window_all_nodes"] = measure_window(bench, f"{args.nodes} nodes, {args.place} VMs")

    victims = names[:: max(1, sims // args.rounds)][: args.rounds]
    ha_vms = [stored_vm(f"ha{i + 1:03d}", victim, ha=True) for i, victim in enumerate(victims)]
    bulk = args.vms - args.place - len(ha_vms)
    print(f"writing {bulk + len(ha_vms)} VMs into etcd", flush=True)
    stored = [stored_vm(f"bulk{i + 1:05d}", names[i % sims]) for i in range(bulk)]
    write_s = asyncio.run(write_vms(endpoints, stored + ha_vms))
    results["stored_vms"] = {
        "written": bulk + len(ha_vms),
        "of_which_ha_running": len(ha_vms),
        "write_s": round(write_s, 2),
        "vms_in_etcd": args.vms,
    }
    results["window_all_nodes_all_vms"] = measure_window(
        bench, f"{args.nodes} nodes, {args.vms} VMs"
    )
    results["cost_loaded"] = asyncio.run(placement_and_step_cost(endpoints, bench.directory))

    print(f"failure detection, {args.rounds} rounds", flush=True)
    leader = bench.leader()
    rounds = [failover_round(bench, i + 1, vm) for i, (vm, _) in enumerate(ha_vms)]
    expiry = [r["last_renewal_to_expiry_s"] for r in rounds if "last_renewal_to_expiry_s" in r]
    decision = [r["expiry_to_decision_s"] for r in rounds if "expiry_to_decision_s" in r]
    total = [r["last_renewal_to_decision_s"] for r in rounds if "last_renewal_to_decision_s" in r]
    baseline = TTL + ha_controller.MARGIN
    results["failure_detection"] = {
        "leader_at_start": leader,
        "rounds": rounds,
        "decided": len(total),
        "no_decision_in_time": sum(1 for r in rounds if "failed" in r),
        "last_renewal_to_expiry_s": stats(expiry, 3) if expiry else None,
        "expiry_to_decision_s": stats(decision, 3) if decision else None,
        "last_renewal_to_decision_s": stats(total, 3) if total else None,
        "baseline_ttl_plus_margin_s": baseline,
        "ttl_s": TTL,
        "margin_s": ha_controller.MARGIN,
        "ratios": {
            "decision_vs_ttl_plus_margin_p50": (
                ratio(stats(total, 3)["p50"], baseline) if total else None
            ),
            "decision_vs_ttl_plus_margin_max": ratio(max(total), baseline) if total else None,
        },
    }

    print(f"placing up to {args.place} VMs with {args.nodes} nodes and {args.vms} VMs", flush=True)
    fenced_before = fence_misses(bench.cluster)
    for worker in bench.workers:
        worker.request(cmd="window")
    pids = bench.pids()
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    metrics_before = {m.name: etcd_metrics(m) for m in members}
    start_mono = time.monotonic()
    loaded = asyncio.run(
        place(bench.urls, bench.token, "load", args.place, args.place_budget, bench.cluster.tls())
    )
    elapsed = time.monotonic() - start_mono
    replies = [w.request(cmd="window") for w in bench.workers]
    cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    metrics_after = {m.name: etcd_metrics(m) for m in members}
    loaded["placed_on"] = placed_on(bench, "load")
    loaded["projected_s_for_all"] = round(args.place / loaded["creates_per_s"], 1)
    loaded["during"] = {
        "cpu_pct": {
            n: round(100 * (cpu_after[n] - cpu_before[n]) / elapsed, 1) for n in cpu_before
        },
        "leader_changes": bench.observer.leader_changes(start_mono, time.monotonic()),
        **leader_writes(bench.observer, start_mono, time.monotonic()),
        "node_leases_expired": bench.observer.node_expiries(start_mono, time.monotonic()),
        "real_node_fence_deadline_misses": fence_misses(bench.cluster) - fenced_before,
        "db_bytes": {m: int(v["db_bytes"]) for m, v in metrics_after.items()},
        "grpc_sent_kib_per_s": round(
            sum(
                metrics_after[m]["grpc_sent_bytes"] - metrics_before[m]["grpc_sent_bytes"]
                for m in metrics_after
            )
            / 1024
            / elapsed,
            1,
        ),
        "renewals": renewal_summary(replies, elapsed),
    }
    results["placement_loaded"] = loaded
    print(f"  {loaded['placed']} placed, {loaded['creates_per_s']} creates/s", flush=True)

    w0, w1 = results["window_real_nodes"], results["window_all_nodes"]
    w2 = results["window_all_nodes_all_vms"]
    results["ratios"] = {
        "etcd_cpu_all_nodes_vs_real_nodes": ratio(
            w1["etcd_cpu_pct_total"], w0["etcd_cpu_pct_total"]
        ),
        "etcd_cpu_all_vms_vs_real_nodes": ratio(w2["etcd_cpu_pct_total"], w0["etcd_cpu_pct_total"]),
        "keepalives_all_nodes_vs_real_nodes": ratio(
            w1["keepalive_msgs_per_s"], w0["keepalive_msgs_per_s"]
        ),
        # Four digits: the loaded rate can be a small fraction of the baseline's.
        "creates_per_s_loaded_vs_baseline": round(
            loaded["creates_per_s"] / base["creates_per_s"], 4
        ),
        "ha_step_loaded_vs_baseline_p50": ratio(
            results["cost_loaded"]["ha_step_ms"]["p50"],
            results["cost_baseline"]["ha_step_ms"]["p50"],
        ),
        "detection_vs_ttl_plus_margin_p50": results["failure_detection"]["ratios"][
            "decision_vs_ttl_plus_margin_p50"
        ],
    }
    return results


def summary_rows(results: dict[str, Any], path: Path, args: argparse.Namespace) -> list:
    w0, w1 = results["window_real_nodes"], results["window_all_nodes"]
    w2 = results["window_all_nodes_all_vms"]
    fd = results["failure_detection"]
    base, loaded = results["placement_baseline"], results["placement_loaded"]
    ren = w1.get("renewals", {})
    cb, cl = results["cost_baseline"], results["cost_loaded"]
    return [
        (
            f"etcd CPU, {REAL_NODES} real nodes",
            f"{w0['etcd_cpu_pct_total']} % of a core, {w0['keepalive_msgs_per_s']} keepalives/s",
        ),
        (
            f"etcd CPU, {args.nodes} nodes",
            f"{w1['etcd_cpu_pct_total']} % ({results['ratios']['etcd_cpu_all_nodes_vs_real_nodes']}"
            f"x), {w1['keepalive_msgs_per_s']} keepalives/s",
        ),
        (
            f"etcd CPU, {args.nodes} nodes + {args.vms} VMs",
            f"{w2['etcd_cpu_pct_total']} % ({results['ratios']['etcd_cpu_all_vms_vs_real_nodes']}"
            f"x), {w2['grpc_sent_kib_per_s']} KiB/s sent to clients",
        ),
        (
            "renewals",
            f"gap p50 {ren.get('gap_s', {}).get('p50')} s, p99 {ren.get('gap_s', {}).get('p99')}"
            f" s, max {ren.get('gap_s', {}).get('max')} s; over fence deadline "
            f"{ren.get('gaps_over_fence_deadline')}, leases lost "
            f"{ren.get('leases_lost_and_registered_again')}",
        ),
        (
            "failure detection",
            f"{fd['decided']} of {len(fd['rounds'])} decided; expiry p50 "
            f"{(fd['last_renewal_to_expiry_s'] or {}).get('p50')} s, decision p50 "
            f"{(fd['last_renewal_to_decision_s'] or {}).get('p50')} s (max "
            f"{(fd['last_renewal_to_decision_s'] or {}).get('max')} s) vs TTL+margin "
            f"{fd['baseline_ttl_plus_margin_s']} s",
        ),
        (
            "HA step",
            f"{cb['ha_step_ms']['p50']} ms ({cb['vms']} VMs) -> {cl['ha_step_ms']['p50']} ms "
            f"({cl['vms']} VMs, {cl['nodes']} nodes)",
        ),
        (
            "placement compute",
            f"{cb['node_loads_and_choose_ms']['p50']} ms -> "
            f"{cl['node_loads_and_choose_ms']['p50']} ms per create",
        ),
        (
            "placing VMs, baseline",
            f"{base['placed']} in {base['until_last_reply_s']} s: {base['creates_per_s']}/s",
        ),
        (
            "placing VMs, loaded",
            f"{loaded['placed']} in {loaded['until_last_reply_s']} s: "
            f"{loaded['creates_per_s']}/s "
            f"({results['ratios']['creates_per_s_loaded_vs_baseline']}x)",
        ),
        ("results", str(path)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1024, help="nodes in all, real ones too")
    parser.add_argument("--vms", type=int, default=10000, help="VMs in etcd before the load")
    parser.add_argument("--place", type=int, default=1000, help="VMs placed through the API")
    parser.add_argument(
        "--place-budget", type=float, default=30, help="seconds for the loaded placement"
    )
    parser.add_argument("--window", type=float, default=15, help="seconds per load window")
    parser.add_argument("--rounds", type=int, default=3, help="failure detection rounds")
    parser.add_argument("--workers", type=int, default=2, help="processes of simulated nodes")
    parser.add_argument("--clients", type=int, default=4, help="ConfigDB clients per worker")
    parser.add_argument("--keep", action="store_true", help="keep the devcluster directory")
    # The worker process (started by the benchmark itself).
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--endpoints", help=argparse.SUPPRESS)
    parser.add_argument("--names", help=argparse.SUPPRESS)
    parser.add_argument("--ttl", type=int, default=TTL, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(worker_main(args))
        return 0
    if args.nodes <= REAL_NODES or args.vms < args.place + args.rounds:
        parser.error("need more nodes than the real ones, and --vms >= --place + --rounds")
    exit_on_sigterm()
    load = load_snapshot()
    directory = Path(tempfile.mkdtemp(prefix="heron-bench-scale-"))
    with running_devcluster(directory, REAL_NODES, keep=args.keep) as (cluster, token):
        observer = ClusterObserver(cluster.endpoints)
        bench = Bench(cluster, token, observer, [], directory, args)
        try:
            observer.start()
            results = measure(bench, args)
        finally:
            for worker in bench.workers:
                worker.close()
            observer.stop()
    params = {
        "nodes": args.nodes,
        "real_nodes": REAL_NODES,
        "vms": args.vms,
        "place": args.place,
        "place_budget_s": args.place_budget,
        "window_s": args.window,
        "rounds": args.rounds,
        "workers": args.workers,
        "clients_per_worker": args.clients,
        "lease_ttl_s": TTL,
        "ha_margin_s": ha_controller.MARGIN,
        "concurrency": CONCURRENCY,
    }
    path = write_result(NAME, params, results, load)
    print_rows(f"scale: {args.nodes} nodes, {args.vms} VMs", summary_rows(results, path, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
