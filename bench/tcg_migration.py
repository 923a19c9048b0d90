"""Live-migration integrity without Heron: bare QEMU to bare QEMU on loopback, over and over.

The reproduction of issue 11 (a guest corrupted by live migration under TCG) and the tool to
bisect it. One guest, the self-checking test guest (`heron.testguest`: a memory region with a
known pattern, rewritten and read back every second, kernel messages on the console), runs on
Heron's own QEMU command line (`heron.hypervisor.command.build`) as a child of this process and
is migrated from one QEMU to a fresh one (`-incoming defer`, source `quit` after completion),
`--runs` times. After each migration the new side must print two full memory verifications;
then its console is read: any MISMATCH, kernel oops/panic, new boot or counter that does not
follow on is a corruption, written down with its lines, and the run goes on with a freshly
booted guest.

Every option of the command line and of the migration can be changed, one at a time, to find
what triggers it:

  .venv/bin/python -m bench.tcg_migration --runs 50                    # Heron's configuration
  .venv/bin/python -m bench.tcg_migration --runs 50 --ram-extra-kib 0  # without the workaround
  ... --no-vnc --no-vga --no-name --cpu qemu64 --tcg-thread single --no-auto-converge
  ... --bandwidth-mib 4 --downtime-ms 300 --memory-mib 256 --memcheck 128:256:2048 --load 1

Results: bench/results/tcg_migration[-TAG].json (every migration, its figures and problems).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from bench.common import (
    HERON_CACHE,
    BenchError,
    connect_qmp,
    cpu_hogs,
    end_hogs,
    exit_on_sigterm,
    load_snapshot,
    migrate_bare,
    print_rows,
    stats,
    write_result,
)
from heron.hypervisor import command
from heron.hypervisor.accel import qemu_version
from heron.models.vm import VM, PowerState, VMSpec
from heron.testguest import build as testguest
from heron.testguest import console
from heron.util.ports import free_port

BOOT_TIMEOUT = 180.0
MIGRATE_TIMEOUT = 600.0
VERIFY_TIMEOUT = 60.0


@dataclass
class Options:
    runs: int
    memory_mib: int
    ram_extra_kib: int | None  # None: the RAM Heron gives
    memcheck: str
    vnc: bool
    vga: bool
    name: bool
    cpu: str | None
    tcg_thread: str | None
    auto_converge: bool
    bandwidth_mib: int
    downtime_ms: int
    load: int
    stop_on_first: bool


@dataclass
class Guest:
    proc: subprocess.Popen[bytes]
    paths: command.RuntimePaths


def qemu_args(opts: Options, vm: VM, disk: Path, paths: command.RuntimePaths) -> list[str]:
    """Heron's command line for the VM, with the options under test changed."""
    file = {"driver": "file", "filename": str(disk), "aio": "threads"}
    if opts.ram_extra_kib is None:
        ram = command.ram_kib(opts.memory_mib, "tcg", qemu_version())
    else:
        ram = opts.memory_mib * 1024 + opts.ram_extra_kib
    resolved = [command.ResolvedDisk("virtio", file, "raw")]
    args = command.build(vm, resolved, paths, "tcg", ram=ram)
    at = args.index("-pidfile")
    del args[at : at + 2]
    args.remove("-daemonize")

    def drop(flag: str, value: str | None = None) -> None:
        at = args.index(flag)
        assert value is None or args[at + 1] == value, (flag, args[at + 1])
        del args[at : at + 2]

    if not opts.vnc or not opts.vga:
        drop("-vnc")
    if not opts.vga:
        drop("-device", "VGA")
    if not opts.name:
        drop("-name")
    if opts.cpu:
        args[args.index("-cpu") + 1] = opts.cpu
    if opts.tcg_thread:
        at = args.index("-machine") + 1
        args[at] = args[at].replace(",accel=tcg", "")
        args += ["-accel", f"tcg,thread={opts.tcg_thread}"]
    return args


def launch(opts: Options, vm: VM, disk: Path, root: Path, incoming: bool) -> Guest:
    paths = command.RuntimePaths(root)
    root.mkdir(parents=True)
    args = qemu_args(opts, vm, disk, paths) + (["-incoming", "defer"] if incoming else [])
    with open(paths.qemu_log, "ab") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    return Guest(proc, paths)


def stop(guest: Guest) -> None:
    if guest.proc.poll() is None:
        guest.proc.kill()
    guest.proc.wait()


async def connect(guest: Guest) -> QMPClient:
    return await connect_qmp(guest.proc, guest.paths.qmp, guest.paths.qemu_log)


