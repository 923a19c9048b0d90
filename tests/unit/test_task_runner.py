"""The task runner on the in-memory ConfigDB: claimed once, resumed after a restart, failures
and cancels recorded, old tasks pruned. (tests/integration/test_tasks.py runs it on etcd.)"""

import asyncio
from collections.abc import AsyncIterator, Callable

import aetcd.exceptions
import pytest
from fakes.configdb import FakeConfigDB
from fakes.running import until

from heron.agent import tasks as runner_module
from heron.agent.tasks import Handler, TaskContext, TaskFailed, TaskRunner
from heron.configdb import Txn, keys
from heron.models.task import Task, TaskKind, TaskState, new_task

# Stand-ins: the runner only needs kinds its table maps, with no parameters.
WORK, SLOW, VANISH = TaskKind.volume_create, TaskKind.volume_rebuild, TaskKind.node_drain
REFUSED, BROKEN, MUTE = TaskKind.pool_scan, TaskKind.volume_delete, TaskKind.vm_receive


@pytest.fixture
async def start_runner(db: FakeConfigDB) -> AsyncIterator[Callable[..., TaskRunner]]:
    """Start a runner for a node, as an agent does; all are stopped after the test."""
    jobs: list[asyncio.Task[None]] = []

    def start(handlers: dict[TaskKind, Handler], node: str = "n1") -> TaskRunner:
        runner = TaskRunner(db, node, handlers)  # type: ignore[arg-type]
        jobs.append(asyncio.create_task(runner.run()))
        return runner

    yield start
    for job in jobs:
        job.cancel()
    await asyncio.gather(*jobs, return_exceptions=True)


async def ended(db: FakeConfigDB, task_id: str) -> Task:
    async def finished() -> Task | None:
        entry = await db.get(Task, keys.task(task_id))
        return entry.value if entry is not None and entry.value.state.finished else None

    return await until(finished, f"task {task_id} to end")


async def submit(db: FakeConfigDB, task: Task) -> Task:
    await db.create(keys.task(task.id), task)
    return task


async def test_a_task_runs_once_and_records_its_result(
    db: FakeConfigDB, start_runner: Callable[..., TaskRunner]
) -> None:
    calls: list[str] = []

    async def work(ctx: TaskContext) -> dict[str, int]:
        calls.append(ctx.task.id)
        await ctx.progress(0.5, "half way")
        return {"answer": 42}

    # Two runners for one node: the task is offered to both, claimed by one.
    start_runner({WORK: work})
    start_runner({WORK: work})
    task = await submit(db, new_task(WORK, "n1", "t", "tester"))
    elsewhere = await submit(db, new_task(WORK, "n2", "t", "tester"))
    done = await ended(db, task.id)

    assert (done.state, done.result, done.error, done.progress) == (
        TaskState.succeeded,
        {"answer": 42},
        None,
        1.0,
    )
    assert done.log == ["half way", "succeeded"]
    assert calls == [task.id]
    other = await db.get(Task, keys.task(elsewhere.id))
    assert other is not None and other.value.state == TaskState.queued  # not ours to run


async def test_a_kind_this_node_cannot_do_fails_the_task(
    db: FakeConfigDB, start_runner: Callable[..., TaskRunner]
) -> None:
    start_runner({})
    # written by a newer release during a rolling upgrade: a kind this one does not know
    newer = new_task(WORK, "n1", "t", "tester").model_copy(update={"kind": "vm.teleport"})
    task = await submit(db, newer)
    done = await ended(db, task.id)
    assert done.state == TaskState.failed
    assert done.error == "this node cannot carry out 'vm.teleport' tasks"


async def test_a_failing_handler_fails_its_task_with_the_reason(
    db: FakeConfigDB, start_runner: Callable[..., TaskRunner]
) -> None:
    async def refused(ctx: TaskContext) -> None:
        raise TaskFailed("the disk is on fire")

    async def broken(ctx: TaskContext) -> None:
        raise RuntimeError("unexpected")

    async def mute(ctx: TaskContext) -> None:
        raise ValueError()

    runner = start_runner({REFUSED: refused, BROKEN: broken, MUTE: mute})
    tasks = [await submit(db, new_task(kind, "n1", "t", "u")) for kind in (REFUSED, BROKEN, MUTE)]
    errors = [(await ended(db, t.id)).error for t in tasks]
    assert errors == ["the disk is on fire", "unexpected", "ValueError"]
    # Counted for Monica (heron_tasks_ended_total): failures by kind.
    assert runner.ended == {(str(k), "failed"): 1 for k in (REFUSED, BROKEN, MUTE)}
    for task in tasks:
        done = await ended(db, task.id)
        assert (done.state, done.result, done.log[-1]) == (TaskState.failed, None, done.error)


