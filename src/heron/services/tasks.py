"""Asking a node for work: a task is written in the same transaction as the change it
carries out, so a node that restarts half-way still finds both or neither."""

from heron.configdb import Txn, keys
from heron.models.task import Task


def with_task(txn: Txn, task: Task) -> Txn:
    return txn.put(keys.task(task.id), task)
