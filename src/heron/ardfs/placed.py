"""What replicated and erasure-coded volumes share: bookkeeping of stale copies, and moving
a volume from one placement to another (a rebalance).

A volume is a sequence of block groups (a block under replication, a stripe under erasure
coding); placement gives each group its disks, and a kind's `layout` says which chunk of the
group each disk holds. Both kinds move the same way:

* `start_move` records, in the degraded log, every (chunk, disk) the destination placement
  has and the current one has not; then the cluster gives the volume its destination. From
  then on those copies (mirrors) are written with the current ones, and rebuilt from them
  like any stale copy; reads keep using the current placement, whose copies stay complete.
* When no mirror is stale (`move_left` is 0), the destination becomes the placement (the
  ConfigDB record changes, heron-io re-pins); `prune` drops what the degraded log says of
  disks the volume no longer uses, and `collect_garbage` deletes every chunk a disk holds
  that the placement does not give it (on the disks left, and old copies on disks back).

A move interrupted by a restart goes on from the degraded log; a new owner (handover) starts
it again, because it cannot know which mirrors the previous one had copied.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence

from heron.ardfs.chunkstore import Held
from heron.ardfs.cluster import Cluster
from heron.ardfs.config import VolumeSpec
from heron.ardfs.degraded import DegradedLog
from heron.ardfs.layout import Piece, pieces
from heron.ardfs.placement import Disk
from heron.ardfs.target import ChunkTarget
from heron.ardfs.volume import FencedError, VolumeError

log = logging.getLogger(__name__)

Copy = tuple[int, ChunkTarget]  # a chunk on a disk


class PlacedVolume:
    width: int  # disks a block group spans

    def __init__(self, spec: VolumeSpec, cluster: Cluster, degraded: DegradedLog):
        self.spec = spec
        self.id = spec.id
        self.cluster = cluster
        self.degraded = degraded
        # Copies written since the last flush without FUA: a flush syncs them, and marks the
        # ones it could not sync as stale.
        self.unsynced: defaultdict[str, set[int]] = defaultdict(set)
        self.background: set[asyncio.Task[object]] = set()

    @property
    def size(self) -> int:
        return self.spec.size

    @property
    def epoch(self) -> int:
        return self.spec.epoch

    # -- what each kind says -----------------------------------------------------------------

    def groups(self) -> int:
        """How many block groups the volume has."""
        raise NotImplementedError

    def group_of(self, chunk: int) -> int:
        raise NotImplementedError

    def layout(self, group: int, targets: Sequence[ChunkTarget]) -> list[Copy]:
        """The chunks of a group and the disk each is on, given the group's placement."""
        raise NotImplementedError

    def holders(self, chunk: int) -> Sequence[ChunkTarget]:
        """Where stale notes about the chunk are kept: its healthy copies or shards."""
        raise NotImplementedError

    # -- placement ---------------------------------------------------------------------------

    def _current(self, group: int) -> list[Copy]:
        return self.layout(group, self.cluster.place(self.id, group, self.width))

    def _mirrors(self, group: int) -> list[Copy]:
        """The destination's copies the current placement does not have (none unless moving)."""
        destination = self.cluster.destination(self.id, group, self.width)
        if destination is None:
            return []
        current = {(c, t.disk) for c, t in self._current(group)}
        return [(c, t) for c, t in self.layout(group, destination) if (c, t.disk) not in current]

    def mirrors(self, chunk: int) -> list[ChunkTarget]:
        return [t for c, t in self._mirrors(self.group_of(chunk)) if c == chunk]

    def targets_of(self, chunk: int) -> list[ChunkTarget]:
        """Every disk meant to hold the chunk: its placement's, and its mirror if moving."""
        group = self.group_of(chunk)
        return [t for c, t in self._current(group) + self._mirrors(group) if c == chunk]

    # -- stale copies ------------------------------------------------------------------------

    async def mark_stale(self, pairs: list[tuple[int, str]]) -> None:
        fresh = self.degraded.pending(pairs)
        if fresh:
            self.degraded.mark(fresh)  # at once: reads in flight must stop using them
            await asyncio.to_thread(self.degraded.append, fresh, True)
            await share(self.id, fresh, True, self.holders)
            log.warning("volume %s degraded: %s", self.spec.name, fresh[:8])

    async def _rebuilt(self, chunk: int, target: ChunkTarget) -> None:
        """Record durably that a stale copy holds the chunk again."""
        await asyncio.to_thread(self.degraded.append, [(chunk, target.disk)], False)
        self.degraded.clear(chunk, target.disk)
        await share(self.id, [(chunk, target.disk)], False, self.holders)

    async def _put_back(
        self,
        chunk: int,
        stale: Sequence[ChunkTarget],
        data: memoryview | None,
        held: Held | None = None,
    ) -> bool:
        """Write a chunk's content to its stale copies (None: it holds nothing, so they are
        deleted; `held`: an EC parity's mark) and record each that took it; True if every
        one did."""
        done = True
        for target in stale:
            try:
                if data is None:
                    await target.delete(self.id, chunk, self.epoch)
                else:
                    await target.write(self.id, chunk, 0, data, True, self.epoch, held)
            except FencedError:
                raise  # a newer owner exists: this node must stop writing
            except (VolumeError, OSError) as exc:
                log.info("rebuild of chunk %d of %s onto %s failed: %s", chunk, self.spec.name,
                         target.disk, exc)  # fmt: skip
                done = False
                continue
            await self._rebuilt(chunk, target)
        return done

    def stale_chunks(self) -> list[int]:
        return sorted(self.degraded.missing)

    async def prune(self) -> int:
        """Forget stale copies on disks that no longer hold the chunk (after a move)."""
        gone = [
            (chunk, disk)
            for chunk, disks in list(self.degraded.missing.items())
            for disk in disks - {t.disk for t in self.targets_of(chunk)}
        ]
        if gone:
            await asyncio.to_thread(self.degraded.append, gone, False)
            for chunk, disk in gone:
                self.degraded.clear(chunk, disk)
        return len(gone)

    # -- moving ------------------------------------------------------------------------------

    async def start_move(self, disks: Sequence[Disk]) -> int:
        """Mark every copy the destination adds as stale, then write and rebuild them with
        the others (see the module's docstring); how many copies are to be made."""
        pairs = []
        for group in range(self.groups()):
            planned = self.cluster.plan(self.id, disks, group, self.width)
            current = {(c, t.disk) for c, t in self._current(group)}
            pairs += [(c, t.disk) for c, t in self.layout(group, planned)
                      if (c, t.disk) not in current]  # fmt: skip
        fresh = self.degraded.pending(pairs)
        if fresh:
            # Not shared as stale notes: a new owner starts the move again anyway.
            self.degraded.mark(fresh)
            await asyncio.to_thread(self.degraded.append, fresh, True)
        self.cluster.move(self.id, disks)
        return len(pairs)

    def move_left(self) -> int:
        """Copies the destination still misses (0 when not moving)."""
        if self.id not in self.cluster.moving:
            return 0
        return sum(
            1
            for chunk, disks in list(self.degraded.missing.items())
            for target in self.mirrors(chunk)
            if target.disk in disks
        )

    async def collect_garbage(self, before: Sequence[Disk], go_on: Callable[[], bool]) -> int:
        """Delete every chunk the placement does not give to the disk holding it, on the disks
        of the placement `before` and of the current one (a disk back from an absence may
        hold old copies of blocks it no longer has), while `go_on()` says so."""
        disks = {d.id for d in before} | {d.id for d in self.cluster.pinned.get(self.id, [])}
        deleted = 0
        for disk in sorted(disks):
            target = self.cluster.targets[disk]
            try:
                held = await target.chunks(self.id)
            except (VolumeError, OSError) as exc:
                log.info("leftovers of %s on %s not looked for: %s", self.spec.name, disk, exc)
                continue
            for chunk in held:
                if not go_on():
                    return deleted
                if disk in {t.disk for t in self.targets_of(chunk)}:
                    continue
                try:
                    await target.delete(self.id, chunk, self.epoch)
                    deleted += 1
                except (VolumeError, OSError) as exc:
                    log.info("leftover %d of %s on %s: %s", chunk, self.spec.name, disk, exc)
        return deleted

    # -- plumbing ----------------------------------------------------------------------------

    async def _each_piece(
        self, offset: int, length: int, action: Callable[[Piece], Awaitable[None]]
    ) -> None:
        parts = list(pieces(offset, length))
        if len(parts) == 1:
            await action(parts[0])
            return
        for result in await asyncio.gather(*(action(p) for p in parts), return_exceptions=True):
            if isinstance(result, BaseException):
                raise result

    def spawn(self, coro: Awaitable[object]) -> None:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def close(self) -> None:
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)


async def share(
    volume: str,
    pairs: list[tuple[int, str]],
    added: bool,
    holders: Callable[[int], Sequence[ChunkTarget]],
) -> None:
    """Copy stale notes to the disks that hold good copies of those chunks.

    The owner's own log is what it uses; these copies are for a new owner after a handover
    (HA), which merges them from every reachable store before it serves the volume. A note
    that cannot be delivered is logged: it matters only if the owner is lost as well.
    """
    by_target: dict[str, tuple[ChunkTarget, list[tuple[int, str]]]] = {}
    for chunk, disk in pairs:
        for target in holders(chunk):
            by_target.setdefault(target.disk, (target, []))[1].append((chunk, disk))
    jobs = list(by_target.values())
    results = await asyncio.gather(
        *(t.note_stale(volume, notes, added) for t, notes in jobs), return_exceptions=True
    )
    for (target, _), result in zip(jobs, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("stale note for %s on %s not delivered: %s", volume, target.disk, result)
