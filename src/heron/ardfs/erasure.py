"""An erasure-coded volume, k data shards + 1 parity shard (see layout.py for the geometry).

A write of a range of one block is a read-modify-write of that range only:
    new parity = old parity ^ old data ^ new data
under the stripe's lock (two writes to one stripe both change its parity). Every shard that
cannot be read or written is recorded stale in the degraded log before the write is
acknowledged, and the write still succeeds as long as the stripe stays decodable:
  * data shard lost: parity = new data ^ the other data shards (a reconstruct-write);
    the data lives in the parity until the shard is rebuilt;
  * parity lost: the data is written, the parity rebuilt later.
A read of a lost or corrupt data shard is the XOR of the same range of all other shards.

Every write of a parity also says which data shard it writes (or deletes), and the parity's
chunk store keeps that mark with it (chunkstore.Held): asked what it holds while a disk does
not answer, the volume tells from the mark whether that disk's data shard was ever written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial

import numpy as np

from heron.ardfs.checksum import CHUNK_SIZE
from heron.ardfs.chunkstore import Held
from heron.ardfs.cluster import Cluster
from heron.ardfs.config import VolumeSpec
from heron.ardfs.degraded import DegradedLog
from heron.ardfs.layout import Piece, blocks_of, ec_chunk, ec_shard
from heron.ardfs.parity import xor_into
from heron.ardfs.peer import OP_READ, OP_WRITE, RemoteTarget
from heron.ardfs.placed import Copy, PlacedVolume
from heron.ardfs.replicated import (
    NOTHING,
    block_extents,
    failures,
    finish,
    sync_written,
    together,
)
from heron.ardfs.target import ChunkTarget, LocalTarget
from heron.ardfs.volume import ChecksumError, Extent, FencedError, UnavailableError, VolumeError

log = logging.getLogger(__name__)


class StripeLocks:
    """One lock per stripe in use, handed to waiters in order; gone when nobody holds it.

    Unlike asyncio.Lock it can be taken without awaiting (try_acquire), which the callback
    write path needs.
    """

    def __init__(self) -> None:
        self._held: dict[int, deque[asyncio.Future[None]]] = {}

    def try_acquire(self, stripe: int) -> bool:
        if stripe in self._held:
            return False
        self._held[stripe] = deque()
        return True

    async def acquire(self, stripe: int) -> None:
        if self.try_acquire(stripe):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._held[stripe].append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(stripe)  # handed over just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._held[stripe].remove(waiter)
            raise

    def release(self, stripe: int) -> None:
        waiters = self._held[stripe]
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the lock goes to the next writer, still held
                return
        del self._held[stripe]


REGION = 256 * 1024  # parity is locked per 256 KiB of a stripe's chunks, not per stripe


class RegionLocks:
    """Locks over the byte ranges of stripes: two writes conflict only when they change the
    same bytes of the parity chunk, i.e. the same range inside their chunks (whichever data
    shard they are in). Regions are taken in ascending order, so no two spans deadlock."""

    def __init__(self) -> None:
        self._locks = StripeLocks()

    @staticmethod
    def _keys(stripe: int, offset: int, length: int) -> range:
        base = stripe * (CHUNK_SIZE // REGION)
        return range(base + offset // REGION, base + (offset + max(length, 1) - 1) // REGION + 1)

    def try_acquire(self, stripe: int, offset: int, length: int) -> bool:
        taken: list[int] = []
        for key in self._keys(stripe, offset, length):
            if not self._locks.try_acquire(key):
                for held in taken:
                    self._locks.release(held)
                return False
            taken.append(key)
        return True

    async def acquire(self, stripe: int, offset: int, length: int) -> None:
        taken: list[int] = []
        try:
            for key in self._keys(stripe, offset, length):
                await self._locks.acquire(key)
                taken.append(key)
        except BaseException:
            for held in taken:
                self._locks.release(held)
            raise

    def release(self, stripe: int, offset: int, length: int) -> None:
        for key in self._keys(stripe, offset, length):
            self._locks.release(key)


def reachable(target: ChunkTarget) -> bool:
    """A shard the callback path can use now: this node's, or on a connected peer."""
    if isinstance(target, RemoteTarget):
        return target.client.up
    return isinstance(target, LocalTarget)


