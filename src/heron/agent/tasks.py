"""Carrying out the tasks addressed to this node.

A task is claimed by compare-and-swap (queued -> running), so it runs once even if several
watch events or a restart deliver it twice. A task found `running` at start-up was cut off by
a crash of this agent; every handler is idempotent, so it simply runs again.
"""

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from heron.configdb import ConfigDB, Conflict, keys
from heron.configdb.store import parse
from heron.errors import AgentError
from heron.models.task import LOG_LINES, BadParams, P, Task, TaskKind, TaskState

log = logging.getLogger(__name__)

# Progress is written at most this often: etcd holds current state, not a stream.
_PROGRESS_INTERVAL = 0.25
# Finished tasks stay visible this long, and at most this many per node (principle 7: etcd
# holds small, current state; the audit log keeps the history).
RETENTION = 24 * 3600
KEEP_FINISHED = 1000
_PRUNE_INTERVAL = 300
# Recording a task's start or end is retried while the ConfigDB cannot be reached (a node cut
# off from it, etcd losing its quorum): a task whose end is never written stays "running" for
# good on an agent that goes on running. First wait, then doubled up to the last.
_RECORD_RETRY = (0.5, 10.0)


class TaskCancelled(AgentError):
    pass


class TaskFailed(AgentError):
    """A handler's way to fail a task with a message meant for the user."""


class TaskContext:
    def __init__(self, db: ConfigDB, task: Task, resumed: bool = False):
        self.db = db
        self.task = task
        # Carried on after this agent died while running it: the handler may find its work
        # half done (e.g. a migration that QEMU finished on its own meanwhile).
        self.resumed = resumed
        self._last_write = 0.0

    async def _write(self, change: Callable[[Task], None]) -> None:
        def apply(task: Task) -> Task:
            change(task)
            task.updated_at = time.time()
            return task

        entry = await self.db.update(Task, keys.task(self.task.id), apply)
        self.task = entry.value

    async def progress(self, fraction: float, message: str | None = None) -> None:
        now = time.monotonic()
        if message is None and now - self._last_write < _PROGRESS_INTERVAL and fraction < 1:
            return
        self._last_write = now
        bounded = min(max(fraction, 0.0), 1.0)

        def change(task: Task) -> None:
            task.progress = max(task.progress, bounded)
            if message:
                task.log = [*task.log, message][-LOG_LINES:]

        await self._write(change)
        if self.task.cancel_requested:
            raise TaskCancelled()

    async def log(self, message: str) -> None:
        await self.progress(self.task.progress, message)

    def params(self, model: type[P]) -> P:
        """The task's parameters as its kind's model; a task that does not fit fails."""
        try:
            return self.task.params_as(model)
        except BadParams as exc:
            raise TaskFailed(str(exc)) from exc


Handler = Callable[[TaskContext], Awaitable[dict[str, Any] | None]]
# How many tasks of a kind may run at once on this node, read when a slot is sought.
Limit = Callable[[], Awaitable[int]]
# A slot freed is announced; a limit raised in the settings is not: it is read again this often.
_SLOT_RECHECK = 10.0


