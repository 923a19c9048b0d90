"""Tasks: progress, log, result and cancel of long work."""

from fastapi import APIRouter, Depends, Request

from heron.api import auth
from heron.api.auth import Principal
from heron.api.errors import Conflict, NotFound
from heron.configdb import keys
from heron.models.common import Name
from heron.models.task import Task

router = APIRouter(tags=["tasks"])


@router.get("/tasks", response_model=list[Task])
async def list_tasks(
    request: Request, limit: int = 100, _: Principal = Depends(auth.viewer)
) -> list[Task]:
    tasks = [e.value for e in await request.app.state.ctx.db.list(Task, keys.TASKS)]
    return sorted(tasks, key=lambda t: t.created_at, reverse=True)[: max(1, min(limit, 1000))]


@router.get("/tasks/{task_id}", response_model=Task)
async def get_task(task_id: Name, request: Request, _: Principal = Depends(auth.viewer)) -> Task:
    entry = (
        await request.app.state.ctx.db.get(Task, keys.task(task_id))
        if ("/" not in task_id)
        else None
    )
    if entry is None:
        raise NotFound(f"no task {task_id!r}")
    return entry.value


@router.post("/tasks/{task_id}/cancel", response_model=Task, status_code=202)
async def cancel_task(
    task_id: Name, request: Request, _: Principal = Depends(auth.operator)
) -> Task:
    db = request.app.state.ctx.db
    entry = await db.get(Task, keys.task(task_id)) if "/" not in task_id else None
    if entry is None:
        raise NotFound(f"no task {task_id!r}")
    if entry.value.state.finished:
        raise Conflict(f"task {task_id} has already {entry.value.state.value}")
    task = entry.value.model_copy(update={"cancel_requested": True})
    await db.put(entry.key, task, revision=entry.revision)
    return task
