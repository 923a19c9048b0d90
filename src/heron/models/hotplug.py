"""What of a hardware change a running QEMU can take at once, and what waits for its next start.

`plan_live` is pure: it compares the spec a QEMU runs with (`VMStatus.hardware`) with the one
wanted. What it cannot apply live is `pending`: shown in the VM's status and API, and given
to the VM when it starts again (the start builds QEMU from the wanted spec), never dropped.
"""

from dataclasses import dataclass, field

from heron.models.vm import (
    MEMORY_BLOCK_MIB,
    MEMORY_SLOTS,
    RESTART_FIELDS,
    DiskQoS,
    DiskSpec,
    VMSpec,
    reserved_memory_mib,
    reserved_vcpus,
)

CGROUP_FIELDS = ("cpu_weight", "cpu_limit", "memory_limit_mib")


@dataclass
class LivePlan:
    """The steps that bring a running QEMU to the wanted spec, and what must wait."""

    vcpus: int | None = None  # the count to reach by plugging vCPUs in
    dimm_mib: int | None = None  # memory to plug in as one DIMM
    add_disks: list[int] = field(default_factory=list)  # indexes in the wanted spec
    remove_disks: list[int] = field(default_factory=list)  # indexes in the running spec
    qos: dict[int, DiskQoS] = field(default_factory=dict)  # disk index: its new limits
    cgroup: bool = False  # CPU weight/limit or memory limit changed
    pending: list[str] = field(default_factory=list)  # fields that wait for the next start

    @property
    def live(self) -> bool:
        """Whether anything is to be done to the running QEMU."""
        return bool(
            self.vcpus is not None
            or self.dimm_mib is not None
            or self.add_disks
            or self.remove_disks
            or self.qos
            or self.cgroup
        )


def _device(disk: DiskSpec) -> tuple[object, ...]:
    return (disk.volume, disk.bus, disk.slot)


def hot_pluggable(disk: DiskSpec, layout: int) -> bool:
    """A disk that can come and go while its VM runs: virtio, in a slot of its own."""
    return layout >= 3 and disk.bus == "virtio" and disk.slot is not None


def plan_live(running: VMSpec, wanted: VMSpec) -> LivePlan:
    """Split the change from `running` to `wanted` into live steps and pending fields."""
    plan = LivePlan()
    grows = running.layout >= 3
    if wanted.vcpus > running.vcpus and grows and wanted.vcpus <= reserved_vcpus(running):
        plan.vcpus = wanted.vcpus
    elif wanted.vcpus != running.vcpus:
        plan.pending.append("vcpus")  # fewer: the guest would have to agree to give them up
    more = wanted.memory_mib - running.memory_mib
    if (
        more > 0
        and grows
        and more % MEMORY_BLOCK_MIB == 0
        and wanted.memory_mib <= reserved_memory_mib(running)
        and len(running.dimms_mib) < MEMORY_SLOTS
    ):
        plan.dimm_mib = more
    elif more != 0:
        plan.pending.append("memory_mib")
    _plan_disks(running, wanted, plan)
    if any(getattr(running, f) != getattr(wanted, f) for f in CGROUP_FIELDS):
        plan.cgroup = True
    handled = {"vcpus", "memory_mib", "disks", *CGROUP_FIELDS}
    plan.pending += [
        f for f in RESTART_FIELDS if f not in handled and getattr(running, f) != getattr(wanted, f)
    ]
    return plan


def _plan_disks(running: VMSpec, wanted: VMSpec, plan: LivePlan) -> None:
    # Disks keep their places (node names disk0, disk1... are by place): only disks added
    # after the last one, or taken from the end, change while the VM runs.
    was, now = running.disks, wanted.disks
    common = min(len(was), len(now))
    same_prefix = all(_device(a) == _device(b) for a, b in zip(was, now, strict=False))
    if not same_prefix:
        plan.pending.append("disks")
        return
    added, removed = list(range(common, len(now))), list(range(common, len(was)))
    if all(hot_pluggable(now[i], running.layout) for i in added) and all(
        hot_pluggable(was[i], running.layout) for i in removed
    ):
        plan.add_disks, plan.remove_disks = added, removed
    else:
        plan.pending.append("disks")
        return
    for index in range(common):
        if was[index].qos != now[index].qos:
            plan.qos[index] = now[index].qos


def applied(running: VMSpec, wanted: VMSpec, plan: LivePlan) -> VMSpec:
    """The spec the QEMU runs with once `plan`'s live steps are done."""
    update: dict[str, object] = {}
    if plan.vcpus is not None:
        update["vcpus"] = plan.vcpus
    if plan.dimm_mib is not None:
        update["memory_mib"] = running.memory_mib + plan.dimm_mib
        update["dimms_mib"] = [*running.dimms_mib, plan.dimm_mib]
    if "disks" not in plan.pending:
        update["disks"] = [d.model_copy() for d in wanted.disks]
    if plan.cgroup:
        update |= {f: getattr(wanted, f) for f in CGROUP_FIELDS}
    return running.model_copy(update=update)


def pending_changes(spec: VMSpec, running: VMSpec | None) -> list[str]:
    """The fields of `spec` that the running QEMU does not have and cannot get until it
    starts again (none when it is off)."""
    if running is None:
        return []
    return plan_live(running, spec).pending
