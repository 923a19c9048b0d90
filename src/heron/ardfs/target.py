"""A chunk target: one disk's chunk store, on this node (LocalTarget) or another (peer.py).

Volumes talk to targets only, so a copy on this node and a copy across the network are used
the same way; the local one simply skips the network.
"""

from __future__ import annotations

import asyncio
import os
from typing import Protocol

from heron.ardfs.chunkstore import ChunkStore, Held


class ChunkTarget(Protocol):
    disk: str
    node: str
    local: bool

    async def read_into(self, volume: str, chunk: int, offset: int, view: memoryview) -> None: ...

    async def write(
        self,
        volume: str,
        chunk: int,
        offset: int,
        data: memoryview,
        durable: bool,
        epoch: int,
        held: Held | None = None,
    ) -> None: ...

    async def trim(
        self,
        volume: str,
        chunk: int,
        offset: int,
        length: int,
        durable: bool,
        epoch: int,
        held: Held | None = None,
    ) -> None: ...

    async def sync(self, volume: str) -> None: ...

    async def allocated(self, volume: str, first: int, count: int) -> list[bool]: ...

    async def marks(self, volume: str, first: int, count: int, step: int) -> list[int | None]:
        """The marks of the parity chunks first, first + step, ... (count of them)."""
        ...

    async def adopt_mark(self, volume: str, chunk: int, held: int, epoch: int) -> None: ...

    async def chunks(self, volume: str) -> list[int]: ...

    async def verify(self, volume: str, chunk: int) -> list[int]: ...

    async def delete(self, volume: str, chunk: int, epoch: int) -> None: ...

    async def claim(self, volume: str, epoch: int) -> None: ...

    async def note_stale(self, volume: str, pairs: list[tuple[int, str]], added: bool) -> None: ...

    async def pin(self, volume: str, pin: bytes) -> bytes: ...

    async def stale_list(self, volume: str) -> list[tuple[int, str]]: ...


def _fdatasync_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.fdatasync(fd)
        except OSError as exc:
            if exc.errno != 9:  # EBADF: closed by the store's LRU, which synced it first
                raise


class LocalTarget:
    """A chunk store on this node. Page-cache I/O runs on the loop, waits for disks in threads."""

    local = True

    def __init__(self, disk: str, node: str, store: ChunkStore):
        self.disk = disk
        self.node = node
        self.store = store

    async def read_into(self, volume: str, chunk: int, offset: int, view: memoryview) -> None:
        self.store.read_into(volume, chunk, offset, view)

    async def write(
        self,
        volume: str,
        chunk: int,
        offset: int,
        data: memoryview,
        durable: bool,
        epoch: int,
        held: Held | None = None,
    ) -> None:
        self.store.write(volume, chunk, offset, data, False, epoch, held)
        if durable:
            await self._sync_chunk(volume, chunk)

    async def trim(
        self,
        volume: str,
        chunk: int,
        offset: int,
        length: int,
        durable: bool,
        epoch: int,
        held: Held | None = None,
    ) -> None:
        self.store.trim(volume, chunk, offset, length, False, epoch, held)
        if durable:
            await self._sync_chunk(volume, chunk)

    async def _sync_chunk(self, volume: str, chunk: int) -> None:
        fds = self.store.chunk_fds(volume, chunk)
        if fds:
            await asyncio.to_thread(_fdatasync_all, fds)
        await asyncio.to_thread(self.store.sync_volume_dir, volume)

    async def sync(self, volume: str) -> None:
        fds = self.store.dirty_files(volume)
        await asyncio.to_thread(_fdatasync_all, fds)
        await asyncio.to_thread(self.store.sync_volume_dir, volume)

    async def allocated(self, volume: str, first: int, count: int) -> list[bool]:
        return self.store.allocated(volume, first, count)

    async def marks(self, volume: str, first: int, count: int, step: int) -> list[int | None]:
        return self.store.marks(volume, first, count, step)

    async def adopt_mark(self, volume: str, chunk: int, held: int, epoch: int) -> None:
        self.store.adopt_mark(volume, chunk, held, epoch)

    async def chunks(self, volume: str) -> list[int]:
        return self.store.chunks(volume)

    async def verify(self, volume: str, chunk: int) -> list[int]:
        return self.store.verify(volume, chunk)

    async def delete(self, volume: str, chunk: int, epoch: int) -> None:
        self.store.check_epoch(volume, epoch)
        self.store.delete(volume, chunk)

    async def claim(self, volume: str, epoch: int) -> None:
        """Take ownership at `epoch`: from now on this disk refuses writes of older ones."""
        self.store.check_epoch(volume, epoch)

    async def note_stale(self, volume: str, pairs: list[tuple[int, str]], added: bool) -> None:
        log = self.store.stale_log(volume)
        if added:
            log.mark(pairs)
        else:
            for chunk, disk in pairs:
                log.clear(chunk, disk)
        await asyncio.to_thread(log.append, pairs, added)

    async def pin(self, volume: str, pin: bytes) -> bytes:
        """The volume's pinned placement kept here; `pin` is kept if there is none (b"" only
        asks)."""
        return self.store.write_pin(volume, pin) if pin else self.store.read_pin(volume)

    async def stale_list(self, volume: str) -> list[tuple[int, str]]:
        log = self.store.stale_log(volume)
        return [(c, d) for c, disks in log.missing.items() for d in disks]
