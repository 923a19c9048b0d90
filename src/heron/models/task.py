"""Long work is a task: a typed operation (its kind and its parameters), carried out by one
node, with state, progress 0..1, a bounded log, a result or an error.

A kind's parameters are one pydantic model (`PARAMS`), built by whoever asks for the work (a
route, DRS, drain, HA, rebalance) and read back by the node's handler. They travel as a plain
JSON object in the task record, so tasks written by earlier releases, which had no models,
still load: every field a release added later has a default.
"""

from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from heron.models.common import Name, Record, new_id, now
from heron.models.imports import GuestFamily, GuestFixMode, ImportDisk, WarmOptions
from heron.models.migration import MigrationOptions

LOG_LINES = 100  # etcd holds small, current state: older lines are dropped


class TaskKind(StrEnum):
    vm_create = "vm.create"
    vm_start = "vm.start"
    vm_stop = "vm.stop"
    vm_shutdown = "vm.shutdown"
    vm_pause = "vm.pause"
    vm_resume = "vm.resume"
    vm_reboot = "vm.reboot"
    vm_delete = "vm.delete"
    vm_migrate = "vm.migrate"
    vm_receive = "vm.receive"
    vm_nics = "vm.nics"
    vm_hardware = "vm.hardware"
    vm_clone = "vm.clone"
    node_drain = "node.drain"
    volume_create = "volume.create"
    volume_import = "volume.import"
    volume_resize = "volume.resize"
    volume_delete = "volume.delete"
    volume_rebuild = "volume.rebuild"
    volume_rebalance = "volume.rebalance"
    pool_scan = "pool.scan"
    snapshot_create = "snapshot.create"
    snapshot_revert = "snapshot.revert"
    snapshot_delete = "snapshot.delete"
    support_bundle = "support.bundle"
    v2v_scan = "v2v.scan"
    v2v_import = "v2v.import"
    dr_replicate = "dr.replicate"
    dr_restore = "dr.restore"


class TaskParams(BaseModel):
    """Parameters of a kind of task. Unknown fields are ignored, so a task written by a newer
    release can still be read (and refused by kind) by an older one."""

    model_config = ConfigDict(extra="ignore")


class NoParams(TaskParams):
    pass


class NewVolume(BaseModel):
    id: str
    source: str | None = Field(default=None, description="volume id to copy from")
    clone: bool = Field(
        default=False,
        description="made by its pool's clone of `source` (the volume's `origin` says how)",
    )


class VMCreateParams(TaskParams):
    volumes: list[NewVolume] = Field(default_factory=list, description="to make first")


class VMCloneParams(VMCreateParams):
    source: str = Field(description="id of the VM cloned (not started while this runs)")
    snapshot: str | None = Field(default=None, description="id of its snapshot cloned")


class PowerParams(TaskParams):
    graceful: bool = Field(default=True, description="ask the guest to shut down first")
    timeout: float = Field(default=60, gt=0, description="seconds the guest gets to do so")
    reason: str = Field(default="", description="why (HA restarts say what happened)")


class VMDeleteParams(TaskParams):
    volumes: bool = Field(default=False, description="delete the VM's volumes too")


class MigrateParams(MigrationOptions, TaskParams):
    target: str = Field(description="node to move to")


class VolumeImportParams(TaskParams):
    path: str = Field(description="image file on the node that carries the task out")
    remove_source: bool = Field(default=False, description="delete the file afterwards")


class VolumeResizeParams(TaskParams):
    size: int = Field(gt=0, description="new size, bytes")
    vm: str | None = Field(default=None, description="the VM using it, grown online")


class RebalanceParams(TaskParams):
    to: list[str] = Field(description="ids of the disks the volume moves onto")


class SnapshotParams(TaskParams):
    snapshot: str = Field(description="id of the snapshot (its tag in the images)")
    quiesce: Literal["auto", "required", "off"] = Field(
        default="auto", description="create: freeze the guest's filesystems first"
    )
    freeze_limit_s: float = Field(default=10.0, gt=0, description="create: the longest freeze")


class DRRestoreParams(TaskParams):
    vm: str = Field(description="id of the protected VM whose point is restored")
    point: str = Field(description="id of the point")
    volumes: list[NewVolume] = Field(description="the new VM's volumes, disk0 first")


class ScanParams(TaskParams):
    source: Name


