"""Freeze window: how long an application-consistent snapshot holds the guest's writes.

The Debian guest of the snapshot tests (qemu-guest-agent, the PostgreSQL freeze hook Heron
ships) runs the insert load twice at once, on the same machine:

* heron: a VM of a one-node devcluster; each round takes a snapshot through the API with
  `quiesce: required` and reads the snapshot's `freeze_ms` (Heron's own measure: from the
  agent's reply that the filesystems are frozen to its reply that they are thawed; the hooks'
  work before the freeze, PostgreSQL's CHECKPOINT, is not in it), then deletes it. The
  task's whole time (API call to task done) is recorded too.
* bare (the baseline): the same image under a plain QEMU started here; each round freezes
  through the agent (`heron.hypervisor.qga.frozen`, the same hooks), takes the same internal
  qcow2 snapshot over QMP (`blockdev-snapshot-internal-sync`), thaws, and deletes it.

Rounds alternate between the two, so drift on the machine hits both. The ratio heron/bare says
what Heron adds to the window (its pause, the task hand-off inside the freeze); the absolute
figures are TCG's and the loaded machine's. The rows the load committed during the run show
the guest kept working.

Run from the repository root: `.venv/bin/python -m bench.snapshot_freeze [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from bench.common import (
    HERON_CACHE,
    READY_MARKER,
    Api,
    BenchError,
    connect_qmp,
    exit_on_sigterm,
    line_after,
    load_snapshot,
    print_rows,
    ratio,
    running_devcluster,
    stats,
    wait_for,
    write_result,
)
from heron.hypervisor.qga import GuestAgent, frozen
from heron.testguest import debian
from heron.testguest.net import CommandChannel

NAME = "snapshot_freeze"
BOOT_TIMEOUT = 600.0  # a 1 GiB Debian guest under TCG beside another: a deadline, no judgement
COMMAND_TIMEOUT = 120.0
FREEZE_LIMIT_S = 60


@contextmanager
def bare_guest(image: Path, work: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """The image (through a qcow2 overlay) under a plain QEMU with the agent's port."""
    disk = work / "bare.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image), str(disk)],
        check=True,
    )
    log = work / "bare-console.log"
    args = [
        "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max", "-m", "1024",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-chardev", f"socket,id=serial0,path={work / 'serial.sock'},server=on,wait=off,"
        f"logfile={log}",
        "-serial", "chardev:serial0",
        "-blockdev", f"driver=file,filename={disk},node-name=file0",
        "-blockdev", "driver=qcow2,file=file0,node-name=disk0",
        "-device", "virtio-blk-pci,drive=disk0",
        "-chardev", f"socket,id=qmp,path={work / 'qmp.sock'},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=qga0,path={work / 'qga.sock'},server=on,wait=off",
        "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
    ]  # fmt: skip
    with open(work / "bare.stderr", "wb") as stderr:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
    try:
        yield process, log
    finally:
        process.kill()
        process.wait()


def last_row(channel: CommandChannel) -> int:
    result = channel.run("heron-insert-load last", COMMAND_TIMEOUT)
    if result.rc != 0:
        raise BenchError(f"heron-insert-load last: {result.output}")
    return int(result.output.strip() or 0)


def start_load(channel: CommandChannel) -> None:
    result = channel.run("heron-insert-load start", COMMAND_TIMEOUT)
    if result.rc != 0:
        raise BenchError(f"heron-insert-load start: {result.output}")
    wait_for(lambda: last_row(channel) > 0, COMMAND_TIMEOUT, "the load's first row", 0.5)


async def bare_round(agent: GuestAgent, qmp: QMPClient, tag: str) -> float:
    """Freeze, snapshot, thaw, as Heron does; the window in seconds. The snapshot is deleted."""
    async with frozen(agent, FREEZE_LIMIT_S) as report:
        await qmp.execute("blockdev-snapshot-internal-sync", {"device": "disk0", "name": tag})
    await qmp.execute("blockdev-snapshot-delete-internal-sync", {"device": "disk0", "name": tag})
    if report.frozen_s is None:
        raise BenchError("the bare freeze reported no window")
    return report.frozen_s


