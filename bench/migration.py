"""Live migration: Heron moving a running guest between nodes, against bare QEMU doing the same.

One 2-node devcluster (3 etcd members, 2 agents on loopback) with the test guest imported into
a shared `dir` pool. Four guests (128 MiB, booted to their `heron-tick` loop) run throughout,
and each round moves every one of them once, in a shuffled order, back and forth:

* heron shared: a Heron VM whose disk is on the shared pool (both nodes open the same file).
  Measured from just before `POST /api/v1/vms/{id}/actions/migrate {"target": node}` until the
  `vm.migrate` task ended (its `updated_at`, so the 50 ms task polling is not in it). That
  includes the API call, the task's way through etcd to the source node's agent, the migration
  record and the `vm.receive` task handed to the target through etcd, the target's QEMU start
  (`-incoming defer`), the memory copy, the hand-over of the VM record and the source QEMU's
  end. QEMU's own downtime (`query-migrate`) comes from the task's result.
* heron local: the same with the disk on the source node's `local` pool: the target also
  creates an empty volume and exports it over NBD, and the source mirrors the disk into it
  (`blockdev-mirror`, sync full, write-blocking) before the memory moves.
* heron ardfs: the disk is an ARDFS volume (RF=2 over one chunk-store directory per node):
  the target's heron-io exports it as the standby, QEMU pauses before the switchover while
  the volume changes owner (epoch + 1) and the target reports owning it, then switches. Its
  baseline is bare shared: the same QEMU operations without the hand-over.
* bare shared (the baseline): the same guest on Heron's own QEMU command line
  (`heron.hypervisor.command.build` for the same VM spec, without `-daemonize`/`-pidfile`),
  started as a child of this process. From just before the destination QEMU is started with
  `-incoming defer`: QMP connect, `migrate-incoming tcp:127.0.0.1:PORT`, on the source the
  capabilities Heron sets (auto-converge, events; downtime-limit 300 ms) and `migrate`, waiting
  for the MIGRATION completed event, then `quit` of the source until its process is gone.
* bare local: the same plus what Heron does for a local disk: `qemu-img create` of the empty
  destination disk, `nbd-server-start` and a writable `block-export-add` on the destination,
  `blockdev-add` (nbd) and `blockdev-mirror` on the source, waiting for BLOCK_JOB_READY, and
  `block-job-cancel` after the memory moved; the source's disk file is deleted at the end.

* bare shared TLS, bare local TLS: the same as bare shared and bare local, with the memory
  stream and the NBD disk copy over TLS as Heron sets it up (issue 16): a `tls-creds-x509`
  object on each QEMU from node credentials of one CA (the target's asking for the source's
  certificate), `tls-creds`/`tls-hostname` in the migration parameters, on the NBD server and
  on the source's NBD blockdev. Heron's own moves go over TLS (both nodes run this release).

So the ratio heron / bare is the cost of Heron's orchestration around the same QEMU operations
(with TLS on Heron's side: heron / bare TLS compares like with like), and bare TLS / bare the
cost of TLS itself on this machine.
After every move the guest's serial console is checked: the first `heron-tick N` on the new
side must be greater than the last one before the move, and no READY line may appear there
(a rebooted guest would print one and count from 1 again).

Run from the repository root: `.venv/bin/python -m bench.migration [--runs 8] [--warmup 1]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from bench.common import (
    READY_MARKER,
    TESTGUEST,
    Api,
    BenchError,
    connect_qmp,
    exit_on_sigterm,
    load_snapshot,
    migrate_bare,
    print_rows,
    ratio,
    running_devcluster,
    shared_testguest,
    stats,
    wait_for,
    write_result,
)
from heron.devcluster import DevCluster
from heron.hypervisor import command
from heron.hypervisor.accel import qemu_version
from heron.models.vm import VM, PowerState, VMSpec
from heron.tls import NodeCredentials, issue, make_authority
from heron.util.ports import free_port

NAME = "migration"
MEMORY_MIB = 128
DOWNTIME_LIMIT_MS = 300  # Heron's default max_downtime_ms, set on the bare source as well
NODES = ("node1", "node2")
# Deadlines for a broken run, not judgements on the figures.
BOOT_TIMEOUT = 180.0
MIGRATE_TIMEOUT = 120.0
TICK_TIMEOUT = 30.0
TICK = re.compile(rb"heron-tick (\d+)")
KINDS = (
    "heron_shared",
    "heron_local",
    "heron_ardfs",
    "bare_shared",
    "bare_local",
    "bare_shared_tls",
    "bare_local_tls",
)
# The name the bare guests' certificate carries, checked by the source (tls-hostname).
TLS_NAME = "bench-node"


def ticks(path: Path) -> list[int]:
    try:
        return [int(m.group(1)) for m in TICK.finditer(path.read_bytes())]
    except FileNotFoundError:
        return []


def has_ready(path: Path) -> bool:
    try:
        return READY_MARKER.encode() in path.read_bytes()
    except FileNotFoundError:
        return False


def first_tick(log: Path) -> int:
    """The first tick the guest printed on its new side (waits for it)."""
    found = wait_for(lambda: ticks(log), TICK_TIMEOUT, f"a heron-tick line in {log}")
    return found[0]


def continuity(before: int, log: Path) -> dict[str, Any]:
    after = first_tick(log)
    return {
        "tick_before": before,
        "tick_after": after,
        "ready_on_target": has_ready(log),
        "continued": after > before and not has_ready(log),
    }


# -- Heron -----------------------------------------------------------------------------------


@dataclass
class HeronGuest:
    api: Api
    cluster: DevCluster
    vm_id: str
    node: str

    def console(self, node: str) -> Path:
        return Path(self.cluster.node(node).state_dir) / "vms" / self.vm_id / "console.log"

    def migrate(self) -> dict[str, Any]:
        target = next(n for n in NODES if n != self.node)
        seen = ticks(self.console(self.node))
        if not seen:
            raise BenchError(f"VM {self.vm_id} has not ticked on {self.node}")
        wall = time.time()
        start = time.perf_counter()
        reply = self.api.ok("POST", f"/vms/{self.vm_id}/actions/migrate", json={"target": target})
        api_s = time.perf_counter() - start
        task = self.api.wait_task(reply["task"], timeout=MIGRATE_TIMEOUT)
        polled_s = time.perf_counter() - start
        result = task["result"] or {}
        if result.get("node") != target:
            raise BenchError(f"migration of {self.vm_id} ended on {result.get('node')}")
        self.node = target
        found = continuity(seen[-1], self.console(target))
        # The target's side ends once it has seen the verdict, taken the VM over and dropped
        # the migration record; only then can the next migration of this VM be asked for.
        receive = self._receive_task(wall)
        return {
            "node": target,
            "total_s": task["updated_at"] - wall,
            "polled_s": polled_s,
            "api_reply_s": api_s,
            "task_total_ms": result.get("total_ms"),
            "downtime_ms": result.get("downtime_ms"),
            "disks_copied": result.get("disks_copied"),
            "receive_done_s": receive["updated_at"] - wall,
            **found,
        }

    def _receive_task(self, since: float) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for task in self.api.ok("GET", "/tasks", params={"limit": 50}):
                if (
                    task["kind"] == "vm.receive"
                    and task["target"] == self.vm_id
                    and task["created_at"] >= since
                ):
                    return task
            return None

        task = wait_for(found, MIGRATE_TIMEOUT, f"the vm.receive task of {self.vm_id}", 0.05)
        return self.api.wait_task(task["id"], timeout=MIGRATE_TIMEOUT)


def heron_guest(api: Api, cluster: DevCluster, name: str, pool: str) -> HeronGuest:
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": name,
            "memory_mib": MEMORY_MIB,
            "node": NODES[0],
            "start": True,
            "disks": [{"pool": pool, "source": "shared/testguest"}],
        },
    )
    api.wait_task(reply["task"])
    return HeronGuest(api, cluster, reply["vm"], NODES[0])


# -- bare QEMU -------------------------------------------------------------------------------


@dataclass
class BareQemu:
    proc: subprocess.Popen[bytes]
    paths: command.RuntimePaths
    disk: Path


@dataclass
class BareGuest:
    """A guest moved between bare QEMUs; `current` is the one it runs in."""

    kind: str  # "shared" or "local"
    work: Path
    vm: VM
    disk_size: int
    current: BareQemu
    spawned: list[subprocess.Popen[bytes]]  # every bare QEMU started, to end them all
    moves: int = 0
    # QEMU's TLS files (ca-cert.pem, server-*.pem, client-*.pem): moves go over TLS.
    tls: Path | None = None

    def migrate(self) -> dict[str, Any]:
        seen = ticks(self.current.paths.console_log)
        if not seen:
            raise BenchError(f"bare {self.kind} guest has not ticked")
        self.moves += 1
        if self.kind == "shared":
            disk = self.current.disk
        else:
            tls = "-tls" if self.tls is not None else ""
            disk = self.work / f"bare-local{tls}-{self.moves}.qcow2"
        source = self.current
        figures, target = asyncio.run(self._migrate(disk))
        self.current = target
        found = continuity(seen[-1], target.paths.console_log)
        # The source's log is still there (Heron deletes its copy): no tick may be missing.
        found["tick_last_on_source"] = max(ticks(source.paths.console_log), default=None)
        return {**figures, **found}

    async def _migrate(self, disk: Path) -> tuple[dict[str, Any], BareQemu]:
        source = self.current
        local = self.kind == "local"
        src = QMPClient("bare-source")
        await src.connect(str(source.paths.qmp))  # Heron's agent holds its connection too
        dst: QMPClient | None = None
        try:
            start = time.perf_counter()
            if local:
                await run_exec(
                    "qemu-img", "create", "-q", "-f", "qcow2", str(disk), str(self.disk_size)
                )
            tls = "-tls" if self.tls is not None else ""
            root = self.work / f"bare-{self.kind}{tls}-{len(self.spawned)}"
            target = launch_bare(root, self.vm, disk, True, self.spawned)
            dst = await connect_qmp(target.proc, target.paths.qmp, target.paths.qemu_log)
            await dst.execute(
                "migrate-set-capabilities",
                {"capabilities": [{"capability": "events", "state": True}]},
            )
            # As Heron: a credentials object per move on each side (ids differ from the
            # source's earlier ones).
            creds: dict[str, str] = {}
            if self.tls is not None:
                creds = {"tls-creds": f"tls{self.moves}"}
                for qmp, endpoint in ((dst, "server"), (src, "client")):
                    await qmp.execute(
                        "object-add",
                        {
                            "qom-type": "tls-creds-x509",
                            "id": creds["tls-creds"],
                            "dir": str(self.tls),
                            "endpoint": endpoint,
                            "verify-peer": True,
                        },
                    )
                await dst.execute("migrate-set-parameters", creds)
            nbd_port = free_port()
            if local:
                await dst.execute(
                    "nbd-server-start",
                    {
                        "addr": {
                            "type": "inet",
                            "data": {"host": "127.0.0.1", "port": str(nbd_port)},
                        },
                        **creds,
                    },
                )
                await dst.execute(
                    "block-export-add",
                    {
                        "type": "nbd",
                        "id": "export0",
                        "node-name": "disk0",
                        "name": "disk0",
                        "writable": True,
                    },
                )
            uri = f"tcp:127.0.0.1:{free_port()}"
            await dst.execute("migrate-incoming", {"uri": uri})
            prepared = time.perf_counter()
            if local:
                with src.listener("BLOCK_JOB_READY") as ready:
                    await src.execute(
                        "blockdev-add",
                        {
                            "driver": "nbd",
                            "node-name": "mirror0",
                            "export": "disk0",
                            "server": {"type": "inet", "host": "127.0.0.1", "port": str(nbd_port)},
                            **creds,
                            **({"tls-hostname": TLS_NAME} if creds else {}),
                        },
                    )
                    await src.execute(
                        "blockdev-mirror",
                        {
                            "job-id": "mirror0",
                            "device": "disk0",
                            "target": "mirror0",
                            "sync": "full",
                            "copy-mode": "write-blocking",
                        },
                    )
                    await asyncio.wait_for(ready.get(), MIGRATE_TIMEOUT)
            mirrored = time.perf_counter()
            parameters: dict[str, Any] = {"downtime-limit": DOWNTIME_LIMIT_MS, **creds}
            if creds:
                parameters["tls-hostname"] = TLS_NAME
            info = await migrate_bare(src, uri, True, parameters, MIGRATE_TIMEOUT)
            migrated = time.perf_counter()
            if local:
                await src.execute("block-job-cancel", {"device": "mirror0"})
            with contextlib.suppress(Exception):
                await src.execute("quit")
            await asyncio.to_thread(source.proc.wait, 30)
            if local:
                source.disk.unlink()
            total = time.perf_counter() - start
            parameters = await dst.execute("query-migrate-parameters")  # the same defaults
            if local:
                await dst.execute("nbd-server-stop")  # Heron's target does it after the task
        finally:
            with contextlib.suppress(Exception):
                await src.disconnect()
            if dst is not None:
                with contextlib.suppress(Exception):
                    await dst.disconnect()
        figures = {
            "total_s": total,
            "prepare_s": prepared - start,
            "mirror_s": mirrored - prepared,
            "memory_s": migrated - mirrored,
            "finish_s": total - (migrated - start),
            "downtime_ms": info.get("downtime"),
            "setup_ms": info.get("setup-time"),
            "ram_transferred_mib": round(info.get("ram", {}).get("transferred", 0) / 2**20, 1),
            "max_bandwidth_mib_s": round(parameters.get("max-bandwidth", 0) / 2**20, 1),
        }
        return figures, target


def end_all(spawned: list[subprocess.Popen[bytes]]) -> None:
    for proc in spawned:
        if proc.poll() is None:
            proc.terminate()
    for proc in spawned:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch_bare(
    root: Path, vm: VM, disk: Path, incoming: bool, spawned: list[subprocess.Popen[bytes]]
) -> BareQemu:
    """Start a QEMU with Heron's command line for `vm` (`heron.hypervisor.command.build`)."""
    paths = command.RuntimePaths(root)
    root.mkdir(parents=True)
    file = {"driver": "file", "filename": str(disk), "aio": "threads"}  # as a dir pool gives
    ram = command.ram_kib(vm.spec.memory_mib, "tcg", qemu_version())  # as Heron's agent does
    args = command.build(vm, [command.ResolvedDisk("virtio", file, "qcow2")], paths, "tcg", ram=ram)
    # Heron's QEMU daemonizes; this one stays our child, with everything else the same.
    at = args.index("-pidfile")
    del args[at : at + 2]
    args.remove("-daemonize")
    if incoming:
        args += ["-incoming", "defer"]  # as Heron's target starts it
    with open(paths.qemu_log, "ab") as qemu_log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=qemu_log)
    spawned.append(proc)
    return BareQemu(proc, paths, disk)


