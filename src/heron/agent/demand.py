"""The node's measured demand, for the leader's balancing and placement: each measuring
round's VM figures are kept for a minute, and every half minute their averages are written
to `/heron/demand/<node>` (models/demand.py) — one write per node whatever its number of VMs.

Every VM measured within the window is in the record, one that left too: the leader counts
a VM's demand where the VM is now (its record says), so a VM that migrated keeps its figures
from its source until its target has measured it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from heron.configdb import ConfigDB, keys
from heron.models.demand import NodeDemand, VmDemand
from heron.monitor.query import parse_key
from heron.monitor.store import RAW

log = logging.getLogger(__name__)

PUBLISH = 30.0  # seconds between two writes
WINDOW = 60.0  # seconds averaged
_CPU = "libvirt_domain_info_cpu_time_seconds_total"
_READY = "libvirt_domain_info_cpu_ready_seconds_total"
_MEMORY = "libvirt_domain_info_memory_usage_bytes"
_FIELDS = {_CPU: 0, _READY: 1, _MEMORY: 2}
_PREFIX = "libvirt_domain_info_"

Figures = list[float | None]  # cpu (cores), ready (cores), memory (bytes)


class DemandPublisher:
    def __init__(self, db: ConfigDB, node: str, interval: float = PUBLISH, window: float = WINDOW):
        self.db = db
        self.node = node
        self.interval = interval
        self.window = window
        self.rounds: deque[tuple[float, dict[str, Figures]]] = deque(
            maxlen=max(1, round(window / RAW.step))
        )
        self.failing = False

    async def round(self, t: float, values: dict[str, float]) -> None:
        """Keep one measuring round's VM figures (counters come as rates per second)."""
        by_vm: dict[str, Figures] = {}
        for key, value in values.items():
            if not key.startswith(_PREFIX):
                continue
            name, labels = parse_key(key)
            field, vm = _FIELDS.get(name), labels.get("vm")
            if field is not None and vm is not None:
                by_vm.setdefault(vm, [None, None, None])[field] = value
        self.rounds.append((t, by_vm))

    def demand(self, now: float) -> NodeDemand:
        """Each VM's averages over the rounds kept that measured it."""
        seen = {vm for _, r in self.rounds for vm in r}

        def mean(vm: str, field: int) -> float:
            seen = [f[field] for _, r in self.rounds if (f := r.get(vm)) and f[field] is not None]
            return max(0.0, sum(seen) / len(seen)) if seen else 0.0  # type: ignore[arg-type]

        return NodeDemand(
            node=self.node,
            at=now,
            window=self.window,
            vms={
                vm: VmDemand(cpu=mean(vm, 0), ready=mean(vm, 1), memory_mib=mean(vm, 2) / 2**20)
                for vm in sorted(seen)
            },
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self.rounds:
                continue
            try:
                await self.db.put(keys.demand(self.node), self.demand(time.time()))
            except Exception as exc:  # etcd away: the next write says it all again
                if not self.failing:
                    log.warning("measured demand not published: %r", exc)
                self.failing = True
            else:
                self.failing = False
