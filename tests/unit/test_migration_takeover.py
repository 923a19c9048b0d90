"""When a migration record its target never closed may be closed by someone else
(`models.migration.takeover`), and which record a returning target may act on (`receives`)."""

from pathlib import Path

import pytest
from fakes.configdb import FakeConfigDB

from heron.audit import AuditLog
from heron.configdb import keys
from heron.models.migration import MigrateRequest, Migration, MigrationState, receives, takeover
from heron.models.node import Node
from heron.models.task import MigrateParams, Task
from heron.models.vm import VM, PowerState, RunState, VMSpec, VMStatus
from heron.services import vms as vm_service
from heron.services.errors import Conflict

ENDED = [MigrationState.failed, MigrationState.completed]
IN_FLIGHT = [MigrationState.preparing, MigrationState.ready, MigrationState.running]


def move(state: MigrationState, receive_task: str | None = "r1") -> Migration:
    return Migration(vm="vm1", source="a", target="b", state=state, receive_task=receive_task,
                     created_at=1.0)  # fmt: skip


@pytest.mark.parametrize("state", ENDED)
def test_an_ended_move_whose_target_left_is_closed(state: MigrationState) -> None:
    vm_node = "b" if state == MigrationState.completed else "a"
    verdict = takeover(move(state), {"a", "c"}, vm_node, source_busy=False, target_busy=True)
    assert verdict.close
    assert "node b left the cluster before closing it" in verdict.why


@pytest.mark.parametrize("state", ENDED)
def test_an_ended_move_whose_target_task_ended_without_closing_it_is_closed(
    state: MigrationState,
) -> None:
    """The target is there, but its receive task ended (failed before it removed the
    record): nobody would ever close it."""
    verdict = takeover(move(state), {"a", "b"}, "a", source_busy=False, target_busy=False)
    assert verdict.close
    assert "the receive task on node b ended without closing it" in verdict.why


@pytest.mark.parametrize("state", ENDED + IN_FLIGHT)
def test_a_target_at_work_closes_its_own(state: MigrationState) -> None:
    verdict = takeover(move(state), {"a", "b"}, "c", source_busy=False, target_busy=True)
    assert not verdict.close and "being closed by node b" in verdict.why


@pytest.mark.parametrize(
    ("live", "where"), [({"a"}, ""), (set(), " (node a is away: when its agent is back)")]
)
def test_a_move_whose_source_task_has_not_ended_is_left_to_it(live: set[str], where: str) -> None:
    """The source's task may still be sending (its verdict was the target's own): it ends
    the move, and closes the record itself then."""
    verdict = takeover(move(MigrationState.failed), live, "a", source_busy=True, target_busy=True)
    assert not verdict.close
    assert f"the migrate task on node a has not ended{where}" in verdict.why


@pytest.mark.parametrize("state", IN_FLIGHT)
def test_a_move_without_a_verdict_is_never_closed_by_guess(state: MigrationState) -> None:
    """Without a verdict nobody knows whether QEMU finished the move: the guest may run on
    the target. The refusal names the record and what an administrator must check."""
    verdict = takeover(move(state), {"a"}, "a", source_busy=False, target_busy=False)
    assert not verdict.close
    assert "made sure no QEMU of the VM runs on b" in verdict.why
    assert "/heron/migrations/vm1" in verdict.why


@pytest.mark.parametrize("state", ENDED + IN_FLIGHT)
@pytest.mark.parametrize("source_busy", [False, True])
def test_a_vm_ha_restarted_elsewhere_frees_its_record(
    state: MigrationState, source_busy: bool
) -> None:
    """HA restarted the VM on c after its node failed: both nodes' QEMUs of it were fenced."""
    verdict = takeover(move(state), {"a", "c"}, "c", source_busy, target_busy=True)
    assert verdict.close and "HA restarted the VM on c" in verdict.why


def test_a_target_acts_only_on_the_record_of_its_own_task() -> None:
    assert receives(move(MigrationState.ready), "b", "r1")
    assert not receives(move(MigrationState.ready), "b", "r2")  # the VM's next move
    assert not receives(move(MigrationState.ready), "c", "r1")
    # Written by a release without the field: any receive task of the target's.
    assert receives(move(MigrationState.ready, receive_task=None), "b", "r2")


# -- through the service: what an administrator's next request does ------------------------


async def running_on_n1(db: FakeConfigDB, left: Migration | None) -> VM:
    for name in ("n1", "n2"):
        node = Node(name=name, address="127.0.0.1", api_url="x", cpus=4, memory_mib=4096,
                    accelerator="tcg", started_at=1)  # fmt: skip
        await db.put(keys.node(name), node)
    vm = VM(id="vm1", spec=VMSpec(name="web", memory_mib=128), node="n1",
            power=PowerState.running, created_at=1.0)  # fmt: skip
    await db.put(keys.vm(vm.id), vm)
    await db.put(keys.vm_name("web"), vm.id)
    status = VMStatus(state=RunState.running, node="n1", updated_at=1.0)
    await db.put(keys.vm_status(vm.id), status)
    if left is not None:
        await db.put(keys.migration(vm.id), left)
    return vm


async def test_a_new_move_closes_the_record_a_gone_target_left(
    db: FakeConfigDB, tmp_path: Path
) -> None:
    await running_on_n1(db, move(MigrationState.failed).model_copy(update={"source": "n1"}))
    audit = AuditLog(tmp_path / "audit.jsonl", "n1")
    task = await vm_service.migrate(db, "web", MigrateRequest(target="n2"), "alice", audit)
    assert (task.kind, task.node, task.params_as(MigrateParams).target) == (
        "vm.migrate",
        "n1",
        "n2",
    )
    assert await db.get(Migration, keys.migration("vm1")) is None
    (entry,) = audit.read(10)
    assert (entry["method"], entry["result"], entry["user"]) == ("MIGRATION", "closed", "alice")
    assert "node b left the cluster before closing it" in entry["reason"]


async def test_a_record_that_cannot_be_closed_is_named_in_the_refusal(
    db: FakeConfigDB, tmp_path: Path
) -> None:
    left = move(MigrationState.running).model_copy(update={"source": "n1"})
    await running_on_n1(db, left)
    audit = AuditLog(tmp_path / "audit.jsonl", "n1")
    with pytest.raises(Conflict, match=r"VM web is already migrating: .*/heron/migrations/vm1"):
        await vm_service.migrate(db, "web", MigrateRequest(target="n2"), "alice", audit)
    found = await db.get(Migration, keys.migration("vm1"))
    assert found is not None and found.value == left  # nothing changed
    assert [t for t in await db.list(Task, keys.TASKS)] == []
    assert audit.read(10) == []