async def run_exec(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise BenchError(f"{args[0]} failed: {out.decode(errors='replace')[-500:]}")


def bare_credentials(work: Path) -> Path:
    """QEMU's TLS files for the bare guests: a node certificate of a CA made for the run,
    exported as Heron exports a node's (NodeCredentials.export_for_qemu)."""
    now = time.time()
    authority = make_authority("bench", now)
    node = NodeCredentials(work / "bare-tls-node")
    node.write(issue(authority, [TLS_NAME, "127.0.0.1"], now), authority.certificate)
    directory = work / "bare-tls"
    node.export_for_qemu(directory)
    return directory


def bare_guest(
    work: Path,
    spec: VMSpec,
    kind: str,
    master: Path,
    spawned: list[subprocess.Popen[bytes]],
    tls: Path | None = None,
) -> BareGuest:
    label = f"{kind}-tls" if tls is not None else kind
    disk = work / f"bare-{label}-0.qcow2"
    shutil.copyfile(master, disk)
    vm = VM(
        id=str(uuid.uuid4()),
        spec=spec.model_copy(update={"name": f"bare-{label}"}),
        node="bare",
        power=PowerState.running,
        created_at=time.time(),
    )
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(disk)],
        check=True,
        capture_output=True,
        text=True,
    )
    first = launch_bare(work / f"bare-{label}-0", vm, disk, False, spawned)
    size = int(json.loads(info.stdout)["virtual-size"])
    return BareGuest(kind, work, vm, size, first, spawned, tls=tls)


