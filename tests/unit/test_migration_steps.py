"""Live migration's error branches on the fakes, one node at a time: this test plays the
other node by writing the migration record as it would. The whole move between two real
QEMUs is tests/integration/test_migration.py."""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aetcd.exceptions
import pytest
from fakes import qemu as fake_qemu
from fakes.configdb import FakeConfigDB
from fakes.running import stop_agent, until

from heron.agent.migration import Migrations, tls_uri
from heron.agent.tasks import TaskCancelled, TaskContext, TaskFailed
from heron.agent.vms import VMController
from heron.configdb import keys
from heron.models.common import new_id
from heron.models.migration import Migration, MigrationState
from heron.models.node import MIGRATION_TLS, Node
from heron.models.storage import Pool, Volume, VolumeFormat
from heron.models.task import MigrateParams, Task, TaskKind, TaskState, new_task
from heron.models.vm import VM, DiskSpec, PowerState, VMSpec
from heron.tls import NodeCredentials, issue, make_authority


@pytest.fixture
async def controllers(
    db: FakeConfigDB, state_dir: Path, script: fake_qemu.Script
) -> AsyncIterator[dict[str, VMController]]:
    """The VM controllers of nodes n1 (the source) and n2 (the target)."""
    made = {
        node: VMController(db, node, state_dir / node, "tcg")  # type: ignore[arg-type]
        for node in ("n1", "n2")
    }
    yield made
    for controller in made.values():
        await stop_agent(controller)


def registered(name: str) -> Node:
    """The record a live node keeps under its lease."""
    return Node(name=name, address="127.0.0.1", api_url="x", cpus=1, memory_mib=1024,
                accelerator="tcg", started_at=1)  # fmt: skip


@pytest.fixture
async def source(db: FakeConfigDB, controllers: dict[str, VMController]) -> Migrations:
    for node in ("n1", "n2"):
        await db.put(keys.node(node), registered(node))
    return Migrations(db, "n1", "127.0.0.1", controllers["n1"])  # type: ignore[arg-type]


async def running_vm(db: FakeConfigDB, controllers: dict[str, VMController]) -> VM:
    vm = VM(
        id=new_id(), spec=VMSpec(name="web"), node="n1", power=PowerState.running, created_at=1.0
    )
    await db.put(keys.vm(vm.id), vm)
    await controllers["n1"].reconcile(vm.id)
    return vm


async def migrate_task(
    db: FakeConfigDB, vm: VM, *, resumed: bool = False, **params: Any
) -> TaskContext:
    task = new_task(
        TaskKind.vm_migrate, "n1", vm.id, "tester", MigrateParams(target="n2", **params)
    )
    await db.create(keys.task(task.id), task)
    return TaskContext(db, task, resumed)  # type: ignore[arg-type]


async def record(db: FakeConfigDB, vm_id: str) -> Migration | None:
    entry = await db.get(Migration, keys.migration(vm_id))
    return entry.value if entry else None


def actions(controller: VMController, vm_id: str) -> list[str]:
    journal = fake_qemu.read_journal(controller.paths(vm_id).root)
    return [c["execute"] for c in journal if not c["execute"].startswith("query-")]


class Target:
    """Node n2's side of a migration, played through the record as its agent writes it."""

    def __init__(self, db: FakeConfigDB, vm_id: str):
        self.db = db
        self.vm_id = vm_id
        self.answered_at = 0  # the revision of this side's answer
        self.last: Migration | None = None

    async def prepare(
        self, outcome: MigrationState, error: str = "", nbd: str | None = None
    ) -> None:
        """Answer the source's request: ready (listening, and serving its disks over NBD
        when it has some to receive), or failed."""

        async def asked() -> Migration | None:  # n2's: not one to another node left behind
            found = await record(self.db, self.vm_id)
            return found if found is not None and found.target == "n2" else None

        await until(asked, "the migration record")
        uri = "tcp:127.0.0.1:1" if outcome == MigrationState.ready else None
        changes = {"state": outcome, "uri": uri, "error": error, "nbd": nbd}

        def answer(found: Migration) -> Migration:
            return found.model_copy(update=changes)

        entry = await self.db.update(Migration, keys.migration(self.vm_id), answer)
        self.answered_at = entry.revision

    async def close(self) -> None:
        """Wait for the source's verdict (written after this side's answer), then end the
        move as the target does: by removing the record."""

        async def verdict() -> Migration | None:
            entry = await self.db.get(Migration, keys.migration(self.vm_id))
            done = (MigrationState.completed, MigrationState.failed)
            if entry is None or entry.revision <= self.answered_at:
                return None
            return entry.value if entry.value.state in done else None

        self.last = await until(verdict, "the source's verdict")
        await self.db.delete(keys.migration(self.vm_id))