async def test_cancel_is_seen_at_the_next_progress(
    db: FakeConfigDB, start_runner: Callable[..., TaskRunner]
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    after_cancel: list[str] = []

    async def slow(ctx: TaskContext) -> None:
        started.set()
        await release.wait()
        await ctx.progress(0.9, "almost")  # raises TaskCancelled once cancel was asked
        after_cancel.append("went on")

    start_runner({SLOW: slow})
    task = await submit(db, new_task(SLOW, "n1", "t", "u"))
    await asyncio.wait_for(started.wait(), 10)
    running = await db.get(Task, keys.task(task.id))
    assert running is not None and running.value.state == TaskState.running

    def cancel(t: Task) -> Task:
        t.cancel_requested = True
        return t

    await db.update(Task, keys.task(task.id), cancel)
    release.set()
    done = await ended(db, task.id)
    assert (done.state, done.error) == (TaskState.cancelled, "cancelled by request")
    assert after_cancel == []
    assert done.progress == 0.9  # the progress it reported is kept


async def test_a_limited_kind_runs_that_many_at_once_in_the_order_made(
    db: FakeConfigDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "_SLOT_RECHECK", 0.05)
    limit = 2
    started: list[str] = []
    release: dict[str, asyncio.Event] = {}

    async def slow(ctx: TaskContext) -> None:
        await ctx.progress(0.0, "begun")  # a task cancelled while it waited ends here
        started.append(ctx.task.target)
        release[ctx.task.target] = event = asyncio.Event()
        await event.wait()

    async def slots() -> int:
        return limit

    runner = TaskRunner(db, "n1", {SLOW: slow}, {SLOW: slots})  # type: ignore[arg-type]
    job = asyncio.create_task(runner.run())
    try:
        tasks = []
        for name in "abcde":
            task = new_task(SLOW, "n1", name, "u")
            task.created_at += len(tasks)  # made one after another
            tasks.append(await submit(db, task))
        await until(lambda: asyncio.sleep(0, started == ["a", "b"]), "two running")

        async def state(task: Task) -> TaskState:
            entry = await db.get(Task, keys.task(task.id))
            assert entry is not None
            return entry.value.state

        assert [await state(t) for t in tasks[2:]] == [TaskState.queued] * 3

        # Cancelled while it waits: its handler sees it at its first progress, at once.
        def cancel(t: Task) -> Task:
            t.cancel_requested = True
            return t

        await db.update(Task, keys.task(tasks[2].id), cancel)
        assert (await ended(db, tasks[2].id)).state == TaskState.cancelled
        release["a"].set()
        await until(lambda: asyncio.sleep(0, started == ["a", "b", "d"]), "d after a")
        limit = 3  # a raised limit is read again while tasks wait
        await until(lambda: asyncio.sleep(0, started == ["a", "b", "d", "e"]), "e")
        for name in "bde":
            release[name].set()
        assert {(await ended(db, t.id)).state for t in tasks if t.target != "c"} == {
            TaskState.succeeded
        }
        assert "c" not in started
    finally:
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)


async def test_a_running_task_is_resumed_after_a_restart(
    db: FakeConfigDB, start_runner: Callable[..., TaskRunner]
) -> None:
    resumed: list[bool] = []

    async def work(ctx: TaskContext) -> dict[str, bool]:
        resumed.append(ctx.resumed)
        return {}

    # What an agent that died mid-task leaves behind: its task `running`, and others.
    cut_off = new_task(WORK, "n1", "a", "u")
    cut_off.state = TaskState.running
    queued = new_task(WORK, "n1", "b", "u")
    finished = new_task(WORK, "n1", "c", "u")
    finished.state = TaskState.failed
    for task in (cut_off, queued, finished):
        await submit(db, task)

    start_runner({WORK: work})
    first, second = await ended(db, cut_off.id), await ended(db, queued.id)
    assert first.state == second.state == TaskState.succeeded
    assert "resumed after an agent restart" in first.log
    assert "resumed after an agent restart" not in second.log
    assert sorted(resumed) == [False, True]
    again = await db.get(Task, keys.task(finished.id))
    assert again is not None and again.value == finished  # a finished task is left alone


