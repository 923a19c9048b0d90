"""What every route needs, passed in once when the app is built (no global state)."""

from dataclasses import dataclass
from pathlib import Path

import httpx

from heron.audit import AuditLog
from heron.configdb import ConfigDB, Txn, keys
from heron.models.task import Task
from heron.scheduler.inventory import Inventory


@dataclass
class ApiContext:
    db: ConfigDB
    node: str
    state_dir: Path
    audit: AuditLog
    http: httpx.AsyncClient
    inventory: Inventory  # watch-fed copies for placement


def with_task(txn: Txn, task: Task) -> Txn:
    return txn.put(keys.task(task.id), task)
