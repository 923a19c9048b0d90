"""Cores reserved for the storage data path (the product calls it MasterIO).

The admin reserves `io_cpus` cores and `io_memory_mib` of a node for heron-io (NodeSettings).
Placement counts only the rest as the VMs' share; on the node, heron-io runs on the last
`io_cpus` cores and every QEMU (each of its threads) on the others, so guests cannot take the
CPU the disks of every VM depend on. Without a reservation every process may run anywhere.
"""

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from heron.configdb import ConfigDB, keys
from heron.configdb.store import parse
from heron.models.node import NodeSettings
from heron.util.proc import read_pidfile

log = logging.getLogger(__name__)

REPIN = 10.0  # threads QEMU or heron-io start later are pinned within this


def split_cores(available: list[int], io_cpus: int) -> tuple[set[int], set[int]]:
    """(I/O cores, VM cores): the last `io_cpus` for I/O, at least one left for VMs."""
    cores = sorted(available)
    reserved = min(io_cpus, len(cores) - 1)
    if reserved <= 0:
        return set(cores), set(cores)
    return set(cores[-reserved:]), set(cores[:-reserved])


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of `pid` on `cores` (sched_setaffinity is per thread)."""
    try:
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return
    for tid in threads:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(tid, cores)


class CoreReservation:
    def __init__(self, db: ConfigDB, node: str, state_dir: Path):
        self.db = db
        self.node = node
        self.state_dir = state_dir
        self.available = sorted(os.sched_getaffinity(0))
        self.io_cores, self.vm_cores = split_cores(self.available, 0)

    def set(self, io_cpus: int) -> None:
        cores = split_cores(self.available, io_cpus)
        if cores != (self.io_cores, self.vm_cores):
            self.io_cores, self.vm_cores = cores
            log.info("heron-io on cores %s, VMs on %s", sorted(cores[0]), sorted(cores[1]))
        self.apply()

    def apply(self) -> None:
        for pidfile in (self.state_dir / "ardfs").glob("*/heron-io.pid"):
            pid = read_pidfile(pidfile, str(pidfile.parent / "io.json"))
            if pid is not None:
                pin(pid, self.io_cores)
        for pidfile in (self.state_dir / "vms").glob("*/qemu.pid"):
            pid = read_pidfile(pidfile, pidfile.parent.name)
            if pid is not None:
                pin(pid, self.vm_cores)

    def pin_vm(self, pid: int) -> None:
        pin(pid, self.vm_cores)

    def pin_io(self, pid: int) -> None:
        pin(pid, self.io_cores)

    async def run(self) -> None:
        key = keys.node_settings(self.node)
        found = await self.db.get(NodeSettings, key)
        revision = await self.db.revision()
        self.set(found.value.io_cpus if found else 0)
        follower = asyncio.create_task(self._follow(key, revision))
        try:
            while True:
                await asyncio.sleep(REPIN)  # the periodic pass: threads started since
                self.apply()
        finally:
            follower.cancel()

    async def _follow(self, key: str, revision: int) -> None:
        async for event in self.db.watch(key, revision + 1):
            if event.type == "put":
                self.set(parse(NodeSettings, event.value).io_cpus)
            elif event.type == "delete":
                self.set(0)
