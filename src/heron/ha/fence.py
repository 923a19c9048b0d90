"""The fence watchdog: a process of its own that kills this node's HA VMs when the agent has
not renewed the node's lease for `deadline` seconds.

It must not depend on the agent: a hung or stopped herond (SIGSTOP stops all its threads) is
exactly the case it is for. The agent writes the monotonic time of each successful renewal to
`<state>/fence.beat`; the watchdog reads it ten times a second. The deadline is shorter than
the lease TTL, and the leader restarts a failed node's VMs only after the lease expired plus a
margin, so the old QEMU is dead before the new one starts: no VM runs on two nodes at once.

Run as `python -m heron.ha.fence --state-dir DIR --deadline SECONDS`.
"""

import argparse
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from heron.util.proc import read_pidfile

log = logging.getLogger("heron-fence")

BEAT_FILE = "fence.beat"
# The watchdog acts this long before the lease could expire. etcd counts a lease from the last
# keepalive it received, never earlier than the agent's last successful renewal (the beat), so
# fencing at beat + TTL - 0.5 s is always before the expiry; the rest of the TTL is room for
# etcd to elect a new raft leader without healthy nodes fencing their own VMs.
BEFORE_EXPIRY = 0.5
HA_MARKER = "ha"  # in a VM's runtime directory: this VM is fenced
FENCED_MARKER = "fenced"  # written next to it when the watchdog killed that VM


def deadline_for(lease_ttl: float) -> float:
    return lease_ttl - BEFORE_EXPIRY


def write_beat(state_dir: Path) -> None:
    """Called by the agent after each successful lease renewal."""
    beat = state_dir / BEAT_FILE
    partial = beat.with_suffix(".tmp")
    partial.write_text(f"{time.monotonic():.3f}\n")
    os.replace(partial, beat)


def read_beat(state_dir: Path) -> float | None:
    try:
        return float((state_dir / BEAT_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


def ha_vms_running(state_dir: Path) -> bool:
    """Whether any QEMU marked HA runs on this node."""
    return any(
        read_pidfile(marker.parent / "qemu.pid", marker.parent.name) is not None
        for marker in (state_dir / "vms").glob(f"*/{HA_MARKER}")
    )


def fence(state_dir: Path) -> list[str]:
    """SIGKILL every HA VM's QEMU on this node; returns the VM ids."""
    killed = []
    for marker in (state_dir / "vms").glob(f"*/{HA_MARKER}"):
        vm_id = marker.parent.name
        pid = read_pidfile(marker.parent / "qemu.pid", vm_id)
        if pid is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        (marker.parent / FENCED_MARKER).write_text(f"{time.time():.3f}\n")
        killed.append(vm_id)
    return killed


def watch(state_dir: Path, deadline: float, interval: float = 0.1) -> None:
    fenced_beat: float | None = None
    while state_dir.exists():
        beat = read_beat(state_dir)
        if beat is not None and beat != fenced_beat and time.monotonic() - beat > deadline:
            killed = fence(state_dir)
            log.warning("no lease renewal for %.1fs: fenced %s", deadline, killed or "nothing")
            fenced_beat = beat  # once per silence; a new renewal re-arms it
        time.sleep(interval)  # the watchdog's check period


def main() -> None:
    parser = argparse.ArgumentParser(prog="heron-fence", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--deadline", type=float, required=True)
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    watch(args.state_dir, args.deadline)


if __name__ == "__main__":
    main()
