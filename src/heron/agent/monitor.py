"""The node's measuring loop: every ten seconds each source is asked for its samples, and
the round is recorded (history on the node's disk, latest for `/metrics`).

A source that fails or overruns its time is left out of that round, never the others'; the
rounds stay on the ten-second grid (a slow round skips a slot rather than drift).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path

from heron.agent.ardfs import io_status
from heron.agent.network import NetworkController
from heron.agent.tasks import TaskRunner
from heron.agent.vms import VMController
from heron.configdb import UNREACHABLE, ConfigDB, keys
from heron.configdb.election import leader_of
from heron.monitor.collect.ipmi import IpmiPoller
from heron.monitor.collect.node import collect_node
from heron.monitor.collect.services import (
    certificate_samples,
    cluster_samples,
    configdb_samples,
    task_samples,
)
from heron.monitor.collect.storage import ardfs_samples, pool_samples
from heron.monitor.collect.switch import port_samples
from heron.monitor.collect.vm import (
    VmProbe,
    collect_vms,
    info_samples,
    parse_pid_stat,
    read_interfaces,
    vm_taps,
)
from heron.monitor.live import NotHere, Sampler, node_sampler, vm_sampler
from heron.monitor.recorder import Recorder
from heron.monitor.series import Sample
from heron.monitor.store import RAW
from heron.scheduler.inventory import Inventory
from heron.storage.probe import probe
from heron.storage.registry import driver_for
from heron.tls import NodeCredentials
from heron.util.proc import read_pidfile

log = logging.getLogger(__name__)

Source = Callable[[], Awaitable[list[Sample]]]
# Told each round's values (series key -> value, counters as rates): the alert rules, the
# measured demand.
Consumer = Callable[[float, dict[str, float]], Awaitable[None]]


class Measurements:
    def __init__(
        self,
        recorder: Recorder,
        sources: Sequence[tuple[str, Source]],
        consumers: Sequence[tuple[str, Consumer]] = (),
        interval: float = RAW.step,
        timeout: float = 5.0,
    ):
        self.recorder = recorder
        self.sources = sources
        self.consumers = consumers
        self.interval = interval
        self.timeout = timeout
        self.failing: set[str] = set()

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval - time.time() % self.interval)
                # Stamped with the grid's time: a counter's rate is then its growth over a
                # whole number of intervals, which the history compresses far better.
                await self.round(round(time.time() / self.interval) * self.interval)
        finally:
            await asyncio.to_thread(self.recorder.store.flush)

    async def round(self, t: float) -> None:
        parts = await asyncio.gather(*(self._ask(name, source) for name, source in self.sources))
        samples = [s for part in parts for s in part]
        values = await asyncio.to_thread(self.recorder.record, t, samples)
        for name, consumer in self.consumers:
            try:
                await consumer(t, values)
            except Exception as exc:  # etcd away: tried again next round
                log.warning("%s not told this round: %r", name, exc)

    async def _ask(self, name: str, source: Source) -> list[Sample]:
        try:
            samples = await asyncio.wait_for(source(), self.timeout)
        except Exception as exc:  # one source's trouble is not the round's
            if name not in self.failing:
                log.warning("metrics source %s failed: %r", name, exc)
                self.failing.add(name)
            return []
        if name in self.failing:
            log.info("metrics source %s works again", name)
            self.failing.discard(name)
        return samples


async def storage_samples(inventory: Inventory, state_dir: Path) -> list[Sample]:
    """Every pool's capacity as this node sees it (a pool that cannot tell is left out; one
    that does not answer in time counts as unreachable), and this node's heron-io status."""
    samples: list[Sample] = []
    for pool in (await inventory.ready()).pools.values():
        capacity = driver_for(pool, state_dir).capacity
        answer = await probe(pool.name, partial(_told, capacity))
        if answer is None or answer[0] is not None:
            samples += pool_samples(pool.name, None if answer is None else answer[0])
        status = io_status(state_dir, pool.name)
        if status:
            samples += ardfs_samples(pool.name, status, _io_cpu(state_dir, pool.name))
    return samples


def _io_cpu(state_dir: Path, pool: str) -> float | None:
    """CPU seconds of the pool's heron-io on this node."""
    root = state_dir / "ardfs" / pool
    pid = read_pidfile(root / "heron-io.pid", str(root / "io.json"))
    if pid is None:
        return None
    try:
        return parse_pid_stat(Path(f"/proc/{pid}/stat").read_text())[1]
    except (OSError, ValueError, IndexError):
        return None