class ImportParams(TaskParams):
    source: Name
    vm: str = Field(description="the scanned VM's path in the source")
    root: str = Field(description="the folder the scan read the source at")
    disks: list[ImportDisk] = Field(default_factory=list)
    guest_fix: GuestFixMode = "auto"
    family: GuestFamily = "other"
    start: bool = Field(default=False, description="start the VM once imported")
    power_off: bool = Field(
        default=False, description="vsphere: power the source VM off first when it runs"
    )
    warm: WarmOptions | None = Field(default=None, description="vsphere: copy it warm")


class SupportBundleParams(TaskParams):
    send: bool = Field(default=False, description="mail it to the support address when built")
    alert: str | None = Field(
        default=None, description="the critical alert that had the leader build it, if any"
    )


PARAMS: dict[TaskKind, type[TaskParams]] = {
    TaskKind.vm_create: VMCreateParams,
    TaskKind.vm_start: PowerParams,
    TaskKind.vm_stop: PowerParams,
    TaskKind.vm_shutdown: PowerParams,
    TaskKind.vm_pause: PowerParams,
    TaskKind.vm_resume: PowerParams,
    TaskKind.vm_reboot: PowerParams,
    TaskKind.vm_delete: VMDeleteParams,
    TaskKind.vm_migrate: MigrateParams,
    TaskKind.vm_receive: NoParams,
    TaskKind.vm_nics: NoParams,
    TaskKind.vm_hardware: NoParams,
    TaskKind.vm_clone: VMCloneParams,
    TaskKind.node_drain: NoParams,
    TaskKind.volume_create: NoParams,
    TaskKind.volume_import: VolumeImportParams,
    TaskKind.volume_resize: VolumeResizeParams,
    TaskKind.volume_delete: NoParams,
    TaskKind.volume_rebuild: NoParams,
    TaskKind.volume_rebalance: RebalanceParams,
    TaskKind.pool_scan: NoParams,
    TaskKind.snapshot_create: SnapshotParams,
    TaskKind.snapshot_revert: SnapshotParams,
    TaskKind.snapshot_delete: SnapshotParams,
    TaskKind.support_bundle: SupportBundleParams,
    TaskKind.v2v_scan: ScanParams,
    TaskKind.v2v_import: ImportParams,
    TaskKind.dr_replicate: NoParams,
    TaskKind.dr_restore: DRRestoreParams,
}

P = TypeVar("P", bound=TaskParams)


class TaskState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (TaskState.succeeded, TaskState.failed, TaskState.cancelled)


class BadParams(ValueError):
    """A task's stored parameters do not fit its kind."""


class Task(Record):
    id: str
    # A kind this release does not know stays a string: the task still lists, and the node
    # asked to carry it out says it cannot (a newer node wrote it during a rolling upgrade).
    kind: TaskKind | str = Field(
        union_mode="left_to_right", description="what it does, e.g. vm.start, volume.create"
    )
    node: str = Field(description="the node that carries it out")
    target: str = Field(default="", description="id of the object it acts on")
    params: dict[str, Any] = Field(default_factory=dict, description="depend on the kind")
    user: str = ""
    state: TaskState = TaskState.queued
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    log: list[str] = Field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None
    cancel_requested: bool = False
    created_at: float
    updated_at: float

    @property
    def known_kind(self) -> TaskKind | None:
        """The kind, if this release knows it; None for a newer release's kind."""
        try:
            return TaskKind(self.kind)
        except ValueError:
            return None

    def params_as(self, model: type[P]) -> P:
        """The parameters, read as `model` (which must be its kind's)."""
        kind = self.known_kind
        if kind is None or PARAMS.get(kind) is not model:
            raise BadParams(f"a {self.kind} task has no {model.__name__}")
        try:
            return model.model_validate(self.params)
        except ValidationError as exc:
            raise BadParams(f"a {self.kind} task's parameters: {exc}") from exc


def new_task(
    kind: TaskKind, node: str, target: str, user: str, params: TaskParams | None = None
) -> Task:
    """A queued task; `params` must be the model of `kind` (none: its defaults)."""
    model = PARAMS[kind]
    params = params if params is not None else model()
    if type(params) is not model:
        raise TypeError(f"{kind} takes {model.__name__}, not {type(params).__name__}")
    stamp = now()
    return Task(
        id=new_id(),
        kind=kind,
        node=node,
        target=target,
        user=user,
        params=params.model_dump(mode="json"),
        created_at=stamp,
        updated_at=stamp,
    )
