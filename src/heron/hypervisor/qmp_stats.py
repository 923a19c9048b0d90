"""What QEMU counts for Monica (heron.monitor): each disk's I/O, the guest's memory and its
balloon. Replies are read into typed records; the collector names the series.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from heron.hypervisor.qmp_base import QMPCommandError, QMPCommands


@dataclass(frozen=True)
class BlockStats:
    """One guest disk's counters since QEMU started (`query-blockstats`, one entry per
    device backend: what the guest's device asked of it, whatever node is on top now)."""

    disk: str  # the disk's name: the device id without "-dev" ("disk0"), else QEMU's name
    read_bytes: int
    write_bytes: int
    read_ops: int
    write_ops: int
    flush_ops: int
    read_ns: int  # time spent by all reads, their latencies summed
    write_ns: int
    flush_ns: int

    @classmethod
    def from_qmp(cls, reply: Mapping[str, Any]) -> "BlockStats":
        stats = reply["stats"]
        return cls(
            disk=disk_name(reply),
            read_bytes=int(stats["rd_bytes"]),
            write_bytes=int(stats["wr_bytes"]),
            read_ops=int(stats["rd_operations"]),
            write_ops=int(stats["wr_operations"]),
            flush_ops=int(stats["flush_operations"]),
            read_ns=int(stats["rd_total_time_ns"]),
            write_ns=int(stats["wr_total_time_ns"]),
            flush_ns=int(stats["flush_total_time_ns"]),
        )


def disk_name(reply: Mapping[str, Any]) -> str:
    """A disk's stable name in a `query-blockstats` entry. Heron's disks are `-blockdev`s
    whose backend has no name ("device": ""), and whose top node's name changes with
    snapshots and mirrors (disk0, then disk0-1a2b3c4d); their device is `disk0-dev`, and its
    QOM path ("qdev": /machine/peripheral/disk0-dev/virtio-backend) stays. Others (a
    `-drive`) keep their backend's name."""
    qdev = str(reply.get("qdev") or "")
    parts = qdev.split("/")
    if "peripheral" in parts[:-1]:
        return parts[parts.index("peripheral") + 1].removesuffix("-dev")
    return str(reply.get("device") or reply.get("node-name") or qdev)


@dataclass(frozen=True)
class MemorySize:
    """`query-memory-size-summary`: boot RAM and what was plugged since (DIMMs), in bytes."""

    base: int
    plugged: int

    @property
    def total(self) -> int:
        return self.base + self.plugged


class StatsCommands(QMPCommands):
    async def block_stats(self) -> list[BlockStats]:
        """Every guest disk's I/O counters; disks without a device (a node being copied to)
        are not the guest's and are left out.

        Raises QMPSessionError.
        """
        reply = await self.execute("query-blockstats")
        return [BlockStats.from_qmp(entry) for entry in reply if entry.get("qdev")]

    async def memory_size(self) -> MemorySize:
        """The guest's RAM: boot memory and plugged DIMMs.

        Raises QMPSessionError.
        """
        reply = await self.execute("query-memory-size-summary")
        return MemorySize(int(reply["base-memory"]), int(reply.get("plugged-memory", 0)))

    async def balloon_bytes(self) -> int | None:
        """The RAM the guest has after its balloon, or None when the VM has no balloon
        device (QEMU refuses the query: "No balloon device has been activated").

        Raises QMPSessionError, QMPCommandError for any other refusal.
        """
        try:
            reply = await self.execute("query-balloon")
        except QMPCommandError as exc:
            if exc.error_class == "DeviceNotActive":
                return None
            raise
        return int(reply["actual"])
