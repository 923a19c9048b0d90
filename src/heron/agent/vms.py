"""The VMs of this node: drive QEMU towards each VM's desired state and report what runs.

`reconcile` is idempotent and safe to repeat after a crash at any line: it looks at the
desired state in the ConfigDB and at the QEMU process that really runs, and closes the gap.
A monitor per running QEMU writes status back when it changes, and tells a guest shutdown or an
operator's stop (shutoff) from an unexpected death (crashed).
"""

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from heron.agent import guest_agent
from heron.agent.network import NetworkController
from heron.configdb import ConfigDB, keys
from heron.errors import AgentError, NetworkError
from heron.ha import fence
from heron.hypervisor import cgroups, cloudinit, command
from heron.hypervisor.command import ResolvedDisk, RuntimePaths
from heron.hypervisor.qemu import QemuError, QemuVM
from heron.hypervisor.qga import GuestAgent
from heron.models import hotplug
from heron.models.group import effective_ha
from heron.models.network import Network
from heron.models.storage import Pool, Volume
from heron.models.vm import (
    VM,
    DiskQoS,
    DiskSpec,
    GuestAgentStatus,
    NicSpec,
    PowerState,
    RunState,
    VMSpec,
    VMStatus,
)
from heron.network.tap import vhost_net_available
from heron.scheduler.inventory import Inventory, group_of
from heron.storage.driver import StorageError
from heron.storage.registry import driver_for

log = logging.getLogger(__name__)

DEFAULT_SHUTDOWN_TIMEOUT = 60.0


class VMError(AgentError):
    pass


@dataclass
class _Runtime:
    qemu: QemuVM
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    monitor: asyncio.Task[None] | None = None
    # Set before we stop QEMU on purpose, so its exit is not taken for a crash.
    expect_exit: bool = False
    guest_shutdown: bool = False
    last_status: VMStatus | None = None
    agent_status: GuestAgentStatus | None = None  # from its probe (agent/guest_agent.py)


