"""When a migration record its target never closed may be closed by someone else
(`models.migration.takeover`), and which record a returning target may act on (`receives`)."""

import pytest

from heron.models.migration import Migration, MigrationState, receives, takeover

ENDED = [MigrationState.failed, MigrationState.completed]
IN_FLIGHT = [MigrationState.preparing, MigrationState.ready, MigrationState.running]


def move(state: MigrationState, receive_task: str | None = "r1") -> Migration:
    return Migration(vm="vm1", source="a", target="b", state=state, receive_task=receive_task,
                     created_at=1.0)  # fmt: skip


@pytest.mark.parametrize("state", ENDED)
def test_an_ended_move_whose_target_left_is_closed(state: MigrationState) -> None:
    vm_node = "b" if state == MigrationState.completed else "a"
    verdict = takeover(move(state), live={"a", "c"}, vm_node=vm_node, source_busy=False)
    assert verdict.close
    assert "node b left the cluster before closing it" in verdict.why


@pytest.mark.parametrize("state", ENDED + IN_FLIGHT)
def test_a_target_holding_its_lease_closes_its_own(state: MigrationState) -> None:
    verdict = takeover(move(state), live={"a", "b"}, vm_node="c", source_busy=False)
    assert not verdict.close and "being closed by node b" in verdict.why


@pytest.mark.parametrize(
    ("live", "where"), [({"a"}, ""), (set(), " (node a is away: when its agent is back)")]
)
def test_a_move_whose_source_task_has_not_ended_is_left_to_it(live: set[str], where: str) -> None:
    """The source's task may still be sending (its verdict was the target's own): it ends
    the move, and closes the record itself then."""
    verdict = takeover(move(MigrationState.failed), live=live, vm_node="a", source_busy=True)
    assert not verdict.close
    assert f"the migrate task on node a has not ended{where}" in verdict.why


@pytest.mark.parametrize("state", IN_FLIGHT)
def test_a_move_without_a_verdict_is_never_closed_by_guess(state: MigrationState) -> None:
    """Without a verdict nobody knows whether QEMU finished the move: the guest may run on
    the target. The refusal names the record and what an administrator must check."""
    verdict = takeover(move(state), live={"a"}, vm_node="a", source_busy=False)
    assert not verdict.close
    assert "made sure no QEMU of the VM runs on b" in verdict.why
    assert "/heron/migrations/vm1" in verdict.why


@pytest.mark.parametrize("state", ENDED + IN_FLIGHT)
@pytest.mark.parametrize("source_busy", [False, True])
def test_a_vm_ha_restarted_elsewhere_frees_its_record(
    state: MigrationState, source_busy: bool
) -> None:
    """HA restarted the VM on c after its node failed: both nodes' QEMUs of it were fenced."""
    verdict = takeover(move(state), live={"a", "c"}, vm_node="c", source_busy=source_busy)
    assert verdict.close and "HA restarted the VM on c" in verdict.why


def test_a_target_acts_only_on_the_record_of_its_own_task() -> None:
    assert receives(move(MigrationState.ready), "b", "r1")
    assert not receives(move(MigrationState.ready), "b", "r2")  # the VM's next move
    assert not receives(move(MigrationState.ready), "c", "r1")
    # Written by a release without the field: any receive task of the target's.
    assert receives(move(MigrationState.ready, receive_task=None), "b", "r2")
