"""The vocabulary: one typed definition of every record, shared by the ConfigDB, API and CLI."""

from heron.models.auth import Role, TokenRecord, User
from heron.models.node import Node
from heron.models.storage import Pool, Volume, VolumeFormat
from heron.models.task import Task, TaskState
from heron.models.vm import VM, DiskSpec, NicSpec, PowerState, VMSpec, VMStatus

__all__ = [
    "VM",
    "DiskSpec",
    "NicSpec",
    "Node",
    "Pool",
    "PowerState",
    "Role",
    "Task",
    "TaskState",
    "TokenRecord",
    "User",
    "VMSpec",
    "VMStatus",
    "Volume",
    "VolumeFormat",
]