async def wait_report(
    log: Path, booted_here: bool, verifications: int, timeout: float
) -> console.GuestReport:
    """The console once it shows `verifications` full memory checks (or a problem)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        report = console.read_log(log, booted_here=booted_here)
        if report.problems or report.verifications >= verifications:
            return report
        if loop.time() > deadline:
            report.problems.append(f"no memory verification within {timeout:.0f}s")
            return report
        await asyncio.sleep(0.2)  # polling the console log the guest writes


async def migrate(opts: Options, source: Guest, target: Guest) -> dict[str, Any]:
    src, dst = await connect(source), await connect(target)
    try:
        await dst.execute(
            "migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]}
        )
        port = free_port()
        await dst.execute("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
        parameters = {"downtime-limit": opts.downtime_ms, "max-bandwidth": opts.bandwidth_mib << 20}
        started = time.perf_counter()
        uri = f"tcp:127.0.0.1:{port}"
        info = await migrate_bare(src, uri, opts.auto_converge, parameters, MIGRATE_TIMEOUT)
        total = time.perf_counter() - started
        with contextlib.suppress(Exception):
            await src.execute("quit")
    finally:
        for client in (src, dst):
            with contextlib.suppress(Exception):
                await client.disconnect()
    await asyncio.to_thread(source.proc.wait, 30)
    ram = info.get("ram", {})
    return {
        "total_s": round(total, 3),
        "downtime_ms": info.get("downtime"),
        "ram_mib": round(ram.get("transferred", 0) / 2**20, 1),
        "iterations": ram.get("dirty-sync-count"),
        "throttle_pct": info.get("cpu-throttle-percentage", 0),
    }


async def soak(opts: Options, work: Path) -> list[dict[str, Any]]:
    image = testguest.variant(HERON_CACHE / "testguest", opts.memcheck)
    disk = work / "disk.raw"
    shutil.copyfile(image, disk)
    spec = VMSpec(name="tcgmig", vcpus=1, memory_mib=opts.memory_mib)
    vm = VM(id=str(uuid.uuid4()), spec=spec, node="bare", power=PowerState.running, created_at=0)
    results: list[dict[str, Any]] = []
    count = 0

    async def boot() -> Guest:
        nonlocal count
        count += 1
        guest = launch(opts, vm, disk, work / f"q{count}", incoming=False)
        report = await wait_report(guest.paths.console_log, True, 2, BOOT_TIMEOUT)
        if report.problems:
            raise BenchError(f"the guest did not boot cleanly: {report.problems[:3]}")
        return guest

    current = await boot()
    try:
        for run in range(1, opts.runs + 1):
            before = console.read_log(current.paths.console_log, booted_here=True)
            count += 1
            target = launch(opts, vm, disk, work / f"q{count}", incoming=True)
            try:
                figures = await migrate(opts, current, target)
            except BaseException:
                stop(target)
                raise
            shutil.rmtree(current.paths.root, ignore_errors=True)
            current = target
            report = await wait_report(current.paths.console_log, False, 2, VERIFY_TIMEOUT)
            last = before.ticks[-1] if before.ticks else None
            problems = report.problems + console.follows(last, report)
            results.append({"run": run, **figures, "problems": problems[:20]})
            mark = "CORRUPT" if problems else "ok"
            print(f"run {run}: {mark} {figures}", *problems[:5], sep="\n  ", flush=True)
            if problems:
                if opts.stop_on_first:
                    break
                keep = work.parent / f"{work.name}-corrupt-{run}.log"
                shutil.copyfile(current.paths.console_log, keep)
                stop(current)
                current = await boot()
    finally:
        stop(current)
    return results


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in results if not r["problems"]]
    return {
        "migrations": len(results),
        "corrupted": len(results) - len(ok),
        "corrupted_runs": [r["run"] for r in results if r["problems"]],
        "downtime_ms": stats([r["downtime_ms"] for r in results if r["downtime_ms"] is not None]),
        "total_s": stats([r["total_s"] for r in results]),
        "ram_mib": stats([r["ram_mib"] for r in results]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tcg_migration", description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--memory-mib", type=int, default=256)
    parser.add_argument(
        "--ram-extra-kib", type=int, default=None, help="RAM beyond --memory-mib, in KiB"
    )
    parser.add_argument("--memcheck", default="128:256:2048", help="MIB:HOT:RATE of the checker")
    parser.add_argument("--no-vnc", dest="vnc", action="store_false")
    parser.add_argument("--no-vga", dest="vga", action="store_false")
    parser.add_argument("--no-name", dest="name", action="store_false")
    parser.add_argument("--cpu", default=None, help="instead of Heron's -cpu")
    parser.add_argument("--tcg-thread", choices=("single", "multi"), default=None)
    parser.add_argument("--no-auto-converge", dest="auto_converge", action="store_false")
    parser.add_argument("--bandwidth-mib", type=int, default=1024)
    parser.add_argument("--downtime-ms", type=int, default=300)
    parser.add_argument("--load", type=int, default=0, help="busy processes during the run")
    parser.add_argument("--stop-on-first", action="store_true")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    args = parser.parse_args(argv)
    tag = args.__dict__.pop("tag")
    opts = Options(**vars(args))
    exit_on_sigterm()
    load_before = load_snapshot()
    work = Path(tempfile.mkdtemp(prefix="htm-"))  # short: QEMU's socket paths are limited
    hogs = cpu_hogs(opts.load)
    try:
        results = asyncio.run(soak(opts, work))
    except BenchError as exc:
        print(f"tcg_migration: {exc}", file=sys.stderr)
        return 1
    finally:
        end_hogs(hogs)
        shutil.rmtree(work, ignore_errors=True)
    summary = summarize(results)
    name = "tcg_migration" + (f"-{tag}" if tag else "")
    path = write_result(name, vars(opts), {"summary": summary, "runs": results}, load_before)
    print_rows(
        f"TCG live migration, bare QEMU ({path})",
        [
            ("migrations", str(summary["migrations"])),
            ("corrupted", f"{summary['corrupted']} {summary['corrupted_runs'][:20]}"),
            ("downtime p50/p99/max", "{p50}/{p99}/{max} ms".format(**summary["downtime_ms"])),
            ("total p50/max", "{p50}/{max} s".format(**summary["total_s"])),
        ],
    )
    return 0 if summary["corrupted"] == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