async def play(
    target: Target, outcome: MigrationState, error: str = "", nbd: str | None = None
) -> None:
    await target.prepare(outcome, error, nbd)
    await target.close()


# -- refused before anything starts ----------------------------------------------------------


async def test_a_vm_that_does_not_run_is_not_moved(
    db: FakeConfigDB, controllers: dict[str, VMController], source: Migrations
) -> None:
    vm = VM(id=new_id(), spec=VMSpec(name="off"), node="n1", created_at=1.0)
    await db.put(keys.vm(vm.id), vm)
    with pytest.raises(TaskFailed, match="the VM is not running"):
        await source.migrate(await migrate_task(db, vm))
    assert await record(db, vm.id) is None
    assert [t.value.kind for t in await db.list(Task, keys.TASKS)] == ["vm.migrate"]


async def test_one_migration_of_a_vm_at_a_time(
    db: FakeConfigDB, controllers: dict[str, VMController], source: Migrations
) -> None:
    vm = await running_vm(db, controllers)
    other = Migration(vm=vm.id, source="n1", target="n3", created_at=1.0)
    await db.put(keys.migration(vm.id), other)
    with pytest.raises(TaskFailed, match="another migration of this VM is in progress"):
        await source.migrate(await migrate_task(db, vm))
    assert await record(db, vm.id) == other
    assert [t.value.kind for t in await db.list(Task, keys.TASKS)] == ["vm.migrate"]
    assert actions(controllers["n1"], vm.id) == []  # QEMU was not touched


# -- undone: the VM stays on the source -----------------------------------------------------


async def give_up(target: Target, error: str) -> None:
    """A target that failed and cleaned up before the source looked: the record is gone (its
    `failed` state in between is not seen, which this makes certain)."""
    await until(lambda: record(target.db, target.vm_id), "the migration record")
    await target.db.delete(keys.migration(target.vm_id))


@pytest.mark.parametrize(
    ("gives_up_at_once", "reason"),
    [
        (False, "the target could not prepare: no room for 512 MiB"),
        (True, r"the target gave up preparing \(see its vm.receive task\)"),
    ],
)
async def test_a_target_that_cannot_prepare_leaves_the_vm_running_here(
    db: FakeConfigDB,
    controllers: dict[str, VMController],
    source: Migrations,
    gives_up_at_once: bool,
    reason: str,
) -> None:
    vm = await running_vm(db, controllers)
    target = Target(db, vm.id)
    error = "no room for 512 MiB"
    failing = MigrationState.failed
    side = give_up(target, error) if gives_up_at_once else play(target, failing, error)
    playing = asyncio.create_task(side)
    with pytest.raises(TaskFailed, match=reason):
        await source.migrate(await migrate_task(db, vm))
    await asyncio.wait_for(playing, 10)

    receive = [t.value for t in await db.list(Task, keys.TASKS) if t.value.kind == "vm.receive"]
    assert [(t.node, t.target) for t in receive] == [("n2", vm.id)]
    assert "migrate" not in actions(controllers["n1"], vm.id)
    assert actions(controllers["n1"], vm.id)[-1] == "migrate_cancel"
    await stays_on_the_source(db, controllers, vm)


