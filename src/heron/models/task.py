"""Long work is a task: state, progress 0..1, a bounded log, a result or an error."""

from enum import StrEnum
from typing import Any

from pydantic import Field

from heron.models.common import Record, new_id, now

LOG_LINES = 100  # etcd holds small, current state: older lines are dropped


class TaskState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (TaskState.succeeded, TaskState.failed, TaskState.cancelled)


class Task(Record):
    id: str
    kind: str = Field(description="what it does, e.g. vm.start, volume.create")
    node: str = Field(description="the node that carries it out")
    target: str = Field(default="", description="id of the object it acts on")
    params: dict[str, Any] = Field(default_factory=dict)
    user: str = ""
    state: TaskState = TaskState.queued
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    log: list[str] = Field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None
    cancel_requested: bool = False
    created_at: float
    updated_at: float


def new_task(
    kind: str, node: str, target: str, user: str, params: dict[str, Any] | None = None
) -> Task:
    stamp = now()
    return Task(
        id=new_id(),
        kind=kind,
        node=node,
        target=target,
        user=user,
        params=params or {},
        created_at=stamp,
        updated_at=stamp,
    )