def held_data_shards(
    k: int,
    blocks: Iterable[int],
    known: Callable[[int], bool | None],
    marked: Callable[[int], int | None],
) -> list[bool | None]:
    """Which blocks hold data, from what the shards' disks answered (`known(chunk)`: None
    where its disk did not answer) and the marks of the parities (`marked(stripe)`: the
    data shards written, None where unknown). A block whose own shard is unknown is told
    from its stripe: no parity means no data shard of the stripe was ever written (every
    write updates the parity, or marks it stale); a parity's mark says which were. Without
    a mark (a stripe written before marks, the parity's disk down too) the block is
    unknown (None): neither data, which would read as zeroes over the layers below, nor a
    hole, which would show them over data."""
    held: list[bool | None] = []
    for block in blocks:
        stripe, shard = ec_shard(block, k)
        mine = known(ec_chunk(stripe, shard, k))
        if mine is None:
            parity = known(ec_chunk(stripe, k, k))
            mark = marked(stripe) if parity else None
            if parity is False:
                mine = False
            elif mark is not None:
                mine = bool(mark >> shard & 1)
        held.append(mine)
    return held


class ErasureVolume(PlacedVolume):
    def __init__(self, spec: VolumeSpec, cluster: Cluster, degraded: DegradedLog):
        super().__init__(spec, cluster, degraded)
        self.k = spec.scheme.data
        self.width = self.k + 1
        self.locks = RegionLocks()

    def groups(self) -> int:
        return -(-blocks_of(self.size) // self.k)

    def group_of(self, chunk: int) -> int:
        return chunk // (self.k + 1)

    def layout(self, group: int, targets: Sequence[ChunkTarget]) -> list[Copy]:
        return [(self.chunk(group, i), t) for i, t in enumerate(targets)]

    def shards(self, stripe: int) -> list[ChunkTarget]:
        return self.cluster.place(self.id, stripe, self.k + 1)

    def chunk(self, stripe: int, shard: int) -> int:
        return ec_chunk(stripe, shard, self.k)

    def holders(self, chunk: int) -> list[ChunkTarget]:
        """The healthy shards of the chunk's stripe (where stale notes are kept)."""
        stripe = chunk // (self.k + 1)
        return [t for i, t in enumerate(self.shards(stripe)) if self.ok(stripe, i, t)]

    def ok(self, stripe: int, shard: int, target: ChunkTarget) -> bool:
        return target.disk not in self.degraded.stale(self.chunk(stripe, shard))

    # -- reads -------------------------------------------------------------------------------

    async def read_into(self, offset: int, view: memoryview) -> None:
        async def piece(p: Piece) -> None:
            await self._read_piece(p, view[p.at : p.at + p.length])

        await self._each_piece(offset, len(view), piece)

    def read_now(self, offset: int, view: memoryview) -> bool:
        """Read a data shard held on this node without suspending (see ReplicatedVolume)."""
        block, inside = divmod(offset, CHUNK_SIZE)
        if inside + len(view) > CHUNK_SIZE:
            return False
        stripe, shard = ec_shard(block, self.k)
        target = self.shards(stripe)[shard]
        if not isinstance(target, LocalTarget) or not self.ok(stripe, shard, target):
            return False
        try:
            target.store.read_into(self.id, self.chunk(stripe, shard), inside, view)
        except (VolumeError, OSError):
            return False
        return True

    def read_start(
        self, offset: int, view: memoryview, done: Callable[[Exception | None], None]
    ) -> bool:
        """Start a read of a data shard on a connected peer, completed by callback."""
        block, inside = divmod(offset, CHUNK_SIZE)
        if inside + len(view) > CHUNK_SIZE:
            return False
        stripe, shard = ec_shard(block, self.k)
        target = self.shards(stripe)[shard]
        if not isinstance(target, RemoteTarget) or not target.client.up:
            return False
        if not self.ok(stripe, shard, target):
            return False

        def replied(error: Exception | None) -> None:
            if error is None:
                done(None)
            else:  # decode from the other shards, mark and rebuild: the general path
                self.spawn(finish(self._read_piece(Piece(block, inside, len(view), 0), view), done))

        chunk = self.chunk(stripe, shard)
        return target.client.send(
            OP_READ, self.id, target.disk, chunk, inside, 0, NOTHING, replied, into=view
        )

    async def _read_piece(self, piece: Piece, view: memoryview) -> None:
        stripe, shard = ec_shard(piece.block, self.k)
        target = self.shards(stripe)[shard]
        if self.ok(stripe, shard, target):
            try:
                await target.read_into(self.id, self.chunk(stripe, shard), piece.offset, view)
                return
            except ChecksumError:
                await self.mark_stale([(self.chunk(stripe, shard), target.disk)])
                self.spawn(self.rebuild_chunk(self.chunk(stripe, shard)))
            except (VolumeError, OSError) as exc:
                log.info("shard %d of stripe %d unreadable, decoding: %s", shard, stripe, exc)
        await self.locks.acquire(stripe, piece.offset, len(view))
        try:
            await self._decode(stripe, shard, piece.offset, view)
        finally:
            self.locks.release(stripe, piece.offset, len(view))

    async def _read_shards(
        self, stripe: int, wanted: list[int], offset: int, length: int
    ) -> list[bytearray]:
        """The same range of several shards; UnavailableError if any is stale or unreadable."""
        targets = self.shards(stripe)
        buffers = [bytearray(length) for _ in wanted]
        for i in wanted:
            if not self.ok(stripe, i, targets[i]):
                raise UnavailableError(f"stripe {stripe}: shard {i} is stale as well")
        results = await asyncio.gather(
            *(
                targets[i].read_into(self.id, self.chunk(stripe, i), offset, memoryview(buf))
                for i, buf in zip(wanted, buffers, strict=True)
            ),
            return_exceptions=True,
        )
        errors = failures(results)
        for i, result in zip(wanted, results, strict=True):
            if isinstance(result, ChecksumError):
                await self.mark_stale([(self.chunk(stripe, i), targets[i].disk)])
        if errors:
            raise UnavailableError(f"stripe {stripe}: cannot decode, {errors}")
        return buffers

    async def _decode(self, stripe: int, shard: int, offset: int, view: memoryview) -> None:
        others = [i for i in range(self.k + 1) if i != shard]
        buffers = await self._read_shards(stripe, others, offset, len(view))
        view[:] = buffers[0]
        xor_into(view, *buffers[1:])

    # -- writes ------------------------------------------------------------------------------

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        async def piece(p: Piece) -> None:
            await self._update(p, data[p.at : p.at + p.length], fua, trim=False)

        await self._each_piece(offset, len(data), piece)

    async def trim(self, offset: int, length: int, fua: bool) -> None:
        zeros = memoryview(bytes(min(length, CHUNK_SIZE)))

        async def piece(p: Piece) -> None:
            await self._update(p, zeros[: p.length], fua, trim=True)

        await self._each_piece(offset, length, piece)

    async def write_zeroes(self, offset: int, length: int, fua: bool, may_trim: bool) -> None:
        zeros = memoryview(bytes(min(length, CHUNK_SIZE)))

        async def piece(p: Piece) -> None:
            await self._update(p, zeros[: p.length], fua, trim=may_trim)

        await self._each_piece(offset, length, piece)

    def write_now(
        self, offset: int, data: memoryview, fua: bool, done: Callable[[Exception | None], None]
    ) -> bool:
        """The update of a healthy stripe by callbacks, without tasks (see
        ReplicatedVolume.write_now); anything unusual goes to the general path."""
        block, inside = divmod(offset, CHUNK_SIZE)
        if fua or inside + len(data) > CHUNK_SIZE or self.id in self.cluster.moving:
            return False  # a moving volume writes mirrors too: the general path
        stripe, shard = ec_shard(block, self.k)
        targets = self.shards(stripe)
        data_t, parity_t = targets[shard], targets[self.k]
        if not (self.ok(stripe, shard, data_t) and self.ok(stripe, self.k, parity_t)):
            return False
        if not (reachable(data_t) and reachable(parity_t)):
            return False
        data_chunk, parity_chunk = self.chunk(stripe, shard), self.chunk(stripe, self.k)
        n = len(data)
        # parity = old parity ^ old data ^ new data (read-modify-write: two reads), or with
        # k=2 parity = new data ^ the other data shard (reconstruct-write: one read).
        parity = bytearray(n)
        reads = [(data_t, data_chunk, bytearray(n)), (parity_t, parity_chunk, parity)]
        if self.k == 2:
            other_t = targets[1 - shard]
            if self.ok(stripe, 1 - shard, other_t) and reachable(other_t):
                reads = [(other_t, self.chunk(stripe, 1 - shard), parity)]
        if not self.locks.try_acquire(stripe, inside, n):
            return False
        waiting = len(reads)
        errors: dict[str, Exception | None] = {}

        def general_path() -> None:  # nothing written yet: start over, the slow way
            self.locks.release(stripe, inside, n)
            self.spawn(finish(self._update(Piece(block, inside, n, 0), data, fua, False), done))

        def written(which: str, error: Exception | None) -> None:
            errors[which] = error
            if len(errors) < 2:
                return
            if errors["data"] is None and errors["parity"] is None:
                self.unsynced[data_t.disk].add(data_chunk)
                self.unsynced[parity_t.disk].add(parity_chunk)
                self.locks.release(stripe, inside, n)
                done(None)
                return
            lost = [
                (data_chunk, data_t, errors["data"]),
                (parity_chunk, parity_t, errors["parity"]),
            ]
            self.spawn(self._after_failed_shards(stripe, inside, n, lost, done))

        def read(error: Exception | None) -> None:
            nonlocal waiting
            if error is not None:
                errors["read"] = error
            waiting -= 1
            if waiting:
                return
            if "read" in errors:
                general_path()
                return
            errors.clear()
            xor_into(memoryview(parity), data, *(buffer for _, _, buffer in reads[:-1]))
            self._issue(parity_t, OP_WRITE, parity_chunk, inside, memoryview(parity),
                        lambda e: written("parity", e), Held(add=1 << shard))  # fmt: skip
            self._issue(data_t, OP_WRITE, data_chunk, inside, data, lambda e: written("data", e))

        for target, chunk, buffer in reads:
            self._issue(target, OP_READ, chunk, inside, memoryview(buffer), read)
        return True

    def _issue(
        self,
        target: ChunkTarget,
        op: int,
        chunk: int,
        offset: int,
        buffer: memoryview,
        callback: Callable[[Exception | None], None],
        held: Held | None = None,
    ) -> None:
        """One shard read (into `buffer`) or write (of it, `held` for a parity) by callback:
        inline if local."""
        if isinstance(target, LocalTarget):
            try:
                if op == OP_READ:
                    target.store.read_into(self.id, chunk, offset, buffer)
                else:
                    target.store.write(self.id, chunk, offset, buffer, False, self.epoch, held)
            except (VolumeError, OSError) as exc:
                callback(exc)
            else:
                callback(None)
            return
        assert isinstance(target, RemoteTarget)
        if op == OP_READ:
            started = target.client.send(
                op, self.id, target.disk, chunk, offset, 0, NOTHING, callback, into=buffer
            )
        else:
            started = target.client.send(
                op, self.id, target.disk, chunk, offset, self.epoch, buffer, callback, held=held
            )
        if not started:
            callback(UnavailableError(f"node {target.node} is not connected"))

    async def _after_failed_shards(
        self,
        stripe: int,
        offset: int,
        length: int,
        writes: list[tuple[int, ChunkTarget, Exception | None]],
        done: Callable[[Exception | None], None],
    ) -> None:
        """A callback write where a shard failed: the data and the parity were both sent, so
        the stripe stays decodable with either one; both lost fails the write."""
        try:
            fenced = next((e for _, _, e in writes if isinstance(e, FencedError)), None)
            lost = [(c, t.disk) for c, t, e in writes if e is not None]
            for chunk, target, error in writes:
                if error is None:
                    self.unsynced[target.disk].add(chunk)
            if fenced is not None:
                done(fenced)
            elif len(lost) == len(writes):
                await self.mark_stale(lost)
                done(UnavailableError(f"stripe {stripe}: write failed on every shard"))
            else:
                await self.mark_stale(lost)
                done(None)
        except Exception as exc:
            done(exc)
        finally:
            self.locks.release(stripe, offset, length)

    async def _update(self, p: Piece, data: memoryview, fua: bool, trim: bool) -> None:
        stripe, shard = ec_shard(p.block, self.k)
        await self.locks.acquire(stripe, p.offset, p.length)
        try:
            await self._update_locked(stripe, shard, p.offset, data, fua, trim)
        finally:
            self.locks.release(stripe, p.offset, p.length)

    async def _update_locked(
        self, stripe: int, shard: int, offset: int, data: memoryview, fua: bool, trim: bool
    ) -> None:
        targets = self.shards(stripe)
        k = self.k
        data_t, parity_t = targets[shard], targets[k]
        data_chunk, parity_chunk = self.chunk(stripe, shard), self.chunk(stripe, k)
        data_ok = self.ok(stripe, shard, data_t)
        parity_ok = self.ok(stripe, k, parity_t)
        n = len(data)
        parity: bytearray | None = None
        others = [i for i in range(k) if i != shard]
        if (
            parity_ok
            and (not data_ok or len(others) < 2)
            and all(self.ok(stripe, i, targets[i]) for i in others)
        ):
            # Reconstruct-write: the new parity from the new data and the other data shards;
            # with k=2 that is one read where read-modify-write needs two.
            try:
                buffers = await self._read_shards(stripe, others, offset, n)
            except UnavailableError:
                if not data_ok:
                    raise
            else:
                parity = bytearray(data)
                xor_into(memoryview(parity), *buffers)
        if parity is None and data_ok and parity_ok:
            old = bytearray(n)
            old_parity = bytearray(n)
            old_view, parity_view = memoryview(old), memoryview(old_parity)
            results = await together(
                [
                    (data_t, lambda: data_t.read_into(self.id, data_chunk, offset, old_view)),
                    (parity_t, lambda: parity_t.read_into(self.id, parity_chunk, offset,
                                                          parity_view)),
                ]
            )  # fmt: skip
            failures(results)
            if results[0] is not None:
                data_ok = False
                await self.mark_stale([(data_chunk, data_t.disk)])
            if results[1] is not None:
                parity_ok = False
                await self.mark_stale([(parity_chunk, parity_t.disk)])
            if data_ok and parity_ok:
                xor_into(memoryview(old_parity), old, data)
                parity = old_parity
            elif parity_ok:  # the data shard failed: its data goes into the parity
                buffers = await self._read_shards(stripe, others, offset, n)
                parity = bytearray(data)
                xor_into(memoryview(parity), *buffers)
        if not data_ok and parity is None:
            raise UnavailableError(f"stripe {stripe}: shard {shard} and another shard lost")

        new_parity = None if parity is None else memoryview(parity)
        zero = parity is not None and trim and not np.frombuffer(parity, dtype=np.uint8).any()
        # The parity's mark: this data shard is written now, or deleted by a whole-shard trim
        # (a partial trim leaves its chunk as it was).
        bit = 1 << shard
        held = Held(remove=bit) if trim and n == CHUNK_SIZE else Held() if trim else Held(add=bit)
        writes: list[tuple[ChunkTarget, int, Callable[[], Awaitable[None]]]] = []
        if data_ok:
            writes.append(
                (data_t, data_chunk, lambda: self._put(data_t, data_chunk, offset, data, fua, trim))
            )
        if new_parity is not None:
            writes.append(
                (
                    parity_t,
                    parity_chunk,
                    lambda: self._put(parity_t, parity_chunk, offset, new_parity, fua, zero, held),
                )
            )
        primary = len(writes)
        # A moving volume writes the same to the shards' destinations, once they are copied
        # (one still to copy is copied under the stripe's lock, with this write in it).
        missed: list[tuple[int, str]] = []
        for index, chunk, content, hole in (
            (shard, data_chunk, data, trim),
            (k, parity_chunk, new_parity, zero),
        ):
            for mirror in self.mirrors(chunk):
                if not self.ok(stripe, index, mirror):
                    continue
                if content is None:
                    missed.append((chunk, mirror.disk))  # the parity was not computed
                    continue
                job = partial(self._put, mirror, chunk, offset, content, fua, hole,
                              held if index == k else None)  # fmt: skip
                writes.append((mirror, chunk, job))
        results = await together([(t, job) for t, _, job in writes])
        errors = failures(results)
        outcomes = list(zip(writes, results, strict=True))
        lost = [(c, t.disk) for (t, c, _), r in outcomes[:primary] if r is not None]
        missed += [(c, t.disk) for (t, c, _), r in outcomes[primary:] if r is not None]
        if len(lost) == primary or (lost and not (data_ok and parity is not None)):
            # Nothing holds the new data (or the only shard that would have held it failed).
            await self.mark_stale(lost + missed)
            raise UnavailableError(f"stripe {stripe}: write failed: {errors}")
        if not fua:
            for (t, c, _), r in outcomes:
                if r is None:
                    self.unsynced[t.disk].add(c)
        if not data_ok:
            await self.mark_stale([(data_chunk, data_t.disk)])
        if parity is None:
            await self.mark_stale([(parity_chunk, parity_t.disk)])
        if lost or missed:
            await self.mark_stale(lost + missed)

    async def _put(
        self,
        target: ChunkTarget,
        chunk: int,
        offset: int,
        data: memoryview,
        fua: bool,
        trim: bool,
        held: Held | None = None,
    ) -> None:
        if trim:
            await target.trim(self.id, chunk, offset, len(data), fua, self.epoch, held)
        else:
            await target.write(self.id, chunk, offset, data, fua, self.epoch, held)

    async def flush(self) -> None:
        pending, self.unsynced = self.unsynced, defaultdict(set)
        if not pending:
            return
        lost = await sync_written(self.cluster, self.id, pending)
        if lost:
            await self.mark_stale(lost)
            for chunk, _ in lost:
                stripe = chunk // (self.k + 1)
                stale = sum(
                    1 for i, t in enumerate(self.shards(stripe)) if not self.ok(stripe, i, t)
                )
                if stale > 1:
                    raise UnavailableError(f"stripe {stripe}: more than one shard not durable")

    # -- allocation --------------------------------------------------------------------------

    async def allocated_blocks(self, first: int, count: int) -> list[bool | None]:
        """Which blocks hold data (None: unknown for now, see held_data_shards)."""
        k = self.k
        low = self.chunk(*ec_shard(first, k))
        high = self.chunk(ec_shard(first + count - 1, k)[0], k)  # the last stripe's parity
        found = [False] * (high - low + 1)
        targets = self.cluster.all_targets()
        results = await asyncio.gather(
            *(t.allocated(self.id, low, high - low + 1) for t in targets),
            return_exceptions=True,
        )
        failed = set()
        for target, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                failed.add(target.disk)
                continue
            found = [a or b for a, b in zip(found, result, strict=True)]

        def known(chunk: int) -> bool | None:
            if found[chunk - low]:
                return True
            stripe, shard = divmod(chunk, k + 1)
            target = self.shards(stripe)[shard]
            if target.disk in failed or not self.ok(stripe, shard, target):
                return None  # its disk did not answer, or its copy is stale
            return False

        # The marks of the parities of stripes with a data shard unknown, from their disks.
        asked: dict[str, tuple[ChunkTarget, list[int]]] = {}
        doubtful = failed or self.degraded.missing  # else every shard answered for itself
        for stripe in range(first // k, (first + count - 1) // k + 1) if doubtful else ():
            parity = self.shards(stripe)[k]
            unknown = any(known(self.chunk(stripe, i)) is None for i in range(k))
            sound = parity.disk not in failed and self.ok(stripe, k, parity)  # its mark too
            if unknown and known(self.chunk(stripe, k)) and sound:
                asked.setdefault(parity.disk, (parity, []))[1].append(stripe)
        marks: dict[int, int | None] = {}
        jobs = list(asked.values())
        answers = await asyncio.gather(
            *(t.marks(self.id, self.chunk(s[0], k), s[-1] - s[0] + 1, k + 1) for t, s in jobs),
            return_exceptions=True,
        )
        for (_, stripes), answer in zip(jobs, answers, strict=True):
            if isinstance(answer, BaseException):
                log.info("marks of %s not known: %s", self.spec.name, answer)
                continue  # unknown: asked again at the next use
            marks.update({s: answer[s - stripes[0]] for s in stripes})

        return held_data_shards(k, range(first, first + count), known, marks.get)

    async def extents(self, offset: int, length: int) -> list[Extent]:
        return await block_extents(self.allocated_blocks, offset, length, self.size)

    # -- rebuild -----------------------------------------------------------------------------

    def repairable(self, chunk: int, disk: str) -> bool:
        """Whether every other shard of the stripe is healthy, to decode this one from."""
        stripe, shard = divmod(chunk, self.k + 1)
        targets = self.shards(stripe)
        return all(self.ok(stripe, i, t) for i, t in enumerate(targets) if i != shard)

    async def rebuild_chunk(self, chunk: int, disks: set[str] | None = None) -> bool:
        """Write a stale shard back (those on `disks`, if given): copied from the shard's
        placement when only its destination is stale (a move), else decoded from the other
        shards. True when none of them is left stale."""
        stripe, shard = divmod(chunk, self.k + 1)
        await self.locks.acquire(stripe, 0, CHUNK_SIZE)
        try:
            stale = [
                t
                for t in self.targets_of(chunk)
                if not self.ok(stripe, shard, t) and (disks is None or t.disk in disks)
            ]
            if not stale:
                return True
            data = memoryview(bytearray(CHUNK_SIZE))
            try:
                await self._shard_content(stripe, shard, data)
            except (VolumeError, OSError) as exc:
                log.info("rebuild of chunk %d: %s", chunk, exc)
                return False
            empty = not np.frombuffer(data, dtype=np.uint8).any()  # thin: leave none there
            held = await self._whole_mark(stripe) if shard == self.k else None
            if empty and shard == self.k:
                # Only a stripe known to hold no data shard may lose its parity: an absent
                # parity says that none was ever written.
                empty = held is not None and not held.add
            elif empty:
                empty = not await self._marked(stripe, shard)  # written zeroes: kept
            return await self._put_back(chunk, stale, None if empty else data, held)
        finally:
            self.locks.release(stripe, 0, CHUNK_SIZE)

    async def adopt_marks(self) -> bool:
        """Give every parity without a mark (written before marks, or by an older heron-io)
        its mark, stripe by stripe under the stripe's lock: the owner's job, as the one
        writer. True when none is left without one (False: a disk did not answer)."""
        k = self.k
        by_disk: dict[str, tuple[ChunkTarget, list[int]]] = {}
        for stripe in range(self.groups()):
            parity = self.shards(stripe)[k]
            if self.ok(stripe, k, parity):  # a stale one gets its mark when rebuilt
                by_disk.setdefault(parity.disk, (parity, []))[1].append(stripe)
        complete = True
        # A few hundred at a time: the disk's store reads a mark per parity on its loop.
        runs = [
            (t, run[i : i + 512]) for t, run in by_disk.values() for i in range(0, len(run), 512)
        ]
        for target, stripes in runs:
            low, high = stripes[0], stripes[-1]
            first = self.chunk(low, k)
            try:
                present = await target.allocated(self.id, first, self.chunk(high, k) - first + 1)
                marks = await target.marks(self.id, first, high - low + 1, k + 1)
            except (VolumeError, OSError) as exc:
                log.info("parity marks of %s on %s not asked: %s", self.spec.name, target.disk,
                         exc)  # fmt: skip
                complete = False
                continue
            for stripe in stripes:
                if present[self.chunk(stripe, k) - first] and marks[stripe - low] is None:
                    complete = await self._adopt_mark(stripe) and complete
        return complete

    async def _adopt_mark(self, stripe: int) -> bool:
        await self.locks.acquire(stripe, 0, CHUNK_SIZE)
        try:
            parity = self.shards(stripe)[self.k]
            held = await self._whole_mark(stripe)
            if held is None or not self.ok(stripe, self.k, parity):
                return False
            try:
                await parity.adopt_mark(self.id, self.chunk(stripe, self.k), held.add, self.epoch)
            except FencedError:
                raise
            except (VolumeError, OSError) as exc:
                log.info("parity mark of stripe %d of %s: %s", stripe, self.spec.name, exc)
                return False
            return True
        finally:
            self.locks.release(stripe, 0, CHUNK_SIZE)

    async def _whole_mark(self, stripe: int) -> Held | None:
        """A rebuilt parity's mark: which data shards of the stripe exist, if every one is
        healthy and its disk answers (None: unknown, the parity is written without one)."""
        held = 0
        for shard, target in enumerate(self.shards(stripe)[: self.k]):
            if not self.ok(stripe, shard, target):
                return None
            try:
                if (await target.allocated(self.id, self.chunk(stripe, shard), 1))[0]:
                    held |= 1 << shard
            except (VolumeError, OSError):
                return None
        return Held(add=held, exact=True)

    async def _marked(self, stripe: int, shard: int) -> bool:
        """Whether the stripe's parity says the data shard was written (False if unknown)."""
        parity = self.shards(stripe)[self.k]
        if not self.ok(stripe, self.k, parity):
            return False
        try:
            mark = (await parity.marks(self.id, self.chunk(stripe, self.k), 1, 1))[0]
        except (VolumeError, OSError):
            return False
        return mark is not None and bool(mark >> shard & 1)

    async def _shard_content(self, stripe: int, shard: int, into: memoryview) -> None:
        """A whole shard: read where it is healthy, else decoded from the other shards."""
        target = self.shards(stripe)[shard]
        if self.ok(stripe, shard, target):
            chunk = self.chunk(stripe, shard)
            try:
                if (await target.allocated(self.id, chunk, 1))[0]:
                    await target.read_into(self.id, chunk, 0, into)
                return  # absent: reads as zeroes
            except ChecksumError:
                await self.mark_stale([(chunk, target.disk)])
            except (VolumeError, OSError) as exc:
                log.info("shard %d of stripe %d unreadable, decoding: %s", shard, stripe, exc)
        await self._decode(stripe, shard, 0, into)
