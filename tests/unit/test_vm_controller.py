"""The VM controller's branches on the fakes: a fake QEMU (tests/fakes/qemu.py) launched from
PATH in place of qemu-system-x86_64, and the in-memory ConfigDB. The real QEMU runs the same
paths in tests/integration/test_lifecycle.py."""

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fakes import qemu as fake_qemu
from fakes.configdb import FakeConfigDB
from fakes.running import (
    kill_fakes_under,
    stop_agent,
    until,
)

from heron.agent.handlers import Handlers
from heron.agent.migration import Migrations
from heron.agent.tasks import TaskRunner
from heron.agent.vms import VMController
from heron.configdb import keys
from heron.hypervisor.qemu import QemuError
from heron.models.common import new_id
from heron.models.task import Task, TaskKind, TaskState, new_task
from heron.models.vm import VM, PowerState, RunState, VMSpec, VMStatus


@pytest.fixture
async def agents(
    db: FakeConfigDB, state_dir: Path, script: fake_qemu.Script
) -> AsyncIterator[list[VMController]]:
    """The controllers a test makes (agent restarts make several); cleared away after it."""
    made: list[VMController] = []
    yield made
    for controller in made:
        await stop_agent(controller)
    kill_fakes_under(state_dir)


@pytest.fixture
def agent(agents: list[VMController], db: FakeConfigDB, state_dir: Path) -> VMController:
    return restart(agents, db, state_dir)


def restart(agents: list[VMController], db: FakeConfigDB, state_dir: Path) -> VMController:
    """A (new) agent on node n1: the same state directory, nothing else carried over."""
    controller = VMController(db, "n1", state_dir, "tcg")  # type: ignore[arg-type]
    agents.append(controller)
    return controller


async def new_vm(db: FakeConfigDB, power: PowerState = PowerState.running) -> VM:
    vm = VM(id=new_id(), spec=VMSpec(name="web"), node="n1", power=power, created_at=1.0)
    await db.put(keys.vm(vm.id), vm)
    return vm


async def want(db: FakeConfigDB, vm_id: str, power: PowerState) -> None:
    def change(vm: VM) -> VM:
        vm.power = power
        vm.generation += 1
        return vm

    await db.update(VM, keys.vm(vm_id), change)


async def maybe_status(db: FakeConfigDB, vm_id: str) -> VMStatus | None:
    entry = await db.get(VMStatus, keys.vm_status(vm_id))
    return entry.value if entry else None


async def status(db: FakeConfigDB, vm_id: str) -> VMStatus:
    current = await maybe_status(db, vm_id)
    assert current is not None, f"no status of VM {vm_id}"
    return current


async def reported(db: FakeConfigDB, vm_id: str, state: RunState) -> VMStatus:
    async def seen() -> VMStatus | None:
        current = await maybe_status(db, vm_id)
        return current if current is not None and current.state == state else None

    return await until(seen, f"VM {vm_id} reported {state}")


def commands(agent: VMController, vm_id: str) -> list[str]:
    return [c["execute"] for c in fake_qemu.read_journal(agent.paths(vm_id).root)]


def actions(agent: VMController, vm_id: str) -> list[str]:
    """The commands that change something (the monitor's queries come in between)."""
    return [c for c in commands(agent, vm_id) if not c.startswith("query-")]


def qemu_pid(agent: VMController, vm_id: str) -> int:
    pid = agent.runtime(vm_id).qemu.pid()
    assert pid is not None, "no QEMU runs"
    return pid


# -- start and power changes ------------------------------------------------------------


async def test_start_launches_qemu_and_reports_it_running(
    agent: VMController, db: FakeConfigDB
) -> None:
    vm = await new_vm(db)
    assert await agent.reconcile(vm.id) == RunState.running
    current = await status(db, vm.id)
    assert (current.state, current.pid, current.vnc, current.accelerator) == (
        RunState.running,
        qemu_pid(agent, vm.id),
        "127.0.0.1:5900",
        "tcg",
    )
    assert current.observed_generation == vm.generation
    assert "HERON-GUEST-READY" in agent.paths(vm.id).console_log.read_text()

    # Nothing changed: a second pass launches nothing and writes nothing.
    before = await db.revision()
    assert await agent.reconcile(vm.id) == RunState.running
    assert await db.revision() == before
    assert agent.runtime(vm.id).qemu.pid() == current.pid


async def test_a_vm_wanted_paused_starts_without_running_a_cycle(
    agent: VMController, db: FakeConfigDB
) -> None:
    vm = await new_vm(db, PowerState.paused)
    assert await agent.reconcile(vm.id) == RunState.paused
    assert (await status(db, vm.id)).state == RunState.paused
    # Started with -S: the guest never ran a cycle.
    assert not agent.paths(vm.id).console_log.exists()
    assert actions(agent, vm.id) == []


