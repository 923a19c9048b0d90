"""Validation of the records in heron.models: what is accepted and what is refused."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from heron.models import (
    VM,
    DiskSpec,
    NicSpec,
    Node,
    Pool,
    Role,
    Task,
    TaskState,
    TokenRecord,
    User,
    VMSpec,
    VMStatus,
    Volume,
)
from heron.models.common import Name, is_name
from heron.models.vm import Hardware


class Named(BaseModel):
    name: Name


def spec(**fields: object) -> VMSpec:
    return VMSpec.model_validate({"name": "vm1", **fields})


def disks(count: int) -> list[dict[str, str]]:
    return [{"volume": f"vol{i}"} for i in range(count)]


def nics(count: int) -> list[dict[str, str]]:
    return [{} for _ in range(count)]


# -- names ---------------------------------------------------------------------------------


GOOD_NAMES = ["a", "0", "web-1", "db.eu_west", "a" * 63, "9lives", "a-b", "x.y", "a_b"]
BAD_NAMES = [
    "",
    "A",
    "Web",
    "-web",
    "web-",
    ".hidden",
    "web.",
    "_x",
    "x_",
    "a" * 64,
    "a b",
    "a/b",
    "a:b",
    "é",
    "web!",
    "..",
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names_are_accepted(name: str) -> None:
    assert is_name(name)
    assert Named(name=name).name == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused(name: str) -> None:
    assert not is_name(name)
    with pytest.raises(ValidationError) as info:
        Named(name=name)
    assert "1-63 characters" in str(info.value)


def test_name_with_trailing_newline_is_refused() -> None:
    assert not is_name("web\n")
    with pytest.raises(ValidationError):
        Named(name="web\n")


def test_names_are_checked_in_every_record() -> None:
    with pytest.raises(ValidationError):
        spec(name="Bad Name")
    with pytest.raises(ValidationError):
        Pool(name="../etc", created_at=0)
    with pytest.raises(ValidationError):
        User(name="ADMIN", role=Role.admin, password_hash="x", created_at=0)
    with pytest.raises(ValidationError):
        Volume(id="1", pool="p", name="a/b", format="qcow2", size=0, created_at=0)


# -- hardware ------------------------------------------------------------------------------


def test_hardware_defaults() -> None:
    hw = Hardware()
    assert (hw.vcpus, hw.memory_mib, hw.firmware, hw.machine, hw.boot_order) == (
        1,
        512,
        "bios",
        "q35",
        [],
    )


@pytest.mark.parametrize("vcpus", [1, 2, 256])
def test_vcpus_in_range(vcpus: int) -> None:
    assert Hardware(vcpus=vcpus).vcpus == vcpus


@pytest.mark.parametrize("vcpus", [0, -1, 257])
def test_vcpus_out_of_range(vcpus: int) -> None:
    with pytest.raises(ValidationError) as info:
        Hardware(vcpus=vcpus)
    assert info.value.errors()[0]["loc"] == ("vcpus",)


@pytest.mark.parametrize("memory", [16, 512, 4 * 1024 * 1024])
def test_memory_in_range(memory: int) -> None:
    assert Hardware(memory_mib=memory).memory_mib == memory


@pytest.mark.parametrize("memory", [0, 15, 4 * 1024 * 1024 + 1])
def test_memory_out_of_range(memory: int) -> None:
    with pytest.raises(ValidationError) as info:
        Hardware(memory_mib=memory)
    assert info.value.errors()[0]["loc"] == ("memory_mib",)


@pytest.mark.parametrize("machine", ["q35", "pc", "pc-q35-7.2", "pc-i440fx-7.2", "pc-q35-10.12"])
def test_machine_accepted(machine: str) -> None:
    assert Hardware(machine=machine).machine == machine


@pytest.mark.parametrize(
    "machine",
    ["", "Q35", "q35 ", "microvm", "pc-q35", "pc-q35-7", "pc-i440fx-x.y", "q35,accel=kvm", "isapc"],
)
def test_machine_refused(machine: str) -> None:
    with pytest.raises(ValidationError) as info:
        Hardware(machine=machine)
    assert "q35, pc" in str(info.value)


def test_machine_with_trailing_newline_refused() -> None:
    with pytest.raises(ValidationError):
        Hardware(machine="q35\n")


def test_firmware_choices() -> None:
    assert Hardware(firmware="uefi").firmware == "uefi"
    with pytest.raises(ValidationError):
        Hardware(firmware="coreboot")


def test_description_length_bound() -> None:
    assert len(Hardware(description="x" * 1024).description) == 1024
    with pytest.raises(ValidationError):
        Hardware(description="x" * 1025)


# -- boot order ----------------------------------------------------------------------------


def test_boot_order_valid() -> None:
    vm = spec(disks=disks(2), nics=nics(1), boot_order=["net0", "disk1", "disk0"])
    assert vm.boot_order == ["net0", "disk1", "disk0"]


@pytest.mark.parametrize("item", ["cdrom", "disk", "net", "disk-1", "Disk0", "disk0 ", "hd0"])
def test_boot_order_item_must_be_disk_or_net(item: str) -> None:
    with pytest.raises(ValidationError) as info:
        Hardware(boot_order=[item])
    assert "is not diskN or netN" in str(info.value)


def test_boot_order_duplicates_refused() -> None:
    with pytest.raises(ValidationError) as info:
        Hardware(boot_order=["disk0", "net0", "disk0"])
    assert "twice" in str(info.value)


def test_boot_order_at_most_eight() -> None:
    Hardware(boot_order=[f"disk{i}" for i in range(8)])
    with pytest.raises(ValidationError):
        Hardware(boot_order=[f"disk{i}" for i in range(9)])


@pytest.mark.parametrize(
    ("boot", "n_disks", "n_nics"),
    [(["disk0"], 0, 0), (["disk2"], 2, 0), (["net0"], 1, 0), (["disk0", "net1"], 1, 1)],
)
def test_boot_order_naming_missing_device_refused(
    boot: list[str], n_disks: int, n_nics: int
) -> None:
    with pytest.raises(ValidationError) as info:
        spec(disks=disks(n_disks), nics=nics(n_nics), boot_order=boot)
    assert "which the VM does not have" in str(info.value)


def test_boot_order_missing_device_refused_on_assignment() -> None:
    vm = spec(disks=disks(1))
    # validate_assignment re-runs the model validator (pydantic leaves the refused value in
    # place, so callers work on copies).
    with pytest.raises(ValidationError) as info:
        vm.boot_order = ["disk1"]
    assert "which the VM does not have" in str(info.value)


def test_boot_order_leading_zero_refused() -> None:
    with pytest.raises(ValidationError):
        spec(disks=disks(2), boot_order=["disk01"])


def test_hardware_alone_does_not_know_the_devices() -> None:
    # The create request checks the pattern; device existence is checked by VMSpec.
    assert Hardware(boot_order=["disk5"]).boot_order == ["disk5"]


# -- devices -------------------------------------------------------------------------------


def test_disk_buses() -> None:
    for bus in ("virtio", "scsi", "sata", "ide"):
        assert DiskSpec(bus=bus, volume="v").bus == bus
    with pytest.raises(ValidationError):
        DiskSpec(bus="nvme", volume="v")
    with pytest.raises(ValidationError):
        DiskSpec()  # a disk needs its volume


def test_device_count_bounds() -> None:
    assert len(spec(disks=disks(16), nics=nics(8)).disks) == 16
    with pytest.raises(ValidationError):
        spec(disks=disks(17))
    with pytest.raises(ValidationError):
        spec(nics=nics(9))


@pytest.mark.parametrize("mac", ["52:54:00:12:34:56", "00:00:00:00:00:00", "fe:dc:ba:98:76:54"])
def test_mac_accepted(mac: str) -> None:
    assert NicSpec(mac=mac).mac == mac


@pytest.mark.parametrize(
    "mac",
    [
        "52:54:00:12:34:5G",
        "52:54:00:AB:CD:EF",
        "52-54-00-12-34-56",
        "525400123456",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "2:54:00:12:34:56",
        "",
    ],
)
def test_mac_refused(mac: str) -> None:
    with pytest.raises(ValidationError) as info:
        NicSpec(mac=mac)
    assert "lower case" in str(info.value)


def test_mac_with_trailing_newline_refused() -> None:
    with pytest.raises(ValidationError):
        NicSpec(mac="52:54:00:12:34:56\n")


def test_nic_defaults_and_choices() -> None:
    nic = NicSpec()
    assert (nic.model, nic.network, nic.mac) == ("virtio", "user", None)
    assert NicSpec(model="e1000", network="none").network == "none"
    with pytest.raises(ValidationError):
        NicSpec(model="rtl8139")
    assert NicSpec(network="lan-100").network == "lan-100"  # a network, checked by the service
    with pytest.raises(ValidationError):
        NicSpec(network="Bad Name")
    with pytest.raises(ValidationError):
        NicSpec(network="lan", address="10.1.0.300")


# -- roles and tasks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("have", "needed", "allowed"),
    [
        (Role.viewer, Role.viewer, True),
        (Role.viewer, Role.operator, False),
        (Role.viewer, Role.admin, False),
        (Role.operator, Role.viewer, True),
        (Role.operator, Role.operator, True),
        (Role.operator, Role.admin, False),
        (Role.admin, Role.viewer, True),
        (Role.admin, Role.operator, True),
        (Role.admin, Role.admin, True),
    ],
)
def test_role_allows(have: Role, needed: Role, allowed: bool) -> None:
    assert have.allows(needed) is allowed


def test_role_ranks_are_ordered() -> None:
    assert Role.viewer.rank < Role.operator.rank < Role.admin.rank
    assert Role("operator") is Role.operator


def test_task_state_finished() -> None:
    finished = {s for s in TaskState if s.finished}
    assert finished == {TaskState.succeeded, TaskState.failed, TaskState.cancelled}
    assert not TaskState.queued.finished
    assert not TaskState.running.finished


def test_task_progress_bounds() -> None:
    task = Task(id="t", kind="vm.start", node="n1", created_at=0, updated_at=0)
    assert task.state is TaskState.queued
    task.progress = 1.0
    with pytest.raises(ValidationError):
        task.progress = 1.5
    with pytest.raises(ValidationError):
        Task(id="t", kind="k", node="n", progress=-0.1, created_at=0, updated_at=0)


# -- extra fields --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (VMSpec, {"name": "vm1"}),
        (Hardware, {}),
        (DiskSpec, {"volume": "v"}),
        (NicSpec, {}),
        (VM, {"id": "i", "spec": {"name": "vm1"}, "node": "n1", "created_at": 0}),
        (VMStatus, {"state": "running", "node": "n1", "updated_at": 0}),
        (Task, {"id": "t", "kind": "k", "node": "n", "created_at": 0, "updated_at": 0}),
        (Pool, {"name": "p", "created_at": 0}),
        (
            Node,
            {
                "name": "n1",
                "address": "127.0.0.1",
                "api_url": "http://127.0.0.1:1",
                "cpus": 2,
                "memory_mib": 1024,
                "accelerator": "tcg",
                "started_at": 0,
            },
        ),
        (
            TokenRecord,
            {"id": "t", "user": "admin", "role": "admin", "kind": "api", "created_at": 0},
        ),
    ],
)
def test_extra_fields_refused(model: type[BaseModel], fields: dict[str, object]) -> None:
    model.model_validate(fields)  # the base record is valid
    with pytest.raises(ValidationError) as info:
        model.model_validate({**fields, "colour": "blue"})
    assert info.value.errors()[0]["type"] == "extra_forbidden"


def test_extra_field_refused_in_nested_spec() -> None:
    with pytest.raises(ValidationError) as info:
        spec(disks=[{"volume": "v", "cache": "none"}])
    assert info.value.errors()[0]["loc"] == ("disks", 0, "cache")


def test_assignment_is_validated() -> None:
    vm = spec()
    with pytest.raises(ValidationError):
        vm.vcpus = 0
    assert vm.vcpus == 1


def test_vm_round_trips_through_json() -> None:
    vm = VM(
        id="i",
        spec=spec(disks=disks(1), nics=[{"mac": "52:54:00:00:00:01"}], boot_order=["net0"]),
        node="n1",
        created_at=1.5,
    )
    assert VM.model_validate_json(vm.model_dump_json()) == vm


def test_drs_mode_and_the_older_enabled_say_the_same() -> None:
    from heron.models.settings import DRSSettings

    assert (DRSSettings().mode, DRSSettings().enabled) == ("off", False)
    # A record or a client of a release before `mode` sets only `enabled`.
    assert DRSSettings.model_validate({"enabled": True}).mode == "automatic"
    assert DRSSettings.model_validate({"enabled": False}).mode == "off"
    # The mode alone sets `enabled`, which older agents read.
    assert DRSSettings.model_validate({"mode": "advise"}).enabled is False
    assert DRSSettings.model_validate({"mode": "automatic"}).enabled is True
    assert DRSSettings.model_validate({"mode": "automatic", "enabled": True}).mode == "automatic"
    with pytest.raises(ValidationError, match="contradicts mode"):
        DRSSettings.model_validate({"mode": "advise", "enabled": True})
    with pytest.raises(ValidationError):
        DRSSettings.model_validate({"mode": "sometimes"})
