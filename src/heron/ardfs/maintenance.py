"""Background work of a heron-io: rebuilding stale copies, scrubbing, publishing status.

Rebuild: every volume's degraded log lists copies (or shards) that missed writes or were
found corrupt. As soon as the disk holding one is reachable again, the chunk is copied back
from a healthy copy (replication: the source rotates over all healthy copies, so a rebuild
reads from every one of them in parallel) or decoded from the other shards (EC), several at
once and rate-limited. It is resumable by construction: each rebuilt chunk leaves the log
durably, so a restart goes on with what is left.

Scrub: every chunk on this node's disks is read back and checked against its checksums,
slowly (rate-limited, a slice at a time so VM I/O barely notices). A corrupt copy is marked
stale with the volume's owner (this node, or the owner's heron-io over the peer protocol),
which rebuilds it like any other stale copy.

Parity marks: the owner of an EC volume gives every parity written before marks its mark
(erasure.py), once per volume and epoch, again a minute later while a disk does not answer.

Status: state_dir/status.json, rewritten every second, for herond (and people) to read; and
at once when a volume goes from healthy to degraded, before the I/O that degraded it is
answered, so a status read after that answer says "healthy" only once the copies are rebuilt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from heron.ardfs.checksum import CHUNK_SIZE, SECTORS
from heron.ardfs.chunkstore import ChunkStore
from heron.ardfs.cluster import Cluster, GoneTarget
from heron.ardfs.config import IoConfig
from heron.ardfs.disks import check_disk
from heron.ardfs.erasure import ErasureVolume
from heron.ardfs.kinds import AnyVolume
from heron.ardfs.peer import OP_CORRUPT, OP_PING, PeerClient, RemoteTarget
from heron.ardfs.volume import VolumeError

log = logging.getLogger(__name__)

IDLE = 1.0  # seconds between looks at the degraded logs when there was nothing to do
DISK_CHECK = 5.0  # seconds between checks of this node's disks
DISK_HANG = 30.0  # a disk whose check has not returned by then has failed
MARKS_RETRY = 60.0  # seconds before parity marks left unset (a disk did not answer) are retried
SCRUB_SLICE = 64  # sectors verified in one step on the event loop (256 KiB)


class RateLimiter:
    """A token bucket without the bucket: how long to wait before spending `n` bytes."""

    def __init__(self, bytes_per_s: float, clock: Callable[[], float] = time.monotonic):
        self.rate = bytes_per_s
        self.clock = clock
        self.next_free = clock()

    def delay(self, n: int) -> float:
        now = self.clock()
        start = max(now, self.next_free)
        self.next_free = start + n / self.rate
        return start - now


@dataclass
class RebuildProgress:
    rebuilt_chunks: int = 0
    failed_attempts: int = 0
    started: float | None = None  # monotonic time of the first chunk of this run
    bytes: int = 0
    last_run_bytes_per_s: float = 0.0  # of the last run that left nothing stale

    def rate(self) -> float:
        if self.started is None:
            return 0.0
        return self.bytes / max(time.monotonic() - self.started, 1e-6)


@dataclass
class ScrubProgress:
    passes: int = 0
    chunks_checked: int = 0
    corrupt_found: int = 0
    reported: int = 0
    unrepaired: list[str] = field(default_factory=list)


class Host(Protocol):
    """What maintenance needs of the heron-io it runs in (io.Io): a protocol, because the
    process owns its maintenance and must stay the only one of the two that imports the other.
    """

    @property
    def config(self) -> IoConfig: ...

    @property
    def stores(self) -> dict[str, ChunkStore]: ...

    @property
    def cluster(self) -> Cluster: ...

    @property
    def volumes(self) -> dict[str, AnyVolume]: ...

    @property
    def peers(self) -> dict[str, PeerClient]: ...

    @property
    def failed_disks(self) -> dict[str, str]: ...

    def fail_disk(self, disk: str, why: str) -> None: ...

    def owns(self, name: str) -> bool: ...

    def layer_status(self, name: str) -> dict[str, Any]: ...


class Maintenance:
    def __init__(self, io: Host):
        self.io = io
        config = io.config
        self.rebuild_limit = RateLimiter(config.rebuild_mb_s * 1e6)
        self.scrub_limit = RateLimiter(max(config.scrub_mb_s, 1e-3) * 1e6)
        self.rebuild: dict[str, RebuildProgress] = {}
        self.scrub = ScrubProgress()
        self.usage: dict[str, tuple[int, int]] = {}  # disk -> (total, free) at its last check
        # (volume id, owner epoch) -> when to give its parities marks again (inf: all have)
        self.marks_due: dict[tuple[str, int], float] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks.append(asyncio.create_task(self._check_disks_forever()))
        self.tasks.append(asyncio.create_task(self._forever(self.rebuild_pass, "rebuild")))
        self.tasks.append(asyncio.create_task(self._forever(self.write_status, "status")))
        self.tasks.append(asyncio.create_task(self._forever(self.marks_pass, "parity marks")))
        if self.io.config.scrub_mb_s > 0:
            self.tasks.append(asyncio.create_task(self._scrub_forever()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _forever(self, work: Callable[[], Any], name: str) -> None:
        while True:
            try:
                busy = await work()
            except Exception:
                log.exception("%s pass failed", name)
                busy = False
            if not busy:
                await asyncio.sleep(IDLE)

    # -- disks -------------------------------------------------------------------------------

    async def _check_disks_forever(self) -> None:
        while True:
            await asyncio.sleep(DISK_CHECK)
            try:
                await self.check_disks()
            except Exception:
                log.exception("disk check failed")

    async def check_disks(self) -> None:
        """Check every served disk (in threads, at once) and stop serving those that failed:
        a disk can die while served, and I/O errors on single chunks only mark those copies
        stale. Also measures their capacity, off the event loop."""

        async def check(disk: str, root: Path) -> None:
            try:
                self.usage[disk] = await asyncio.wait_for(
                    asyncio.to_thread(check_disk, disk, root), DISK_HANG
                )
            except TimeoutError:
                self.io.fail_disk(disk, f"it did not answer a check in {DISK_HANG:.0f} s")
            except OSError as exc:
                self.io.fail_disk(disk, str(exc) or type(exc).__name__)

        await asyncio.gather(*(check(d, s.root) for d, s in list(self.io.stores.items())))

    # -- rebuild -----------------------------------------------------------------------------

    async def reachable(self, volume: AnyVolume, chunk: int) -> set[str]:
        """The disks holding a stale copy of the chunk that answer now: those are rebuilt
        (one gone from the cluster waits for a move to take its copies elsewhere)."""
        found = set()
        for disk in volume.degraded.stale(chunk):
            target = self.io.cluster.targets.get(disk)
            if target is None or isinstance(target, GoneTarget):
                continue
            if isinstance(target, RemoteTarget) and not target.client.up:
                try:
                    await target.client.call(OP_PING, volume.id, disk)
                except VolumeError:
                    continue
            found.add(disk)
        return found

    async def rebuild_pass(self) -> bool:
        did = False
        gate = asyncio.Semaphore(self.io.config.rebuild_parallel)
        for name, volume in list(self.io.volumes.items()):
            chunks = volume.stale_chunks()
            if not chunks or volume.spec.owner not in (None, self.io.config.node):
                continue  # another node's to repair: it writes the volume
            progress = self.rebuild.setdefault(name, RebuildProgress())

            results = await asyncio.gather(
                *(self._rebuild_one(volume, c, progress, gate) for c in chunks),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    log.warning("rebuild of %s: %s", name, result)
            done = sum(1 for r in results if r is True)
            if done:
                did = True
                log.info("volume %s: %d chunks rebuilt, %d stale left", name, done,
                         len(volume.stale_chunks()))  # fmt: skip
            if not volume.stale_chunks() and progress.started is not None:
                progress.last_run_bytes_per_s = progress.rate()
                progress.started = None
                progress.bytes = 0
        return did

    async def _rebuild_one(
        self, volume: AnyVolume, chunk: int, progress: RebuildProgress, gate: asyncio.Semaphore
    ) -> bool:
        async with gate:
            disks = await self.reachable(volume, chunk)
            if not disks:
                return False
            await asyncio.sleep(self.rebuild_limit.delay(CHUNK_SIZE))
            if progress.started is None:
                progress.started = time.monotonic()
            if await volume.rebuild_chunk(chunk, disks):
                progress.rebuilt_chunks += 1
                progress.bytes += CHUNK_SIZE
                return True
            progress.failed_attempts += 1
            return False

    # -- parity marks ------------------------------------------------------------------------

    async def marks_pass(self) -> bool:
        """Give the parities of the EC volumes (and layers) this node owns their marks where
        they have none: one writer only, so never for a volume nobody owns."""
        did = False
        for name, volume in list(self.io.volumes.items()):
            if not isinstance(volume, ErasureVolume) or not self.io.owns(name):
                continue
            key = (volume.id, volume.epoch)
            if self.marks_due.get(key, 0.0) > time.monotonic():
                continue
            done = await volume.adopt_marks()
            self.marks_due[key] = float("inf") if done else time.monotonic() + MARKS_RETRY
            did = True
        return did

    # -- scrub -------------------------------------------------------------------------------

    async def _scrub_forever(self) -> None:
        while True:
            try:
                await self.scrub_pass()
            except Exception:
                log.exception("scrub pass failed")
            await asyncio.sleep(max(self.io.config.scrub_pause_s, IDLE))

    async def scrub_pass(self) -> None:
        for disk, store in list(self.io.stores.items()):
            for volume in store.volumes():
                for chunk in store.chunks(volume):
                    bad: list[int] = []
                    for first in range(0, SECTORS, SCRUB_SLICE):
                        await asyncio.sleep(self.scrub_limit.delay(SCRUB_SLICE * 4096))
                        try:
                            bad += store.verify(volume, chunk, first, SCRUB_SLICE)
                        except (VolumeError, OSError) as exc:
                            log.info("scrub of %s/%d: %s", volume, chunk, exc)
                            break  # deleted or unreadable meanwhile: the next pass sees
                    self.scrub.chunks_checked += 1
                    if bad:
                        self.scrub.corrupt_found += 1
                        log.warning("scrub: chunk %s/%d on %s corrupt in sectors %s",
                                    volume, chunk, disk, bad[:8])  # fmt: skip
                        await self.report(volume, chunk, disk)
        self.scrub.passes += 1

    async def report(self, volume_id: str, chunk: int, disk: str) -> None:
        """Hand a corrupt copy to whoever repairs the volume."""
        volume = next((v for v in self.io.volumes.values() if v.id == volume_id), None)
        if volume is None:
            self.scrub.unrepaired.append(f"{volume_id}/{chunk}@{disk}: no such volume here")
            return
        owner = volume.spec.owner
        if owner is None or owner == self.io.config.node:
            await self.mark_corrupt(volume_id, chunk, disk)
            self.scrub.reported += 1
            return
        client = self.io.peers.get(owner)
        try:
            if client is None:
                raise VolumeError(f"owner {owner} unknown")
            await client.call(OP_CORRUPT, volume_id, disk, chunk)
            self.scrub.reported += 1
        except VolumeError as exc:
            self.scrub.unrepaired.append(f"{volume_id}/{chunk}@{disk}: {exc}")

    async def mark_corrupt(self, volume_id: str, chunk: int, disk: str) -> None:
        """A corrupt copy reported here (by our scrubber or another node's): rebuild it."""
        volume = next((v for v in self.io.volumes.values() if v.id == volume_id), None)
        if volume is None:
            raise VolumeError(f"volume {volume_id} is not served here")
        if not volume.repairable(chunk, disk):
            # Marking the only good-looking copy stale would make the whole chunk unreadable;
            # the damaged sectors alone fail to read until they are rewritten.
            self.scrub.unrepaired.append(f"{volume_id}/{chunk}@{disk}: no other copy")
            raise VolumeError(f"chunk {chunk} of {volume.spec.name}: no copy to repair from")
        await volume.mark_stale([(chunk, disk)])

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        volumes = {}
        for name, volume in self.io.volumes.items():
            progress = self.rebuild.get(name, RebuildProgress())
            stale = volume.stale_chunks()
            volumes[name] = {
                "id": volume.id,
                "scheme": volume.spec.scheme.label(),
                "size": volume.spec.size,
                "epoch": volume.spec.epoch,
                "state": "degraded" if stale else "healthy",
                "owned": self.io.owns(name),
                "stale_copies": volume.degraded.count(),
                "stale_chunks": len(stale),
                "placement": [d.id for d in self.io.cluster.pinned.get(volume.id, [])],
                "moving_to": [d.id for d in self.io.cluster.moving.get(volume.id, [])] or None,
                "move_left": volume.move_left(),
                "rebuilt_chunks": progress.rebuilt_chunks,
                "rebuild_bytes_per_s": round(progress.rate()),
                "last_rebuild_bytes_per_s": round(progress.last_run_bytes_per_s),
                **self.io.layer_status(name),
            }
        disks: dict[str, dict[str, Any]] = {
            disk: {"error": why} for disk, why in self.io.failed_disks.items()
        }
        for disk, store in self.io.stores.items():
            total, free = self.usage.get(disk, (0, 0))
            disks[disk] = {"path": str(store.root), "total_bytes": total, "free_bytes": free}
        return {
            "node": self.io.config.node,
            "time": time.time(),
            "disks": disks,
            "peers": {name: client.up for name, client in self.io.peers.items()},
            "volumes": volumes,
            "scrub": {
                "passes": self.scrub.passes,
                "chunks_checked": self.scrub.chunks_checked,
                "corrupt_found": self.scrub.corrupt_found,
                "reported": self.scrub.reported,
                "unrepaired": self.scrub.unrepaired[-20:],
            },
        }

    async def write_status(self) -> bool:
        self.publish()
        return False

    def publish(self) -> None:
        """Write the status file now (on the loop, in one step: nothing changes meanwhile)."""
        path = self.io.config.state_dir / "status.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status(), indent=1))
        os.replace(tmp, path)

    def volume_degraded(self) -> None:
        """A volume (or layer) has just had its first copy marked stale: publish that before
        the write, flush or read that found it is answered. The file is otherwise up to a
        second old, and one written just before the mark would tell whoever reads it after
        that answer "healthy" (say, that the node which came back has its copies again and
        another may go down). Once per healthy-to-degraded step of a volume: a node loss
        costs one rewrite per volume, not one per stale chunk. Best effort: a failure here
        must not fail the I/O, and the next periodic rewrite says the same."""
        try:
            self.publish()
        except Exception:
            log.exception("status not rewritten when a volume became degraded")