# -- the run ---------------------------------------------------------------------------------


def run(runs: int, warmup: int, keep: bool) -> dict[str, Any]:
    if not TESTGUEST.exists():
        raise BenchError(f"no test guest at {TESTGUEST}: run scripts/install-deps")
    # Short: QEMU's unix sockets live below it and their paths may not exceed 107 bytes.
    work = Path(tempfile.mkdtemp(prefix="hbm-"))
    try:
        rounds = measure(work, runs, warmup, keep)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return {"summary": summarize([r for r in rounds if not r["warmup"]]), "rounds": rounds}


def measure(work: Path, runs: int, warmup: int, keep: bool) -> list[dict[str, Any]]:
    rounds: list[dict[str, Any]] = []
    bare: list[BareGuest] = []
    spawned: list[subprocess.Popen[bytes]] = []  # every bare QEMU, to end them all
    with running_devcluster(work / "cluster", len(NODES), keep=keep) as (cluster, token):
        api = Api(cluster.nodes[0].url, token, cluster.tls())
        try:
            shared_testguest(api, work)
            api.ok("POST", "/pools", json={"name": "hci", "type": "ardfs", "protection": "rf2"})
            for node in cluster.nodes:
                disk = f"{node.state_dir}/ardfs-disk0"
                api.ok("POST", "/pools/hci/disks", json={"node": node.name, "path": disk})
            heron = {
                "shared": heron_guest(api, cluster, "mig-shared", "shared"),
                "local": heron_guest(api, cluster, "mig-local", "local"),
                "ardfs": heron_guest(api, cluster, "mig-ardfs", "hci"),
            }
            # The baseline runs the same VM spec on Heron's command line, from the same image.
            spec = VMSpec.model_validate(api.ok("GET", f"/vms/{heron['shared'].vm_id}")["spec"])
            master = work / "master.qcow2"
            subprocess.run(
                ["qemu-img", "convert", "-O", "qcow2", str(TESTGUEST), str(master)],
                check=True,
                capture_output=True,
            )
            for kind in ("shared", "local"):
                bare.append(bare_guest(work, spec, kind, master, spawned))
            tls = bare_credentials(work)
            for kind in ("shared", "local"):
                bare.append(bare_guest(work, spec, kind, master, spawned, tls))
            consoles = [g.console(g.node) for g in heron.values()]
            consoles += [g.current.paths.console_log for g in bare]
            for log in consoles:
                wait_for(lambda log=log: len(ticks(log)) >= 2, BOOT_TIMEOUT, f"ticks in {log}")

            steps: dict[str, Callable[[], dict[str, Any]]] = {
                "heron_shared": heron["shared"].migrate,
                "heron_local": heron["local"].migrate,
                "heron_ardfs": heron["ardfs"].migrate,
                "bare_shared": bare[0].migrate,
                "bare_local": bare[1].migrate,
                "bare_shared_tls": bare[2].migrate,
                "bare_local_tls": bare[3].migrate,
            }
            for index in range(warmup + runs):
                order = list(KINDS)
                random.Random(index).shuffle(order)
                found = {name: steps[name]() for name in order}
                rounds.append({"warmup": index < warmup, "order": order, **found})
                print(
                    f"  round {index}{' (warm-up)' if index < warmup else ''}: "
                    + ", ".join(
                        f"{k} {found[k]['total_s']:.2f}s/{found[k]['downtime_ms']}ms"
                        f"{'' if found[k]['continued'] else ' NOT CONTINUED'}"
                        for k in KINDS
                    ),
                    flush=True,
                )
        finally:
            api.close()
            end_all(spawned)
    return rounds


