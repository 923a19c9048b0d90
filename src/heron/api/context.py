"""What every route needs, passed in once when the app is built (no global state)."""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from heron.api.audit import AuditLog
from heron.configdb import ConfigDB, Txn, keys
from heron.models.common import new_id
from heron.models.task import Task


@dataclass
class ApiContext:
    db: ConfigDB
    node: str
    state_dir: Path
    audit: AuditLog
    http: httpx.AsyncClient


def new_task(
    kind: str, node: str, target: str, user: str, params: dict[str, Any] | None = None
) -> Task:
    now = time.time()
    return Task(
        id=new_id(),
        kind=kind,
        node=node,
        target=target,
        user=user,
        params=params or {},
        created_at=now,
        updated_at=now,
    )


def with_task(txn: Txn, task: Task) -> Txn:
    return txn.put(keys.task(task.id), task)
