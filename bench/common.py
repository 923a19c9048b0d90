"""Helpers shared by the benchmarks: statistics, polling, the API, the results file.

Every benchmark measures Heron and a baseline on the same machine in the same run and reports
the ratio. Results go to `bench/results/<name>.json` (git-ignored) with a description of the
machine, so figures from different machines are never compared by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from qemu.qmp import QMPClient

from heron import devcluster
from heron.configdb import ConfigDB, keys
from heron.util.wait import until_sync

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
HERON_CACHE = Path(os.environ.get("HERON_CACHE_DIR", "/var/cache/heron"))
TESTGUEST = HERON_CACHE / "testguest" / "testguest.raw"
ACCELERATOR_FILE = HERON_CACHE / "accelerator.json"
READY_MARKER = "HERON-GUEST-READY"


class BenchError(Exception):
    """The benchmark could not be carried out (not a judgement on the figures)."""


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that `finally` blocks clean up (devclusters, QEMUs)."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# -- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), interpolating linearly between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def stats(values: Sequence[float], digits: int = 4) -> dict[str, float | int]:
    """Count, min, median, p90, p99, max and mean of `values`, in their own unit."""
    return {
        "n": len(values),
        "min": round(min(values), digits),
        "p50": round(percentile(values, 50), digits),
        "p90": round(percentile(values, 90), digits),
        "p99": round(percentile(values, 99), digits),
        "max": round(max(values), digits),
        "mean": round(sum(values) / len(values), digits),
    }


def ratio(value: float, baseline: float) -> float:
    return round(value / baseline, 2) if baseline > 0 else float("nan")


def ms(seconds: Sequence[float]) -> list[float]:
    return [s * 1000 for s in seconds]


# -- waiting ---------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll `predicate` until it returns something truthy; BenchError after `timeout`."""
    value = until_sync(predicate, timeout, interval)
    if value is None:
        raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
    return value


def line_after(path: Path, text: str, offset: int = 0) -> bool:
    """Whether `text` appears in the file after byte `offset` (from 0 if it was truncated)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(offset if size >= offset else 0)
            return text.encode() in handle.read()
    except FileNotFoundError:
        return False


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def cpu_hogs(count: int) -> list[subprocess.Popen[bytes]]:
    """Busy processes competing with QEMU for the cores, as other VMs would."""
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        for _ in range(count)
    ]


def end_hogs(hogs: list[subprocess.Popen[bytes]]) -> None:
    for hog in hogs:
        hog.kill()
        hog.wait()


# -- bare QEMU -------------------------------------------------------------------------------


async def connect_qmp(proc: subprocess.Popen[bytes], qmp: Path, log: Path) -> QMPClient:
    """Connect to a bare QEMU (our child) as soon as its QMP socket accepts, with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-500:]
            raise BenchError(f"bare QEMU exited with {proc.returncode}: {tail}")
        client = QMPClient("bare")
        try:
            await client.connect(str(qmp))
            return client
        except Exception:
            if loop.time() > deadline:
                raise
        await asyncio.sleep(0.01)  # polling for the socket: QEMU gives no other signal


