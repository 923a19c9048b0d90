"""The task runner on a real etcd: claimed once, failures recorded, cancel, retention."""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support import eventually

from heron.agent import tasks as runner_module
from heron.agent.tasks import TaskContext, TaskFailed, TaskRunner
from heron.configdb import ConfigDB, keys
from heron.configdb.etcd import EtcdMember
from heron.models.task import Task, TaskKind, TaskState, new_task
from heron.util.ports import free_ports

# Stand-ins for real kinds: the runner only cares that the table maps them.
WORK, BROKEN, SLOW = TaskKind.volume_create, TaskKind.pool_scan, TaskKind.volume_rebuild


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[ConfigDB]:
    client, peer = free_ports(2)
    member = EtcdMember("e1", tmp_path / "etcd", client, peer)
    member.start()
    await asyncio.to_thread(member.wait_healthy)
    async with ConfigDB([member.endpoint]) as store:
        yield store
    member.stop()


async def _wait_state(db: ConfigDB, task_id: str, timeout: float = 10) -> Task:
    async def finished() -> Task | None:  # polling etcd for the end of the task
        entry = await db.get(Task, keys.task(task_id))
        return entry.value if entry is not None and entry.value.state.finished else None

    return await eventually(finished, timeout, f"task {task_id} to finish", 0.02)


async def test_tasks_run_once_and_record_their_outcome(db: ConfigDB) -> None:
    calls: list[str] = []
    release = asyncio.Event()

    async def work(ctx: TaskContext) -> dict:
        calls.append(ctx.task.id)
        await ctx.progress(0.5, "half way")
        return {"answer": 42}

    async def broken(ctx: TaskContext) -> None:
        raise TaskFailed("the disk is on fire")

    async def slow(ctx: TaskContext) -> None:
        await release.wait()
        await ctx.progress(0.9)  # raises TaskCancelled once cancel was requested

    runner = TaskRunner(db, "n1", {WORK: work, BROKEN: broken, SLOW: slow})
    job = asyncio.create_task(runner.run())
    try:
        ok = new_task(WORK, "n1", "t", "tester")
        elsewhere = new_task(WORK, "n2", "t", "tester")
        bad = new_task(BROKEN, "n1", "t", "tester")
        unhandled = new_task(TaskKind.volume_delete, "n1", "t", "tester")
        # written by a newer release during a rolling upgrade: a kind this one does not know
        unknown = bad.model_copy(update={"id": "newer", "kind": "vm.future"})
        cancelled = new_task(SLOW, "n1", "t", "tester")
        for task in (ok, elsewhere, bad, unhandled, unknown, cancelled):
            await db.create(keys.task(task.id), task)
        runner._offer(ok)  # a second delivery of the same task must not run it twice

        done = await _wait_state(db, ok.id)
        assert done.state == TaskState.succeeded and done.result == {"answer": 42}
        assert done.progress == 1.0 and "half way" in done.log
        assert calls == [ok.id]
        failed = await _wait_state(db, bad.id)
        assert failed.state == TaskState.failed and failed.error == "the disk is on fire"
        assert (await _wait_state(db, unhandled.id)).state == TaskState.failed
        refused = await _wait_state(db, unknown.id)
        assert refused.state == TaskState.failed
        assert refused.error == "this node cannot carry out 'vm.future' tasks"

        def request_cancel(task: Task) -> Task:
            task.cancel_requested = True
            return task

        await db.update(Task, keys.task(cancelled.id), request_cancel)
        release.set()
        assert (await _wait_state(db, cancelled.id)).state == TaskState.cancelled
        untouched = await db.get(Task, keys.task(elsewhere.id))
        assert untouched is not None and untouched.value.state == TaskState.queued
    finally:
        job.cancel()


async def test_finished_tasks_are_pruned_after_retention(db: ConfigDB, monkeypatch) -> None:
    monkeypatch.setattr(runner_module, "KEEP_FINISHED", 2)
    now = time.time()
    old = now - runner_module.RETENTION - 10
    tasks = []
    for node, state, updated in [
        ("n1", TaskState.succeeded, old),  # past retention: goes
        ("n1", TaskState.failed, now - 3),  # third newest finished: over the cap, goes
        ("n1", TaskState.succeeded, now - 2),
        ("n1", TaskState.cancelled, now - 1),
        ("n1", TaskState.running, old),  # not finished: stays
        ("n2", TaskState.succeeded, old),  # another node's: stays
    ]:
        task = new_task(WORK, node, "t", "tester").model_copy(
            update={"state": state, "updated_at": updated}
        )
        await db.create(keys.task(task.id), task)
        tasks.append(task)
    removed = await TaskRunner(db, "n1", {}).prune(now)
    left = {e.value.id for e in await db.list(Task, keys.TASKS)}
    assert removed == 2
    assert left == {t.id for t in tasks[2:]}
