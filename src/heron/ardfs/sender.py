"""Sending on a non-blocking socket: everything queued in one event-loop turn goes out in one
sendmsg (scatter/gather, no joining copies).

A reply per syscall was the biggest cost of 4 KiB I/O (each send also wakes the client, some
30 µs here); with 16 requests in flight, several replies are usually ready in the same turn.
`send` never blocks and never awaits, so replies keep their order without a lock; a socket that
stops taking bytes parks the queue until it is writable again.

On a TLS socket (peertls.py) there is no sendmsg: what is queued is joined into one buffer of
up to TLS_BATCH bytes (a large part alone goes as it is) and written with `send`. A write that
TLS could not finish is offered again with the same bytes, as OpenSSL wants.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque

Buffer = bytes | bytearray | memoryview

IOV_MAX = 1024
TLS_BATCH = 256 * 1024


class Sender:
    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop):
        self.sock = sock
        self.loop = loop
        self.queue: deque[memoryview] = deque()
        self.scheduled = False
        self.waiting_writable = False
        self.error: OSError | None = None
        self.drained: asyncio.Future[None] | None = None
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.unfinished: memoryview | None = None  # a TLS write to offer again

    def send(self, *parts: Buffer) -> None:
        """Queue `parts` to be sent in order; raises the socket's error once it has failed."""
        if self.error is not None:
            raise self.error
        for part in parts:
            if len(part):
                self.queue.append(part if isinstance(part, memoryview) else memoryview(part))
        if not self.scheduled and not self.waiting_writable:
            self.scheduled = True
            self.loop.call_soon(self._flush)

    def flush(self) -> None:
        """Send what is queued now rather than at the end of the loop turn (a large write
        that should be on the wire while this process does something else)."""
        if not self.waiting_writable:
            self._flush()

    def _flush(self) -> None:
        self.scheduled = False
        if self.tls:
            self._flush_tls()
            return
        queue = self.queue
        while queue:
            batch = [queue[i] for i in range(min(len(queue), IOV_MAX))]
            offered = sum(len(b) for b in batch)
            try:
                sent = self.sock.sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self.error = exc
                queue.clear()
                break
            short = sent < offered
            while sent:
                head = queue[0]
                if sent >= len(head):
                    sent -= len(head)
                    queue.popleft()
                else:
                    queue[0] = head[sent:]
                    sent = 0
            if short:
                self.waiting_writable = True
                self.loop.add_writer(self.sock.fileno(), self._writable)
                return
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def _next_tls(self) -> memoryview | None:
        """The next buffer to write on a TLS socket: queued parts joined up to TLS_BATCH."""
        queue = self.queue
        if not queue:
            return None
        if len(queue[0]) >= TLS_BATCH or len(queue) == 1:
            return queue.popleft()
        parts: list[memoryview] = []
        size = 0
        while queue and size + len(queue[0]) <= TLS_BATCH:
            part = queue.popleft()
            parts.append(part)
            size += len(part)
        return memoryview(b"".join(parts)) if parts else queue.popleft()

    def _flush_tls(self) -> None:
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        while True:
            buffer = self.unfinished if self.unfinished is not None else self._next_tls()
            if buffer is None:
                break
            try:
                sent = sock.send(buffer)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                self.unfinished = buffer
                self.waiting_writable = True
                self.loop.add_writer(sock.fileno(), self._writable)
                return
            except OSError as exc:
                self.error = exc
                self.queue.clear()
                self.unfinished = None
                break
            self.unfinished = buffer[sent:] if sent < len(buffer) else None
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def _writable(self) -> None:
        self.loop.remove_writer(self.sock.fileno())
        self.waiting_writable = False
        self._flush()

    async def drain(self) -> None:
        """Wait until everything queued is with the kernel (or the socket failed)."""
        if not self.queue and not self.scheduled and self.unfinished is None:
            return
        if self.drained is None or self.drained.done():
            self.drained = self.loop.create_future()
        await self.drained

    def close(self) -> None:
        if self.waiting_writable:
            self.loop.remove_writer(self.sock.fileno())
            self.waiting_writable = False
        self.queue.clear()
        self.unfinished = None