async def test_a_target_that_leaves_the_cluster_is_not_waited_for(
    db: FakeConfigDB, controllers: dict[str, VMController], source: Migrations
) -> None:
    """A target whose lease ran out (its agent stopped or cut off) cannot answer: the move
    fails as soon as its node record is gone, not after the whole preparation deadline."""
    vm = await running_vm(db, controllers)
    await db.delete(keys.node("n2"))
    ctx = await migrate_task(db, vm)
    with pytest.raises(TaskFailed, match="no answer from node n2: it is no longer in the cluster"):
        await asyncio.wait_for(source.migrate(ctx), 10)
    entry = await db.get(VM, keys.vm(vm.id))
    assert entry is not None and entry.value.node == "n1"
    assert await controllers["n1"].runtime(vm.id).qemu.run_state() == "running"
    # Its QEMU cancelled and nothing left to hand back, the source closes the record the
    # gone target would have closed (a target that returns drops its side): the VM can move.
    assert await record(db, vm.id) is None
    task = await db.get(Task, keys.task(ctx.task.id))
    assert task is not None
    assert any("closed the migration record" in line for line in task.value.log)


async def test_a_record_left_by_a_target_that_never_came_back_is_closed_by_the_next_move(
    db: FakeConfigDB, controllers: dict[str, VMController], source: Migrations
) -> None:
    """A failed move to n3, which left the cluster without closing it (the record an older
    release's source left standing): a drain's or DRS's next move closes it and goes on."""
    vm = await running_vm(db, controllers)
    left = Migration(vm=vm.id, source="n1", target="n3", state=MigrationState.failed,
                     receive_task="old", created_at=1.0)  # fmt: skip
    await db.put(keys.migration(vm.id), left)
    target = Target(db, vm.id)
    playing = asyncio.create_task(play(target, MigrationState.ready))
    result = await source.migrate(await migrate_task(db, vm))
    await asyncio.wait_for(playing, 10)
    assert result["node"] == "n2" and target.last is not None
    assert target.last.target == "n2" and target.last.state == MigrationState.completed


async def test_a_record_whose_source_task_still_runs_is_not_taken_over(
    db: FakeConfigDB, controllers: dict[str, VMController], source: Migrations
) -> None:
    """The source's task of the failed move has not ended (its agent is away): it may still
    be sending, so the record stays, and the refusal says what ends it."""
    vm = await running_vm(db, controllers)
    left = Migration(vm=vm.id, source="n1", target="n3", state=MigrationState.failed,
                     created_at=1.0)  # fmt: skip
    await db.put(keys.migration(vm.id), left)
    await migrate_task(db, vm)  # queued, as if its node had not got to it
    with pytest.raises(TaskFailed, match="the migrate task on node n1 has not ended"):
        await source.migrate(await migrate_task(db, vm))
    assert await record(db, vm.id) == left


async def test_a_transfer_qemu_fails_is_undone(
    db: FakeConfigDB,
    controllers: dict[str, VMController],
    source: Migrations,
    script: fake_qemu.Script,
) -> None:
    script.set(
        migration=[
            {"status": "active", "ram": {"total": 1000, "transferred": 100}},
            {"status": "failed", "error-desc": "Unable to write to socket: Broken pipe"},
        ]
    )
    vm = await running_vm(db, controllers)
    target = Target(db, vm.id)
    playing = asyncio.create_task(play(target, MigrationState.ready))
    with pytest.raises(TaskFailed, match="QEMU migration failed: Unable to write to socket"):
        await source.migrate(await migrate_task(db, vm, max_downtime_ms=150))
    await asyncio.wait_for(playing, 10)

    assert target.last is not None
    assert (target.last.state, target.last.max_downtime_ms) == (MigrationState.failed, 150)
    assert "Broken pipe" in target.last.error  # the target learns why, and drops its side
    assert actions(controllers["n1"], vm.id) == [
        "migrate-set-capabilities",
        "migrate-set-parameters",
        "migrate",
        "migrate_cancel",
    ]
    await stays_on_the_source(db, controllers, vm)


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        # etcd out of reach while progress is told: the send goes on, to QEMU's own end.
        (aetcd.exceptions.ConnectionFailedError("Stream removed"), TaskFailed),
        # Anything else unforeseen: the move is undone all the same, then the error raised.
        (RuntimeError("unforeseen"), RuntimeError),
    ],
)
async def test_an_error_while_the_memory_is_sent_never_leaves_the_move_half_done(
    db: FakeConfigDB,
    controllers: dict[str, VMController],
    source: Migrations,
    script: fake_qemu.Script,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    raised: type[Exception],
) -> None:
    script.set(
        migration=[
            {"status": "active", "ram": {"total": 1000, "transferred": 100}},
            {"status": "failed", "error-desc": "Unable to write to socket: Broken pipe"},
        ]
    )
    told = TaskContext.progress

    async def progress(self: TaskContext, fraction: float, message: str | None = None) -> None:
        if fraction > 0.01:  # the transfer's
            raise error
        await told(self, fraction, message)

    monkeypatch.setattr(TaskContext, "progress", progress)
    vm = await running_vm(db, controllers)
    target = Target(db, vm.id)
    playing = asyncio.create_task(play(target, MigrationState.ready))
    with pytest.raises(raised):
        await source.migrate(await migrate_task(db, vm))
    await asyncio.wait_for(playing, 10)
    assert target.last is not None and target.last.state == MigrationState.failed
    assert actions(controllers["n1"], vm.id)[-1] == "migrate_cancel"
    await stays_on_the_source(db, controllers, vm)


