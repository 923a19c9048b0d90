"""Snapshots in heron-io itself: a volume is a stack of layers, each a placed volume of its own.

A layer is a sparse set of 4 MiB blocks stored, placed, replicated or erasure coded, rebuilt
and moved exactly like any volume (its chunks are named by the layer's id), so a snapshot is
as redundant as its volume and the existing repair machinery covers it. Writes go to the top
layer; a read of a block falls through to the newest layer holding it (none: zeroes).

A snapshot freezes the top and puts a new empty layer above it: no data is copied. The first
write to a block the top lacks copies the block up (copy-on-write); a write of the whole
block copies nothing. Deleting a snapshot merges its layer into the layers above it (the
blocks they lack), online, then drops it. A linked clone's stack starts with its source's
frozen layers, shared and read-only.

What a layer holds is asked of its chunk stores once (`allocated_blocks`) and then kept here:
only this process writes a layer it serves (the owner's heron-io), so the set stays true. A
block its stores cannot tell (an erasure-coded stripe written before parity marks, with a disk
down) is asked again at each use, and its reads and writes fail until they can: reading it
as data would give zeroes over the layers below, as a hole would show them over its data.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Protocol

from heron.ardfs.layout import BLOCK_SIZE, blocks_of, pieces
from heron.ardfs.volume import Extent, UnavailableError

ZEROES = bytes(BLOCK_SIZE)


class LayerVolume(Protocol):
    """What a layer needs of the placed volume holding its blocks."""

    @property
    def size(self) -> int: ...

    async def read_into(self, offset: int, view: memoryview) -> None: ...

    async def write(self, offset: int, data: memoryview, fua: bool) -> None: ...

    async def flush(self) -> None: ...

    async def trim(self, offset: int, length: int, fua: bool) -> None: ...

    async def write_zeroes(self, offset: int, length: int, fua: bool, may_trim: bool) -> None: ...

    async def allocated_blocks(self, first: int, count: int) -> Sequence[bool | None]: ...

    async def extents(self, offset: int, length: int) -> list[Extent]: ...


class BlockLocks:
    """One lock per block, made when first needed and dropped when free: a copy-up or a
    merge of a block excludes the other of the same block."""

    def __init__(self) -> None:
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, block: int) -> AsyncIterator[None]:
        lock, users = self._locks.get(block, (asyncio.Lock(), 0))
        self._locks[block] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[block]
            if users == 1:
                del self._locks[block]
            else:
                self._locks[block] = (lock, users - 1)


class Layer:
    """One layer: its volume, which of its blocks exist (once asked), its block locks."""

    def __init__(self, layer_id: str, volume: LayerVolume):
        self.id = layer_id
        self.volume = volume
        self.blocks: set[int] | None = None  # None: not asked yet
        self.unsure: set[int] = set()  # blocks the stores could not tell: asked at each use
        self.locks = BlockLocks()
        self._loading = asyncio.Lock()
        self._forgotten = 0  # forgets so far: an answer asked before the last one is old

    def known_bytes(self) -> int | None:
        """What its blocks hold (`held_bytes`), if they are known here yet."""
        if self.blocks is None or self.unsure:
            return None
        return held_bytes(self.blocks, self.volume.size)

    def forget(self) -> None:
        """Ask the chunk stores again at the next use (another node may have written)."""
        self.blocks = None
        self.unsure = set()
        self._forgotten += 1

    async def held(self) -> set[int]:
        while True:
            blocks = self.blocks
            if blocks is not None:
                return blocks
            async with self._loading:
                if self.blocks is None:
                    asked = self._forgotten
                    count = blocks_of(self.volume.size)
                    present = await self.volume.allocated_blocks(0, count) if count else []
                    if asked == self._forgotten:  # else forgotten meanwhile: ask again
                        self.unsure = {b for b, here in enumerate(present) if here is None}
                        self.blocks = {b for b, here in enumerate(present) if here}

    async def has(self, block: int, bottom: bool = False) -> bool:
        """Whether the layer holds the block; UnavailableError while its stores cannot tell.
        The `bottom` layer of a stack may say yes then: its block, held or not, reads the
        same (a data shard never written decodes as the zeroes of a hole)."""
        blocks = await self.held()
        if block in self.unsure:
            if bottom:
                return True
            await self._ask_again(blocks, block, block)
            return block in blocks
        return block in blocks

    async def settle(self) -> None:
        """Ask again about every block the stores could not tell (a disk may be back);
        UnavailableError while some still cannot be told."""
        blocks = await self.held()
        if self.unsure:
            await self._ask_again(blocks, min(self.unsure), max(self.unsure))

    async def _ask_again(self, blocks: set[int], first: int, last: int) -> None:
        present = await self.volume.allocated_blocks(first, last - first + 1)
        if self.blocks is not blocks:
            raise UnavailableError(f"layer {self.id}: forgotten while asked, ask again")
        for block in [b for b in self.unsure if first <= b <= last]:
            here = present[block - first]
            if here is not None:
                self.unsure.discard(block)
                if here:
                    blocks.add(block)
        unknown = sorted(b for b in self.unsure if first <= b <= last)
        if unknown:
            raise UnavailableError(
                f"layer {self.id}: whether it holds blocks {unknown[:8]} is not known while a "
                "disk does not answer"
            )


def held_bytes(blocks: Iterable[int], size: int) -> int:
    """The bytes of a volume of `size` that these blocks hold: 4 MiB each, the last block of
    a volume whose size is not a multiple of 4 MiB only as far as the volume goes."""
    return sum(max(0, min(BLOCK_SIZE, size - block * BLOCK_SIZE)) for block in blocks)


async def holder(layers: list[Layer], block: int) -> Layer | None:
    """The newest layer (of a bottom-first stack) holding the block."""
    for index in range(len(layers) - 1, -1, -1):
        if await layers[index].has(block, bottom=index == 0):
            return layers[index]
    return None


def holder_now(layers: list[Layer], block: int) -> Layer | bool | None:
    """`holder` without suspending: False when a layer's blocks are not known yet."""
    for layer in reversed(layers):
        if layer.blocks is None or block in layer.unsure:
            return False
        if block in layer.blocks:
            return layer
    return None


