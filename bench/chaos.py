"""Chaos: a workload of API operations under random faults, with Heron's invariants checked.

A 3-node devcluster (3 etcd members) runs `--vms` protected test guests (HA, a boot disk and a
second disk that the guest fills with its disk log, `heron.testguest.disklog`) on the shared
pool (and one on an RF2 ARDFS pool with `--ardfs`), plus short-lived VMs without disks. For
`--duration` seconds, at the same time:

* a workload, through the API of any node that answers: live migrations, snapshots taken and
  deleted, stops and starts of protected VMs; creation and deletion of the short-lived ones;
* faults, one at a time per node and never two etcd members at once: an agent killed (and
  started again after a while, sometimes past the HA agent grace), an agent paused
  (SIGSTOP/SIGCONT), a guest's QEMU killed, a heron-io killed, an etcd member killed (and
  started again), a node's links to the other nodes cut (and mended: `bench/linkcut.py`, where
  the machine has what it needs; a run says when it has not);
* a checker reading every QEMU on the machine 20 times a second: no VM ever runs on two nodes.

Then every fault is undone, and within `--settle` seconds the cluster must converge: all
nodes registered, every task ended (succeeded or failed, none left running), each VM's QEMU
where its record says and only there, and every protected guest's disk log holding every
write its disk acknowledged (the guest reads the log back at the end).

The seed is printed first; `--seed` replays the same choices (the timing is the machine's).
A run writes bench/results/chaos.json: operations by kind and outcome, faults by kind, and the
invariants violated (each with what was seen). Exit 1 if any was.

  .venv/bin/python -m bench.chaos --duration 1200 --vms 4 --ardfs    # docs/benchmarks.md
  .venv/bin/python -m bench.chaos --seed 1234 --duration 120         # replay one
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    HERON_CACHE,
    BenchError,
    exit_on_sigterm,
    load_snapshot,
    running_devcluster,
    wait_for,
    write_result,
)
from bench.linkcut import LinkCutError, LinkCuts
from heron.devcluster import DevCluster, NodeSpec
from heron.testguest import build, disklog
from heron.testguest.net import GuestCommandError, run_command
from heron.util.proc import command_lines
from heron.util.wait import until_sync

BOOT = 240  # a test guest's boot under TCG on a loaded machine
TERMINAL = ("succeeded", "failed", "cancelled")
GRACE = 8  # the HA agent grace during the run: an agent away longer fails its node over
# Seconds in a row a guest's console must grow on two nodes to count as running twice (a
# migration's handover may show a line on each side within one second).
OVERLAP = 3
# What a test guest prints all the time: left out of the lines a violation quotes.
_CHATTER = re.compile(r"heron-tick|heron-memcheck verified|heron-disklog ack")


@dataclass
class Fault:
    kind: str
    node: str
    detail: str = ""
    undo: Any = None  # what puts it right, or None
    until: float = 0.0  # when to undo it (monotonic)


@dataclass
class Run:
    seed: int
    started: float = field(default_factory=time.monotonic)
    operations: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, line: str) -> None:
        stamped = f"{time.monotonic() - self.started:8.2f} {line}"
        with self.lock:
            self.log.append(stamped)
        print(stamped, flush=True)

    def violated(self, what: str) -> None:
        with self.lock:
            self.violations.append(what)
        self.note(f"VIOLATION {what}")


def qemus_by_vm(root: str) -> dict[str, set[str]]:
    """VM id -> the runtime directories (one per node) where a QEMU of it runs, for the
    devcluster under `root` (other clusters may run on the machine)."""
    found: dict[str, set[str]] = {}
    for _, args in command_lines():
        if args[0].endswith("qemu-system-x86_64") and "-uuid" in args:
            home = str(Path(args[args.index("-pidfile") + 1]).parent.parent.parent)
            if home.startswith(root):
                found.setdefault(args[args.index("-uuid") + 1], set()).add(home)
    return found


class Chaos:
    def __init__(self, cluster: DevCluster, token: str, rng: random.Random, run: Run):
        self.cluster = cluster
        self.token = token
        self.rng = rng
        self.run = run
        self.protected: list[str] = []
        self.transient: list[str] = []
        self.active: dict[str, Fault] = {}  # node -> its fault now
        self.quorum_fault = False  # an etcd member down or cut off: never two at once
        # Each VM's console on each node, as read so far: a node deletes a VM's directory,
        # console log included, when the VM leaves it, and what the guest acknowledged there
        # must still count.
        self.consoles: dict[tuple[str, str], list[str]] = {}
        self.read_upto: dict[tuple[str, str], int] = {}
        self.console_lock = threading.Lock()
        self.links: LinkCuts | None = None
        self.stop = threading.Event()
        self.verify_timeout = 180.0  # seconds for a guest to read its disk log back
        tls = cluster.tls()
        self.clients = {
            n.name: httpx.Client(
                base_url=f"{n.url}/api/v1",
                headers={"authorization": f"Bearer {token}"},
                timeout=30,
                verify=tls,
            )
            for n in cluster.nodes
        }

    # -- the API, through whichever node answers ------------------------------------------

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        """One request through a node picked at random; None when none answered."""
        names = list(self.clients)
        self.rng.shuffle(names)
        for name in names:
            try:
                return self.clients[name].request(method, path, **kwargs)
            except httpx.HTTPError:
                continue
        return None

    def ok(self, method: str, path: str, timeout: float = 120, **kwargs: Any) -> Any:
        """For setting up and checking: retried until it succeeds."""

        def attempt() -> Any:
            reply = self.call(method, path, **kwargs)
            if reply is None or reply.status_code >= 500 or reply.status_code == 409:
                return None
            if reply.status_code >= 400:
                raise RuntimeError(f"{method} {path}: {reply.status_code} {reply.text[:300]}")
            return reply.json() if reply.content else True

        return wait_for(attempt, timeout, f"{method} {path}", interval=0.5)

    def task_end(self, task_id: str, timeout: float) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            reply = self.call("GET", f"/tasks/{task_id}")
            if reply is None or reply.status_code != 200:
                return None
            task: dict[str, Any] = reply.json()
            return task if task["state"] in TERMINAL else None

        return wait_for(ended, timeout, f"task {task_id} to end", interval=0.5)

    # -- setting up --------------------------------------------------------------------------

    def create_protected(self, count: int, ardfs: bool, image: str, log_image: str) -> None:
        for i in range(count):
            pool = "ardfs" if ardfs and i == count - 1 else "shared"
            reply = self.ok(
                "POST",
                "/vms",
                json={
                    "name": f"keep{i}",
                    "memory_mib": 128,
                    "node": self.cluster.nodes[i % len(self.cluster.nodes)].name,
                    "start": True,
                    "ha": {"enabled": True},
                    "disks": [
                        {"pool": pool, "source": f"shared/{image}"},
                        {"pool": pool, "source": f"shared/{log_image}"},
                    ],
                },
            )
            self.task_end(reply["task"], 300)
            self.protected.append(reply["vm"])
        for vm_id in self.protected:
            try:
                wait_for(lambda v=vm_id: self.disklog(v).writers, BOOT, f"{vm_id}'s disk log")
            except BenchError as exc:
                vm = self.ok("GET", f"/vms/{vm_id}")
                with self.console_lock:
                    said = "".join(t for (v, _), ts in self.consoles.items() if v == vm_id
                                   for t in ts)  # fmt: skip
                raise BenchError(
                    f"{exc}: {vm['name']} is {vm['power']}/{vm['state']} on {vm['node']}; "
                    f"its console's end: {said[-1500:]!r}"
                ) from exc

    # -- the workload ------------------------------------------------------------------------

    def workload(self) -> None:
        kinds = ["migrate"] * 4 + ["snapshot"] * 2 + ["restart", "create", "delete"]
        while not self.stop.is_set():
            kind = self.rng.choice(kinds)
            outcome = getattr(self, f"op_{kind}")()
            self.run.operations[f"{kind} {outcome}"] += 1
            self.stop.wait(self.rng.uniform(0.5, 2.5))  # think time between operations

    def _submit(self, method: str, path: str, **kwargs: Any) -> str:
        reply = self.call(method, path, **kwargs)
        if reply is None:
            return "unreachable"
        if reply.status_code >= 500:
            self.run.note(f"{method} {path}: {reply.status_code} {reply.text[:200]}")
            return f"http{reply.status_code}"
        if reply.status_code >= 400:
            return f"http{reply.status_code}"
        task = reply.json().get("task") if reply.content else None
        if task:
            threading.Thread(target=self._follow, args=(task,), daemon=True).start()
        return "accepted"

    def _follow(self, task_id: str) -> None:
        with contextlib.suppress(Exception):
            task = self.task_end(task_id, 600)
            self.run.operations[f"task {task['kind']} {task['state']}"] += 1

    def op_migrate(self) -> str:
        vm = self.rng.choice(self.protected)
        return self._submit("POST", f"/vms/{vm}/actions/migrate", json={})

    def op_snapshot(self) -> str:
        vm = self.rng.choice(self.protected)
        reply = self.call("GET", f"/vms/{vm}/snapshots")
        if reply is not None and reply.status_code == 200 and reply.json().get("snapshots"):
            snapshot = reply.json()["snapshots"][0]["id"]
            return self._submit("DELETE", f"/vms/{vm}/snapshots/{snapshot}")
        name = f"s{self.rng.randrange(10**6)}"
        return self._submit("POST", f"/vms/{vm}/snapshots", json={"name": name})

    def op_restart(self) -> str:
        vm = self.rng.choice(self.protected)
        return self._submit("POST", f"/vms/{vm}/actions/reboot", json={})

    def op_create(self) -> str:
        if len(self.transient) >= 3:
            return "skipped"
        name = f"brief{self.rng.randrange(10**6)}"
        reply = self.call("POST", "/vms", json={"name": name, "memory_mib": 64, "start": True})
        if reply is None or reply.status_code >= 300:
            return "unreachable" if reply is None else f"http{reply.status_code}"
        self.transient.append(reply.json()["vm"])
        threading.Thread(target=self._follow, args=(reply.json()["task"],), daemon=True).start()
        return "accepted"

    def op_delete(self) -> str:
        if not self.transient:
            return "skipped"
        vm = self.rng.choice(self.transient)
        reply = self.call("DELETE", f"/vms/{vm}")
        if reply is not None and reply.status_code < 300:
            self.transient.remove(vm)
        return "unreachable" if reply is None else f"http{reply.status_code}"

    # -- the faults --------------------------------------------------------------------------

    def faults(self, gap: float) -> None:
        while not self.stop.is_set():
            self.stop.wait(self.rng.uniform(gap / 2, gap * 1.5))  # the time between faults
            self.undo_due()
            self.supervise()
            free = [n.name for n in self.cluster.nodes if n.name not in self.active]
            if not free or self.stop.is_set():
                continue
            node = self.rng.choice(free)
            kinds = ["kill_agent", "pause_agent", "kill_qemu", "kill_heron_io", "kill_etcd"]
            kind = self.rng.choice([*kinds, "cut_links"] if self.links else kinds)
            fault = getattr(self, kind)(node)
            if fault is not None:
                self.active[node] = fault
                self.run.faults[kind] += 1
                self.run.note(f"fault {kind} on {node} {fault.detail}")
        self.undo_due(everything=True)

    def supervise(self) -> None:
        """Start again an agent that exited on its own, as systemd does (install.sh's unit
        has Restart=always); each such exit is counted and noted, not a violation."""
        for node in self.cluster.nodes:
            fault = self.active.get(node.name)
            if fault is not None and fault.kind == "kill_agent":
                continue
            # Looked at twice: one read of its pidfile and /proc can miss a live process.
            if self.cluster.herond_pid(node) is None and not until_sync(
                lambda n=node: self.cluster.herond_pid(n), 1, 0.2
            ):
                self.run.operations["agent exited by itself"] += 1
                self.run.note(f"{node.name}'s agent exited by itself: started again")
                self._start(node.name)

    def undo_due(self, everything: bool = False) -> None:
        now = time.monotonic()
        for node, fault in list(self.active.items()):
            if everything or now >= fault.until:
                if fault.undo is not None:
                    fault.undo()
                    self.run.note(f"undone {fault.kind} on {node}")
                del self.active[node]

    def _later(self, low: float, high: float) -> float:
        return time.monotonic() + self.rng.uniform(low, high)

    def kill_agent(self, node: str) -> Fault | None:
        pid = self.cluster.herond_pid(self.cluster.node(node))
        if pid is None:
            return None
        os.kill(pid, signal.SIGKILL)
        return Fault(
            "kill_agent", node, f"pid {pid}", lambda: self._start(node), self._later(1, 2 * GRACE)
        )

    def _start(self, node: str) -> None:
        self.cluster.start_node(node)
        if self.links:
            self.links.adopt(node)

    def pause_agent(self, node: str) -> Fault | None:
        pid = self.cluster.herond_pid(self.cluster.node(node))
        if pid is None:
            return None
        os.kill(pid, signal.SIGSTOP)

        def resume() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

        return Fault("pause_agent", node, f"pid {pid}", resume, self._later(1, 2 * GRACE))

    def kill_qemu(self, node: str) -> Fault | None:
        pids = [p for vm, p in self.cluster.qemu_pids(node).items() if vm in self.protected]
        if not pids:
            return None
        pid = self.rng.choice(pids)
        os.kill(pid, signal.SIGKILL)
        return Fault("kill_qemu", node, f"pid {pid}", None, time.monotonic())

    def kill_heron_io(self, node: str) -> Fault | None:
        pidfile = Path(self.cluster.node(node).state_dir) / "ardfs" / "ardfs" / "heron-io.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, signal.SIGKILL)  # the agent starts it again
        except (OSError, ValueError, IndexError):
            return None
        return Fault("kill_heron_io", node, f"pid {pid}", None, time.monotonic())

    def kill_etcd(self, node: str) -> Fault | None:
        if self.quorum_fault:
            return None
        index = [n.name for n in self.cluster.nodes].index(node)
        member = self.cluster.members()[index]
        pid = member.pid()
        if pid is None:
            return None
        os.kill(pid, signal.SIGKILL)
        self.quorum_fault = True

        def restart() -> None:
            member.start()
            if self.links:
                self.links.adopt(node)  # the new member
            self.quorum_fault = False

        return Fault("kill_etcd", node, member.name, restart, self._later(1, 10))

    def cut_links(self, node: str) -> Fault | None:
        """Every link between the node and the others, its etcd member's included: a short
        cut is ridden out, a long one fences the node and fails its HA VMs over."""
        if self.quorum_fault or self.links is None:
            return None
        links = self.links
        links.isolate(node)
        self.quorum_fault = True

        def mend() -> None:
            links.heal(node)
            self.quorum_fault = False

        return Fault("cut_links", node, "", mend, self._later(1, 3 * GRACE))

    def node_processes(self) -> dict[str, list[str]]:
        """Node -> the directories naming its processes, for the link cuts."""
        members = self.cluster.members()
        return {
            n.name: [n.state_dir, *([str(members[i].data_dir)] if i < len(members) else [])]
            for i, n in enumerate(self.cluster.nodes)
        }

    # -- the invariants ----------------------------------------------------------------------

    def watch_double_runs(self) -> None:
        """A guest runs in two places when its console grows on two nodes in the same
        seconds, several seconds in a row: a running test guest prints every second (its tick,
        its memory check, its disk log). Counting QEMU processes would not do: a live
        migration has two for a while, one of them paused."""
        grew: dict[str, dict[int, set[str]]] = {}  # VM -> second -> nodes whose console grew
        reported: set[str] = set()
        while not self.stop.is_set():
            second = int(time.monotonic())
            for vm_id in list(self.protected):
                for node in self.cluster.nodes:
                    if self.collect(vm_id, node):
                        grew.setdefault(vm_id, {}).setdefault(second, set()).add(node.name)
                seconds = grew.get(vm_id, {})
                both = [t for t in range(second - OVERLAP, second) if len(seconds.get(t, ())) > 1]
                if len(both) == OVERLAP and vm_id not in reported:
                    reported.add(vm_id)
                    nodes = sorted(set().union(*(seconds[t] for t in both)))
                    self.run.violated(f"VM {vm_id} ran on {nodes} at once for {OVERLAP} s")
                for old in [t for t in seconds if t < second - OVERLAP]:
                    del seconds[old]
            self.stop.wait(0.1)  # the polling period

    def collect(self, vm_id: str, node: NodeSpec) -> bool:
        """Read what the VM's console on `node` printed since the last look; whether it
        grew. A new file (the VM back on a node that had deleted its directory) is read from
        its start; what the old one said is kept."""
        key = (vm_id, node.name)
        log = Path(node.state_dir) / "vms" / vm_id / "console.log"
        with self.console_lock:
            first = key not in self.read_upto
            try:
                with log.open("rb") as console:
                    size = console.seek(0, os.SEEK_END)
                    upto = self.read_upto.get(key, 0)
                    if size < upto:
                        upto = 0
                    console.seek(upto)
                    text = console.read(size - upto).decode(errors="replace")
            except OSError:
                return False
            self.read_upto[key] = size
            self.consoles.setdefault(key, []).append(text)
            return bool(text) and not first

    def disklog(self, vm_id: str) -> disklog.DiskLog:
        for node in self.cluster.nodes:
            self.collect(vm_id, node)
        with self.console_lock:
            texts = ["".join(v) for (vm, _), v in self.consoles.items() if vm == vm_id]
        return disklog.read(texts)

    def converge(self, settle: float) -> None:
        self.supervise()
        names = {n.name for n in self.cluster.nodes}
        try:
            wait_for(
                lambda: {n["name"] for n in self.ok("GET", "/nodes")} == names,
                settle,
                "every node registered",
                interval=1,
            )
        except BenchError as exc:
            self.run.violated(f"the cluster did not converge: {exc}")
            return

        def open_tasks() -> list[str]:
            tasks = self.ok("GET", "/tasks", params={"limit": 1000})
            return [
                f"{t['id']} {t['kind']} {t['state']} on {t['node']} for {t['target']}: "
                f"{(t['log'] or ['-'])[-1]}"
                for t in tasks
                if t["state"] not in TERMINAL
            ]

        with contextlib.suppress(BenchError):
            wait_for(lambda: not open_tasks(), settle, "every task to end", interval=1)
        for task in open_tasks():
            self.run.violated(f"task never ended: {task}")
        homes = {n.name: n.state_dir for n in self.cluster.nodes}

        def placed() -> list[str]:
            wrong = []
            running = qemus_by_vm(self.cluster.dir)
            for vm in self.ok("GET", "/vms"):
                where = running.get(vm["id"], set())
                want = {homes[vm["node"]]} if vm["power"] == "running" else set()
                if where != want or (want and vm["state"] != "running"):
                    state = f"{vm['power']}/{vm['state']} on {vm['node']}"
                    wrong.append(f"{vm['name']}: {state}, QEMU in {sorted(where)}")
            return wrong

        with contextlib.suppress(BenchError):
            wait_for(lambda: not placed(), settle, "every VM where its record says", interval=1)
        for wrong in placed():
            self.run.violated(f"VM not converged: {wrong}")
        for vm_id in self.protected:
            self.check_disklog(vm_id)

    def check_disklog(self, vm_id: str) -> None:
        vm = self.ok("GET", f"/vms/{vm_id}")
        socket = Path(self.cluster.node(vm["node"]).state_dir) / "vms" / vm_id / "serial.sock"
        console = socket.with_name("console.log")

        # A request sent while the guest boots (HA restarted it at the end) is lost to the
        # firmware or the kernel: asked again until the deadline, each time after a wait that
        # grows with the run's length (the log's). Reading the log is harmless to do twice.
        deadline = time.monotonic() + BOOT + 360
        try:
            while True:
                try:
                    answer = run_command(
                        socket, disklog.verify_command(), timeout=self.verify_timeout
                    )
                    break
                except GuestCommandError:
                    if time.monotonic() > deadline:
                        raise
        except GuestCommandError as exc:
            said = [
                line
                for line in console.read_text(errors="replace").splitlines()
                if not _CHATTER.search(line)
            ]
            self.run.violated(
                f"{vm['name']}: its disk log could not be read back: {exc}; its console's "
                f"last lines but ticks and acknowledgements: {said[-30:]}"
            )
            return
        log = self.disklog(vm_id)
        log.verified = disklog.verified(answer.output)
        self.run.note(
            f"{vm['name']}: {len(log.writers)} writer(s), {log.acked + 1} records acknowledged, "
            f"valid prefix {log.verified}, I/O errors seen by the guest {len(log.errors)}"
        )
        self.run.operations["disk records acknowledged"] += log.acked + 1
        for problem in log.problems():
            self.run.violated(f"{vm['name']}: {problem}")


def chaos(
    cluster: DevCluster,
    token: str,
    seed: int,
    duration: float,
    *,
    vms: int = 2,
    ardfs: bool = False,
    gap: float = 6.0,
    settle: float = 300.0,
) -> Run:
    """The whole run on a 3-node devcluster with the test guest imported as `testguest` and a
    prepared disk log image as `disklog` in its `shared` pool (see `prepare`)."""
    run = Run(seed)
    run.note(f"chaos seed {seed}: {duration:g} s, {vms} protected VMs, ardfs {ardfs}")
    rng = random.Random(seed)
    engine = Chaos(cluster, token, rng, run)
    engine.verify_timeout = 60 + duration / 5
    settings = engine.ok("GET", "/cluster/settings")
    engine.ok("PUT", "/cluster/settings", json={**settings, "ha": {"agent_grace": GRACE}})
    engine.create_protected(vms, ardfs, "testguest", "disklog")
    with contextlib.ExitStack() as stack:
        try:
            engine.links = stack.enter_context(LinkCuts(engine.node_processes()))
        except LinkCutError as exc:
            run.note(f"no link cuts in this run: {exc}")
        _faults_then_converge(engine, run, duration, gap, settle)
    return run


def _faults_then_converge(
    engine: Chaos, run: Run, duration: float, gap: float, settle: float
) -> None:
    threads = [
        threading.Thread(target=engine.watch_double_runs, daemon=True),
        threading.Thread(target=engine.workload, daemon=True),
        threading.Thread(target=engine.faults, args=(gap,), daemon=True),
    ]
    for thread in threads:
        thread.start()
    engine.stop.wait(duration)  # the run's length
    engine.stop.set()
    for thread in threads:
        thread.join()
    run.note("faults stopped; waiting for the cluster to converge")
    checker = threading.Event()
    engine.stop = checker  # double runs are watched while it converges too
    watcher = threading.Thread(target=engine.watch_double_runs, daemon=True)
    watcher.start()
    engine.converge(settle)
    checker.set()
    watcher.join()


def prepare(cluster: DevCluster, token: str, work: Path, ardfs: bool, log_mib: int = 256) -> None:
    """The shared pool with the test guest and an empty disk log image of `log_mib` (sparse)
    in it; with `ardfs`, an RF2 ARDFS pool on every node. A guest fills about 0.3 MiB of log
    a second; once full, its log stops growing (`heron-disklog full`)."""
    shared = Path(cluster.dir) / "shared"
    shared.mkdir(exist_ok=True)
    engine = Chaos(cluster, token, random.Random(0), Run(0))
    engine.ok("POST", "/pools", json={"name": "shared", "path": str(shared), "shared": True})
    image = build.build(HERON_CACHE / "testguest")
    log_image = disklog.prepare(work / "disklog.raw", log_mib)
    for name, path, fmt in (("testguest", image, "qcow2"), ("disklog", log_image, "raw")):
        reply = engine.ok(
            "POST",
            "/pools/shared/volumes/import",
            json={"name": name, "path": str(path), "format": fmt},
        )
        engine.task_end(reply["task"], 300)
    if ardfs:
        engine.ok("POST", "/pools", json={"name": "ardfs", "type": "ardfs", "protection": "rf2"})
        for node in cluster.nodes:
            disk = f"{node.state_dir}/ardfs-disk0"
            engine.ok("POST", "/pools/ardfs/disks", json={"node": node.name, "path": disk})
        wait_for(
            lambda: len(engine.ok("GET", "/pools/ardfs/members")) == 3,
            60,
            "every node in the ARDFS pool",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--vms", type=int, default=3)
    parser.add_argument("--ardfs", action="store_true")
    parser.add_argument("--gap", type=float, default=6.0, help="mean seconds between faults")
    args = parser.parse_args()
    exit_on_sigterm()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    load_before = load_snapshot()
    with tempfile.TemporaryDirectory(prefix="heron-chaos-") as tmp:
        work = Path(tmp)
        with running_devcluster(work / "cluster", 3, network=True) as (cluster, token):
            prepare(cluster, token, work, args.ardfs, log_mib=max(256, int(args.duration) // 2))
            run = chaos(
                cluster, token, seed, args.duration, vms=args.vms, ardfs=args.ardfs, gap=args.gap
            )
    results = {
        "seed": seed,
        "operations": dict(run.operations),
        "faults": dict(run.faults),
        "violations": run.violations,
    }
    write_result("chaos", vars(args), results, load_before)
    print(f"seed {seed}: {sum(run.faults.values())} faults, {len(run.violations)} violations")
    sys.exit(1 if run.violations else 0)


if __name__ == "__main__":
    main()
