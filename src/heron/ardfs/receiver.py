"""Receiving on a non-blocking socket: small messages in batches, large payloads in place.

Headers and small payloads come out of one preallocated buffer that each recv fills as far
as it can, so sixteen 4 KiB requests in flight cost one or two syscalls, not thirty-two. A
large payload (a 4 MiB write) is received straight into its final buffer with
`loop.sock_recv_into` after whatever part of it was already buffered is copied.
"""

from __future__ import annotations

import asyncio
import socket

BUFFER = 256 * 1024
# Payloads at least this large bypass the buffer.
DIRECT = 64 * 1024


class Closed(ConnectionError):
    """The peer closed the connection."""


class Receiver:
    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, size: int = BUFFER):
        self.sock = sock
        self.loop = loop
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0

    async def _fill(self, need: int) -> None:
        """Have at least `need` bytes buffered (need <= the buffer's size)."""
        if self.start + need > len(self.buf):
            held = self.end - self.start
            self.view[:held] = self.view[self.start : self.end]
            self.start, self.end = 0, held
        while self.end - self.start < need:
            n = await self.loop.sock_recv_into(self.sock, self.view[self.end :])
            if n == 0:
                raise Closed("connection closed by the peer")
            self.end += n

    async def exactly(self, n: int) -> memoryview:
        """The next `n` bytes; the view is valid only until the next call."""
        if self.end - self.start < n:
            await self._fill(n)
        found = self.view[self.start : self.start + n]
        self.start += n
        return found

    async def into(self, target: memoryview) -> None:
        """Fill `target` with the next len(target) bytes."""
        total = len(target)
        held = min(self.end - self.start, total)
        if held:
            target[:held] = self.view[self.start : self.start + held]
            self.start += held
        got = held
        if total - got >= DIRECT:
            while got < total:
                n = await self.loop.sock_recv_into(self.sock, target[got:])
                if n == 0:
                    raise Closed("connection closed by the peer")
                got += n
            return
        while got < total:
            chunk = await self.exactly(min(total - got, len(self.buf)))
            target[got : got + len(chunk)] = chunk
            got += len(chunk)

    def drop(self) -> None:
        """Forget what is buffered (after the connection is done with)."""
        self.start = self.end = 0