async def test_resuming_a_vm_that_started_paused_boots_it(
    agent: VMController, db: FakeConfigDB
) -> None:
    vm = await new_vm(db, PowerState.paused)
    await agent.reconcile(vm.id)
    await want(db, vm.id, PowerState.running)
    assert await agent.reconcile(vm.id) == RunState.running
    assert actions(agent, vm.id) == ["cont"]
    assert "HERON-GUEST-READY" in agent.paths(vm.id).console_log.read_text()


async def test_pause_and_resume_of_a_running_vm(agent: VMController, db: FakeConfigDB) -> None:
    vm = await new_vm(db)
    await agent.reconcile(vm.id)
    await want(db, vm.id, PowerState.paused)
    assert await agent.reconcile(vm.id) == RunState.paused
    assert actions(agent, vm.id) == ["stop"]
    assert (await status(db, vm.id)).state == RunState.paused
    await want(db, vm.id, PowerState.running)
    assert await agent.reconcile(vm.id) == RunState.running
    assert actions(agent, vm.id) == ["stop", "cont"]
    assert (await status(db, vm.id)).state == RunState.running


async def test_a_graceful_stop_of_a_paused_vm_lets_it_run_to_see_the_button(
    agent: VMController, db: FakeConfigDB
) -> None:
    vm = await new_vm(db)
    await agent.reconcile(vm.id)
    await want(db, vm.id, PowerState.paused)
    await agent.reconcile(vm.id)
    await want(db, vm.id, PowerState.stopped)
    assert await agent.reconcile(vm.id) == RunState.shutoff
    # ...and nothing was forced: no quit, the guest went by itself.
    assert actions(agent, vm.id) == ["stop", "cont", "system_powerdown"]
    assert not agent.runtime(vm.id).qemu.running()
    current = await status(db, vm.id)
    assert (current.state, current.pid, current.message) == (RunState.shutoff, None, "")


async def test_a_guest_that_ignores_the_power_button_is_stopped_by_force(
    agent: VMController, db: FakeConfigDB, script: fake_qemu.Script
) -> None:
    vm = await new_vm(db)
    await agent.reconcile(vm.id)
    script.set(ignore_powerdown=True)
    await want(db, vm.id, PowerState.stopped)
    assert await agent.reconcile(vm.id, timeout=0.3) == RunState.shutoff
    assert actions(agent, vm.id) == ["system_powerdown", "quit"]
    assert not agent.runtime(vm.id).qemu.running()
    assert (await status(db, vm.id)).state == RunState.shutoff


async def test_a_stop_without_grace_quits_at_once(agent: VMController, db: FakeConfigDB) -> None:
    vm = await new_vm(db)
    await agent.reconcile(vm.id)
    await want(db, vm.id, PowerState.stopped)
    assert await agent.reconcile(vm.id, graceful=False) == RunState.shutoff
    assert actions(agent, vm.id) == ["quit"]


# -- errors -------------------------------------------------------------------------------


async def test_qemu_refusing_to_start_fails_the_task_and_says_why(
    agent: VMController, db: FakeConfigDB, script: fake_qemu.Script, state_dir: Path
) -> None:
    script.set(start_error="could not open disk image: Permission denied")
    vm = await new_vm(db)
    migrations = Migrations(db, "n1", "127.0.0.1", agent)  # type: ignore[arg-type]
    handlers = Handlers(db, "n1", state_dir, agent, migrations)  # type: ignore[arg-type]
    runner = TaskRunner(db, "n1", handlers.table())  # type: ignore[arg-type]
    job = asyncio.create_task(runner.run())
    try:
        task = new_task(TaskKind.vm_start, "n1", vm.id, "tester")
        await db.create(keys.task(task.id), task)

        async def ended() -> Task | None:
            entry = await db.get(Task, keys.task(task.id))
            return entry.value if entry and entry.value.state.finished else None

        done = await until(ended, "the vm.start task to end")
    finally:
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
    expected = (
        "QEMU failed to start (exit 1): "
        "qemu-system-x86_64: could not open disk image: Permission denied"
    )
    assert (done.state, done.error) == (TaskState.failed, expected)
    current = await status(db, vm.id)
    assert (current.state, current.message, current.pid) == (RunState.error, expected, None)
    assert not agent.runtime(vm.id).qemu.running()


async def test_a_qmp_error_reaches_the_caller(
    agent: VMController, db: FakeConfigDB, script: fake_qemu.Script
) -> None:
    vm = await new_vm(db)
    await agent.reconcile(vm.id)
    await want(db, vm.id, PowerState.paused)
    await agent.reconcile(vm.id)
    script.set(errors={"cont": "Resetting the Virtual Machine is required"})
    await want(db, vm.id, PowerState.running)
    with pytest.raises(QemuError, match="cont: Resetting the Virtual Machine is required"):
        await agent.reconcile(vm.id)
    assert (await status(db, vm.id)).state == RunState.paused  # not claimed as running


