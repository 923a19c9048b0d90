"""Detached children: reaped by us without stealing the exits asyncio waits for."""

import subprocess
from pathlib import Path

from heron.util.proc import alive, is_zombie, reap_children, spawn_detached, terminate, wait_until


def test_reaping_leaves_other_children_their_exit_status() -> None:
    """Another child (asyncio's qemu-img, say) that has exited but is not collected yet."""
    proc = subprocess.Popen(["sh", "-c", "exit 3"])
    assert wait_until(lambda: is_zombie(proc.pid), 10)
    reap_children()
    assert proc.wait() == 3


def test_a_detached_child_that_exits_is_reaped(tmp_path: Path) -> None:
    marker = str(tmp_path / "sleeper")
    pid = spawn_detached(["sh", "-c", "sleep 60; true", marker], tmp_path / "log", tmp_path / "pid")
    assert wait_until(lambda: alive(pid, marker), 10)
    terminate(pid, marker, timeout=10)
    # wait_until reaps on every round: the pid goes once the exit is collected.
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10)
