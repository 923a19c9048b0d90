"""Tasks: progress, log, result and cancel of long work."""

from collections.abc import Callable

from fastapi import APIRouter, Depends, Request

from heron.api import auth
from heron.api.auth import Principal
from heron.api.errors import Conflict, NotFound
from heron.configdb import ConfigDB, Entry, keys
from heron.models.auth import Role
from heron.models.common import Name
from heron.models.task import Task
from heron.models.vm import VM

router = APIRouter(tags=["tasks"])


async def _seen(db: ConfigDB, principal: Principal) -> Callable[[Task], bool]:
    """Which tasks the principal sees: all with a cluster-wide role; else the tasks on VMs
    of the groups granted to it (a task on anything else is out of its sight)."""
    groups = await auth.reachable_groups(db, principal)
    if groups is None:
        return lambda _: True
    visible = {e.value.id for e in await db.list(VM, keys.VMS) if e.value.spec.group in groups}
    return lambda task: task.target in visible


@router.get("/tasks", response_model=list[Task])
async def list_tasks(
    request: Request, limit: int = 100, principal: Principal = Depends(auth.authenticate)
) -> list[Task]:
    db = request.app.state.ctx.db
    seen = await _seen(db, principal)
    tasks = [e.value for e in await db.list(Task, keys.TASKS) if seen(e.value)]
    return sorted(tasks, key=lambda t: t.created_at, reverse=True)[: max(1, min(limit, 1000))]


async def _task(db: ConfigDB, principal: Principal, task_id: str) -> Entry[Task]:
    entry = await db.get(Task, keys.task(task_id)) if ("/" not in task_id) else None
    if entry is None or not (await _seen(db, principal))(entry.value):
        raise NotFound(f"no task {task_id!r}")
    return entry


@router.get("/tasks/{task_id}", response_model=Task)
async def get_task(
    task_id: Name, request: Request, principal: Principal = Depends(auth.authenticate)
) -> Task:
    return (await _task(request.app.state.ctx.db, principal, task_id)).value


@router.post(
    "/tasks/{task_id}/cancel",
    response_model=Task,
    status_code=202,
    responses={403: {"description": "The caller does not operate the task's VM"}},
)
async def cancel_task(
    task_id: Name, request: Request, principal: Principal = Depends(auth.authenticate)
) -> Task:
    db = request.app.state.ctx.db
    entry = await _task(db, principal, task_id)
    if not auth.suffices(principal.role, Role.operator):
        vm = await db.get(VM, keys.vm(entry.value.target))
        scopes = auth.vm_scopes(vm.value) if vm else []
        await auth.check_on(db, principal, scopes, Role.operator, f"task {task_id!r}")
    if entry.value.state.finished:
        raise Conflict(f"task {task_id} has already {entry.value.state.value}")
    task = entry.value.model_copy(update={"cancel_requested": True})
    await db.put(entry.key, task, revision=entry.revision)
    return task
