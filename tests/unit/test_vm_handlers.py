"""The VM task handlers on the fakes: what each leaves behind, and a repeat after a crash."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fakes import qemu as fake_qemu
from fakes.configdb import FakeConfigDB
from fakes.running import fake_qemu_on_path, stop_agent

from heron.agent.handlers import Handlers
from heron.agent.migration import Migrations
from heron.agent.tasks import TaskContext, TaskFailed
from heron.agent.vms import VMController
from heron.configdb import Txn, keys
from heron.models.common import new_id
from heron.models.task import TaskKind, new_task
from heron.models.vm import VM, PowerState, RunState, VMSpec


@pytest.fixture
async def vms(
    db: FakeConfigDB, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[VMController]:
    fake_qemu_on_path(tmp_path, monkeypatch)
    controller = VMController(db, "n1", state_dir, "tcg")  # type: ignore[arg-type]
    yield controller
    await stop_agent(controller)


@pytest.fixture
def handlers(db: FakeConfigDB, state_dir: Path, vms: VMController) -> Handlers:
    migrations = Migrations(db, "n1", "127.0.0.1", vms)  # type: ignore[arg-type]
    return Handlers(db, "n1", state_dir, vms, migrations)  # type: ignore[arg-type]


async def created(db: FakeConfigDB, power: PowerState = PowerState.running) -> VM:
    """A VM as the API creates it: the record and its name's index, in one transaction."""
    vm = VM(id=new_id(), spec=VMSpec(name="web"), node="n1", power=power, created_at=1.0)
    await db.commit(
        Txn()
        .require_absent(keys.vm_name("web"))
        .put(keys.vm_name("web"), vm.id)
        .put(keys.vm(vm.id), vm)
    )
    return vm


async def context(db: FakeConfigDB, kind: TaskKind, vm: VM) -> TaskContext:
    task = new_task(kind, "n1", vm.id, "tester")
    await db.create(keys.task(task.id), task)
    return TaskContext(db, task)  # type: ignore[arg-type]


async def test_delete_deletes_the_memory_states_of_its_snapshots(
    db: FakeConfigDB, handlers: Handlers, state_dir: Path
) -> None:
    from heron.models.snapshot import Snapshot
    from heron.models.storage import Pool, StateOf, Volume, VolumeFormat
    from heron.storage.dirpool import DirPool

    vm = await created(db, PowerState.stopped)
    local = Pool(name="local", type="dir", created_at=1)
    state = Volume(id=new_id(), pool="local", name="web-mem-s0123456789ab", node="n1",
                   format=VolumeFormat.qcow2, size=1, state="ready", created_at=1,
                   state_of=StateOf(vm=vm.id, snapshot="s0123456789ab"))  # fmt: skip
    taken = Snapshot(id="s0123456789ab", vm=vm.id, name="warm", created_at=1, memory=True,
                     state_pool="local", state_volume=state.id, state="ready")  # fmt: skip
    image = DirPool(local, state_dir).path(state)
    image.parent.mkdir(parents=True)
    image.write_bytes(b"QFI")
    await db.commit(
        Txn()
        .put(keys.pool("local"), local)
        .put(keys.volume(state.id), state)
        .put(keys.volume_name("local", state.name), state.id)
        .put(keys.snapshot(vm.id, taken.id), taken)
    )
    result = await handlers.vm_delete(await context(db, TaskKind.vm_delete, vm))
    assert result["memory_states"] == [state.name]
    assert not image.exists()
    left = await db.dump("/heron/")
    assert [k for k in left if state.id in k or state.name in k or vm.id in k] == []


async def test_create_starts_the_vm(
    db: FakeConfigDB, handlers: Handlers, vms: VMController
) -> None:
    vm = await created(db)
    result = await handlers.vm_create(await context(db, TaskKind.vm_create, vm))
    assert result == {"vm": vm.id, "state": RunState.running.value}
    assert vms.runtime(vm.id).qemu.running()


async def test_delete_stops_qemu_and_removes_every_record_of_the_vm(
    db: FakeConfigDB, handlers: Handlers, vms: VMController
) -> None:
    vm = await created(db)
    await vms.reconcile(vm.id)
    ctx = await context(db, TaskKind.vm_delete, vm)
    before = await db.revision()
    assert await handlers.vm_delete(ctx) == {"deleted": vm.id, "volumes": [], "memory_states": []}
    assert not vms.runtime(vm.id).qemu.running()
    assert not vms.paths(vm.id).root.exists()
    left = await db.dump("/heron/")
    assert [k for k in left if vm.id in k or k == keys.vm_name("web")] == []
    assert "QEMU stopped" in ctx.task.log
    # The VM, its name and its status went in one revision: no reader sees half a VM.
    assert await db.revision() == before + 2  # the task's own progress write, then that


async def test_delete_repeated_after_a_crash_finds_nothing_left_to_do(
    db: FakeConfigDB, handlers: Handlers
) -> None:
    vm = await created(db)
    first = await handlers.vm_delete(await context(db, TaskKind.vm_delete, vm))
    again = await handlers.vm_delete(await context(db, TaskKind.vm_delete, vm))
    assert first["deleted"] == again["deleted"] == vm.id
    assert "volumes" not in again  # it saw the record gone, and touched nothing


async def test_reboot(db: FakeConfigDB, handlers: Handlers, vms: VMController) -> None:
    vm = await created(db)
    with pytest.raises(TaskFailed, match="the VM is not running"):
        await handlers.vm_reboot(await context(db, TaskKind.vm_reboot, vm))
    await vms.reconcile(vm.id)
    result = await handlers.vm_reboot(await context(db, TaskKind.vm_reboot, vm))
    assert result == {"state": RunState.running.value}
    sent = [c["execute"] for c in fake_qemu.read_journal(vms.paths(vm.id).root)]
    assert "system_reset" in sent