async def test_a_cancel_before_the_transfer_undoes_the_move(
    db: FakeConfigDB, controllers: dict[str, VMController], source: Migrations
) -> None:
    vm = await running_vm(db, controllers)
    ctx = await migrate_task(db, vm)

    def cancel(task: Task) -> Task:
        task.cancel_requested = True
        return task

    await db.update(Task, keys.task(ctx.task.id), cancel)
    target = Target(db, vm.id)
    playing = asyncio.create_task(play(target, MigrationState.ready))
    with pytest.raises(TaskCancelled):
        await source.migrate(ctx)
    await asyncio.wait_for(playing, 10)
    assert target.last is not None
    assert (target.last.state, target.last.error) == (MigrationState.failed, "cancelled")
    assert "migrate" not in actions(controllers["n1"], vm.id)
    await stays_on_the_source(db, controllers, vm)


async def test_a_resumed_migration_that_had_not_reached_the_transfer_is_undone(
    db: FakeConfigDB, controllers: dict[str, VMController], source: Migrations
) -> None:
    vm = await running_vm(db, controllers)
    # The agent died while the target prepared; QEMU never began to send.
    cut_off = Migration(vm=vm.id, source="n1", target="n2", created_at=1.0)
    await db.put(keys.migration(vm.id), cut_off)
    target = Target(db, vm.id)
    closing = asyncio.create_task(target.close())
    with pytest.raises(TaskFailed, match="cut off by an agent restart before the memory"):
        await source.migrate(await migrate_task(db, vm, resumed=True))
    await asyncio.wait_for(closing, 10)
    assert target.last is not None and target.last.state == MigrationState.failed
    await stays_on_the_source(db, controllers, vm)


async def test_a_disk_copy_that_stops_before_it_is_in_sync_undoes_the_move(
    db: FakeConfigDB, controllers: dict[str, VMController], source: Migrations
) -> None:
    # A disk on n1's own pool: it must be copied (mirrored) to the target before the memory.
    await db.put(keys.pool("local"), Pool(name="local", created_at=1.0))
    volume = Volume(
        id=new_id(), pool="local", name="root", format=VolumeFormat.qcow2, size=1 << 20,
        node="n1", state="ready", created_at=1.0,
    )  # fmt: skip
    await db.put(keys.volume(volume.id), volume)
    spec = VMSpec(name="web", disks=[DiskSpec(volume=volume.id)])
    vm = VM(id=new_id(), spec=spec, node="n1", power=PowerState.running, created_at=1.0)
    await db.put(keys.vm(vm.id), vm)
    await controllers["n1"].reconcile(vm.id)

    target = Target(db, vm.id)
    playing = asyncio.create_task(play(target, MigrationState.ready, nbd="127.0.0.1:10809"))
    # The fake QEMU lists no block job: the mirror it was asked for is gone at once.
    with pytest.raises(TaskFailed, match="disk copy mirror0 stopped before it was in sync"):
        await source.migrate(await migrate_task(db, vm))
    await asyncio.wait_for(playing, 10)

    assert target.last is not None and target.last.mirror == [0]
    assert actions(controllers["n1"], vm.id) == [
        "blockdev-add",
        "blockdev-mirror",
        "migrate_cancel",
        "block-job-cancel",
    ]
    kept = await db.get(Volume, keys.volume(volume.id))
    assert kept is not None and kept.value.node == "n1"  # the disk stays with the VM
    await stays_on_the_source(db, controllers, vm)


