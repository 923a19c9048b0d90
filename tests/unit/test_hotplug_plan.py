"""plan_live: what of a hardware change a running QEMU takes at once, what waits."""

from heron.models.hotplug import applied, pending_changes, plan_live
from heron.models.vm import DiskQoS, VMSpec


def spec(**fields: object) -> VMSpec:
    base: dict[str, object] = {
        "name": "vm1",
        "vcpus": 1,
        "max_vcpus": 4,
        "memory_mib": 256,
        "max_memory_mib": 1024,
        "layout": 3,
        "disks": [{"volume": "boot"}],
    }
    return VMSpec.model_validate(base | fields)


def disk(volume: str, slot: int | None, bus: str = "virtio", **qos: int) -> dict[str, object]:
    return {"volume": volume, "bus": bus, "slot": slot, "qos": qos}


def test_nothing_changed_nothing_to_do() -> None:
    plan = plan_live(spec(), spec())
    assert not plan.live and plan.pending == []


def test_more_vcpus_up_to_the_maximum_are_live() -> None:
    plan = plan_live(spec(), spec(vcpus=3))
    assert plan.vcpus == 3 and plan.pending == []
    assert applied(spec(), spec(vcpus=3), plan).vcpus == 3


def test_vcpus_past_the_running_maximum_or_fewer_wait() -> None:
    assert plan_live(spec(), spec(vcpus=6, max_vcpus=8)).pending == ["vcpus", "max_vcpus"]
    assert plan_live(spec(vcpus=2), spec(vcpus=1)).pending == ["vcpus"]


def test_a_vm_of_an_older_layout_grows_only_at_its_start() -> None:
    plan = plan_live(spec(layout=2), spec(layout=2, vcpus=2, memory_mib=384))
    assert not plan.live and plan.pending == ["vcpus", "memory_mib"]


def test_memory_in_whole_blocks_is_one_dimm() -> None:
    plan = plan_live(spec(), spec(memory_mib=512))
    assert plan.dimm_mib == 256 and plan.pending == []
    after = applied(spec(), spec(memory_mib=512), plan)
    assert (after.memory_mib, after.dimms_mib) == (512, [256])
    # The next DIMM adds to the first.
    again = plan_live(after, spec(memory_mib=640))
    assert again.dimm_mib == 128
    assert applied(after, spec(memory_mib=640), again).dimms_mib == [256, 128]


def test_memory_that_cannot_be_plugged_waits() -> None:
    assert plan_live(spec(), spec(memory_mib=300)).pending == ["memory_mib"]  # not 128 MiB
    assert plan_live(spec(), spec(memory_mib=128)).pending == ["memory_mib"]  # less
    grown = spec(memory_mib=2048, max_memory_mib=2048)
    assert plan_live(spec(), grown).pending == ["memory_mib", "max_memory_mib"]
    full = spec(memory_mib=1280, max_memory_mib=4096, dimms_mib=[128] * 8)
    assert plan_live(full, spec(memory_mib=1408, max_memory_mib=4096)).pending == ["memory_mib"]


def test_disks_added_at_the_end_into_slots_are_plugged() -> None:
    wanted = spec(disks=[disk("boot", None), disk("d1", 0), disk("d2", 1)])
    plan = plan_live(spec(), wanted)
    assert plan.add_disks == [1, 2] and plan.pending == []
    assert [d.volume for d in applied(spec(), wanted, plan).disks] == ["boot", "d1", "d2"]


def test_disks_without_a_slot_or_on_another_bus_wait() -> None:
    assert plan_live(spec(), spec(disks=[disk("boot", None), disk("s", None, "sata")])).pending == [
        "disks"
    ]
    assert plan_live(spec(), spec(disks=[disk("boot", None), disk("v", None)])).pending == ["disks"]


def test_only_the_last_disks_leave_a_running_vm() -> None:
    running = spec(disks=[disk("boot", None), disk("d1", 0), disk("d2", 1)])
    plan = plan_live(running, spec(disks=[disk("boot", None), disk("d1", 0)]))
    assert plan.remove_disks == [2] and plan.pending == []
    middle = plan_live(running, spec(disks=[disk("boot", None), disk("d2", 1)]))
    assert middle.pending == ["disks"] and not middle.remove_disks
    boot = plan_live(spec(), spec(disks=[]))
    assert boot.pending == ["disks"]


def test_disk_limits_change_live_on_any_disk() -> None:
    wanted = spec(disks=[disk("boot", None, iops=100, iops_burst=200)])
    plan = plan_live(spec(), wanted)
    assert plan.qos == {0: DiskQoS(iops=100, iops_burst=200)} and plan.pending == []
    assert applied(spec(), wanted, plan).disks[0].qos.iops == 100


def test_cgroup_limits_change_live() -> None:
    plan = plan_live(spec(), spec(cpu_weight=200, cpu_limit=50, memory_limit_mib=512))
    assert plan.cgroup and plan.pending == []
    after = applied(spec(), spec(cpu_weight=200, cpu_limit=50, memory_limit_mib=512), plan)
    assert (after.cpu_weight, after.cpu_limit, after.memory_limit_mib) == (200, 50, 512)


def test_what_needs_a_restart_is_pending_and_the_rest_still_plans() -> None:
    plan = plan_live(spec(), spec(firmware="uefi", vcpus=2))
    assert plan.vcpus == 2 and plan.pending == ["firmware"]


def test_pending_changes_of_a_vm_that_is_off_are_none() -> None:
    assert pending_changes(spec(vcpus=3), None) == []
    assert pending_changes(spec(vcpus=3), spec()) == []  # live, not pending
    assert pending_changes(spec(machine="pc"), spec()) == ["machine"]
