"""What creating a VM (anew, or as a clone) writes, before it is written."""

from dataclasses import dataclass

from heron.configdb import Txn
from heron.models.task import Task
from heron.models.vm import VM


@dataclass
class Plan:
    """A VM that may be created, and the transaction (with its task) that creates it."""

    vm: VM
    txn: Txn
    task: Task