async def test_prune_keeps_recent_unfinished_and_other_nodes_tasks(
    db: FakeConfigDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "KEEP_FINISHED", 2)
    now = 1_000_000.0

    async def stored(node: str, state: TaskState, age: float) -> Task:
        task = new_task(WORK, node, "t", "u")
        task.state, task.updated_at = state, now - age
        return await submit(db, task)

    old = await stored("n1", TaskState.succeeded, runner_module.RETENTION + 1)
    newest = await stored("n1", TaskState.failed, 10)
    second = await stored("n1", TaskState.cancelled, 20)
    third = await stored("n1", TaskState.succeeded, 30)  # one too many
    old_queued = await stored("n1", TaskState.queued, runner_module.RETENTION + 1)
    old_running = await stored("n1", TaskState.running, runner_module.RETENTION + 1)
    foreign = await stored("n2", TaskState.succeeded, runner_module.RETENTION + 1)

    runner = TaskRunner(db, "n1", {})  # type: ignore[arg-type]
    assert await runner.prune(now) == 2
    left = {e.value.id for e in await db.list(Task, keys.TASKS)}
    assert left == {newest.id, second.id, old_queued.id, old_running.id, foreign.id}
    assert old.id not in left and third.id not in left
    assert await runner.prune(now) == 0


async def test_a_task_queued_in_compacted_history_is_found_by_listing_again(
    db: FakeConfigDB, start_runner: Callable[..., TaskRunner]
) -> None:
    async def work(ctx: TaskContext) -> dict[str, str]:
        return {"ran": ctx.task.id}

    start_runner({WORK: work})

    async def watching() -> bool:
        return db.watching(keys.TASKS)

    await until(watching, "the runner to watch for tasks")
    async with db.watches_cut():
        task = await submit(db, new_task(WORK, "n1", "t", "u"))
        db.compact(await db.put("/heron/unrelated", "y"))  # its creation is history no more
    done = await ended(db, task.id)
    assert (done.state, done.result) == (TaskState.succeeded, {"ran": task.id})


async def test_a_task_deleted_while_it_ran_does_not_stop_the_runner(
    db: FakeConfigDB, start_runner: Callable[..., TaskRunner]
) -> None:
    async def vanish(ctx: TaskContext) -> None:
        await db.delete(keys.task(ctx.task.id))  # e.g. pruned, or removed by hand

    async def work(ctx: TaskContext) -> dict[str, str]:
        return {}

    start_runner({VANISH: vanish, WORK: work})
    gone = await submit(db, new_task(VANISH, "n1", "t", "u"))

    async def deleted() -> bool:
        return await db.get_raw(keys.task(gone.id)) is None

    await until(deleted, "the task to delete itself")
    later = await submit(db, new_task(WORK, "n1", "t", "u"))
    assert (await ended(db, later.id)).state == TaskState.succeeded
    assert await db.get_raw(keys.task(gone.id)) is None  # its end was not written back


async def test_a_start_and_an_end_that_cannot_be_written_are_written_when_the_configdb_returns(
    db: FakeConfigDB, start_runner: Callable[..., TaskRunner], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the chaos test: a node cut off from etcd while its task failed logged "could
    not record the end" once, and the task stayed running for good."""
    monkeypatch.setattr(runner_module, "_RECORD_RETRY", (0.01, 0.05))
    commit, away = db.commit, {"writes": 0}

    async def unreachable(txn: Txn) -> int:
        if away["writes"]:
            away["writes"] -= 1
            raise aetcd.exceptions.ConnectionTimeoutError("Deadline Exceeded")
        return await commit(txn)

    monkeypatch.setattr(db, "commit", unreachable)

    async def work(ctx: TaskContext) -> dict[str, str]:
        away["writes"] = 3  # the ConfigDB is away when the end is written
        return {"ran": ctx.task.id}

    task = await submit(db, new_task(WORK, "n1", "t", "u"))
    away["writes"] = 2  # and when the start is
    start_runner({WORK: work})
    done = await ended(db, task.id)
    assert (done.state, done.result) == (TaskState.succeeded, {"ran": task.id})
    assert away["writes"] == 0
