"""Snapshots of a running VM's disks and memory over QMP: internal qcow2 snapshots.

Why internal snapshots (inside each qcow2 file) and not external overlays (a chain of files):

* A volume stays one file. The command line's one format node over one protocol node, the
  pool drivers, a live migration (the target opens the same file on shared storage and finds
  every snapshot in it) and the file's lock (QEMU's, held by one process at a time) all stay
  as they are. An external chain would be several files that every node must see, that the
  ConfigDB must track, and that the command line must open as a chain.
* Any snapshot is deleted while the VM runs by dropping its references in the image
  (`blockdev-snapshot-delete-internal-sync`): no merge job, whatever its place in the list.
  Deleting an external snapshot in the middle is a block-commit or block-stream job.
* All disks are taken at one instant by one `transaction` of
  `blockdev-snapshot-internal-sync` actions: all of them or none.
* The memory state goes into one of the VM's own images, under the same name as its disks'
  snapshots (`snapshot-save`, a job since QEMU 6.0), and `snapshot-load` brings the whole VM
  back, running again if it ran. The same names make a whole-VM snapshot one thing to list.

What it costs: `snapshot-save` stops the guest while it writes the memory (upstream QEMU has
no live savevm); a disk-only snapshot is reverted only with QEMU stopped (QEMU refuses to
load a snapshot without memory state: `qemu-img snapshot -a`, see storage.qemuimg); deleting
a snapshot holds the disk's I/O for its metadata update; QEMU gives no size of one
snapshot's own clusters, only the memory state's size and the image's whole allocation; a
mirror (storage move) copies only the current data, so snapshots stay behind.

Nodes are the top nodes of the VM's disks, those their devices use: the format nodes `disk0`,
`disk1`, ... of the command line, or a filter put above one (a throttle for QoS), which
passes the snapshot down. A QMP job's id is the caller's.
"""

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from heron.hypervisor.qmp_base import QMPCommands
from heron.util.wait import until

# Some of QMP's JobStatus values; a snapshot job stays "concluded" until dismissed.
CONCLUDED = "concluded"
NULL = "null"


@dataclass(frozen=True)
class InternalSnapshot:
    """One snapshot inside an image (QMP's SnapshotInfo, as qemu-img also prints it)."""

    id: str
    name: str
    vm_state_size: int  # bytes of memory state it holds; 0 for a disk-only snapshot
    date_sec: int  # when it was taken, host time
    vm_clock_ns: int  # the guest's clock then

    @classmethod
    def from_qmp(cls, reply: Mapping[str, Any]) -> "InternalSnapshot":
        return cls(
            id=str(reply["id"]),
            name=str(reply["name"]),
            vm_state_size=int(reply.get("vm-state-size", 0)),
            date_sec=int(reply.get("date-sec", 0)),
            vm_clock_ns=int(reply.get("vm-clock-sec", 0)) * 1_000_000_000
            + int(reply.get("vm-clock-nsec", 0)),
        )


@dataclass(frozen=True)
class NodeSnapshots:
    """The snapshots of one block node's image, and what the image takes on its storage."""

    node: str
    virtual_size: int  # bytes the guest sees
    actual_size: int  # bytes allocated for the image, its snapshots included
    snapshots: tuple[InternalSnapshot, ...]

    @classmethod
    def from_qmp(cls, reply: Mapping[str, Any]) -> "NodeSnapshots":
        """Read one entry of `query-named-block-nodes`."""
        image = reply.get("image") or {}
        return cls(
            node=str(reply["node-name"]),
            virtual_size=int(image.get("virtual-size", 0)),
            actual_size=int(image.get("actual-size", 0)),
            snapshots=tuple(InternalSnapshot.from_qmp(s) for s in image.get("snapshots", [])),
        )

    def names(self) -> list[str]:
        return [snapshot.name for snapshot in self.snapshots]