def _told(call: Callable[[], tuple[int, int] | None]) -> tuple[tuple[int, int] | None]:
    """A driver's answer wrapped, so that "cannot tell" (None) differs from no answer."""
    return (call(),)


async def service_samples(
    db: ConfigDB,
    node: str,
    credentials: NodeCredentials,
    tasks: TaskRunner,
    inventory: Inventory,
) -> list[Sample]:
    """The node's certificate and the cluster CA's time left; a ConfigDB read's latency (the
    read of who leads); the tasks it ended; whether it leads, and if so the cluster's live
    nodes and VMs by state."""
    started = time.monotonic()
    try:
        leader = await leader_of(db, keys.LEADER) == node
        took: float | None = time.monotonic() - started
    except UNREACHABLE:
        leader, took = False, None
    certificates = {"node": credentials.certificate(), "ca": credentials.authority()}
    samples = certificate_samples(certificates, time.time()) + configdb_samples(took)
    samples += task_samples(tasks.ended)
    states = None
    if leader:
        inv = await inventory.ready()
        states = Counter(
            s.value.state.value if (s := inv.vm_status.get(v.id)) else "stopped"
            for v in inv.vms.values()
        )
    nodes_up = len(inventory.live_nodes()) if leader else 0
    return samples + cluster_samples(leader, nodes_up, states)


def switch_port_source(network: NetworkController, netns: str | None) -> Source:
    async def samples() -> list[Sample]:
        ports = network.switch_ports()
        if not ports:
            return []
        interfaces = await asyncio.to_thread(read_interfaces, netns)
        return port_samples(ports, interfaces)

    return samples


def vm_probe(vms: VMController, vm_id: str, netns: str | None) -> VmProbe:
    """What the collector needs of a VM running here."""
    spec = vms.running_spec(vm_id)
    taps = vm_taps(spec) if spec is not None else []
    memory = spec.memory_mib << 20 if spec is not None else None
    # Heron's command line gives a VM no balloon device.
    return VmProbe(vm_id, vms.runtime(vm_id).qemu, taps, netns, memory, balloon=False)


def vm_source(vms: VMController, netns: str | None) -> Source:
    """The running VMs' samples; a QEMU that does not answer in time costs only its own."""
    late: set[str] = set()

    async def samples() -> list[Sample]:
        probes = [vm_probe(vms, vm_id, netns) for vm_id in vms.running_here()]
        got = await collect_vms(probes)
        if set(got.late) != late:
            if got.late:
                log.warning("metrics: QEMU of %s did not answer in time", ", ".join(got.late))
            late.clear()
            late.update(got.late)
        return got.samples

    return samples


def vm_info_source(vms: VMController, inventory: Inventory) -> Source:
    """`heron_vm_info` of the VMs running here: each one's name as the cluster has it now
    (a VM renamed while it runs keeps its old one in the spec its QEMU started with, which
    stands in while the ConfigDB cannot be read)."""

    async def samples() -> list[Sample]:
        running = vms.running_here()
        if not running:
            return []
        try:
            records = (await asyncio.wait_for(inventory.ready(), 2.0)).vms
        except (TimeoutError, *UNREACHABLE):
            records = None
        names = {}
        for vm_id in running:
            entry = records.get(vm_id) if records is not None else None
            spec = entry.value.spec if entry is not None else vms.running_spec(vm_id)
            if spec is not None:
                names[vm_id] = spec.name
        return info_samples(names)

    return samples


def live_samplers(node: str, vms: VMController, netns: str | None) -> Callable[[str, str], Sampler]:
    """The live view's sampler of an object of this node: the node itself, or a VM that runs
    here (its probe is made anew each second: a VM that stops or leaves is not sampled)."""

    def resolve(kind: str, name: str) -> Sampler:
        if kind == "node":
            if name != node:
                raise NotHere(f"this is node {node}, not {name}")
            return node_sampler()
        if name not in vms.running_here():
            raise NotHere(f"VM {name} does not run on {node}")

        def probe() -> VmProbe | None:
            return vm_probe(vms, name, netns) if name in vms.running_here() else None

        return vm_sampler(probe)

    return resolve


def node_source() -> Source:
    async def samples() -> list[Sample]:
        return await asyncio.to_thread(collect_node)

    return samples


def ipmi_source(poller: IpmiPoller) -> Source:
    """The BMC's last good reading (the poller reads in the background: a sensor read can
    stall for minutes, and the round must not wait for it)."""

    async def samples() -> list[Sample]:
        return poller.samples()

    return samples