async def stays_on_the_source(
    db: FakeConfigDB, controllers: dict[str, VMController], vm: VM
) -> None:
    entry = await db.get(VM, keys.vm(vm.id))
    assert entry is not None
    assert (entry.value.node, entry.value.generation) == ("n1", vm.generation)
    assert controllers["n1"].runtime(vm.id).qemu.running()
    assert await controllers["n1"].runtime(vm.id).qemu.run_state() == "running"
    assert await record(db, vm.id) is None  # the next migration may begin


# -- carried through: the guest already runs on the target ----------------------------------


async def test_qemu_finishing_despite_an_error_is_never_undone(
    db: FakeConfigDB,
    controllers: dict[str, VMController],
    source: Migrations,
    script: fake_qemu.Script,
) -> None:
    script.set(
        errors={"migrate-continue": "migrate-continue: state pre-switchover is not current"},
        migration=[
            {"status": "pre-switchover"},
            {"status": "pre-switchover"},  # asked again after the error: still there...
            {"status": "completed", "downtime": 42, "ram": {"total": 1, "transferred": 1}},
        ],
    )
    vm = await running_vm(db, controllers)
    ctx = await migrate_task(db, vm)
    target = Target(db, vm.id)
    playing = asyncio.create_task(play(target, MigrationState.ready))
    result = await source.migrate(ctx)
    await asyncio.wait_for(playing, 10)

    assert (result["node"], result["downtime_ms"]) == ("n2", 42)
    assert any("QEMU completed the migration despite an error" in line for line in ctx.task.log)
    assert target.last is not None
    assert (target.last.state, target.last.downtime_ms) == (MigrationState.completed, 42)
    await moved_to_the_target(db, controllers, vm)


async def test_a_resumed_migration_qemu_finished_meanwhile_is_completed(
    db: FakeConfigDB,
    controllers: dict[str, VMController],
    source: Migrations,
    script: fake_qemu.Script,
) -> None:
    # QEMU carried on sending while the agent was down, and is done by the time it is back.
    script.set(migrating=True, migration=[{"status": "completed", "downtime": 7, "ram": {}}])
    vm = await running_vm(db, controllers)
    running = Migration(
        vm=vm.id, source="n1", target="n2", state=MigrationState.running, created_at=1.0
    )
    await db.put(keys.migration(vm.id), running)
    target = Target(db, vm.id)
    closing = asyncio.create_task(target.close())
    result = await source.migrate(await migrate_task(db, vm, resumed=True))
    await asyncio.wait_for(closing, 10)
    assert (result["node"], result["downtime_ms"]) == ("n2", 7)
    assert "migrate" not in actions(controllers["n1"], vm.id)  # not sent a second time
    await moved_to_the_target(db, controllers, vm)


async def moved_to_the_target(
    db: FakeConfigDB, controllers: dict[str, VMController], vm: VM
) -> None:
    entry = await db.get(VM, keys.vm(vm.id))
    assert entry is not None
    assert (entry.value.node, entry.value.generation) == ("n2", vm.generation + 1)
    assert not controllers["n1"].runtime(vm.id).qemu.running()  # handed over, not crashed
    assert not controllers["n1"].paths(vm.id).root.exists()


# -- the target's side -----------------------------------------------------------------------