async def test_qemu_dying_is_reported_as_a_crash(agent: VMController, db: FakeConfigDB) -> None:
    vm = await new_vm(db)
    await agent.reconcile(vm.id)
    os.kill(qemu_pid(agent, vm.id), signal.SIGKILL)
    crashed = await reported(db, vm.id, RunState.crashed)
    assert crashed.message.startswith("QEMU exited unexpectedly")
    assert crashed.pid is None
    entry = await db.get(VM, keys.vm(vm.id))
    assert entry is not None and entry.value.power == PowerState.running  # still wanted


async def test_qemu_dying_during_a_command_is_a_qemu_error_then_a_crash(
    agent: VMController, db: FakeConfigDB, script: fake_qemu.Script
) -> None:
    vm = await new_vm(db)
    await agent.reconcile(vm.id)
    script.set(crash=["system_reset"])
    with pytest.raises(QemuError, match="system_reset"):
        await agent.reboot(vm.id)
    await reported(db, vm.id, RunState.crashed)


async def test_a_guest_that_powers_itself_off_is_stopped_not_crashed(
    agent: VMController, db: FakeConfigDB
) -> None:
    vm = await new_vm(db)
    await agent.reconcile(vm.id)
    # Let the monitor get to listening for events: it is what hears the guest's SHUTDOWN.
    await until(lambda: _listening(agent, vm.id), "the monitor to follow QEMU")
    os.kill(qemu_pid(agent, vm.id), signal.SIGUSR1)
    off = await reported(db, vm.id, RunState.shutoff)
    assert off.message == "shut down from inside the guest"
    entry = await db.get(VM, keys.vm(vm.id))
    assert entry is not None
    assert (entry.value.power, entry.value.generation) == (PowerState.stopped, vm.generation + 1)
    assert off.observed_generation == vm.generation + 1  # nothing left to reconcile


async def _listening(agent: VMController, vm_id: str) -> bool:
    return "query-status" in commands(agent, vm_id)[1:]  # the monitor's own first poll


# -- agent restarts -------------------------------------------------------------------------


async def test_after_a_restart_the_agent_follows_the_qemu_that_still_runs(
    agents: list[VMController], agent: VMController, db: FakeConfigDB, state_dir: Path
) -> None:
    vm = await new_vm(db)
    await agent.reconcile(vm.id)
    pid = qemu_pid(agent, vm.id)
    await stop_agent(agent)  # the old agent is gone (its QEMU is not)

    again = restart(agents, db, state_dir)
    await again.resume()
    assert again.runtime(vm.id).qemu.pid() == pid  # the same QEMU, not a second one
    # The new agent's monitor follows it: a crash now is noticed.
    os.kill(pid, signal.SIGKILL)
    await reported(db, vm.id, RunState.crashed)


async def test_a_qemu_that_died_while_the_agent_was_down_is_reported_crashed(
    agents: list[VMController], agent: VMController, db: FakeConfigDB, state_dir: Path
) -> None:
    vm = await new_vm(db)
    await agent.reconcile(vm.id)
    await stop_agent(agent)  # the agent dies...
    pid = qemu_pid(agent, vm.id)
    os.kill(pid, signal.SIGKILL)  # ...and then its QEMU
    await until(lambda: _gone(agent, vm.id), "QEMU to be gone")

    again = restart(agents, db, state_dir)
    await again.resume()
    current = await status(db, vm.id)
    assert (current.state, current.message) == (
        RunState.crashed,
        "QEMU exited while the agent was down",
    )
    assert not again.runtime(vm.id).qemu.running()  # reported, not restarted behind HA's back


async def test_a_vm_deleted_while_the_agent_was_down_is_cleared_away(
    agents: list[VMController], agent: VMController, db: FakeConfigDB, state_dir: Path
) -> None:
    vm = await new_vm(db)
    await agent.reconcile(vm.id)
    await stop_agent(agent)
    await db.delete(keys.vm(vm.id))

    again = restart(agents, db, state_dir)
    await again.resume()
    assert not again.runtime(vm.id).qemu.running()
    assert not again.paths(vm.id).root.exists()


async def _gone(agent: VMController, vm_id: str) -> bool:
    return not agent.runtime(vm_id).qemu.running()


# -- the guest agent in the status ------------------------------------------------------


async def test_the_status_says_whether_the_guest_agent_answers(
    agent: VMController, db: FakeConfigDB
) -> None:
    plain = await new_vm(db)
    with_agent = VM(
        id=new_id(), spec=VMSpec(name="db", guest_agent=True), node="n1", created_at=1.0
    )
    with_agent.power = PowerState.running
    await db.put(keys.vm(with_agent.id), with_agent)
    assert await agent.reconcile(plain.id) == RunState.running
    assert await agent.reconcile(with_agent.id) == RunState.running

    # The fake QEMU serves no agent socket: the channel is there, nobody answers on it.
    async def probed() -> VMStatus | None:
        current = await status(db, with_agent.id)
        return current if current.guest_agent is not None else None

    assert not (await until(probed, "the agent's state in the status")).guest_agent.connected
    assert (await status(db, plain.id)).guest_agent is None  # no channel in its QEMU