def heron_round(api: Api, vm: str, tag: str) -> tuple[float, float]:
    """A quiesced snapshot through the API: (freeze window, task time) in seconds."""
    start = time.perf_counter()
    taken = api.ok(
        "POST",
        f"/vms/{vm}/snapshots",
        json={"name": tag, "quiesce": "required", "freeze_limit_s": FREEZE_LIMIT_S},
    )
    task = api.wait_task(taken["task"], timeout=600)
    task_s = time.perf_counter() - start
    if task["result"]["consistency"] != "application":
        raise BenchError(f"snapshot {tag} was not application-consistent: {task['result']}")
    freeze_ms = api.ok("GET", f"/vms/{vm}/snapshots/{tag}")["freeze_ms"]
    api.wait_task(api.ok("DELETE", f"/vms/{vm}/snapshots/{tag}")["task"], timeout=600)
    return freeze_ms / 1000, task_s


def heron_vm(api: Api, image: Path, state_dir: Path) -> str:
    reply = api.ok(
        "POST",
        "/pools/local/volumes/import",
        json={"name": "debian", "path": str(image), "format": "qcow2"},
    )
    api.wait_task(reply["task"], timeout=600)
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": "db",
            "memory_mib": 1024,
            "start": True,
            "guest_agent": True,
            "disks": [{"volume": "local/debian"}],
        },
    )
    api.wait_task(reply["task"])
    vm = str(reply["vm"])
    log = state_dir / "vms" / vm / "console.log"
    wait_for(lambda: line_after(log, READY_MARKER), BOOT_TIMEOUT, "the Heron VM to boot", 1)
    return vm


async def measure(rounds: int, work: Path) -> dict[str, Any]:
    guest = debian.build(HERON_CACHE / "debian")
    with (
        running_devcluster(work / "cluster", 1) as (cluster, token),
        bare_guest(guest.image, work) as (process, bare_log),
    ):
        api = Api(cluster.nodes[0].url, token, cluster.tls())
        state_dir = Path(cluster.nodes[0].state_dir)
        vm = heron_vm(api, guest.image, state_dir)
        wait_for(lambda: line_after(bare_log, READY_MARKER), BOOT_TIMEOUT, "bare boot", 1)
        qmp = await connect_qmp(process, work / "qmp.sock", work / "bare.stderr")
        agent = GuestAgent(work / "qga.sock")
        try:
            with (
                CommandChannel(state_dir / "vms" / vm / "serial.sock") as heron_console,
                CommandChannel(work / "serial.sock") as bare_console,
            ):
                for console in (heron_console, bare_console):
                    start_load(console)
                rows_before = (last_row(heron_console), last_row(bare_console))
                bare_s: list[float] = []
                heron_s: list[float] = []
                task_s: list[float] = []
                for n in range(rounds):
                    tag = f"bench{n}"
                    if n % 2:
                        bare_s.append(await bare_round(agent, qmp, tag))
                        window, whole = await asyncio.to_thread(heron_round, api, vm, tag)
                    else:
                        window, whole = await asyncio.to_thread(heron_round, api, vm, tag)
                        bare_s.append(await bare_round(agent, qmp, tag))
                    heron_s.append(window)
                    task_s.append(whole)
                rows_after = (last_row(heron_console), last_row(bare_console))
        finally:
            await qmp.disconnect()
            api.close()
    heron_ms, bare_ms = stats([s * 1000 for s in heron_s]), stats([s * 1000 for s in bare_s])
    return {
        "heron_freeze_ms": heron_ms,
        "bare_freeze_ms": bare_ms,
        "heron_snapshot_task_s": stats(task_s),
        "rows_committed": {
            "heron": rows_after[0] - rows_before[0],
            "bare": rows_after[1] - rows_before[1],
        },
        "ratios": {
            "freeze_p50": ratio(heron_ms["p50"], bare_ms["p50"]),
            "freeze_max": ratio(heron_ms["max"], bare_ms["max"]),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    exit_on_sigterm()
    load = load_snapshot()
    with tempfile.TemporaryDirectory(prefix="bench-freeze-") as tmp:
        results = asyncio.run(measure(args.rounds, Path(tmp)))
    path = write_result(NAME, vars(args), results, load)
    h, b = results["heron_freeze_ms"], results["bare_freeze_ms"]
    print_rows(
        f"freeze window, {args.rounds} rounds ({path})",
        [
            ("heron ms p50/max", f"{h['p50']:.0f} / {h['max']:.0f}"),
            ("bare ms p50/max", f"{b['p50']:.0f} / {b['max']:.0f}"),
            ("ratio p50", str(results["ratios"]["freeze_p50"])),
            ("snapshot task s p50", str(results["heron_snapshot_task_s"]["p50"])),
            ("rows committed heron/bare", str(results["rows_committed"])),
        ],
    )


if __name__ == "__main__":
    main()
