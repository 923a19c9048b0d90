"""A replicated volume: every 4 MiB block has `copies` copies on disks chosen by placement.

Writes go to every healthy copy at once and are acknowledged when all that are reachable hold
the data as durably as asked (FUA: on disk; otherwise in the page cache until the next flush).
A copy that cannot be written is recorded as stale in the degraded log before the write is
acknowledged, and is neither read nor written again until a rebuild copies the block back.
Reads come from the local copy when there is one; a copy that fails its checksum is marked
stale and rebuilt from a good one, and the read is answered from another copy.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence

from heron.ardfs.checksum import CHUNK_SIZE
from heron.ardfs.cluster import Cluster
from heron.ardfs.config import VolumeSpec
from heron.ardfs.degraded import DegradedLog
from heron.ardfs.gates import BlockGates
from heron.ardfs.layout import Piece, blocks_of, pieces
from heron.ardfs.peer import OP_READ, OP_WRITE, RemoteTarget
from heron.ardfs.placed import Copy, PlacedVolume
from heron.ardfs.target import ChunkTarget, LocalTarget
from heron.ardfs.volume import (
    ChecksumError,
    Extent,
    FencedError,
    UnavailableError,
    VolumeError,
)

log = logging.getLogger(__name__)

ZERO_BLOCK = bytes(CHUNK_SIZE)
NOTHING = memoryview(b"")  # the payload of a read request


async def sync_written(
    cluster: Cluster, volume_id: str, pending: dict[str, set[int]]
) -> list[tuple[int, str]]:
    """fdatasync every disk written since the last flush; the (chunk, disk) pairs whose sync
    failed: those copies may not hold what they acknowledged."""
    disks = list(pending)
    targets = [cluster.targets[d] for d in disks]
    results = await asyncio.gather(*(t.sync(volume_id) for t in targets), return_exceptions=True)
    failures(results)
    return [
        (chunk, disk)
        for disk, result in zip(disks, results, strict=True)
        if isinstance(result, BaseException)
        for chunk in pending[disk]
    ]


def failures(results: Sequence[object]) -> list[BaseException]:
    """The exceptions among gather results; anything but an I/O failure is re-raised."""
    found: list[BaseException] = []
    for result in results:
        if isinstance(result, FencedError):
            raise result  # a newer owner exists: this node must stop writing, not degrade
        if isinstance(result, VolumeError | OSError):
            found.append(result)
        elif isinstance(result, BaseException):
            raise result
    return found


async def finish(work: Awaitable[None], done: Callable[[Exception | None], None]) -> None:
    """Await `work` and report its outcome to `done` (a callback path falling back)."""
    try:
        await work
    except Exception as exc:
        done(exc)
    else:
        done(None)


async def together(
    jobs: Sequence[tuple[ChunkTarget, Callable[[], Awaitable[None]]]],
) -> list[Exception | None]:
    """Run every job at once; per job None or its exception, in order.

    Cheaper than gather for what volumes do: a single job is awaited directly, and jobs on
    local copies (page-cache I/O that does not suspend) run inline while the remote ones,
    started first as tasks, are on the wire.
    """
    if len(jobs) == 1:
        try:
            await jobs[0][1]()
        except Exception as exc:
            return [exc]
        return [None]
    tasks = {i: asyncio.ensure_future(job()) for i, (t, job) in enumerate(jobs) if not t.local}
    results: list[Exception | None] = [None] * len(jobs)
    for i, (_, job) in enumerate(jobs):
        if i not in tasks:
            try:
                await job()
            except Exception as exc:
                results[i] = exc
    for i, task in tasks.items():
        try:
            await task
        except Exception as exc:
            results[i] = exc
    return results


async def on_each(
    targets: Sequence[ChunkTarget], act: Callable[[ChunkTarget], Awaitable[None]]
) -> list[Exception | None]:
    """act(t) on every target at once (see together)."""
    return await together([(t, functools.partial(act, t)) for t in targets])


class ReplicatedVolume(PlacedVolume):
    def __init__(self, spec: VolumeSpec, cluster: Cluster, degraded: DegradedLog):
        super().__init__(spec, cluster, degraded)
        self.width = spec.scheme.copies
        self.gates = BlockGates()

    def groups(self) -> int:
        return blocks_of(self.size)

    def group_of(self, chunk: int) -> int:
        return chunk  # a block is its own group and chunk

    def layout(self, group: int, targets: Sequence[ChunkTarget]) -> list[Copy]:
        return [(group, t) for t in targets]

    def holders(self, chunk: int) -> list[ChunkTarget]:
        return self.healthy(chunk)

    def copies(self, block: int) -> list[ChunkTarget]:
        """The block's copies: its placement's, and the destination's too while moving."""
        current = self.cluster.place(self.id, block, self.width)
        if self.id not in self.cluster.moving:
            return current
        return current + self.mirrors(block)

    def healthy(self, block: int) -> list[ChunkTarget]:
        stale = self.degraded.stale(block)
        found = [t for t in self.copies(block) if t.disk not in stale]
        return sorted(found, key=lambda t: not t.local)  # this node's copy first

    # -- reads -------------------------------------------------------------------------------

    async def read_into(self, offset: int, view: memoryview) -> None:
        parts = list(pieces(offset, len(view)))
        if len(parts) == 1:
            await self._read_piece(parts[0], view)
            return
        results = await asyncio.gather(
            *(self._read_piece(p, view[p.at : p.at + p.length]) for p in parts),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def read_now(self, offset: int, view: memoryview) -> bool:
        """Read from this node's healthy copy without suspending, if the range has one.

        False sends the caller to read_into, which also handles remote copies and repairs.
        """
        block, inside = divmod(offset, CHUNK_SIZE)
        if inside + len(view) > CHUNK_SIZE:
            return False
        copies = self.healthy(block)
        first = copies[0] if copies else None
        if not isinstance(first, LocalTarget):
            return False
        try:
            first.store.read_into(self.id, block, inside, view)
        except (VolumeError, OSError):
            return False
        return True

    def read_start(
        self, offset: int, view: memoryview, done: Callable[[Exception | None], None]
    ) -> bool:
        """Start a read from a remote copy that completes by callback (no task), when the
        range is in one block whose first healthy copy is on a connected peer."""
        block, inside = divmod(offset, CHUNK_SIZE)
        if inside + len(view) > CHUNK_SIZE:
            return False
        copies = self.healthy(block)
        first = copies[0] if copies else None
        if not isinstance(first, RemoteTarget) or not first.client.up:
            return False

        def replied(error: Exception | None) -> None:
            if error is None:
                done(None)
            else:  # the general path tries every copy and repairs
                self.spawn(finish(self._read_piece(Piece(block, inside, len(view), 0), view), done))

        return first.client.send(
            OP_READ, self.id, first.disk, block, inside, 0, NOTHING, replied, into=view
        )

    async def _read_piece(self, piece: Piece, view: memoryview) -> None:
        errors: list[Exception] = []
        corrupt: list[tuple[int, str]] = []
        for target in self.healthy(piece.block):
            try:
                await target.read_into(self.id, piece.block, piece.offset, view)
            except ChecksumError as exc:
                corrupt.append((piece.block, target.disk))
                errors.append(exc)
                continue
            except (VolumeError, OSError) as exc:
                errors.append(exc)
                continue
            if corrupt:
                await self.mark_stale(corrupt)
                self.spawn(self.rebuild_block(piece.block))
            return
        # Corrupt copies with no good one beside them are not marked stale: that would make the
        # whole block unreadable, when only the damaged sectors are, until they are rewritten.
        if not errors:
            raise UnavailableError(f"block {piece.block} of {self.spec.name} has no healthy copy")
        raise VolumeError(f"block {piece.block} of {self.spec.name}: no copy readable: {errors}")

    # -- writes ------------------------------------------------------------------------------

    async def _to_copies(
        self,
        block: int,
        fua: bool,
        act: Callable[[ChunkTarget], Awaitable[None]],
    ) -> None:
        async with self.gates.shared(block):
            live = self.healthy(block)
            if not live:
                raise UnavailableError(f"block {block} of {self.spec.name} has no healthy copy")
            results = await on_each(live, act)
            errors = failures(results)
            failed = [t for t, r in zip(live, results, strict=True) if r is not None]
            if len(failed) == len(live):
                raise UnavailableError(f"block {block}: no copy could be written: {errors}")
            if not fua:
                for target, result in zip(live, results, strict=True):
                    if result is None:
                        self.unsynced[target.disk].add(block)
            if failed:
                await self.mark_stale([(block, t.disk) for t in failed])

    def write_now(
        self, offset: int, data: memoryview, fua: bool, done: Callable[[Exception | None], None]
    ) -> bool:
        """Start a write without a task when nothing about it is unusual; `done` gets the
        outcome once. False: nothing was started, use write().

        The common case of a replicated 4 KiB write (one block, every copy healthy, peers
        connected, no FUA) then costs no coroutine, task or future on this node: the local
        copy is written inline, the remote ones are sent, and the last reply completes it.
        Anything that goes wrong hands over to the general path in a task.
        """
        block, inside = divmod(offset, CHUNK_SIZE)
        if fua or inside + len(data) > CHUNK_SIZE or self.degraded.stale(block):
            return False
        copies = self.copies(block)
        remote = [t for t in copies if isinstance(t, RemoteTarget)]
        if len(remote) + sum(isinstance(t, LocalTarget) for t in copies) != len(copies):
            return False  # a copy on a disk gone from the cluster: the general path
        if any(not t.client.up for t in remote) or not self.gates.try_enter(block):
            return False
        waiting = len(copies)
        failed: list[tuple[ChunkTarget, Exception]] = []

        def replied(target: ChunkTarget, error: Exception | None) -> None:
            nonlocal waiting
            if error is None:
                self.unsynced[target.disk].add(block)
            else:
                failed.append((target, error))
            waiting -= 1
            if waiting:
                return
            if not failed:
                self.gates.leave(block)
                done(None)
            else:
                self.spawn(self._after_failed_copies(block, copies, failed, done))

        # Remote copies first, and on the wire at once: the local copy is written while the
        # peers write theirs.
        for peer in remote:
            started = peer.client.send(
                OP_WRITE, self.id, peer.disk, block, inside, self.epoch, data,
                functools.partial(replied, peer),
            )  # fmt: skip
            if not started:
                replied(peer, UnavailableError(f"node {peer.node} is not connected"))
        for target in copies:
            if isinstance(target, LocalTarget):
                try:
                    target.store.write(self.id, block, inside, data, False, self.epoch)
                except (VolumeError, OSError) as exc:
                    replied(target, exc)
                else:
                    replied(target, None)
        return True

    async def _after_failed_copies(
        self,
        block: int,
        copies: list[ChunkTarget],
        failed: list[tuple[ChunkTarget, Exception]],
        done: Callable[[Exception | None], None],
    ) -> None:
        try:
            fenced = next((e for _, e in failed if isinstance(e, FencedError)), None)
            if fenced is not None:
                done(fenced)
            elif len(failed) == len(copies):
                done(UnavailableError(f"block {block}: no copy could be written: {failed}"))
            else:
                await self.mark_stale([(block, t.disk) for t, _ in failed])
                done(None)
        except Exception as exc:
            done(exc)
        finally:
            self.gates.leave(block)

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        async def piece(p: Piece) -> None:
            chunk = data[p.at : p.at + p.length]
            await self._to_copies(
                p.block, fua, lambda t: t.write(self.id, p.block, p.offset, chunk, fua, self.epoch)
            )

        await self._each_piece(offset, len(data), piece)

    async def trim(self, offset: int, length: int, fua: bool) -> None:
        async def piece(p: Piece) -> None:
            await self._to_copies(
                p.block,
                fua,
                lambda t: t.trim(self.id, p.block, p.offset, p.length, fua, self.epoch),
            )

        await self._each_piece(offset, length, piece)

    async def write_zeroes(self, offset: int, length: int, fua: bool, may_trim: bool) -> None:
        if may_trim:
            await self.trim(offset, length, fua)
            return

        async def piece(p: Piece) -> None:
            zeros = memoryview(ZERO_BLOCK)[: p.length]
            await self._to_copies(
                p.block, fua, lambda t: t.write(self.id, p.block, p.offset, zeros, fua, self.epoch)
            )

        await self._each_piece(offset, length, piece)

    async def flush(self) -> None:
        pending, self.unsynced = self.unsynced, defaultdict(set)
        if not pending:
            return
        lost = await sync_written(self.cluster, self.id, pending)
        if lost:
            # Those copies may not hold what they acknowledged: never trust them again unrebuilt.
            await self.mark_stale(lost)
            for block in {b for b, _ in lost}:
                if not self.healthy(block):
                    raise UnavailableError(f"block {block}: no copy could be made durable")

    # -- allocation --------------------------------------------------------------------------

    async def allocated_blocks(self, first: int, count: int) -> list[bool]:
        targets = {t.disk: t for b in range(first, first + count) for t in self.healthy(b)}
        found = [False] * count
        results = await asyncio.gather(
            *(t.allocated(self.id, first, count) for t in targets.values()),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                continue  # another copy answers for the blocks it holds
            found = [a or b for a, b in zip(found, result, strict=True)]
        return found

    async def extents(self, offset: int, length: int) -> list[Extent]:
        return await block_extents(self.allocated_blocks, offset, length, self.size)

    # -- repair ------------------------------------------------------------------------------

    async def rebuild_block(self, block: int, disks: set[str] | None = None) -> bool:
        """Copy the block from a healthy copy to its stale ones (those on `disks`, if given);
        True if none of those is left stale."""
        async with self.gates.exclusive(block):
            stale = [
                t
                for t in self.copies(block)
                if t.disk in self.degraded.stale(block) and (disks is None or t.disk in disks)
            ]
            if not stale:
                return True
            source = None
            data = memoryview(bytearray(CHUNK_SIZE))
            sources = self.healthy(block)
            # Rotate over the healthy copies: a rebuild then reads from all of them at once.
            sources = sources[block % len(sources) :] + sources[: block % len(sources)]
            for target in sources:
                try:
                    present = (await target.allocated(self.id, block, 1))[0]
                    if present:
                        await target.read_into(self.id, block, 0, data)
                    source = target
                    break
                except ChecksumError:
                    await self.mark_stale([(block, target.disk)])
                except (VolumeError, OSError) as exc:
                    log.info("rebuild of block %d: %s unreadable: %s", block, target.disk, exc)
            if source is None:
                return False
            return await self._put_back(block, stale, data if present else None)

    def repairable(self, chunk: int, disk: str) -> bool:
        """Whether another healthy copy exists to rebuild this one from."""
        return any(t.disk != disk for t in self.healthy(chunk))

    async def rebuild_chunk(self, chunk: int, disks: set[str] | None = None) -> bool:
        return await self.rebuild_block(chunk, disks)


async def block_extents(
    allocated: Callable[[int, int], Awaitable[Sequence[bool | None]]],
    offset: int,
    length: int,
    size: int,
) -> list[Extent]:
    """Extents of a byte range from per-block allocation (None: unknown, reported as data),
    merged and clipped to the range."""
    first = offset // CHUNK_SIZE
    last = min(offset + length, size) - 1
    count = last // CHUNK_SIZE - first + 1
    present = await allocated(first, count)
    extents: list[Extent] = []
    for i, here in enumerate(present):
        start = max(offset, (first + i) * CHUNK_SIZE)
        end = min(offset + length, (first + i + 1) * CHUNK_SIZE)
        hole = here is False
        if extents and extents[-1].hole == hole:
            extents[-1] = Extent(extents[-1].length + end - start, hole)
        else:
            extents.append(Extent(end - start, hole))
    return extents


def total_blocks(spec: VolumeSpec) -> int:
    return blocks_of(spec.size)
