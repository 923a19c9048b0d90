"""VM boot: from the API call to the guest's READY line on its serial console.

Four measurements per round, in a different order each round, so that drift on the machine
(and other work on it) hits all alike:

* heron create: `POST /api/v1/vms` with a disk copied from an image volume and `start: true`,
  until `HERON-GUEST-READY uuid=<vm id>` is in the VM's console.log. This includes the API
  call, the task hand-off through etcd, the disk copy (`qemu-img convert` of the 25 MiB test
  guest), the QEMU start and the guest's boot. The VM is deleted (with its volume) afterwards.
* heron start: `POST /api/v1/vms/{id}/actions/start` of a VM whose volume already exists,
  until a new READY line appears; the VM is force-stopped afterwards.
* bare (the baseline): the same guest on a plain `qemu-system-x86_64` command line, from
  process start to the READY line. Its disk is a qcow2 copy made with `qemu-img convert` whose
  time is measured apart (bare copy), so the copy's share of Heron's create is visible.
* bare, Heron's devices: the bare command line plus the CPU model, VGA card and VNC server
  that Heron's QEMU has, which make the guest's own boot a little different.

For the two Heron measurements the time at which the task finished (QEMU started) is recorded
too, which splits them into management plane and guest boot.

Run from the repository root: `.venv/bin/python -m bench.vm_boot [--runs 8]`.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    READY_MARKER,
    TESTGUEST,
    Api,
    BenchError,
    exit_on_sigterm,
    file_size,
    line_after,
    load_snapshot,
    print_rows,
    ratio,
    running_devcluster,
    shared_testguest,
    stats,
    wait_for,
    write_result,
)

NAME = "vm_boot"
BOOT_TIMEOUT = 120.0  # a deadline for a broken run, not a judgement on the figures
MEMORY_MIB = 128


def qemu_img_convert(source: Path, target: Path) -> float:
    """Copy `source` to a new qcow2 `target`; returns the seconds it took."""
    start = time.perf_counter()
    subprocess.run(
        ["qemu-img", "convert", "-O", "qcow2", str(source), str(target)],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


# What Heron's command line (heron.hypervisor.command) adds to the bare one that can change
# the guest's boot time under TCG: the `max` CPU model, a VGA card (SeaBIOS runs its option
# ROM) and a VNC server. The "bare, Heron's devices" baseline adds these, so that the gap left
# between it and Heron is the management plane's own.
HERON_DEVICES = [
    "-cpu",
    "max",
    "-smp",
    "1",
    "-no-user-config",
    "-device",
    "VGA",
    "-vnc",
    "127.0.0.1:0,to=2000",
]


def bare_boot(work: Path, master: Path, tag: str, extra: list[str]) -> dict[str, float]:
    """Copy the image (timed apart), then boot it on a bare QEMU command line."""
    disk = work / f"bare-{tag}.qcow2"
    log = work / f"bare-{tag}.log"
    copy_s = qemu_img_convert(master, disk)
    vm_uuid = str(uuid.uuid4())
    args = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-machine",
        "q35",
        "-m",
        str(MEMORY_MIB),
        "-nodefaults",
        "-display",
        "none",
        "-uuid",
        vm_uuid,
        "-drive",
        f"file={disk},format=qcow2,if=virtio",
        "-serial",
        f"file:{log}",
        *extra,
    ]
    marker = f"{READY_MARKER} uuid={vm_uuid}"
    with open(work / f"bare-{tag}.stderr", "wb") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
        try:
            outcome = wait_for(
                lambda: "ready" if line_after(log, marker) else proc.poll() is not None and "exit",
                BOOT_TIMEOUT,
                "the bare QEMU's READY line",
            )
            boot_s = time.perf_counter() - start
            if outcome != "ready":
                raise BenchError(f"bare QEMU exited with {proc.returncode} before READY")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            disk.unlink(missing_ok=True)
    return {"copy_s": copy_s, "boot_s": boot_s}


@dataclass
class Heron:
    api: Api
    state_dir: Path  # the only node's: this is a 1-node cluster

    def console(self, vm_id: str) -> Path:
        return self.state_dir / "vms" / vm_id / "console.log"

    def wait_ready(self, vm_id: str, task_id: str, offset: int) -> None:
        """Poll the console for the READY line; also fail early if the task failed."""
        marker = f"{READY_MARKER} uuid={vm_id}"
        console = self.console(vm_id)
        polls = 0

        def ready() -> bool:
            nonlocal polls
            polls += 1
            if line_after(console, marker, offset):
                return True
            if polls % 25 == 0:  # about twice a second
                task = self.api.ok("GET", f"/tasks/{task_id}")
                if task["state"] in ("failed", "cancelled"):
                    raise BenchError(f"task {task_id} {task['state']}: {task.get('error')}")
            return False

        wait_for(ready, BOOT_TIMEOUT, f"READY of VM {vm_id}")

    def create_to_ready(self, name: str) -> dict[str, Any]:
        body = {
            "name": name,
            "memory_mib": MEMORY_MIB,
            "disks": [{"pool": "local", "source": "shared/testguest"}],
            "start": True,
        }
        wall = time.time()
        start = time.perf_counter()
        reply = self.api.ok("POST", "/vms", json=body)
        api_s = time.perf_counter() - start
        self.wait_ready(reply["vm"], reply["task"], 0)
        total_s = time.perf_counter() - start
        task = self.api.wait_task(reply["task"])
        return {
            "vm": reply["vm"],
            "total_s": total_s,
            "api_reply_s": api_s,
            # The task ends once QEMU runs (disk copied, process started): the rest is boot.
            "task_done_s": task["updated_at"] - wall,
        }

    def start_to_ready(self, vm_id: str) -> dict[str, Any]:
        offset = file_size(self.console(vm_id))
        wall = time.time()
        start = time.perf_counter()
        reply = self.api.ok("POST", f"/vms/{vm_id}/actions/start")
        api_s = time.perf_counter() - start
        self.wait_ready(vm_id, reply["task"], offset)
        total_s = time.perf_counter() - start
        task = self.api.wait_task(reply["task"])
        return {
            "total_s": total_s,
            "api_reply_s": api_s,
            "task_done_s": task["updated_at"] - wall,
        }

    def stop(self, vm_id: str) -> None:
        reply = self.api.ok("POST", f"/vms/{vm_id}/actions/stop")
        self.api.wait_task(reply["task"])

    def delete(self, vm_id: str) -> None:
        reply = self.api.ok("DELETE", f"/vms/{vm_id}", params={"volumes": "true"})
        self.api.wait_task(reply["task"])


def run(runs: int, warmup: int, keep: bool) -> dict[str, Any]:
    if not TESTGUEST.exists():
        raise BenchError(f"no test guest at {TESTGUEST}: run scripts/install-deps")
    work = Path(tempfile.mkdtemp(prefix="heron-bench-boot-"))
    try:
        rounds = measure(work, runs, warmup, keep)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return {"summary": summarize([r for r in rounds if not r["warmup"]]), "rounds": rounds}


def measure(work: Path, runs: int, warmup: int, keep: bool) -> list[dict[str, Any]]:
    rounds: list[dict[str, Any]] = []
    with running_devcluster(work / "cluster", 1, keep=keep) as (cluster, token):
        api = Api(cluster.nodes[0].url, token, cluster.tls())
        try:
            shared_testguest(api, work)
            # The baseline copies from a qcow2 master as Heron copies from the imported volume.
            master = work / "master.qcow2"
            qemu_img_convert(TESTGUEST, master)

            heron = Heron(api, Path(cluster.nodes[0].state_dir))
            reply = api.ok(
                "POST",
                "/vms",
                json={
                    "name": "bench-start",
                    "memory_mib": MEMORY_MIB,
                    "disks": [{"pool": "local", "source": "shared/testguest"}],
                    "start": False,
                },
            )
            api.wait_task(reply["task"])
            start_vm = reply["vm"]

            for index in range(warmup + runs):

                def create(index: int = index) -> dict[str, Any]:
                    created = heron.create_to_ready(f"bench-create-{index}")
                    heron.delete(created.pop("vm"))
                    return created

                def start() -> dict[str, Any]:
                    started = heron.start_to_ready(start_vm)
                    heron.stop(start_vm)
                    return started

                steps: dict[str, Callable[[], dict[str, Any]]] = {
                    "bare": lambda index=index: bare_boot(work, master, f"{index}", []),
                    "bare_heron_devices": lambda index=index: bare_boot(
                        work, master, f"{index}-devices", HERON_DEVICES
                    ),
                    "create": create,
                    "start": start,
                }
                # A different order each round, so that nothing always follows the same step.
                order = list(steps)
                random.Random(index).shuffle(order)
                found = {name: steps[name]() for name in order}
                rounds.append({"warmup": index < warmup, "order": order, **found})
                print(
                    f"  round {index}{' (warm-up)' if index < warmup else ''}: "
                    f"bare {found['bare']['boot_s']:.2f}s "
                    f"(+copy {found['bare']['copy_s']:.2f}s), "
                    f"bare with Heron's devices {found['bare_heron_devices']['boot_s']:.2f}s, "
                    f"heron create {found['create']['total_s']:.2f}s, "
                    f"start {found['start']['total_s']:.2f}s",
                    flush=True,
                )
            heron.delete(start_vm)
        finally:
            api.close()
    return rounds


def summarize(measured: list[dict[str, Any]]) -> dict[str, Any]:

    def series(kind: str, field: str) -> list[float]:
        return [r[kind][field] for r in measured]

    bare_boot_s = series("bare", "boot_s")
    devices_s = series("bare_heron_devices", "boot_s")
    bare_copy_s = series("bare", "copy_s")
    bare_copy_boot_s = [c + b for c, b in zip(bare_copy_s, bare_boot_s, strict=True)]
    create_s = series("create", "total_s")
    start_s = series("start", "total_s")
    summary = {
        "bare_boot_s": stats(bare_boot_s, 3),
        "bare_heron_devices_boot_s": stats(devices_s, 3),
        "bare_copy_s": stats(bare_copy_s, 3),
        "bare_copy_plus_boot_s": stats(bare_copy_boot_s, 3),
        "heron_create_to_ready_s": stats(create_s, 3),
        "heron_create_api_reply_s": stats(series("create", "api_reply_s"), 4),
        "heron_create_task_done_s": stats(series("create", "task_done_s"), 3),
        "heron_start_to_ready_s": stats(start_s, 3),
        "heron_start_api_reply_s": stats(series("start", "api_reply_s"), 4),
        "heron_start_task_done_s": stats(series("start", "task_done_s"), 3),
    }
    p50 = {k: v["p50"] for k, v in summary.items()}
    p90 = {k: v["p90"] for k, v in summary.items()}
    summary["ratios"] = {
        "create_vs_bare_boot_p50": ratio(p50["heron_create_to_ready_s"], p50["bare_boot_s"]),
        "create_vs_bare_boot_p90": ratio(p90["heron_create_to_ready_s"], p90["bare_boot_s"]),
        "create_vs_bare_copy_plus_boot_p50": ratio(
            p50["heron_create_to_ready_s"], p50["bare_copy_plus_boot_s"]
        ),
        "start_vs_bare_boot_p50": ratio(p50["heron_start_to_ready_s"], p50["bare_boot_s"]),
        "start_vs_bare_boot_p90": ratio(p90["heron_start_to_ready_s"], p90["bare_boot_s"]),
        "bare_heron_devices_vs_bare_boot_p50": ratio(
            p50["bare_heron_devices_boot_s"], p50["bare_boot_s"]
        ),
        "start_vs_bare_heron_devices_p50": ratio(
            p50["heron_start_to_ready_s"], p50["bare_heron_devices_boot_s"]
        ),
    }
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
    params = {"runs": args.runs, "warmup": args.warmup, "memory_mib": MEMORY_MIB}
    path = write_result(NAME, params, results, load)
    s = results["summary"]
    r = s["ratios"]

    def fmt(key: str) -> str:
        return f"median {s[key]['p50']:.2f}s  p90 {s[key]['p90']:.2f}s"

    print_rows(
        f"vm_boot ({args.runs} runs): create/start to READY line",
        [
            ("bare qemu boot (baseline)", fmt("bare_boot_s")),
            ("bare, Heron's devices", fmt("bare_heron_devices_boot_s")),
            ("bare qemu-img convert", fmt("bare_copy_s")),
            ("heron create+start", fmt("heron_create_to_ready_s") + "  (includes disk copy)"),
            ("  of which until its task ended", fmt("heron_create_task_done_s")),
            ("heron start (existing volume)", fmt("heron_start_to_ready_s")),
            ("  of which until its task ended", fmt("heron_start_task_done_s")),
            ("ratio create / bare boot", f"{r['create_vs_bare_boot_p50']}x median"),
            ("ratio create / bare copy+boot", f"{r['create_vs_bare_copy_plus_boot_p50']}x median"),
            ("ratio start / bare boot", f"{r['start_vs_bare_boot_p50']}x median"),
            (
                "ratio start / bare, Heron's devices",
                f"{r['start_vs_bare_heron_devices_p50']}x median",
            ),
            ("results", str(path)),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
