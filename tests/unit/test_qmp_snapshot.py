"""The snapshot commands (hypervisor.qmp_snapshot) against a scripted `execute`: what each
sends and how QEMU's replies are read. tests/integration/test_qemu_snapshot.py holds them to
a real QEMU."""

from collections.abc import Mapping
from typing import Any

import pytest

from heron.hypervisor.qmp_snapshot import (
    InternalSnapshot,
    Job,
    NodeSnapshots,
    SnapshotCommands,
    snapshot_transaction,
)


class Scripted(SnapshotCommands):
    """Records every command; answers each with the next reply scripted for it (else {})."""

    def __init__(self, **replies: list[Any]):
        self.sent: list[tuple[str, dict[str, Any] | None]] = []
        self.replies = {name.replace("_", "-"): list(r) for name, r in replies.items()}

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        self.sent.append((command, arguments))
        queue = self.replies.get(command)
        return queue.pop(0) if queue else {}


# Shaped as QEMU 7.2 answers query-named-block-nodes (its SnapshotInfo and ImageInfo).
SNAPSHOT = {
    "id": "1",
    "name": "with-memory",
    "vm-state-size": 38_211_072,
    "date-sec": 1_796_352_000,
    "date-nsec": 512,
    "vm-clock-sec": 12,
    "vm-clock-nsec": 250_000_000,
    "icount": -1,
}
NODE = {
    "node-name": "disk0",
    "drv": "qcow2",
    "file": "/pool/disk0.qcow2",
    "image": {
        "filename": "/pool/disk0.qcow2",
        "format": "qcow2",
        "virtual-size": 16 * 1024**2,
        "actual-size": 3_407_872,
        "snapshots": [SNAPSHOT],
    },
}
PROTOCOL = {"node-name": "#block123", "drv": "file", "image": {"virtual-size": 1}}


def test_one_transaction_snapshots_every_node() -> None:
    assert snapshot_transaction(["disk0", "disk1"], "s1") == [
        {"type": "blockdev-snapshot-internal-sync", "data": {"device": "disk0", "name": "s1"}},
        {"type": "blockdev-snapshot-internal-sync", "data": {"device": "disk1", "name": "s1"}},
    ]


async def test_snapshot_disks_sends_the_transaction() -> None:
    qemu = Scripted()
    await qemu.snapshot_disks(["disk0", "disk1"], "s1")
    assert qemu.sent == [
        ("transaction", {"actions": snapshot_transaction(["disk0", "disk1"], "s1")})
    ]
    with pytest.raises(ValueError):
        await qemu.snapshot_disks([], "s1")


def test_a_snapshot_is_read_from_qemus_snapshot_info() -> None:
    assert InternalSnapshot.from_qmp(SNAPSHOT) == InternalSnapshot(
        id="1",
        name="with-memory",
        vm_state_size=38_211_072,
        date_sec=1_796_352_000,
        vm_clock_ns=12_250_000_000,
    )


async def test_disk_snapshots_lists_the_asked_nodes_with_sizes() -> None:
    qemu = Scripted(query_named_block_nodes=[[NODE, PROTOCOL], [NODE, PROTOCOL]])
    (disk0,) = await qemu.disk_snapshots(["disk0", "disk9"])
    assert disk0 == NodeSnapshots(
        node="disk0",
        virtual_size=16 * 1024**2,
        actual_size=3_407_872,
        snapshots=(InternalSnapshot.from_qmp(SNAPSHOT),),
    )
    assert disk0.names() == ["with-memory"]
    every = await qemu.disk_snapshots()
    assert [n.node for n in every] == ["disk0", "#block123"]
    assert every[1].snapshots == ()
    assert qemu.sent == [("query-named-block-nodes", {"flat": True})] * 2


async def test_delete_returns_what_was_deleted() -> None:
    qemu = Scripted(blockdev_snapshot_delete_internal_sync=[{**SNAPSHOT, "vm-state-size": 0}])
    deleted = await qemu.delete_disk_snapshot("disk1", "with-memory")
    assert (deleted.name, deleted.vm_state_size) == ("with-memory", 0)
    assert qemu.sent == [
        ("blockdev-snapshot-delete-internal-sync", {"device": "disk1", "name": "with-memory"})
    ]


async def test_whole_vm_snapshots_are_jobs() -> None:
    qemu = Scripted()
    devices = ("disk0", "disk1")
    await qemu.snapshot_save("j1", "s", vmstate="disk0", devices=devices)
    await qemu.snapshot_load("j2", "s", vmstate="disk0", devices=devices)
    await qemu.snapshot_delete("j3", "s", devices=devices)
    await qemu.job_dismiss("j1")
    both = ["disk0", "disk1"]
    assert qemu.sent == [
        ("snapshot-save", {"job-id": "j1", "tag": "s", "vmstate": "disk0", "devices": both}),
        ("snapshot-load", {"job-id": "j2", "tag": "s", "vmstate": "disk0", "devices": both}),
        ("snapshot-delete", {"job-id": "j3", "tag": "s", "devices": both}),
        ("job-dismiss", {"id": "j1"}),
    ]


def job(status: str, current: int, **extra: Any) -> Mapping[str, Any]:
    return {
        "id": "save",
        "type": "snapshot-save",
        "status": status,
        "current-progress": current,
        "total-progress": 1,
        **extra,
    }


async def test_wait_job_follows_it_to_its_end_and_dismisses_it() -> None:
    failed = job("concluded", 1, error="Device 'disk1' is writable but does not support snapshots")
    qemu = Scripted(query_jobs=[[job("running", 0)], [failed]])
    seen: list[str] = []

    async def progress(j: Job) -> None:
        seen.append(j.status)

    done = await qemu.wait_job("save", 10, progress)
    assert done == Job.from_qmp(failed)
    assert done is not None and done.concluded and "does not support" in done.error
    assert seen == ["running", "concluded"]
    assert qemu.sent[-1] == ("job-dismiss", {"id": "save"})


async def test_wait_job_for_a_job_that_is_gone_or_slow_is_none() -> None:
    assert await Scripted(query_jobs=[[]]).wait_job("save", 10) is None
    slow = Scripted(query_jobs=[[job("running", 0)]] * 3)
    assert await slow.wait_job("save", 0) is None
    assert ("job-dismiss", {"id": "save"}) not in slow.sent


async def test_a_memory_state_image_is_opened_and_closed_once() -> None:
    protocol = {"driver": "nbd", "server": {"type": "unix", "path": "/s"}, "export": "v"}
    opened = {"node-name": "mem-s1", "drv": "qcow2"}
    qemu = Scripted(query_named_block_nodes=[[NODE], [NODE, opened], [NODE, opened], [NODE]])
    await qemu.open_image("mem-s1", protocol)
    await qemu.open_image("mem-s1", protocol)  # a repeat: it is open already
    await qemu.close_image("mem-s1")
    await qemu.close_image("mem-s1")  # closed already: nothing to do
    sent = [(c, a) for c, a in qemu.sent if c != "query-named-block-nodes"]
    assert sent == [
        ("blockdev-add", {"node-name": "mem-s1", "driver": "qcow2", "file": protocol}),
        ("blockdev-del", {"node-name": "mem-s1"}),
    ]
