"""The fence watchdog: a process of its own that kills this node's HA VMs before the leader
may start them elsewhere.

It must not depend on the agent: a hung or stopped herond (SIGSTOP stops all its threads) is
exactly the case it is for. The agent writes the monotonic time of each successful renewal of
its lease to `<state>/fence.beat`; the watchdog reads it ten times a second.

The watchdog also keeps the node's presence in the ConfigDB under a lease of its own
(`keys.watchdog`), renewed while the agent was heard from within the agent grace
(`HASettings.agent_grace`, told by the agent through `<state>/fence.grace`). The leader fails a
node over only once both the agent's lease and the watchdog's are gone (plus a margin). So:

* a whole node that dies or is cut off loses both leases at once: failover after the lease TTL;
* an agent that stops alone (killed, restarted for an upgrade, hung) leaves the watchdog
  renewing: its VMs keep running, untouched, for the grace; an agent back in time changes
  nothing. Past the grace the watchdog stops renewing and fences.

The rule that keeps a VM from running twice: the watchdog fences when the later of the agent's
last renewal and its own is `TTL - 0.5 s` old. etcd counts a lease from the last keepalive it
received, never earlier than the renewal the keeper saw succeed, so both leases are still alive
when it fences; the leader acts only after both expired.

Run as `python -m heron.ha.fence --state-dir DIR --ttl SECONDS [--name NODE --etcd ENDPOINTS]`
(without `--name`, no presence: it fences `TTL - 0.5 s` after the agent's last renewal).
"""

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from heron.configdb import ConfigDB, keys
from heron.configdb.cache import Cache
from heron.configdb.client import EtcdTls, secure
from heron.configdb.lease import LeaseThread, startup_endpoints
from heron.models.node import WATCHDOG_PRESENCE, Node, Watchdog
from heron.models.settings import ClusterSettings
from heron.util.files import replace_text
from heron.util.proc import read_pidfile

log = logging.getLogger("heron-fence")

BEAT_FILE = "fence.beat"
GRACE_FILE = "fence.grace"
# The watchdog acts this long before a lease could expire; the rest of the TTL is room for etcd
# to elect a new raft leader without healthy nodes fencing their own VMs.
BEFORE_EXPIRY = 0.5
HA_MARKER = "ha"  # in a VM's runtime directory: this VM is fenced
FENCED_MARKER = "fenced"  # written next to it when the watchdog killed that VM


def _read_float(path: Path) -> float | None:
    try:
        return float(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def write_beat(state_dir: Path) -> None:
    """Called by the agent after each successful lease renewal."""
    replace_text(state_dir / BEAT_FILE, f"{time.monotonic():.3f}\n")


def read_beat(state_dir: Path) -> float | None:
    return _read_float(state_dir / BEAT_FILE)


def write_grace(state_dir: Path, grace: float) -> None:
    replace_text(state_dir / GRACE_FILE, f"{grace:g}\n")


def read_grace(state_dir: Path, ttl: float) -> float:
    """The agent grace the agent last told; the lease TTL (no grace at all) before it did."""
    return _read_float(state_dir / GRACE_FILE) or ttl


def keeps_presence(now: float, beat: float | None, grace: float, ttl: float) -> bool:
    """Whether the watchdog renews the node's presence now: while the agent was heard from
    recently enough that, with a whole TTL still to run, the grace is not yet over."""
    return beat is not None and now - beat < grace - ttl


def fence_due(now: float, heard: float | None, ttl: float) -> bool:
    """Whether the last renewal of either lease (`heard`) is so old that one more second could
    let the leader restart this node's VMs elsewhere."""
    return heard is not None and now - heard > ttl - BEFORE_EXPIRY


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


class Presence:
    """The node's presence, renewed by the watchdog while the agent is within its grace."""

    def __init__(self, state_dir: Path, name: str, ttl: int, endpoints: list[str]):
        self.state_dir = state_dir
        self.ttl = ttl
        self.last: float | None = None  # monotonic time of the last successful renewal
        record = Watchdog(node=name, started_at=time.time())
        endpoints = startup_endpoints(endpoints, state_dir)
        self.lease = LeaseThread(
            endpoints,
            keys.watchdog(name),
            record,
            ttl,
            on_renewed=self._renewed,
            may_renew=self._may_renew,
            # etcd over TLS: the node's own certificate, as the agent's (same state dir).
            tls=EtcdTls.in_state_dir(state_dir) if secure(endpoints) else None,
        )

    def _renewed(self) -> None:
        self.last = time.monotonic()

    def _may_renew(self) -> bool:
        grace = read_grace(self.state_dir, self.ttl)
        return keeps_presence(time.monotonic(), read_beat(self.state_dir), grace, self.ttl)

    def follow_endpoints(self) -> None:
        """The agent saves etcd's membership as it changes; renew through those members."""
        self.lease.use_endpoints(startup_endpoints([], self.state_dir))


def watch(state_dir: Path, ttl: float, presence: Presence | None, interval: float = 0.1) -> None:
    fenced_at: float | None = None
    checks = 0
    while state_dir.exists():
        now = time.monotonic()
        beat = read_beat(state_dir)
        renewed = presence.last if presence is not None else None
        heard = max((t for t in (beat, renewed) if t is not None), default=None)
        if heard is not None and heard != fenced_at and fence_due(now, heard, ttl):
            killed = fence(state_dir)
            log.warning("no lease renewed for %.1fs: fenced %s", now - heard, killed or "nothing")
            fenced_at = heard  # once per silence; a new renewal re-arms it
        checks += 1
        if presence is not None and checks % 50 == 0:
            presence.follow_endpoints()
        time.sleep(interval)  # the watchdog's check period


def agent_grace(settings: ClusterSettings, nodes: list[Node], ttl: float) -> float:
    """The grace to tell the watchdog: none beyond the TTL until every live node's release
    honours watchdogs' presence — a leader of an older release would restart the VMs of an
    agent away for longer than the TTL while its watchdog still let them run."""
    if all(WATCHDOG_PRESENCE in n.features for n in nodes):
        return settings.ha.agent_grace
    return ttl


async def tell_grace(db: ConfigDB, state_dir: Path, ttl: float) -> None:
    """Run by the agent: keep `fence.grace` at the grace in force, as settings and nodes
    change."""
    settings = Cache(db, ClusterSettings, keys.SETTINGS)
    nodes = Cache(db, Node, keys.NODES)
    await asyncio.gather(settings.start(), nodes.start())
    changed = [settings.listen(), nodes.listen()]
    told = None
    while True:
        found = settings.get("")  # the cache's prefix is the one key
        grace = agent_grace(found.value if found else ClusterSettings(), nodes.values(), ttl)
        if grace != told:
            write_grace(state_dir, grace)
            log.info("agent grace %gs", grace)
            told = grace
        waits = [asyncio.ensure_future(e.wait()) for e in changed]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        for event in changed:
            event.clear()


def main() -> None:
    parser = argparse.ArgumentParser(prog="heron-fence", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--ttl", type=int, required=True, help="the agent's lease TTL")
    parser.add_argument("--name", help="the node's name: keep its presence in the ConfigDB")
    parser.add_argument("--etcd", default="", help="comma-separated etcd client endpoints")
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    presence = None
    if args.name:
        endpoints = [e for e in args.etcd.split(",") if e]
        presence = Presence(args.state_dir, args.name, args.ttl, endpoints)
        presence.lease.start()
    watch(args.state_dir, args.ttl, presence)


if __name__ == "__main__":
    main()