async def test_a_target_whose_qemu_cannot_listen_drops_everything_at_once(
    db: FakeConfigDB, controllers: dict[str, VMController], script: fake_qemu.Script
) -> None:
    vm = VM(
        id=new_id(), spec=VMSpec(name="web"), node="n1", power=PowerState.running, created_at=1.0
    )
    await db.put(keys.vm(vm.id), vm)
    asked = Migration(vm=vm.id, source="n1", target="n2", ram_kib=524288, created_at=1.0)
    await db.put(keys.migration(vm.id), asked)
    script.set(errors={"migrate-incoming": "Failed to bind socket: Address already in use"})
    receiving = Migrations(db, "n2", "127.0.0.1", controllers["n2"])  # type: ignore[arg-type]
    task = new_task(TaskKind.vm_receive, "n2", vm.id, "tester")
    await db.create(keys.task(task.id), task)

    with pytest.raises(TaskFailed, match="Failed to bind socket"):
        await receiving.receive(TaskContext(db, task))  # type: ignore[arg-type]

    # Its incoming QEMU was started and is gone again, with its runtime directory...
    target_vm = controllers["n2"].runtime(vm.id)
    assert not target_vm.qemu.running()
    assert not controllers["n2"].paths(vm.id).root.exists()
    # ...and the record too, so the source stops waiting and may try again.
    assert await record(db, vm.id) is None
    entry = await db.get(VM, keys.vm(vm.id))
    assert entry is not None and entry.value.node == "n1"


async def receiving_vm(db: FakeConfigDB) -> tuple[VM, Migration, Task]:
    """A VM on n1 whose move to n2 is being prepared: the record and n2's vm.receive task."""
    vm = VM(
        id=new_id(), spec=VMSpec(name="web"), node="n1", power=PowerState.running, created_at=1.0
    )
    await db.put(keys.vm(vm.id), vm)
    await db.put(keys.node("n1"), registered("n1"))
    task = new_task(TaskKind.vm_receive, "n2", vm.id, "tester")
    await db.create(keys.task(task.id), task)
    asked = Migration(vm=vm.id, source="n1", target="n2", ram_kib=524288,
                      receive_task=task.id, created_at=1.0)  # fmt: skip
    await db.put(keys.migration(vm.id), asked)
    return vm, asked, task


async def test_a_target_whose_move_was_closed_without_it_drops_its_side(
    db: FakeConfigDB, controllers: dict[str, VMController]
) -> None:
    """n2 was away while its move was taken over, and the VM's next move (to n2 again) was
    asked for: the old vm.receive neither acts on that record nor removes it, and stops the
    incoming QEMU it had started."""
    vm, _, task = await receiving_vm(db)
    receiving = Migrations(db, "n2", "127.0.0.1", controllers["n2"])  # type: ignore[arg-type]
    old = asyncio.create_task(receiving.receive(TaskContext(db, task)))  # type: ignore[arg-type]
    ready = await until(
        lambda: _state_is(db, vm.id, MigrationState.ready), "the target to be ready"
    )
    assert ready and controllers["n2"].runtime(vm.id).qemu.running()
    next_move = Migration(vm=vm.id, source="n1", target="n2", receive_task="next",
                          created_at=2.0)  # fmt: skip
    await db.put(keys.migration(vm.id), next_move)  # closed, and the next one written

    with pytest.raises(TaskFailed, match="closed without this node"):
        await asyncio.wait_for(old, 10)
    assert not controllers["n2"].runtime(vm.id).qemu.running()
    assert not controllers["n2"].paths(vm.id).root.exists()
    assert await record(db, vm.id) == next_move  # untouched: not its own
    entry = await db.get(VM, keys.vm(vm.id))
    assert entry is not None and entry.value.node == "n1"


async def test_a_target_back_from_a_restart_does_not_prepare_a_move_not_its_own(
    db: FakeConfigDB, controllers: dict[str, VMController]
) -> None:
    """Its agent restarted; the record now is another move to this node (its receive task
    came first or comes later): the old task starts nothing and leaves the record alone."""
    vm, asked, task = await receiving_vm(db)
    next_move = asked.model_copy(update={"receive_task": "next"})
    await db.put(keys.migration(vm.id), next_move)
    receiving = Migrations(db, "n2", "127.0.0.1", controllers["n2"])  # type: ignore[arg-type]
    result = await receiving.receive(TaskContext(db, task, resumed=True))  # type: ignore[arg-type]
    assert result == {"skipped": "no migration to this node"}
    assert not controllers["n2"].runtime(vm.id).qemu.running()
    assert await record(db, vm.id) == next_move


