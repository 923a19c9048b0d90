"""CPU weight, CPU limit and memory limit of a VM's QEMU, through Linux control groups.

Both hierarchies are met: cgroup v1 (a tree per controller: cpu.shares, cpu.cfs_quota_us,
memory.limit_in_bytes), as on the machines of this project's tests, and the unified v2 tree
(cpu.weight, cpu.max, memory.max) of most production hosts. Which one is detected at run time
from the mount; what to write is pure (`settings`), so both are unit-tested.

Each VM gets a group `heron/vm-<id>` (v1: one in the cpu and one in the memory tree) that its
QEMU joins before it starts, limits or not, so a limit given later counts all its memory.
"""

import contextlib
from dataclasses import dataclass
from pathlib import Path

from heron.errors import HypervisorError

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000
DEFAULT_WEIGHT = 100  # v2's default; v1's 1024 shares
V1_SHARES_PER_WEIGHT = 1024 / DEFAULT_WEIGHT


class CgroupError(HypervisorError):
    """A limit could not be set (no such controller, a memory limit below what QEMU uses)."""


@dataclass(frozen=True)
class Limits:
    cpu_weight: int | None = None  # 1..10000, 100 normal
    cpu_limit: int | None = None  # percent of one host CPU
    memory_limit_mib: int | None = None


def version(root: Path = ROOT) -> int:
    """2 for the unified hierarchy, 1 for a tree per controller."""
    return 2 if (root / "cgroup.controllers").exists() else 1


def group_name(vm_id: str) -> str:
    return f"heron/vm-{vm_id}"


def settings(cgroup_version: int, limits: Limits) -> dict[str, str]:
    """The files to write (relative to the group; v1: prefixed by its controller's tree) and
    their contents. A limit left out is written as no limit, so clearing one works too."""
    quota = limits.cpu_limit * PERIOD_US // 100 if limits.cpu_limit else None
    memory = limits.memory_limit_mib * 1024 * 1024 if limits.memory_limit_mib else None
    weight = limits.cpu_weight or DEFAULT_WEIGHT
    if cgroup_version == 2:
        return {
            "cpu.weight": str(weight),
            "cpu.max": f"{quota if quota else 'max'} {PERIOD_US}",
            "memory.max": str(memory) if memory else "max",
        }
    return {
        "cpu/cpu.shares": str(max(2, round(weight * V1_SHARES_PER_WEIGHT))),
        "cpu/cpu.cfs_period_us": str(PERIOD_US),
        "cpu/cpu.cfs_quota_us": str(quota) if quota else "-1",
        "memory/memory.limit_in_bytes": str(memory) if memory else "-1",
    }


def prepare(vm_id: str, limits: Limits, root: Path = ROOT) -> list[Path]:
    """Make the VM's group(s) with `limits`; returns the cgroup.procs files a process writes
    its pid into to join them. QEMU joins before it starts (`QemuVM.launch`), so every page
    it ever takes is charged to its group: the kernel no longer moves a process's charges
    along when it changes group (v2 never did; v1 dropped it in 6.x).

    Raises CgroupError when a controller is missing or refuses a value.
    """
    cgroup_version = version(root)
    name = group_name(vm_id)
    try:
        if cgroup_version == 2:
            _enable_v2(root, name)
            groups = {"": root / name}
        else:
            groups = {c: root / c / name for c in ("cpu", "memory")}
        for group in groups.values():
            group.mkdir(parents=True, exist_ok=True)
        for file, value in settings(cgroup_version, limits).items():
            controller, _, leaf = file.rpartition("/")
            try:
                (groups[controller] / leaf).write_text(value)
            except OSError as exc:
                # EBUSY on a memory limit: below what the VM's QEMU uses now.
                reason = exc.strerror or str(exc)
                raise CgroupError(f"VM {vm_id}: {leaf} = {value} refused: {reason}") from exc
    except OSError as exc:
        raise CgroupError(f"cgroup limits of VM {vm_id}: {exc}") from exc
    return [group / "cgroup.procs" for group in groups.values()]


def apply(vm_id: str, pid: int, limits: Limits, root: Path = ROOT) -> None:
    """Give the VM's group(s) `limits` and put QEMU `pid` in them (where it is already when
    it started there). A memory limit below what QEMU uses is refused (EBUSY on v1).

    Raises CgroupError when a controller is missing or refuses a value.
    """
    for procs in prepare(vm_id, limits, root):
        try:
            procs.write_text(str(pid))
        except OSError as exc:
            raise CgroupError(f"cgroup of VM {vm_id}: {exc}") from exc


def remove(vm_id: str, root: Path = ROOT) -> None:
    """Drop the VM's (empty) groups once its QEMU is gone."""
    name = group_name(vm_id)
    for group in (root / name, root / "cpu" / name, root / "memory" / name):
        # Absent, or a process still in it: it goes with the next removal.
        with contextlib.suppress(OSError):
            group.rmdir()


def _enable_v2(root: Path, name: str) -> None:
    """v2 hands a controller to a group only if every parent enabled it for its children."""
    parent = root
    for part in Path(name).parts:
        control = parent / "cgroup.subtree_control"
        if control.exists():
            enabled = set(control.read_text().split())
            missing = {"cpu", "memory"} - enabled
            if missing:
                control.write_text(" ".join(f"+{c}" for c in sorted(missing)))
        parent = parent / part
        parent.mkdir(exist_ok=True)