def summarize(measured: list[dict[str, Any]]) -> dict[str, Any]:
    def series(kind: str, key: str) -> list[float]:
        return [float(r[kind][key]) for r in measured if r[kind].get(key) is not None]

    summary: dict[str, Any] = {}
    for disk in ("shared", "local"):
        heron, bare = f"heron_{disk}", f"bare_{disk}"
        part: dict[str, Any] = {
            "heron_total_s": stats(series(heron, "total_s"), 3),
            "heron_api_reply_s": stats(series(heron, "api_reply_s"), 4),
            "heron_task_total_ms": stats(series(heron, "task_total_ms"), 0),
            "heron_receive_done_s": stats(series(heron, "receive_done_s"), 3),
            "heron_downtime_ms": stats(series(heron, "downtime_ms"), 0),
            "bare_total_s": stats(series(bare, "total_s"), 3),
            "bare_prepare_s": stats(series(bare, "prepare_s"), 3),
            "bare_mirror_s": stats(series(bare, "mirror_s"), 3),
            "bare_memory_s": stats(series(bare, "memory_s"), 3),
            "bare_finish_s": stats(series(bare, "finish_s"), 3),
            "bare_downtime_ms": stats(series(bare, "downtime_ms"), 0),
            "bare_tls_total_s": stats(series(f"{bare}_tls", "total_s"), 3),
            "bare_tls_mirror_s": stats(series(f"{bare}_tls", "mirror_s"), 3),
            "bare_tls_memory_s": stats(series(f"{bare}_tls", "memory_s"), 3),
            "bare_tls_downtime_ms": stats(series(f"{bare}_tls", "downtime_ms"), 0),
            "bare_ram_transferred_mib": stats(series(bare, "ram_transferred_mib"), 1),
            "max_bandwidth_mib_s": sorted(set(series(bare, "max_bandwidth_mib_s"))),
            "continued": {
                kind: sum(1 for r in measured if r[kind]["continued"])
                for kind in (heron, bare, f"{bare}_tls")
            },
            # Bare only (Heron deletes the source's console log): the source's last tick and
            # the target's first are consecutive, so not one tick was lost or repeated.
            "bare_no_tick_lost": sum(
                1 for r in measured if r[bare]["tick_last_on_source"] == r[bare]["tick_after"] - 1
            ),
            "rounds": len(measured),
        }
        part["ratios"] = {
            "total_p50": ratio(part["heron_total_s"]["p50"], part["bare_total_s"]["p50"]),
            "total_p90": ratio(part["heron_total_s"]["p90"], part["bare_total_s"]["p90"]),
            "downtime_p50": ratio(
                part["heron_downtime_ms"]["p50"], part["bare_downtime_ms"]["p50"]
            ),
            # Heron's moves go over TLS: against the bare ones that do too.
            "total_p50_vs_bare_tls": ratio(
                part["heron_total_s"]["p50"], part["bare_tls_total_s"]["p50"]
            ),
            # What TLS costs the same bare QEMU operations.
            "tls_total_p50": ratio(part["bare_tls_total_s"]["p50"], part["bare_total_s"]["p50"]),
            "tls_memory_p50": ratio(part["bare_tls_memory_s"]["p50"], part["bare_memory_s"]["p50"]),
            "tls_mirror_p50": ratio(part["bare_tls_mirror_s"]["p50"], part["bare_mirror_s"]["p50"]),
            "tls_downtime_p50": ratio(
                part["bare_tls_downtime_ms"]["p50"], part["bare_downtime_ms"]["p50"]
            ),
        }
        summary[disk] = part
    ardfs: dict[str, Any] = {
        "heron_total_s": stats(series("heron_ardfs", "total_s"), 3),
        "heron_downtime_ms": stats(series("heron_ardfs", "downtime_ms"), 0),
        "continued": sum(1 for r in measured if r["heron_ardfs"]["continued"]),
        "rounds": len(measured),
    }
    ardfs["ratios_to_bare_shared"] = {
        "total_p50": ratio(ardfs["heron_total_s"]["p50"], summary["shared"]["bare_total_s"]["p50"]),
        "downtime_p50": ratio(
            ardfs["heron_downtime_ms"]["p50"], summary["shared"]["bare_downtime_ms"]["p50"]
        ),
    }
    summary["ardfs"] = ardfs
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="measured rounds")
    parser.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    load = load_snapshot()
    results = run(args.runs, args.warmup, args.keep)
    params = {
        "runs": args.runs,
        "warmup": args.warmup,
        "memory_mib": MEMORY_MIB,
        "nodes": len(NODES),
        "downtime_limit_ms": DOWNTIME_LIMIT_MS,
    }
    path = write_result(NAME, params, results, load)
    rows: list[tuple[str, str]] = []
    summary = dict(results["summary"])
    ardfs = summary.pop("ardfs")
    for disk, s in summary.items():

        def fmt(key: str, unit: str, s: dict[str, Any] = s) -> str:
            return f"median {s[key]['p50']}{unit}  p90 {s[key]['p90']}{unit}"

        r = s["ratios"]
        rows += [
            (f"{disk}: bare total (baseline)", fmt("bare_total_s", "s")),
            (f"{disk}: bare downtime", fmt("bare_downtime_ms", "ms")),
            (f"{disk}: heron POST to task end", fmt("heron_total_s", "s")),
            (f"{disk}: heron downtime", fmt("heron_downtime_ms", "ms")),
            (f"{disk}: heron until receive ended", fmt("heron_receive_done_s", "s")),
            (f"{disk}: ratio heron / bare", f"{r['total_p50']}x median, {r['total_p90']}x p90"),
            (f"{disk}: bare TLS total", fmt("bare_tls_total_s", "s")),
            (f"{disk}: bare TLS downtime", fmt("bare_tls_downtime_ms", "ms")),
            (
                f"{disk}: ratio bare TLS / bare",
                f"{r['tls_total_p50']}x total, {r['tls_memory_p50']}x memory, "
                f"{r['tls_mirror_p50']}x disk copy, {r['tls_downtime_p50']}x downtime",
            ),
            (f"{disk}: ratio heron / bare TLS", f"{r['total_p50_vs_bare_tls']}x median"),
            (f"{disk}: guest continued", f"{s['continued']} of {s['rounds']}"),
        ]
    a = ardfs["ratios_to_bare_shared"]
    rows += [
        ("ardfs: heron POST to task end", f"median {ardfs['heron_total_s']['p50']}s"),
        ("ardfs: heron downtime", f"median {ardfs['heron_downtime_ms']['p50']}ms"),
        ("ardfs: ratio to bare shared", f"{a['total_p50']}x total, {a['downtime_p50']}x downtime"),
        ("ardfs: guest continued", f"{ardfs['continued']} of {ardfs['rounds']}"),
    ]
    rows.append(("results", str(path)))
    print_rows(f"migration ({args.runs} rounds): live migration between two nodes", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