class VMController:
    def __init__(
        self,
        db: ConfigDB,
        node: str,
        state_dir: Path,
        accelerator: str,
        on_launch: Callable[[int], None] = lambda _: None,
        qemu_version: tuple[int, int] = (0, 0),
        cgroup_root: Path | None = None,
    ):
        self.db = db
        self.node = node
        self.state_dir = state_dir
        self.accelerator = accelerator
        self.qemu_version = qemu_version
        self.on_launch = on_launch  # e.g. keep QEMU off the cores reserved for I/O
        self._vms: dict[str, _Runtime] = {}
        self.network: NetworkController | None = None  # set by herond where it has one
        # Told at once when a VM's QEMU ends unexpectedly (its alert must not wait a round).
        self.on_crash: Callable[[VM, str], Awaitable[None]] | None = None
        self.vhost = vhost_net_available()
        # Where the VMs' control groups are made (herond: /sys/fs/cgroup); None: nowhere,
        # and a VM with CPU or memory limits does not start.
        self.cgroup_root = cgroup_root
        self._jobs: set[asyncio.Task[None]] = set()

    def paths(self, vm_id: str) -> RuntimePaths:
        return RuntimePaths(self.state_dir / "vms" / vm_id)

    def runtime(self, vm_id: str) -> _Runtime:
        if vm_id not in self._vms:
            self._vms[vm_id] = _Runtime(QemuVM(vm_id, self.paths(vm_id)))
        return self._vms[vm_id]

    # -- start-up ------------------------------------------------------------------------

    async def resume(self) -> None:
        """After an agent (re)start: watch every QEMU still running, settle the rest."""
        vms = {e.value.id: e.value for e in await self.db.list(VM, keys.VMS)}
        statuses = {
            e.key.rsplit("/", 1)[1]: e.value for e in await self.db.list(VMStatus, keys.VM_STATUS)
        }
        vm_root = self.state_dir / "vms"
        local = {p.name for p in vm_root.iterdir()} if vm_root.exists() else set()
        for vm_id in local | {i for i, vm in vms.items() if vm.node == self.node}:
            rt = self.runtime(vm_id)
            rt.last_status = statuses.get(vm_id)
            vm = vms.get(vm_id)
            if vm is None or vm.node != self.node:
                # Deleted, or moved (HA, migration) while we were away: nothing of it stays.
                await self.destroy(vm_id)
                continue
            if rt.qemu.running():
                self._watch(vm_id)
            elif (previous := rt.last_status) is not None and previous.state in (
                RunState.running,
                RunState.paused,
            ):
                # It was running when we last looked and nobody stopped it.
                await self._report(
                    vm_id, RunState.crashed, vm, message="QEMU exited while the agent was down"
                )
        for vm in vms.values():
            status = statuses.get(vm.id)
            if vm.node == self.node and (
                status is None or status.observed_generation < vm.generation
            ):
                job = asyncio.create_task(self._reconcile_logged(vm.id))
                self._jobs.add(job)
                job.add_done_callback(self._jobs.discard)

    async def _reconcile_logged(self, vm_id: str) -> None:
        try:
            await self.reconcile(vm_id)
        except Exception:
            log.exception("reconciling VM %s failed", vm_id)

    # -- reconcile -----------------------------------------------------------------------

    async def reconcile(
        self, vm_id: str, *, graceful: bool = True, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    ) -> RunState:
        rt = self.runtime(vm_id)
        async with rt.lock:
            entry = await self.db.get(VM, keys.vm(vm_id))
            if entry is None or entry.value.node != self.node:
                await self._stop(rt, graceful=False, timeout=timeout)
                return RunState.shutoff
            vm = entry.value
            running = rt.qemu.running()
            if vm.power == PowerState.stopped:
                if running:
                    await self._stop(rt, graceful=graceful, timeout=timeout)
                state = RunState.shutoff
            else:
                if not running:
                    await self._start(rt, vm)
                qemu_state = await rt.qemu.run_state()
                if vm.power == PowerState.paused and qemu_state == "running":
                    await rt.qemu.pause()
                elif vm.power == PowerState.running and qemu_state == "paused":
                    await rt.qemu.resume()
                state = RunState.paused if vm.power == PowerState.paused else RunState.running
            await self._report(vm_id, state, vm)
            return state

    async def _start(
        self,
        rt: _Runtime,
        vm: VM,
        extra: tuple[str, ...] = (),
        arriving_from: str | None = None,
        ram: int | None = None,
    ) -> None:
        """Start the VM's QEMU; `ram` (KiB) is given for an incoming migration, where it must
        be the source's."""
        disks = await self.resolve_disks(vm, arriving_from)
        paths = rt.qemu.paths
        paths.root.mkdir(parents=True, exist_ok=True)
        if vm.spec.firmware == "uefi" and not paths.efivars.exists():
            shutil.copyfile(command.OVMF_VARS, paths.efivars)
        for stale in (paths.qmp, paths.serial):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        # The fence watchdog kills the QEMUs marked HA when the node loses its lease.
        self._mark_ha(vm.id, effective_ha(vm, await group_of(self.db, vm)).enabled)
        (paths.root / fence.FENCED_MARKER).unlink(missing_ok=True)
        if ram is None:
            ram = command.ram_kib(
                command.base_memory_mib(vm.spec), self.accelerator, self.qemu_version
            )
        try:
            taps = await self.network.plug(vm) if self.network else {}
        except NetworkError as exc:
            raise VMError(f"VM {vm.spec.name}: {exc}") from exc
        try:
            seed = await self._seed(vm, paths.root / "cidata.iso")
            try:
                args = command.build(
                    vm,
                    disks,
                    paths,
                    self.accelerator,
                    ram=ram,
                    taps=taps,
                    vhost=self.vhost,
                    seed=seed,
                )
            except ValueError as exc:
                raise VMError(f"VM {vm.spec.name}: {exc} (this node has no networking)") from exc
            paths.hardware.write_text(vm.spec.model_dump_json())
            rt.expect_exit = False
            rt.guest_shutdown = False
            # Start paused when the user wants it paused, so the guest never runs a cycle.
            paused = ["-S"] if vm.power == PowerState.paused else []
            pid = await rt.qemu.launch(
                [*args, *paused, *extra],
                pass_fds=tuple(taps.values()),
                cgroups=self._cgroups(vm.id, vm.spec),
            )
        finally:
            # QEMU holds the taps now (or never will): ours go, and theirs keep them alive.
            for fd in taps.values():
                os.close(fd)
            if self.network:
                self.network.settled(vm.id)
        self.on_launch(pid)
        self._watch(vm.id)
        await self._limit(rt, vm.spec, pid)

    def _cgroups(self, vm_id: str, spec: VMSpec) -> list[Path]:
        """The VM's control groups with its CPU and memory limits, for QEMU to start in (so
        a limit set later counts all of its memory). Without them (no cgroup tree we may
        write) a VM with no limits still starts; one with limits does not.

        Raises VMError.
        """
        limits = cgroups.Limits(spec.cpu_weight, spec.cpu_limit, spec.memory_limit_mib)
        if self.cgroup_root is None:
            if limits != cgroups.Limits():
                raise VMError(f"VM {spec.name} has limits: this agent manages no cgroups")
            return []
        try:
            return cgroups.prepare(vm_id, limits, self.cgroup_root)
        except cgroups.CgroupError as exc:
            if limits != cgroups.Limits():
                raise VMError(f"VM {spec.name}: {exc}") from exc
            log.warning("VM %s starts outside a cgroup of its own: %s", spec.name, exc)
            return []

    async def _limit(self, rt: _Runtime, spec: VMSpec, pid: int) -> None:
        """Give a QEMU just started its disks' I/O limits (not on its command line, nor
        carried by a migration)."""
        for index, disk in enumerate(spec.disks):
            if disk.qos != DiskQoS():
                backend = command.disk_backend(index, disk.bus)
                await rt.qemu.set_disk_qos(backend, f"disk{index}", disk.qos)

    async def apply_hardware(
        self, vm: VM, progress: Callable[[float, str], Awaitable[None]] | None = None
    ) -> list[str]:
        """Give the running QEMU what of `vm`'s spec it can take live (`hotplug.plan_live`):
        vCPUs, a DIMM, disks added or taken from the end, disk I/O limits, cgroup limits.
        The running spec is written after each step, so a repeat does only what is left.
        Returns what was done, and what waits for the next start.

        Raises QemuError (QEMU refused a step, the guest kept a disk), VMError.
        """
        rt = self.runtime(vm.id)
        async with rt.lock:
            running = self.running_spec(vm.id)
            if running is None or not rt.qemu.running():
                return ["not running: its hardware applies at its next start"]
            plan = hotplug.plan_live(running, vm.spec)
            target = hotplug.applied(running, vm.spec, plan)
            done: list[str] = []
            steps = [
                *(["vcpus"] if plan.vcpus is not None else []),
                *(["memory"] if plan.dimm_mib is not None else []),
                *(f"remove{i}" for i in reversed(plan.remove_disks)),
                *(f"add{i}" for i in plan.add_disks),
                *(["qos"] if plan.qos else []),
                *(["cgroup"] if plan.cgroup else []),
            ]
            current = running
            for number, step in enumerate(steps):
                if progress is not None:
                    await progress(number / len(steps), step)
                if step == "vcpus":
                    assert plan.vcpus is not None
                    added = await rt.qemu.add_vcpus(plan.vcpus)
                    plugged = [*current.plugged_vcpus, *added]
                    current = current.model_copy(
                        update={"vcpus": plan.vcpus, "plugged_vcpus": plugged}
                    )
                    done.append(f"{plan.vcpus} vCPUs")
                elif step == "memory":
                    assert plan.dimm_mib is not None
                    await rt.qemu.add_dimm(command.dimm_id(len(running.dimms_mib)), plan.dimm_mib)
                    current = current.model_copy(
                        update={"memory_mib": target.memory_mib, "dimms_mib": target.dimms_mib}
                    )
                    done.append(f"plugged in {plan.dimm_mib} MiB of memory")
                elif step.startswith("remove"):
                    index = int(step.removeprefix("remove"))
                    await rt.qemu.remove_disk(f"disk{index}", f"disk{index}-dev")
                    current = current.model_copy(update={"disks": current.disks[:index]})
                    done.append(f"unplugged disk{index}")
                elif step.startswith("add"):
                    index = int(step.removeprefix("add"))
                    disk = vm.spec.disks[index]
                    resolved = await self.resolve_disk(disk)
                    node = command.format_node(f"disk{index}", resolved.format, resolved.protocol)
                    with_disk = vm.model_copy(update={"spec": target})
                    await rt.qemu.add_disk(node, command.disk_device(with_disk, index))
                    if disk.qos != DiskQoS():
                        backend = command.disk_backend(index, disk.bus)
                        await rt.qemu.set_disk_qos(backend, f"disk{index}", disk.qos)
                    current = current.model_copy(update={"disks": [*current.disks, disk]})
                    done.append(f"plugged in disk{index}")
                elif step == "qos":
                    for index, qos in plan.qos.items():
                        backend = command.disk_backend(index, current.disks[index].bus)
                        await rt.qemu.set_disk_qos(backend, f"disk{index}", qos)
                    disks = [
                        d.model_copy(update={"qos": plan.qos.get(i, d.qos)})
                        for i, d in enumerate(current.disks)
                    ]
                    current = current.model_copy(update={"disks": disks})
                    done.append("disk limits " + ", ".join(f"disk{i}" for i in plan.qos))
                elif step == "cgroup":
                    pid = rt.qemu.pid()
                    limits = cgroups.Limits(
                        target.cpu_weight, target.cpu_limit, target.memory_limit_mib
                    )
                    if pid is not None:
                        if self.cgroup_root is None:
                            raise VMError("this agent manages no control groups")
                        try:
                            cgroups.apply(vm.id, pid, limits, self.cgroup_root)
                        except cgroups.CgroupError as exc:
                            raise VMError(str(exc)) from exc
                    current = current.model_copy(
                        update={f: getattr(target, f) for f in hotplug.CGROUP_FIELDS}
                    )
                    done.append("CPU and memory limits")
                rt.qemu.paths.hardware.write_text(current.model_dump_json())
            if plan.pending:
                done.append("at the next start: " + ", ".join(plan.pending))
            return done

    async def _seed(self, vm: VM, path: Path) -> Path | None:
        """The VM's cloud-init seed ISO at `path`, made anew when what it says changed."""
        if vm.spec.cloud_init is None:
            return None
        networks = {}
        for nic in vm.spec.nics:
            found = await self.db.get(Network, keys.network(nic.network))
            if found is not None:
                networks[nic.network] = found.value
        files = cloudinit.seed_files(vm, networks)
        try:
            await asyncio.to_thread(cloudinit.write_iso, files, path)
        except OSError as exc:
            raise VMError(f"VM {vm.spec.name}: its cloud-init seed: {exc}") from exc
        return path

    async def sync_nics(self, vm: VM) -> list[str]:
        """Make the running QEMU's NICs those of `vm`'s spec: unplug the ones gone (or moved
        to another slot or model), plug the new ones, plug or pull cables. A NIC that only
        changes network keeps its tap, which the network controller moves to the other port
        group. Returns what was done.

        Raises VMError (a VM started with the first device layout: its NICs change at its
        next start), QemuError (the guest did not release a NIC).
        """
        rt = self.runtime(vm.id)
        async with rt.lock:
            running = self.running_spec(vm.id)
            if running is None or not rt.qemu.running():
                return ["not running: its NICs apply at its next start"]
            if running.layout < 2:
                raise VMError(
                    f"VM {vm.spec.name} runs with the first device layout: "
                    "its NICs change at its next start"
                )
            before = vm.model_copy(update={"spec": running})
            was = {n.mac: (i, n) for i, n in enumerate(running.nics)}

            def kind(nic: NicSpec) -> tuple[object, ...]:
                plugged = nic.network not in ("none", "user")
                return (nic.slot, nic.model, nic.network if not plugged else "tap")

            done = []
            kept: set[str | None] = set()
            for mac, (index, nic) in was.items():
                same = next((n for n in vm.spec.nics if n.mac == mac), None)
                if same is not None and kind(same) == kind(nic):
                    kept.add(mac)
                    continue
                if nic.network != "none":
                    await rt.qemu.remove_nic(*command.nic_ids(before, index))
                done.append(f"unplugged NIC {mac}")
            added = [
                i for i, n in enumerate(vm.spec.nics) if n.mac not in kept and n.network != "none"
            ]
            try:
                taps = await self.network.plug(vm, set(added)) if self.network else {}
            except NetworkError as exc:
                raise VMError(f"VM {vm.spec.name}: {exc}") from exc
            try:
                for index in added:
                    nic = vm.spec.nics[index]
                    if nic.network not in ("user", "none") and index not in taps:
                        raise VMError(f"NIC {index}: this node has no networking")
                    device = command.nic_device(vm, index)
                    await rt.qemu.add_nic(device["netdev"], device, taps.get(index))
                    done.append(f"plugged NIC {nic.mac} into {nic.network}")
            finally:
                for fd in taps.values():
                    os.close(fd)
                if self.network:
                    self.network.settled(vm.id)
            for index, nic in enumerate(vm.spec.nics):
                old = was.get(nic.mac)
                if nic.network != "none" and (old is None or old[1].link_up != nic.link_up):
                    await rt.qemu.set_link(command.nic_ids(vm, index)[0], nic.link_up)
                    if old is not None:
                        done.append(f"NIC {nic.mac} link {'up' if nic.link_up else 'down'}")
            hardware = running.model_copy(update={"nics": vm.spec.nics})
            rt.qemu.paths.hardware.write_text(hardware.model_dump_json())
        if self.network:
            await self.network.realise()  # taps to their (new) port groups, DHCP hosts
        return done

    def guest_agent(self, vm_id: str) -> GuestAgent:
        """The guest agent of a VM of this node: one per VM, shared by all its callers."""
        return self.runtime(vm_id).qemu.guest_agent()

    def running_here(self) -> list[str]:
        """The VMs whose QEMU runs on this node, arrivals of migrations included."""
        return [vm_id for vm_id, rt in self._vms.items() if rt.qemu.running()]

    def running_spec(self, vm_id: str) -> VMSpec | None:
        """The spec the VM's QEMU runs with, if it runs here (edits since wait for a restart)."""
        try:
            return VMSpec.model_validate_json(self.paths(vm_id).hardware.read_text())
        except (FileNotFoundError, ValueError):
            return None  # started by a release that did not record it

    def _mark_ha(self, vm_id: str, enabled: bool) -> None:
        marker = self.paths(vm_id).root / fence.HA_MARKER
        if enabled:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)

    async def follow_ha(self, inventory: Inventory) -> None:
        """Keep the HA mark of every QEMU running here true to its VM's (or group's) policy
        as an administrator changes it: without the mark, a node cut off from the cluster
        would keep running a VM that HA restarts elsewhere."""
        inv = await inventory.ready()
        changed = inv.vms.listen()
        groups = inv.groups.listen()
        while True:
            for vm in inv.vms.values():
                if vm.node == self.node and self.runtime(vm.id).qemu.running():
                    with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                        self._mark_ha(vm.id, effective_ha(vm, inv.group_of(vm)).enabled)
            waiters = [asyncio.ensure_future(e.wait()) for e in (changed, groups)]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            changed.clear()
            groups.clear()

    async def start_incoming(self, vm: VM, source: str, ram: int) -> QemuVM:
        """Start a QEMU that waits for this VM's state to arrive by migration from `source`,
        with the source's RAM size in KiB. It stays paused once the state is in (-S): the
        guest runs here only after the source has handed the VM's record over, so a source
        that dies between QEMU's end of the transfer and the hand-over leaves a paused copy
        here, which the migration drops, and never a guest running here while HA starts it
        again elsewhere."""
        rt = self.runtime(vm.id)
        async with rt.lock:
            if rt.qemu.running():
                raise VMError(f"VM {vm.spec.name} already runs on {self.node}")
            await self._start(rt, vm, ("-S", "-incoming", "defer"), arriving_from=source, ram=ram)
        return rt.qemu

    async def hand_over(self, vm_id: str) -> None:
        """The VM now runs elsewhere (or never arrived): stop our QEMU, not as a crash."""
        await self.destroy(vm_id)

    async def _stop(self, rt: _Runtime, *, graceful: bool, timeout: float) -> None:
        if not rt.qemu.running():
            return
        rt.expect_exit = True
        if graceful:
            with contextlib.suppress(QemuError):
                # A paused guest cannot see the power button: let it run to handle it.
                if await rt.qemu.run_state() == "paused":
                    await rt.qemu.resume()
                await rt.qemu.powerdown()
            if await rt.qemu.wait_gone(timeout):
                return
            log.warning("VM %s ignored ACPI shutdown for %.0fs: forcing", rt.qemu.vm_id, timeout)
        await rt.qemu.kill()

    @contextlib.asynccontextmanager
    async def offline(self, vm_id: str) -> AsyncIterator[bool]:
        """Keep the VM's QEMU stopped while its closed images are worked on (a snapshot
        reverted offline): stopped at once if it runs, without a shutdown (what the guest
        has is about to be replaced), and its lock held so nothing starts it meanwhile.
        Yields whether it ran; `reconcile` afterwards starts it again if it should run."""
        rt = self.runtime(vm_id)
        async with rt.lock:
            ran = rt.qemu.running()
            await self._stop(rt, graceful=False, timeout=DEFAULT_SHUTDOWN_TIMEOUT)
            yield ran

    async def launch_paused(self, vm_id: str) -> QemuVM:
        """Start the VM's QEMU with its guest not yet running (to load a memory snapshot into
        it), inside `offline` (whose lock this needs held); `reconcile` lets it run after."""
        rt = self.runtime(vm_id)
        entry = await self.db.get(VM, keys.vm(vm_id))
        if entry is None or entry.value.node != self.node:
            raise VMError(f"VM {vm_id} is not on {self.node}")
        vm = entry.value
        await self._start(rt, vm, () if vm.power == PowerState.paused else ("-S",))
        return rt.qemu

    async def reboot(self, vm_id: str) -> None:
        rt = self.runtime(vm_id)
        async with rt.lock:
            if not rt.qemu.running():
                raise VMError("the VM is not running")
            await rt.qemu.reset()

    async def destroy(self, vm_id: str) -> None:
        """Stop QEMU for good and forget its runtime files; the caller deletes the records."""
        rt = self.runtime(vm_id)
        async with rt.lock:
            await self._stop(rt, graceful=False, timeout=10)
            if rt.monitor is not None:
                rt.monitor.cancel()
            shutil.rmtree(rt.qemu.paths.root, ignore_errors=True)
            if self.cgroup_root is not None:
                cgroups.remove(vm_id, self.cgroup_root)
        self._vms.pop(vm_id, None)

    async def resolve_disks(self, vm: VM, arriving_from: str | None = None) -> list[ResolvedDisk]:
        """How QEMU reaches the VM's disks on this node. During a migration from
        `arriving_from`, that node's local volumes are the copies being made here."""
        return [await self.resolve_disk(disk, arriving_from) for disk in vm.spec.disks]

    async def resolve_disk(self, disk: DiskSpec, arriving_from: str | None = None) -> ResolvedDisk:
        """How QEMU reaches one disk on this node (see `resolve_disks`)."""
        volume = await self.db.get(Volume, keys.volume(disk.volume))
        if volume is None:
            raise VMError(f"volume {disk.volume} does not exist")
        if volume.value.state != "ready":
            raise VMError(f"volume {volume.value.name} is {volume.value.state}")
        if volume.value.node not in (None, self.node, arriving_from):
            raise VMError(f"volume {volume.value.name} is on node {volume.value.node}")
        pool = await self.db.get(Pool, keys.pool(volume.value.pool))
        if pool is None:
            raise VMError(f"pool {volume.value.pool} does not exist")
        driver = driver_for(pool.value, self.state_dir, self.db)
        try:
            await driver.prepare()
            await driver.attach(volume.value, self.node, incoming=arriving_from is not None)
        except StorageError as exc:
            raise VMError(str(exc)) from exc
        return ResolvedDisk(disk.bus, driver.protocol(volume.value), volume.value.format.value)

    # -- status --------------------------------------------------------------------------

    async def _report(self, vm_id: str, state: RunState, vm: VM | None, message: str = "") -> None:
        rt = self.runtime(vm_id)
        pid = rt.qemu.pid() if state in (RunState.running, RunState.paused) else None
        vnc = None
        hardware = None
        if pid is not None:
            with contextlib.suppress(QemuError):
                vnc = await rt.qemu.vnc_address()
            hardware = self.running_spec(vm_id)
        agent = rt.agent_status if hardware is not None and hardware.guest_agent else None
        previous = rt.last_status
        observed = (
            vm.generation if vm is not None else (previous.observed_generation if previous else 0)
        )
        status = VMStatus(
            state=state,
            node=self.node,
            observed_generation=observed,
            pid=pid,
            vnc=vnc,
            accelerator=self.accelerator if pid else None,
            message=message,
            updated_at=time.time(),
            hardware=hardware,
            guest_agent=agent,
        )
        if previous is not None and previous.model_copy(update={"updated_at": 0}) == (
            status.model_copy(update={"updated_at": 0})
        ):
            return  # unchanged: write nothing, so an idle cluster leaves etcd alone
        await self.db.put(keys.vm_status(vm_id), status)
        rt.last_status = status

    async def report_error(self, vm_id: str, message: str) -> None:
        entry = await self.db.get(VM, keys.vm(vm_id))
        await self._report(vm_id, RunState.error, entry.value if entry else None, message)

    def _watch(self, vm_id: str) -> None:
        rt = self.runtime(vm_id)
        if rt.monitor is None or rt.monitor.done():
            rt.monitor = asyncio.create_task(self._monitor(vm_id), name=f"monitor-{vm_id[:8]}")

    async def _monitor(self, vm_id: str) -> None:
        """Follow one QEMU until it exits; polls its pid and listens to its QMP events."""
        rt = self.runtime(vm_id)
        spec = self.running_spec(vm_id)
        probe = None
        if spec is not None and spec.guest_agent:
            rt.agent_status = GuestAgentStatus(connected=False)

            def publish(status: GuestAgentStatus) -> None:
                rt.agent_status = status  # the loop below reports it

            probe = asyncio.create_task(guest_agent.follow(rt.qemu.guest_agent(), publish))
        try:
            await self._follow(vm_id, rt)
        finally:
            if probe is not None:
                probe.cancel()
            rt.agent_status = None
        await rt.qemu.close()
        if self.cgroup_root is not None:
            cgroups.remove(vm_id, self.cgroup_root)  # empty now; made again at its next start
        await self._exited(vm_id)

    async def _follow(self, vm_id: str, rt: _Runtime) -> None:
        while rt.qemu.running():
            try:
                qemu_state = await rt.qemu.run_state()
            except QemuError:
                qemu_state = None
            if qemu_state in ("running", "paused") and not rt.lock.locked():
                state = RunState.running if qemu_state == "running" else RunState.paused
                await self._report(vm_id, state, None)
            event = await rt.qemu.next_event(timeout=1.0)
            if event and event.get("event") == "SHUTDOWN" and event.get("data", {}).get("guest"):
                rt.guest_shutdown = True

    async def _exited(self, vm_id: str) -> None:
        rt = self.runtime(vm_id)
        entry = await self.db.get(VM, keys.vm(vm_id))
        if entry is None or entry.value.node != self.node:
            return  # deleted, or HA has already given it to another node
        if rt.expect_exit:
            return  # reconcile or destroy reports the outcome itself
        if rt.guest_shutdown:
            # The guest powered itself off: the VM is off, as the user of the guest wanted.
            def stopped(vm: VM) -> VM:
                vm.power = PowerState.stopped
                vm.generation += 1
                return vm

            updated = await self.db.update(VM, keys.vm(vm_id), stopped)
            await self._report(
                vm_id, RunState.shutoff, updated.value, message="shut down from inside the guest"
            )
        else:
            fenced = (rt.qemu.paths.root / fence.FENCED_MARKER).exists()
            why = (
                "stopped by the fence watchdog: the node lost its lease"
                if fenced
                else (f"QEMU exited unexpectedly: {rt.qemu.last_error()}")
            )
            log.warning("VM %s: %s", vm_id, why)
            await self._report(vm_id, RunState.crashed, None, message=why)
            if self.on_crash is not None:
                try:
                    await self.on_crash(entry.value, why)
                except Exception as exc:  # the leader's round finds it all the same
                    log.warning("VM %s: crash alert not written: %r", vm_id, exc)