async def migrate_bare(
    src: QMPClient, uri: str, auto_converge: bool, parameters: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Migrate a bare source QEMU to `uri` with the capabilities Heron sets, waiting on QMP's
    MIGRATION events; returns `query-migrate` at completion."""
    capabilities = [
        {"capability": "auto-converge", "state": auto_converge},
        {"capability": "events", "state": True},
    ]
    await src.execute("migrate-set-capabilities", {"capabilities": capabilities})
    await src.execute("migrate-set-parameters", parameters)
    with src.listener("MIGRATION") as events:
        await src.execute("migrate", {"uri": uri})
        while True:
            event = await asyncio.wait_for(events.get(), timeout)
            status = event["data"]["status"]
            if status == "completed":
                break
            if status in ("failed", "cancelled"):
                raise BenchError(f"bare migration {status}")
    return dict(await src.execute("query-migrate"))


# -- the API ---------------------------------------------------------------------------------


class Api:
    """A small synchronous client: `ok` raises BenchError on any HTTP error."""

    def __init__(
        self, url: str, token: str, tls: ssl.SSLContext | bool = True, timeout: float = 60
    ):
        """`tls`: the devcluster's `tls()`, which trusts its CA."""
        self.url = url
        self.http = httpx.Client(
            base_url=f"{url}/api/v1",
            headers={"authorization": f"Bearer {token}"},
            timeout=timeout,
            verify=tls,
        )

    def close(self) -> None:
        self.http.close()

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        reply = self.http.request(method, path, **kwargs)
        if reply.status_code >= 300:
            raise BenchError(f"{method} {path}: {reply.status_code} {reply.text[:500]}")
        return reply.json() if reply.content else None

    def wait_task(self, task_id: str, timeout: float = 180) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            task = self.ok("GET", f"/tasks/{task_id}")
            return task if task["state"] in ("succeeded", "failed", "cancelled") else None

        task = wait_for(finished, timeout, f"task {task_id}", interval=0.05)
        if task["state"] != "succeeded":
            raise BenchError(f"task {task_id} {task['state']}: {task.get('error')}")
        return task


@contextlib.contextmanager
def running_devcluster(
    directory: Path,
    nodes: int,
    keep: bool = False,
    network: bool = False,
    memory_mib: int | None = None,
) -> Iterator[tuple[devcluster.DevCluster, str]]:
    """A devcluster that is taken down again however the block ends; with `network`, each
    node's data plane in a namespace of its own (heron.network.fabric); with `memory_mib`,
    nodes that say they have that much memory (not the host's)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        # Plain etcd: the benchmarks' own etcd clients (the scale benchmark's worker
        # processes, the observers) take bare endpoints, and their results stay comparable
        # with earlier runs. etcd over TLS in the benchmarks is left to do.
        with devcluster.running(
            directory, nodes, network=network, etcd_tls=False, memory_mib=memory_mib
        ) as made:
            yield made
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)


def shared_testguest(api: Api, work: Path) -> None:
    """A shared directory pool `shared` under `work` holding the test guest's image as volume
    `testguest`: VMs made from it may run and live-migrate on any node."""
    shared = work / "shared"
    shared.mkdir()
    api.ok("POST", "/pools", json={"name": "shared", "path": str(shared), "shared": True})
    reply = api.ok(
        "POST",
        "/pools/shared/volumes/import",
        json={"name": "testguest", "path": str(TESTGUEST), "format": "qcow2"},
    )
    api.wait_task(reply["task"])


# -- the machine and the results file --------------------------------------------------------


def _first_line(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def _accelerator() -> Any:
    try:
        return json.loads(ACCELERATOR_FILE.read_text())
    except (OSError, ValueError) as exc:
        return {"accelerator": "unknown", "error": str(exc)}


def _git() -> dict[str, Any]:
    commit = _first_line(["git", "-C", str(ROOT), "rev-parse", "HEAD"])
    status = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {"commit": commit, "dirty": bool(status.stdout.strip())}


def machine_info() -> dict[str, Any]:
    return {
        "hostname": platform.node(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_mib": _memory_mib(),
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": sys.version.split()[0],
        "qemu": _first_line(["qemu-system-x86_64", "--version"]),
        "etcd": _first_line([shutil.which("etcd") or "etcd", "--version"]),
        "accelerator": _accelerator(),
        "git": _git(),
    }


def load_snapshot() -> dict[str, Any]:
    """How busy the machine is: other work running during a benchmark skews its figures."""
    qemus = 0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if (proc / "comm").read_text().startswith("qemu-system"):
                    qemus += 1
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "qemu_processes": qemus}


def write_result(
    name: str, params: dict[str, Any], results: dict[str, Any], load_before: dict[str, Any]
) -> Path:
    """Write `bench/results/<name>.json`; `load_before` is a `load_snapshot()` from the start."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    document = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load": {"before": load_before, "after": load_snapshot()},
        "params": params,
        "results": results,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def print_rows(title: str, rows: Sequence[tuple[str, str]]) -> None:
    """A short aligned summary on stdout."""
    print(title)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")


# -- the ConfigDB as it changes ------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One change in the ConfigDB, with the monotonic time it arrived here."""

    t: float
    type: str
    key: str
    value: bytes
    revision: int

    def record(self) -> dict[str, Any]:
        try:
            found = json.loads(self.value)
        except ValueError:
            return {}
        return found if isinstance(found, dict) else {}


class Observer:
    """Watches `prefixes` of the ConfigDB from a thread of its own (its own asyncio loop) and
    timestamps every change on arrival, on the same clock as the benchmark's own actions."""

    PREFIXES: tuple[str, ...] = (keys.ROOT,)

    def __init__(self, endpoints: list[str]):
        self.endpoints = endpoints
        self.events: list[Seen] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="configdb-observer", daemon=True)

    def start(self) -> None:
        self._thread.start()
        # The leader's heartbeat rewrites its key five times a second: the watch is live.
        self.find(lambda e: e.key == keys.LEADER, 0.0, 30, "the ConfigDB watch")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with ConfigDB(self.endpoints) as db:
            start = await db.revision() + 1
            jobs = [asyncio.create_task(self._watch(db, p, start)) for p in self.PREFIXES]
            stopper = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait([stopper, *jobs], return_when=asyncio.FIRST_COMPLETED)
            for job in (stopper, *jobs):
                job.cancel()
            await asyncio.gather(stopper, *jobs, return_exceptions=True)
            for job in done:
                if job is not stopper and job.exception() is not None:
                    raise job.exception()  # type: ignore[misc]

    async def _watch(self, db: ConfigDB, prefix: str, start: int) -> None:
        async for event in db.watch(prefix, start):
            seen = Seen(time.monotonic(), event.type, event.key, event.value, event.revision)
            with self._lock:
                self.events.append(seen)

    def snapshot(self) -> list[Seen]:
        with self._lock:
            return list(self.events)

    def find(self, match: Callable[[Seen], bool], after: float, timeout: float, what: str) -> Seen:
        """The first change at or after monotonic time `after` that `match`es; waits for it."""
        scanned = 0  # events are appended in arrival order: look at each only once

        def first() -> Seen | None:
            nonlocal scanned
            if self.error is not None:
                raise BenchError(f"ConfigDB watch failed: {self.error!r}")
            with self._lock:
                fresh = self.events[scanned:]
            scanned += len(fresh)
            return next((e for e in fresh if e.t >= after and match(e)), None)

        return wait_for(first, timeout, what, interval=0.005)

    def last(self, match: Callable[[Seen], bool], before: float) -> Seen | None:
        return next((e for e in reversed(self.snapshot()) if e.t < before and match(e)), None)

    def between(self, since: float, until: float) -> list[Seen]:
        return [e for e in self.snapshot() if since <= e.t < until]