@dataclass(frozen=True)
class Job:
    """One entry of `query-jobs` (any QMP job; snapshot jobs count 0 to 1)."""

    id: str
    kind: str  # "snapshot-save", "snapshot-load", "snapshot-delete", "mirror", ...
    status: str  # QMP's JobStatus
    current: int  # progress, in the job's own unit
    total: int
    error: str = ""  # QEMU's reason, once concluded after failing

    @classmethod
    def from_qmp(cls, reply: Mapping[str, Any]) -> "Job":
        return cls(
            id=str(reply["id"]),
            kind=str(reply["type"]),
            status=str(reply["status"]),
            current=int(reply.get("current-progress", 0)),
            total=int(reply.get("total-progress", 0)),
            error=str(reply.get("error", "")),
        )

    @property
    def concluded(self) -> bool:
        return self.status in (CONCLUDED, NULL)


def snapshot_transaction(nodes: Iterable[str], name: str) -> list[dict[str, Any]]:
    """The `transaction` actions that snapshot every node of `nodes` as `name`."""
    return [
        {"type": "blockdev-snapshot-internal-sync", "data": {"device": node, "name": name}}
        for node in nodes
    ]


class SnapshotCommands(QMPCommands):
    async def snapshot_disks(self, nodes: Sequence[str], name: str) -> None:
        """Snapshot the images of `nodes` as `name`, all at one instant (one transaction):
        crash-consistent, the guest running on. Each image must be qcow2 (or another format
        with internal snapshots).

        Raises QMPCommandError, with no snapshot taken on any node, when a node does not
        exist, its format has no internal snapshots ("Block format 'raw' used by device
        'disk1' does not support internal snapshots"), `name` is taken on one of them
        ("Snapshot with name 'NAME' already exists on device 'disk0'"), or a node is not
        the top of its disk ("Need a root block node": a mirror's filter is above it during
        a storage move); QMPSessionError.
        """
        if not nodes:
            raise ValueError("a snapshot needs at least one node")
        await self.execute("transaction", {"actions": snapshot_transaction(nodes, name)})

    async def delete_disk_snapshot(self, node: str, name: str) -> InternalSnapshot:
        """Delete the snapshot `name` of the image of `node` while the VM runs; the others,
        older or newer, stay as they are. Returns what was deleted.

        Raises QMPCommandError when there is no such node or snapshot ("Snapshot with id
        'null' and name 'NAME' does not exist on device 'disk0'"); QMPSessionError.
        """
        reply = await self.execute(
            "blockdev-snapshot-delete-internal-sync", {"device": node, "name": name}
        )
        return InternalSnapshot.from_qmp(reply)

    async def disk_snapshots(self, nodes: Iterable[str] | None = None) -> list[NodeSnapshots]:
        """The snapshots of each node of `nodes` (all named nodes when None), in QEMU's order;
        a node that does not exist is left out.

        Raises QMPSessionError; QEMU refuses no `query-named-block-nodes`.
        """
        wanted = None if nodes is None else set(nodes)
        reply = await self.execute("query-named-block-nodes", {"flat": True})
        return [
            NodeSnapshots.from_qmp(entry)
            for entry in reply
            if wanted is None or entry["node-name"] in wanted
        ]

    async def snapshot_save(
        self, job_id: str, name: str, *, vmstate: str, devices: Sequence[str]
    ) -> None:
        """Start the job `job_id` that snapshots the whole VM as `name`: the images of
        `devices` and, in the image of `vmstate` (one of them), the memory and device state.
        The guest is stopped while it runs and runs again after if it ran. Follow it with
        `jobs` until concluded, then `job_dismiss` it.

        Raises QMPCommandError when the job id is taken; a snapshot that cannot be taken
        fails the job instead ("Snapshot 'NAME' already exists in one or more devices", a
        node without snapshots), the guest left running. QMPSessionError.
        """
        await self.execute(
            "snapshot-save",
            {"job-id": job_id, "tag": name, "vmstate": vmstate, "devices": list(devices)},
        )

    async def snapshot_load(
        self, job_id: str, name: str, *, vmstate: str, devices: Sequence[str]
    ) -> None:
        """Start the job `job_id` that reverts the whole VM to its snapshot `name`: images,
        memory and devices; a running guest runs on from the snapshot's instant. A snapshot
        without memory state fails the job ("This is a disk-only snapshot. Revert to it
        offline using qemu-img") before anything changed. A failed load leaves the guest
        stopped, in run state "restore-vm" (QEMU 7.2 restarts it only after a success):
        `resume` it when nothing changed, reset it when the job failed halfway.

        Raises QMPCommandError when the job id is taken; QMPSessionError.
        """
        await self.execute(
            "snapshot-load",
            {"job-id": job_id, "tag": name, "vmstate": vmstate, "devices": list(devices)},
        )

    async def snapshot_delete(self, job_id: str, name: str, *, devices: Sequence[str]) -> None:
        """Start the job `job_id` that deletes the snapshot `name` from every image of
        `devices` (for a whole-VM snapshot; `delete_disk_snapshot` does one node at once).

        Raises QMPCommandError when the job id is taken; QMPSessionError.
        """
        await self.execute(
            "snapshot-delete", {"job-id": job_id, "tag": name, "devices": list(devices)}
        )

    async def open_image(self, node: str, protocol: Mapping[str, Any]) -> None:
        """Open a qcow2 image that no guest device uses (a snapshot's memory-state volume)
        as the node `node`, over the protocol node `protocol` (a pool driver's): a node to
        name as `vmstate` and in `devices`. Already open (a repeat), it is kept.

        Raises QMPCommandError when the image cannot be opened; QMPSessionError.
        """
        if node in await self._node_names():
            return
        options = {"node-name": node, "driver": "qcow2", "file": dict(protocol)}
        await self.execute("blockdev-add", options)

    async def close_image(self, node: str) -> None:
        """Close what `open_image` opened (its protocol node goes with it); nothing open,
        nothing to do.

        Raises QMPCommandError while a job still uses it ("Node 'NODE' is busy");
        QMPSessionError.
        """
        if node in await self._node_names():
            await self.execute("blockdev-del", {"node-name": node})

    async def _node_names(self) -> set[str]:
        return {str(n.get("node-name")) for n in await self.execute("query-named-block-nodes")}

    async def jobs(self) -> list[Job]:
        """Every QMP job, block jobs included, concluded ones until dismissed.

        Raises QMPSessionError; QEMU refuses no `query-jobs`.
        """
        return [Job.from_qmp(job) for job in await self.execute("query-jobs")]

    async def job_dismiss(self, job_id: str) -> None:
        """Forget the concluded job `job_id`.

        Raises QMPCommandError when there is no such job or it has not concluded ("Job
        'ID' in state 'running' cannot accept command verb 'dismiss'"); QMPSessionError.
        """
        await self.execute("job-dismiss", {"id": job_id})

    async def wait_job(
        self,
        job_id: str,
        timeout: float,
        progress: Callable[[Job], Awaitable[None]] | None = None,
    ) -> Job | None:
        """Wait for the job `job_id` to conclude, telling `progress` how far it got at each
        look; then dismiss it and return it: its `error` says whether it failed. Returns
        None when it has not concluded within `timeout` seconds (it goes on) or is gone.

        Raises QMPSessionError.
        """

        async def concluded() -> Job | None:
            found = next((job for job in await self.jobs() if job.id == job_id), None)
            if found is None:
                raise LookupError(job_id)
            if progress is not None:
                await progress(found)
            return found if found.concluded else None

        try:
            job = await until(concluded, timeout, 0.1)
        except LookupError:
            return None
        if job is not None and job.status == CONCLUDED:
            await self.job_dismiss(job_id)
        return job
