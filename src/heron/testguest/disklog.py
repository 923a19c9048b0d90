"""The test guest's disk log, host side: prepare a disk for it, and judge what the guest said.

The guest (``disklog.c``) writes numbered, checksummed 4 KiB records to every disk prepared
here, each acknowledged by the disk (O_DSYNC, fdatasync) before it says so on its console. A
writer started again from the disk (a reboot, an HA restart) goes on after the valid prefix
it finds. No acknowledged write is lost when:

* every writer starts after everything its predecessors acknowledged (a record acknowledged,
  then missing at the next start, would be written again and the loss hidden), and
* the valid prefix the guest verifies at the end covers every acknowledged record.

Writers are put in order by the guest's clock at their start (`t=`): starts are a boot apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

HEADER = b"HERON-DISKLOG-V1"
BLOCK = 4096
DEVICE = "/dev/vdb"  # the guest's second virtio disk: where a test puts the log
BINARY = "/bin/heron-disklog"

_RESUME = re.compile(r"heron-disklog resume dev=(\S+) from=(\d+) writer=([0-9a-f]+) t=([\d.]+)")
_ACK = re.compile(r"heron-disklog ack=(\d+) writer=([0-9a-f]+)")
_VERIFIED = re.compile(r"heron-disklog verified dev=(\S+) upto=(\d+)")
_ERROR = re.compile(r"heron-disklog ERROR .*")


def prepare(path: Path, size_mib: int) -> Path:
    """A raw image holding an empty log (sparse: only the header is written)."""
    with path.open("wb") as image:
        image.write(HEADER)
        image.truncate(size_mib * 1024 * 1024)
    return path


@dataclass
class Writer:
    id: str
    started: float  # the guest's clock
    start: int  # the first record it wrote: the valid prefix it found
    acked: int = -1  # its last acknowledged record


@dataclass
class DiskLog:
    writers: dict[str, Writer] = field(default_factory=dict)
    verified: int | None = None  # the valid prefix at the end: records 0..verified-1
    errors: list[str] = field(default_factory=list)  # I/O errors the guest saw (and retried)

    @property
    def acked(self) -> int:
        return max((w.acked for w in self.writers.values()), default=-1)

    def problems(self) -> list[str]:
        """Acknowledged writes the log shows lost (empty: none)."""
        found = []
        before = -1
        for writer in sorted(self.writers.values(), key=lambda w: w.started):
            if writer.start <= before:
                found.append(
                    f"writer {writer.id} started at record {writer.start}, but records up to "
                    f"{before} had been acknowledged: records {writer.start}..{before} were lost"
                )
            before = max(before, writer.acked)
        if self.verified is not None and self.verified <= before:
            found.append(
                f"the log's valid prefix ends at record {self.verified}, but records up to "
                f"{before} were acknowledged"
            )
        return found


def read(texts: list[str]) -> DiskLog:
    """What the guest said about its log, from its console on every node it ran on (a writer
    that moved says it started on one node and goes on acknowledging on the next)."""
    log = DiskLog()
    for text in texts:
        for match in _RESUME.finditer(text):
            _, start, writer, started = match.groups()
            log.writers.setdefault(writer, Writer(writer, float(started), int(start)))
        log.errors += _ERROR.findall(text)
    for text in texts:
        for match in _ACK.finditer(text):
            number, writer = int(match.group(1)), match.group(2)
            if writer in log.writers:
                log.writers[writer].acked = max(log.writers[writer].acked, number)
    return log


def verify_command(device: str = DEVICE) -> str:
    """The command that makes the guest read its log back (its answer: `verified`)."""
    return f"{BINARY} verify {device}"


def verified(output: str) -> int | None:
    """The valid prefix the guest found, from its answer to `verify_command`."""
    found = _VERIFIED.search(output)
    return int(found.group(2)) if found else None
