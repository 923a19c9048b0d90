"""CPU and memory limits of a QEMU: what is written for cgroup v1 and v2, into a tree of
temporary directories shaped like each hierarchy."""

import os
from pathlib import Path

import pytest

from heron.hypervisor import cgroups
from heron.hypervisor.cgroups import Limits

VM_ID = "a1b2"


def v2_tree(root: Path) -> Path:
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_version_is_read_from_the_mount(tmp_path: Path) -> None:
    assert cgroups.version(tmp_path) == 1
    assert cgroups.version(v2_tree(tmp_path)) == 2


def test_v2_settings() -> None:
    assert cgroups.settings(2, Limits(cpu_weight=300, cpu_limit=150, memory_limit_mib=512)) == {
        "cpu.weight": "300",
        "cpu.max": "150000 100000",
        "memory.max": str(512 * 2**20),
    }
    # No limits: the defaults, so a limit taken away is lifted.
    assert cgroups.settings(2, Limits()) == {
        "cpu.weight": "100",
        "cpu.max": "max 100000",
        "memory.max": "max",
    }


def test_v1_settings() -> None:
    assert cgroups.settings(1, Limits(cpu_weight=50, cpu_limit=25, memory_limit_mib=64)) == {
        "cpu/cpu.shares": "512",
        "cpu/cpu.cfs_period_us": "100000",
        "cpu/cpu.cfs_quota_us": "25000",
        "memory/memory.limit_in_bytes": str(64 * 2**20),
    }
    unlimited = cgroups.settings(1, Limits())
    assert unlimited["cpu/cpu.shares"] == "1024"
    assert unlimited["cpu/cpu.cfs_quota_us"] == "-1"
    assert unlimited["memory/memory.limit_in_bytes"] == "-1"
    assert cgroups.settings(1, Limits(cpu_weight=1))["cpu/cpu.shares"] == "10"


def test_v2_apply_enables_controllers_down_the_path_and_moves_the_process(
    tmp_path: Path,
) -> None:
    root = v2_tree(tmp_path)
    cgroups.apply(VM_ID, 4242, Limits(cpu_weight=200, memory_limit_mib=128), root)
    group = root / "heron" / f"vm-{VM_ID}"
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert (group / "cpu.weight").read_text() == "200"
    assert (group / "cpu.max").read_text() == "max 100000"
    assert (group / "memory.max").read_text() == str(128 * 2**20)
    assert (group / "cgroup.procs").read_text() == "4242"


def test_v1_apply_uses_the_cpu_and_memory_trees(tmp_path: Path) -> None:
    for controller in ("cpu", "memory"):
        (tmp_path / controller).mkdir()
    cgroups.apply(VM_ID, 4242, Limits(cpu_limit=200), tmp_path)
    cpu = tmp_path / "cpu" / "heron" / f"vm-{VM_ID}"
    memory = tmp_path / "memory" / "heron" / f"vm-{VM_ID}"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "200000"
    assert (memory / "memory.limit_in_bytes").read_text() == "-1"
    assert (cpu / "cgroup.procs").read_text() == (memory / "cgroup.procs").read_text() == "4242"
    # Repeating changes the limits; removal takes the (here: not empty) groups if it can.
    cgroups.apply(VM_ID, 4242, Limits(), tmp_path)
    assert (cpu / "cpu.cfs_quota_us").read_text() == "-1"
    cgroups.remove(VM_ID, tmp_path)


def test_a_refused_value_is_a_cgroup_error(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()  # no memory tree
    (tmp_path / "memory").write_text("")  # a file where the tree should be
    with pytest.raises(cgroups.CgroupError, match=VM_ID):
        cgroups.apply(VM_ID, 1, Limits(), tmp_path)


@pytest.mark.skipif(
    os.geteuid() != 0 or cgroups.version() != 1 or not Path("/sys/fs/cgroup/cpu").is_dir(),
    reason="needs root and the cgroup v1 cpu tree",
)
def test_v1_for_real_on_this_host() -> None:
    """This machine has cgroup v1: a sleeping process gets a CPU quota for real."""
    import subprocess

    proc = subprocess.Popen(["sleep", "30"])
    try:
        cgroups.apply("unit-test", proc.pid, Limits(cpu_limit=10, memory_limit_mib=64))
        group = Path("/sys/fs/cgroup/cpu") / cgroups.group_name("unit-test")
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "10000"
        assert str(proc.pid) in (group / "cgroup.procs").read_text().split()
    finally:
        proc.kill()
        proc.wait()
        cgroups.remove("unit-test")