class TaskRunner:
    def __init__(
        self,
        db: ConfigDB,
        node: str,
        handlers: dict[TaskKind, Handler],
        limits: dict[TaskKind, Limit] | None = None,
    ):
        self.db = db
        self.node = node
        self.handlers = handlers
        # Kinds that queue (imports): at most the limit run, the others stay `queued` on
        # this node and start in the order they were made as slots free.
        self.limits = limits or {}
        self._busy: Counter[str] = Counter()
        self._waiting: dict[str, list[Task]] = {}
        self._cancelled: set[str] = set()  # waiting tasks whose cancel came
        self._slots = asyncio.Condition()
        self._announcing: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Task[None]] = {}
        # Tasks this node ended since its agent started, by (kind, end state): for Monica.
        self.ended: Counter[tuple[str, str]] = Counter()

    async def run(self) -> None:
        pruner = asyncio.create_task(self._prune_forever(), name="task-pruner")
        try:
            await self._follow()
        finally:
            pruner.cancel()

    async def _follow(self) -> None:
        entries, revision = await self.db.list_at(Task, keys.TASKS)
        for entry in entries:
            if entry.value.node == self.node and not entry.value.state.finished:
                self._start(entry.value, resume=entry.value.state == TaskState.running)
        async for event in self.db.watch(keys.TASKS, revision + 1):
            if event.type == "resync":
                for entry in await self.db.list(Task, keys.TASKS):
                    self._offer(entry.value)
            elif event.type == "put":
                self._offer(parse(Task, event.value))

    async def prune(self, now: float) -> int:
        """Delete this node's finished tasks past retention; returns how many went."""
        finished = sorted(
            (e for e in await self.db.list(Task, keys.TASKS)
             if e.value.node == self.node and e.value.state.finished),
            key=lambda e: e.value.updated_at, reverse=True,
        )  # fmt: skip
        doomed = [e for i, e in enumerate(finished)
                  if i >= KEEP_FINISHED or e.value.updated_at < now - RETENTION]  # fmt: skip
        for entry in doomed:
            with contextlib.suppress(Conflict):
                await self.db.delete(entry.key, revision=entry.revision)
        return len(doomed)

    async def _prune_forever(self) -> None:
        while True:
            try:
                await self.prune(time.time())
            except Exception as exc:
                log.warning("pruning finished tasks failed: %r", exc)
            await asyncio.sleep(_PRUNE_INTERVAL)  # the pruning period

    def _offer(self, task: Task) -> None:
        if task.node == self.node and task.state == TaskState.queued:
            if task.cancel_requested and any(
                t.id == task.id for t in self._waiting.get(str(task.kind), [])
            ):
                self._cancelled.add(task.id)
                announce = asyncio.create_task(self._announce())  # the waiter ends it unrun
                self._announcing.add(announce)
                announce.add_done_callback(self._announcing.discard)
            self._start(task, resume=False)

    async def _announce(self) -> None:
        async with self._slots:
            self._slots.notify_all()

    async def _slot(self, task: Task, resume: bool) -> bool:
        """Wait for a slot of the task's kind (queued in creation order); False: it was
        cancelled while it waited. A resumed task takes its slot back without waiting."""
        kind = str(task.kind)
        limit = self.limits.get(task.known_kind) if task.known_kind else None
        if limit is None:
            return True
        if resume:
            self._busy[kind] += 1
            return True
        waiting = self._waiting.setdefault(kind, [])
        waiting.append(task)
        waiting.sort(key=lambda t: (t.created_at, t.id))
        async with self._slots:
            try:
                while task.id not in self._cancelled:
                    if waiting[0].id == task.id and self._busy[kind] < await limit():
                        self._busy[kind] += 1
                        return True
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._slots.wait(), _SLOT_RECHECK)
                return False
            finally:
                waiting.remove(task)
                self._cancelled.discard(task.id)
                self._slots.notify_all()  # the next in line may be the head now

    async def _free(self, task: Task) -> None:
        async with self._slots:
            self._busy[str(task.kind)] -= 1
            self._slots.notify_all()

    def _start(self, task: Task, resume: bool) -> None:
        if task.id in self._running:
            return
        job = asyncio.create_task(self._execute(task, resume), name=f"task-{task.kind}")
        self._running[task.id] = job
        job.add_done_callback(lambda _: self._running.pop(task.id, None))

    async def _execute(self, task: Task, resume: bool) -> None:
        # Cancelled while it waited: its handler runs at once, to see the cancel at its first
        # progress and undo what was made for it (an import's VM and volumes).
        if not await self._slot(task, resume):
            await self._run(task, resume)
            return
        try:
            await self._run(task, resume)
        finally:
            if task.known_kind in self.limits:
                await self._free(task)

    async def _run(self, task: Task, resume: bool) -> None:
        ctx = TaskContext(self.db, task, resume)
        tried = False

        def claim(current: Task) -> None:
            nonlocal tried
            if tried and current.state == TaskState.running:
                return  # an attempt whose answer was lost had been applied: ours
            tried = True
            _claim(current, resume)

        try:
            await _recorded(ctx, claim, "the start", retry_conflicts=False)
        except (Conflict, KeyError):
            return  # claimed by another delivery of the same event, or deleted
        kind = task.known_kind
        handler = None if kind is None else self.handlers.get(kind)
        try:
            if handler is None:
                raise TaskFailed(f"this node cannot carry out {str(task.kind)!r} tasks")
            result = await handler(ctx)
        except TaskCancelled:
            await self._finish(ctx, TaskState.cancelled, None, "cancelled by request")
        except Exception as exc:
            if not isinstance(exc, TaskFailed):
                log.exception("task %s (%s) failed", task.id, task.kind)
            await self._finish(ctx, TaskState.failed, None, str(exc) or type(exc).__name__)
        else:
            await self._finish(ctx, TaskState.succeeded, result or {}, None)

    async def _finish(
        self, ctx: TaskContext, state: TaskState, result: dict[str, Any] | None, error: str | None
    ) -> None:
        def change(task: Task) -> None:
            task.state = state
            task.result = result
            task.error = error
            if state == TaskState.succeeded:
                task.progress = 1.0
            task.log = [*task.log, error or state.value][-LOG_LINES:]

        self.ended[str(ctx.task.kind), state.value] += 1
        with contextlib.suppress(KeyError):  # deleted while it ran: nothing to write back
            await _recorded(ctx, change, "the end", retry_conflicts=True)


def _claim(task: Task, resume: bool) -> None:
    expected = TaskState.running if resume else TaskState.queued
    if task.state != expected:
        raise Conflict(f"task {task.id} is {task.state}")
    task.state = TaskState.running
    if resume:
        task.log = [*task.log, "resumed after an agent restart"][-LOG_LINES:]


async def _recorded(
    ctx: TaskContext, change: Callable[[Task], None], what: str, *, retry_conflicts: bool
) -> None:
    """Write `change` to the task, retried until the ConfigDB takes it. KeyError (the task
    is gone) goes to the caller, and Conflict too unless `retry_conflicts`."""
    delay, longest = _RECORD_RETRY
    while True:
        try:
            await ctx._write(change)
            return
        except KeyError:
            raise
        except Conflict:
            if not retry_conflicts:
                raise
            reason = "it kept changing"
        except Exception as exc:
            reason = repr(exc)
        log.warning("could not record %s of task %s (%s): again in %g s", what, ctx.task.id,
                    reason, delay)  # fmt: skip
        await asyncio.sleep(delay)  # the ConfigDB's return is not announced: try again
        delay = min(delay * 2, longest)