async def _state_is(db: FakeConfigDB, vm_id: str, state: MigrationState) -> bool:
    found = await record(db, vm_id)
    return found is not None and found.state == state


async def _receiving_and_ready(
    db: FakeConfigDB, controllers: dict[str, VMController]
) -> tuple[VM, Task, asyncio.Task[Any]]:
    """n2 receiving the move, ready, and n1's migrate task sending (as the record says)."""
    vm, _, task = await receiving_vm(db)
    sending = new_task(TaskKind.vm_migrate, "n1", vm.id, "tester", MigrateParams(target="n2"))
    await db.create(keys.task(sending.id), sending)
    receiving = Migrations(db, "n2", "127.0.0.1", controllers["n2"])  # type: ignore[arg-type]
    running = asyncio.create_task(receiving.receive(TaskContext(db, task)))  # type: ignore[arg-type]
    assert await until(lambda: _state_is(db, vm.id, MigrationState.ready), "the target ready")
    await db.update(
        Migration,
        keys.migration(vm.id),
        lambda r: r.model_copy(update={"state": MigrationState.running}),
    )
    return vm, sending, running


async def test_a_target_gives_up_a_move_whose_vm_ha_placed_elsewhere(
    db: FakeConfigDB, controllers: dict[str, VMController]
) -> None:
    """The source was cut off mid-move and fenced, and HA restarted the VM on n3, while the
    source's lease came back: no verdict will ever come, so n2 fails the move at once."""
    vm, _, running = await _receiving_and_ready(db, controllers)
    await db.update(VM, keys.vm(vm.id), lambda v: v.model_copy(update={"node": "n3"}))

    with pytest.raises(TaskFailed, match="placed on n3 meanwhile"):
        await asyncio.wait_for(running, 10)
    assert not controllers["n2"].runtime(vm.id).qemu.running()
    assert await record(db, vm.id) is None


async def test_a_target_gives_up_when_the_source_task_ended_without_a_verdict(
    db: FakeConfigDB, controllers: dict[str, VMController], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source's task failed while the ConfigDB could not be reached, so the record
    still says running: once no migrate task of the VM runs on the source, n2 fails it."""
    monkeypatch.setattr("heron.agent.migration.SOURCE_CHECK", 0.0)
    vm, sending, running = await _receiving_and_ready(db, controllers)
    await asyncio.sleep(0)  # let the target look once while the source's task runs
    assert not running.done()
    await db.update(
        Task, keys.task(sending.id), lambda t: t.model_copy(update={"state": TaskState.failed})
    )

    with pytest.raises(TaskFailed, match="ended without a verdict"):
        await asyncio.wait_for(running, 10)
    assert not controllers["n2"].runtime(vm.id).qemu.running()
    assert await record(db, vm.id) is None


# -- TLS: who decides, and what an older node gets ------------------------------------------


def test_the_target_says_tls_by_the_scheme_of_its_uri() -> None:
    assert tls_uri("tls+tcp:10.0.0.2:4444") == ("tcp:10.0.0.2:4444", True)
    assert tls_uri("tcp:10.0.0.2:4444") == ("tcp:10.0.0.2:4444", False)


async def test_a_target_listens_with_tls_only_for_a_source_that_can(
    db: FakeConfigDB, controllers: dict[str, VMController], tmp_path: Path
) -> None:
    now = time.time()
    authority = make_authority("c", now)
    credentials = NodeCredentials(tmp_path / "tls")
    credentials.write(issue(authority, ["n2"], now), authority.certificate)
    target = Migrations(db, "n2", "127.0.0.1", controllers["n2"], None, credentials)  # type: ignore[arg-type]
    older = registered("n1")
    await db.put(keys.node("n1"), older)
    assert not await target._tls_with("n1")  # a release before the feature: plain
    await db.put(keys.node("n1"), older.model_copy(update={"features": [MIGRATION_TLS]}))
    assert await target._tls_with("n1")
    assert not await target._tls_with("gone")  # no record: no TLS it could not verify
    # A node without its certificate (none issued yet) does not ask for TLS.
    plain = Migrations(db, "n2", "127.0.0.1", controllers["n2"])  # type: ignore[arg-type]
    assert not await plain._tls_with("n1")