class Stack:
    """The Volume a layered volume's NBD clients see. Its layers change under it (a snapshot,
    a revert, a merge finished) while connections keep this one object."""

    def __init__(self, name: str, layers: list[Layer], size: int):
        if not layers:
            raise ValueError("a stack needs a top layer")
        self.name = name
        self._size = size
        self._use(layers)

    def _use(self, layers: list[Layer]) -> None:
        # Kept as attributes, not computed per request: every NBD request of every volume
        # goes through here, most of them to a volume that has no snapshot.
        self.layers = layers  # bottom first; the last is written
        self.top = layers[-1]
        self.below = layers[:-1]
        volume = self.top.volume
        self._read_now: Callable[[int, memoryview], bool] | None = getattr(volume, "read_now", None)
        self._read_start: Callable[..., bool] | None = getattr(volume, "read_start", None)
        self._write_now: Callable[..., bool] | None = getattr(volume, "write_now", None)

    def set_layers(self, layers: list[Layer], size: int) -> None:
        """Switch to another stack at once: the caller (a paused VM) has nothing in flight."""
        if not layers:
            raise ValueError("a stack needs a top layer")
        if not self.below:
            # Alone, the top was written past its block set (a plain volume's fast paths).
            self.top.forget()
        self._use(layers)
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    # -- reads -------------------------------------------------------------------------------

    async def read_into(self, offset: int, view: memoryview) -> None:
        if not self.below:
            await self.top.volume.read_into(offset, view)
            return
        layers = self.layers
        for piece in pieces(offset, len(view)):
            part = view[piece.at : piece.at + piece.length]
            found = await holder(layers, piece.block)
            if found is None:
                part[:] = ZEROES[: piece.length]
            else:
                await found.volume.read_into(offset + piece.at, part)

    def read_now(self, offset: int, view: memoryview) -> bool:
        """The placed volume's inline read, when the block's layer is known (see nbd.py)."""
        if not self.below:
            return self._read_now is not None and self._read_now(offset, view)
        found = self._only_holder(offset, len(view))
        if found is None:
            return False
        now: Callable[[int, memoryview], bool] | None = getattr(found.volume, "read_now", None)
        return now is not None and now(offset, view)

    def read_start(
        self, offset: int, view: memoryview, done: Callable[[Exception | None], None]
    ) -> bool:
        if not self.below:
            return self._read_start is not None and bool(self._read_start(offset, view, done))
        found = self._only_holder(offset, len(view))
        if found is None:
            return False
        start = getattr(found.volume, "read_start", None)
        return start is not None and bool(start(offset, view, done))

    def _only_holder(self, offset: int, length: int) -> Layer | None:
        """The one layer a read in one block goes to, if known without suspending."""
        if not self.below:
            return self.top
        block, inside = divmod(offset, BLOCK_SIZE)
        if inside + length > BLOCK_SIZE:
            return None
        found = holder_now(self.layers, block)
        return found if isinstance(found, Layer) else None

    # -- writes ------------------------------------------------------------------------------

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        if not self.below:
            await self.top.volume.write(offset, data, fua)
            return
        top, layers = self.top, self.layers
        for piece in pieces(offset, len(data)):
            part = data[piece.at : piece.at + piece.length]
            if await top.has(piece.block):
                await top.volume.write(offset + piece.at, part, fua)
                continue
            async with top.locks.hold(piece.block):
                await self._copy_up(top, layers, piece.block, piece.offset, part, fua)

    async def _copy_up(
        self, top: Layer, layers: list[Layer], block: int, inside: int, part: memoryview, fua: bool
    ) -> None:
        """Write into a block the top lacks: the whole block, the rest from below."""
        start = block * BLOCK_SIZE
        if await top.has(block):  # another write copied it meanwhile
            await top.volume.write(start + inside, part, fua)
            return
        length = min(BLOCK_SIZE, self.size - start)
        if len(part) == length:
            await top.volume.write(start, part, fua)
        else:
            whole = memoryview(bytearray(length))
            found = await holder(layers[:-1], block)
            if found is not None:
                await found.volume.read_into(start, whole)
            whole[inside : inside + len(part)] = part
            await top.volume.write(start, whole, fua)
        (await top.held()).add(block)

    def write_now(
        self, offset: int, data: memoryview, fua: bool, done: Callable[[Exception | None], None]
    ) -> bool:
        """The placed volume's callback write, when the top holds the block already."""
        if self.below:
            block, inside = divmod(offset, BLOCK_SIZE)
            blocks = self.top.blocks
            if inside + len(data) > BLOCK_SIZE or blocks is None or block not in blocks:
                return False
        now = self._write_now
        return now is not None and bool(now(offset, data, fua, done))

    async def flush(self) -> None:
        # Below the top too: a layer frozen by a snapshot may hold writes not yet synced.
        for layer in reversed(self.layers):
            await layer.volume.flush()

    async def trim(self, offset: int, length: int, fua: bool) -> None:
        await self._zero(offset, length, fua, True)

    async def write_zeroes(self, offset: int, length: int, fua: bool, may_trim: bool) -> None:
        await self._zero(offset, length, fua, may_trim)

    async def _zero(self, offset: int, length: int, fua: bool, may_trim: bool) -> None:
        """A hole in the top would show the layers below: where they hold the block, zeroes
        are written into the top instead."""
        if not self.below:
            if may_trim:
                await self.top.volume.trim(offset, length, fua)
            else:
                await self.top.volume.write_zeroes(offset, length, fua, False)
            return
        for piece in pieces(offset, length):
            at = offset + piece.at
            if await holder(self.below, piece.block) is None:
                if may_trim:
                    await self.top.volume.trim(at, piece.length, fua)
                else:
                    await self.top.volume.write_zeroes(at, piece.length, fua, False)
            else:
                await self.write(at, memoryview(ZEROES)[: piece.length], fua)

    async def extents(self, offset: int, length: int) -> list[Extent]:
        if not self.below:
            return await self.top.volume.extents(offset, length)
        first = offset // BLOCK_SIZE
        last = min(offset + length, self.size) - 1
        extents: list[Extent] = []
        for block in range(first, last // BLOCK_SIZE + 1):
            start = max(offset, block * BLOCK_SIZE)
            end = min(offset + length, (block + 1) * BLOCK_SIZE)
            try:
                hole = await holder(self.layers, block) is None
            except UnavailableError:
                hole = False  # not known yet: data, which a reader copies, never a hole
            if extents and extents[-1].hole == hole:
                extents[-1] = Extent(extents[-1].length + end - start, hole)
            else:
                extents.append(Extent(end - start, hole))
        return extents


async def merge(
    source: Layer, into: Layer, progress: Callable[[int], None] = lambda _: None
) -> int:
    """Copy every block of `source` that `into` lacks into `into` (the layer above a
    snapshot's layer, which may be the written top: the copy of each block holds the top's
    lock for it, so a write of the block waits or finds it copied). The number copied."""
    copied = 0
    size = into.volume.size
    held = await source.held()
    await source.settle()  # UnavailableError while some block is unknown: tried again later
    for block in sorted(held):
        start = block * BLOCK_SIZE
        if start >= size:
            continue
        async with into.locks.hold(block):
            if await into.has(block):
                continue
            whole = memoryview(bytearray(min(BLOCK_SIZE, size - start)))
            await source.volume.read_into(start, whole)
            await into.volume.write(start, whole, False)
            (await into.held()).add(block)
        copied += 1
        progress(copied)
    await into.volume.flush()
    return copied
