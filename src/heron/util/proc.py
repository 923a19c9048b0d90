"""Processes that must outlive the one that started them (etcd, QEMU), found again by pidfile."""

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from heron.util.wait import until_sync

# Children started by spawn_detached that may still need reaping. Only these: waitpid(-1)
# would also collect the children asyncio waits for, which then report exit status 255.
_spawned: set[int] = set()


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def command_lines() -> Iterator[tuple[int, list[str]]]:
    """(pid, its arguments) of every process that has any (kernel threads have none)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (args := cmdline(int(entry))):
            yield int(entry), args


def is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def alive(pid: int, marker: str) -> bool:
    """True if `pid` runs and its command line contains `marker`: pids get reused."""
    args = cmdline(pid)
    return bool(args) and any(marker in a for a in args) and not is_zombie(pid)


def find_running(marker: str) -> list[int]:
    """Every live process whose command line contains `marker`, oldest first: for processes a
    pidfile does not name (their starter died before writing it, or it was lost)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and alive(int(entry), marker):
            found.append(int(entry))
    return sorted(found, key=_start_time)


def _start_time(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, IndexError, ValueError):
        return 0


def read_pidfile(path: Path, marker: str) -> int | None:
    """The pid in `path` if that process still runs and is the one we started."""
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if alive(pid, marker) else None


def spawn_detached(
    args: Sequence[str], log_path: Path, pidfile: Path, env: dict[str, str] | None = None
) -> int:
    """Start a process in its own session so it survives the death of its parent."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            list(args),
            stdin=devnull,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    pidfile.write_text(f"{proc.pid}\n")
    # The Popen object is dropped on purpose: the child is reaped by whoever ends up its
    # parent; `reap_children` collects it if that is still us.
    _spawned.add(proc.pid)
    return proc.pid


def reap_children() -> None:
    """Collect our detached children that have exited, so they do not linger as zombies."""
    for pid in list(_spawned):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _spawned.discard(pid)


def terminate(pid: int, marker: str, timeout: float = 10.0) -> None:
    """SIGTERM, wait for the process to go, then SIGKILL."""
    if not alive(pid, marker):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not alive(pid, marker), timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not alive(pid, marker), 5.0)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; returns whether it held. Our own
    exited children are reaped first each time: a zombie would still look alive."""

    def reaped_then_checked() -> bool:
        reap_children()
        return predicate()

    return until_sync(reaped_then_checked, timeout, interval) is not None
