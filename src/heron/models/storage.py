"""Pools and the volumes in them."""

from enum import StrEnum
from typing import Literal

from pydantic import Field

from heron.models.common import Name, Record


class VolumeFormat(StrEnum):
    qcow2 = "qcow2"
    raw = "raw"


class Pool(Record):
    """A `dir` pool is a directory on each node (local) or one mount every node sees (shared).

    `path` None means the node's own state directory, `<state>/pools/<name>`.
    """

    name: Name
    type: Literal["dir"] = "dir"
    path: str | None = Field(default=None, pattern=r"^/")
    shared: bool = False
    created_at: float


class Volume(Record):
    id: str
    pool: Name
    name: Name
    format: VolumeFormat
    size: int = Field(ge=0, description="virtual size in bytes")
    node: Name | None = Field(default=None, description="the node holding it; None if shared")
    state: Literal["creating", "ready", "error"] = "creating"
    error: str = ""
    created_at: float
