"""The peer protocol: heron-io processes reading and writing each other's chunks over TCP.

One fixed 72-byte request header, optionally followed by the bytes of a write; one fixed
20-byte reply header, optionally followed by the bytes of a read (or an error message).
Requests are pipelined on one connection and matched to replies by id, so a client keeps as
many in flight as its volumes have. Payloads are received straight into their final buffers
(a read lands in the NBD reply buffer), by receiver.py, as in the NBD server.

Request:  magic u32 | op u8 | flags u8 | held u16 | id u64 | volume 16 bytes (uuid) |
          disk 16 bytes (ascii, NUL padded) | chunk u64 | offset u32 | length u32 | epoch u64
The `held` word of a write or trim of an EC parity chunk (with FLAG_HELD) says how the mark of
the data shards written changes (chunkstore.Held: the added shards in its low byte, the removed
ones in its high byte). A heron-io from before marks ignores it, and the parity then has none.
Reply:    magic u32 | status u32 (0 or an errno) | id u64 | length u32

Before the first request, both ends of a connection prove they hold the cluster's peer key
(peerauth.py); a connection that does not is closed before anything is served. When both ends
can, the connection then turns to TLS with the nodes' certificates (peertls.py), and every
request and reply travels in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from heron.ardfs import peerauth, peertls
from heron.ardfs.chunkstore import Held
from heron.ardfs.nbd import Disconnect
from heron.ardfs.receiver import Receiver
from heron.ardfs.sender import Sender
from heron.ardfs.target import LocalTarget
from heron.ardfs.volume import ChecksumError, FencedError, UnavailableError, VolumeError

log = logging.getLogger(__name__)

REQUEST = struct.Struct("<IBBHQ16s16sQIIQ")
REPLY = struct.Struct("<IIQI")
REQUEST_MAGIC = 0x41524446  # "ARDF"
REPLY_MAGIC = 0x41524452  # "ARDR"

OP_READ = 1
OP_WRITE = 2
OP_SYNC = 3
OP_TRIM = 4
OP_ALLOCATED = 5
OP_CHUNKS = 6
OP_VERIFY = 7
OP_DELETE = 8
OP_PING = 9
OP_CLAIM = 11  # a new owner's epoch: refuse older ones from now on
OP_STALE = 12  # payload "+ chunk disk" / "- chunk disk" lines: record them in the stale log
OP_STALE_LIST = 13  # the stale log's copies, as "chunk disk" lines
OP_PIN = 14  # payload: a placement to keep unless one is kept; reply: the one kept
OP_MARKS = 15  # chunks chunk, chunk + offset, ... (length of them): u16 marks (NO_MARK: none)
OP_ADOPT_MARK = 16  # give parity `chunk` the whole mark in the held word (a parity from before)
OP_CORRUPT = 10  # to a volume's owner: "chunk <chunk> on disk <disk> is corrupt, repair it"

FLAG_DURABLE = 1
FLAG_HELD = 2  # the write changes a parity's mark as the `held` word says
FLAG_HELD_EXACT = 4  # ... and `held` is the whole mark (Held.exact)
NO_MARK = 0xFFFF
# A read of a chunk that does not exist is answered with this status and no bytes: the reader
# fills zeroes itself instead of 4 MiB of them crossing the network (thin volumes, EC parity).
ABSENT = errno.ENODATA

MAX_PAYLOAD = 64 * 1024 * 1024
WHOLE = 4 * 1024 * 1024  # a whole chunk: the common large write
# A peer that does not answer within this long is treated as dead for the request.
REQUEST_TIMEOUT = 30.0
CONNECT_TIMEOUT = 2.0
# After a slow failure (see holds_back), requests fail at once for this long instead of each
# waiting.
RETRY_AFTER = 1.0


def holds_back(lost: BaseException) -> bool:
    """Whether a connection lost this way should hold requests back for RETRY_AFTER.

    Not when the peer's end closed or reset it (ConnectionError): its heron-io died, or was
    restarted, and trying again costs a refused connect at worst. A restart can take less
    than RETRY_AFTER, and a read whose other copies are gone must then reach the restarted
    node rather than fail with EIO. A stall, a timeout or a broken protocol does hold them.
    """
    return not isinstance(lost, ConnectionError)


def _status(exc: BaseException) -> int:
    if isinstance(exc, ChecksumError):
        return errno.EBADMSG
    if isinstance(exc, VolumeError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def _error(status: int, message: str) -> VolumeError:
    if status == errno.EBADMSG:
        return ChecksumError(message)
    if status == errno.EPERM:
        return FencedError(message)
    return VolumeError(message, status)


def held_word(held: Held | None) -> tuple[int, int]:
    """(flags, held word) of a request carrying `held`."""
    if held is None:
        return 0, 0
    flags = FLAG_HELD | (FLAG_HELD_EXACT if held.exact else 0)
    return flags, held.add | held.remove << 8


def held_of(flags: int, word: int) -> Held | None:
    if not flags & FLAG_HELD:
        return None
    return Held(word & 0xFF, word >> 8, bool(flags & FLAG_HELD_EXACT))


def _volume_bytes(volume: str) -> bytes:
    return bytes.fromhex(volume)


def _disk_bytes(disk: str) -> bytes:
    return disk.encode().ljust(16, b"\0")


def _parse_stale(text: bytes) -> tuple[bool, list[tuple[int, str]]]:
    lines = [line.split() for line in text.decode().splitlines()]
    signs = {sign for sign, _, _ in lines}
    if len(signs) != 1 or not signs <= {"+", "-"}:
        raise VolumeError("stale notes must all add or all remove", errno.EINVAL)
    return signs == {"+"}, [(int(c), d) for _, c, d in lines]


# -- server ----------------------------------------------------------------------------------


class PeerServer:
    """Serves this node's chunk stores to the other heron-io processes."""

    def __init__(
        self,
        disks: Callable[[str], LocalTarget | None],
        corrupt: Callable[[str, int, str], Awaitable[None]] | None = None,
        *,
        key: bytes,
        tls: peertls.PeerTls | None = None,
    ):
        self.disks = disks
        self.corrupt = corrupt
        self.key = key  # the cluster's peer key: a client must prove it holds it
        self.tls = tls  # the node's certificate: offered (or required) after the key
        self.handshake_timeout = peerauth.HANDSHAKE_TIMEOUT
        self.listener: socket.socket | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def listen(self, host: str, port: int) -> int:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
        self.listener = sock
        self._spawn(self._accept(sock))
        return int(sock.getsockname()[1])

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, address = await loop.sock_accept(listener)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(self._serve(sock, address))

    async def _serve(self, plain: socket.socket, address: object = None) -> None:
        loop = asyncio.get_running_loop()
        try:
            authenticated = await self._authenticate(plain, address)
        except BaseException:  # cancelled (the server closes)
            plain.close()
            raise
        if authenticated is None:
            plain.close()
            return
        sock = authenticated  # the TLS socket, if it turned to TLS
        sender = Sender(sock, loop)
        rx = Receiver(sock, loop)
        pending: set[asyncio.Task[None]] = set()
        spare: list[bytearray] = []  # a whole chunk's receive buffer, used again (see nbd.py)
        try:
            while True:
                fields = REQUEST.unpack(await rx.exactly(REQUEST.size))
                if fields[0] != REQUEST_MAGIC:
                    raise Disconnect(f"bad peer request magic {fields[0]:#x}")
                op, length = fields[1], fields[9]
                payload = None
                if op in (OP_WRITE, OP_STALE, OP_PIN):
                    if length > MAX_PAYLOAD:
                        raise Disconnect(f"peer write of {length} bytes")
                    payload = spare.pop() if spare and length == WHOLE else bytearray(length)
                    await rx.into(memoryview(payload))
                if self._now(sender, fields, payload):
                    if payload is not None and length == WHOLE:
                        spare[:] = [payload]  # written: nothing refers to it any more
                    continue
                task = asyncio.create_task(self._handle(sender, fields, payload))
                pending.add(task)
                task.add_done_callback(pending.discard)
        except (Disconnect, ConnectionError) as exc:
            log.debug("peer connection ended: %s", exc)
        finally:
            for task in pending:
                task.cancel()
            sender.close()
            rx.close()
            sock.close()

    async def _authenticate(self, sock: socket.socket, address: object) -> socket.socket | None:
        """The socket to serve on once the client proved it holds the peer key and, if both
        ends can, showed a certificate of the cluster in a TLS handshake (bounded in time):
        the TLS socket then, `sock` else. None (and one warning) when it did not."""
        loop = asyncio.get_running_loop()
        tls = self.tls
        offer = tls is not None and tls.available()
        try:
            turn = await peerauth.accept(
                loop,
                sock,
                self.key,
                self.handshake_timeout,
                offer=offer,
                require=tls is not None and tls.required,
            )
            if not turn:
                return sock
            assert tls is not None
            return await peertls.wrap(
                loop, sock, tls, server_hostname=None, timeout=self.handshake_timeout
            )
        except (peerauth.AuthError, peertls.TlsHandshakeError, OSError) as exc:
            where = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else address
            log.warning("peer connection from %s refused: %s", where, exc)
            return None

    def _now(self, sender: Sender, fields: tuple[Any, ...], payload: bytearray | None) -> bool:
        """Carry out a page-cache read or write at once, without a task: True if done.

        Most peer requests are these, and they never wait; a task per request was a good part
        of a replicated 4 KiB write's CPU. Durable writes and the rest go through _handle.
        """
        _, op, flags, word, rid, raw_volume, raw_disk, chunk, offset, length, epoch = fields
        if op not in (OP_READ, OP_WRITE) or flags & FLAG_DURABLE:
            return False
        target = self.disks(raw_disk.rstrip(b"\0").decode(errors="replace"))
        if target is None or length > MAX_PAYLOAD:
            return False
        volume = raw_volume.hex()
        body: bytes | bytearray = b""
        status = 0
        try:
            if op == OP_READ:
                if not target.store.exists(volume, chunk):
                    sender.send(REPLY.pack(REPLY_MAGIC, ABSENT, rid, 0))
                    return True
                body = bytearray(length)
                target.store.read_into(volume, chunk, offset, memoryview(body))
            else:
                assert payload is not None
                held = held_of(flags, word)
                target.store.write(volume, chunk, offset, memoryview(payload), False, epoch, held)
        except (VolumeError, OSError) as exc:
            status = _status(exc)
            body = str(exc).encode()[:4096]
            if not isinstance(exc, FencedError):
                log.warning("peer op %d on %s/%d failed: %s", op, volume, chunk, exc)
        try:
            sender.send(REPLY.pack(REPLY_MAGIC, status, rid, len(body)), body)
        except OSError as exc:
            log.debug("peer reply failed: %s", exc)
        return True

    async def _handle(
        self, sender: Sender, fields: tuple[Any, ...], payload: bytearray | None
    ) -> None:
        _, op, flags, word, rid, raw_volume, raw_disk, chunk, offset, length, epoch = fields
        volume = raw_volume.hex()
        disk = raw_disk.rstrip(b"\0").decode(errors="replace")
        durable = bool(flags & FLAG_DURABLE)
        held = held_of(flags, word)
        body: bytes | bytearray = b""
        status = 0
        try:
            if op == OP_CORRUPT:
                if self.corrupt is None:
                    raise VolumeError("this node repairs nothing", errno.ENOTSUP)
                await self.corrupt(volume, chunk, disk)
            elif op != OP_PING:
                body = await self._on_disk(op, volume, disk, chunk, offset, length, epoch,
                                           durable, held, payload)  # fmt: skip
        except (VolumeError, OSError) as exc:
            status = _status(exc)
            body = str(exc).encode()[:4096]
            if not isinstance(exc, FencedError):
                log.warning("peer op %d on %s/%s/%d failed: %s", op, disk, volume, chunk, exc)
        try:
            sender.send(REPLY.pack(REPLY_MAGIC, status, rid, len(body)), body)
        except OSError as exc:
            log.debug("peer reply failed: %s", exc)

    async def _on_disk(
        self,
        op: int,
        volume: str,
        disk: str,
        chunk: int,
        offset: int,
        length: int,
        epoch: int,
        durable: bool,
        held: Held | None,
        payload: bytearray | None,
    ) -> bytes | bytearray:
        target = self.disks(disk)
        if target is None:
            raise VolumeError(f"no disk {disk!r} on this node", errno.ENODEV)
        if op == OP_READ:
            if length > MAX_PAYLOAD:
                raise VolumeError("read too large", errno.EINVAL)
            body = bytearray(length)
            await target.read_into(volume, chunk, offset, memoryview(body))
            return body
        if op == OP_WRITE:
            assert payload is not None
            await target.write(volume, chunk, offset, memoryview(payload), durable, epoch, held)
        elif op == OP_SYNC:
            await target.sync(volume)
        elif op == OP_TRIM:
            await target.trim(volume, chunk, offset, length, durable, epoch, held)
        elif op == OP_ALLOCATED:
            return bytes(await target.allocated(volume, chunk, length))
        elif op == OP_MARKS:
            if length > MAX_PAYLOAD // 2:
                raise VolumeError("too many marks asked at once", errno.EINVAL)
            marks = await target.marks(volume, chunk, length, max(offset, 1))
            words = [NO_MARK if m is None else m for m in marks]
            return struct.pack(f"<{len(words)}H", *words)
        elif op == OP_ADOPT_MARK:
            if held is None:
                raise VolumeError("a mark to adopt needs its held word", errno.EINVAL)
            await target.adopt_mark(volume, chunk, held.add, epoch)
        elif op == OP_CHUNKS:
            found = await target.chunks(volume)
            return struct.pack(f"<{len(found)}Q", *found)
        elif op == OP_VERIFY:
            bad = await target.verify(volume, chunk)
            return struct.pack(f"<{len(bad)}I", *bad)
        elif op == OP_DELETE:
            await target.delete(volume, chunk, epoch)
        elif op == OP_CLAIM:
            await target.claim(volume, epoch)
        elif op == OP_STALE:
            assert payload is not None
            added, pairs = _parse_stale(bytes(payload))
            await target.note_stale(volume, pairs, added)
        elif op == OP_PIN:
            return await target.pin(volume, bytes(payload or b""))
        elif op == OP_STALE_LIST:
            pairs = await target.stale_list(volume)
            return "".join(f"{c} {d}\n" for c, d in pairs).encode()
        else:
            raise VolumeError(f"unknown peer op {op}", errno.EINVAL)
        return b""

    async def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# -- client ----------------------------------------------------------------------------------


@dataclass
class _Pending:
    """A request in flight: awaited by a coroutine (future) or completed by a callback."""

    into: memoryview | None
    future: asyncio.Future[bytes] | None = None
    callback: Callable[[Exception | None], None] | None = None

    def finish(self, error: Exception | None, body: bytes = b"") -> None:
        if self.future is not None:
            if self.future.done():
                return  # the caller gave up (timeout): nothing waits for this reply
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(body)
        elif self.callback is not None:
            callback, self.callback = self.callback, None
            callback(error)


class PeerClient:
    """One pipelined connection to another node's heron-io, reconnected when lost."""

    def __init__(
        self,
        node: str,
        host: str,
        port: int,
        timeout: float = REQUEST_TIMEOUT,
        *,
        key: bytes,
        tls: peertls.PeerTls | None = None,
    ):
        self.node = node
        self.key = key  # the cluster's peer key, proved at each connection
        # This node's certificate: the connection turns to TLS when the peer can, and the
        # peer's certificate must name `node`.
        self.tls = tls
        self.timeout = timeout
        self.host = host
        self.port = port
        self.sock: socket.socket | None = None
        self.pending: dict[int, _Pending] = {}
        self.next_id = 1
        self.sender: Sender | None = None
        self.connect_lock = asyncio.Lock()
        self.reader: asyncio.Task[None] | None = None
        self.rx: Receiver | None = None
        self.failed_at = 0.0
        self.failure = ""
        self.last_reply = 0.0
        self.watchdog: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self.sock is not None

    async def _connect(self) -> socket.socket:
        async with self.connect_lock:
            if self.sock is not None:
                return self.sock
            if time.monotonic() - self.failed_at < RETRY_AFTER:
                raise UnavailableError(f"node {self.node} is unreachable: {self.failure}")
            loop = asyncio.get_running_loop()
            sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await loop.sock_connect(sock, (self.host, self.port))
            except (OSError, TimeoutError) as exc:
                sock.close()
                # Only a slow failure holds later requests back: a refused connection costs
                # nothing to try again, and the peer may be starting.
                if not isinstance(exc, ConnectionRefusedError):
                    self.failed_at = time.monotonic()
                self.failure = str(exc) or type(exc).__name__
                raise UnavailableError(f"node {self.node} is unreachable: {self.failure}") from exc
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = self.tls
            limit = min(peerauth.HANDSHAKE_TIMEOUT, self.timeout)
            try:
                turn = await peerauth.connect(
                    loop,
                    sock,
                    self.key,
                    limit,
                    want=tls is not None and tls.available(),
                    require=tls is not None and tls.required,
                )
                if turn:
                    assert tls is not None
                    sock = await peertls.wrap(
                        loop, sock, tls, server_hostname=self.node, timeout=limit
                    )
            except BaseException as exc:
                sock.close()
                if not isinstance(exc, peerauth.AuthError | peertls.TlsHandshakeError | OSError):
                    raise  # cancelled
                self.failed_at = time.monotonic()  # a wrong key is not fixed in a second
                if self.failure != (failure := f"peer authentication failed: {exc}"):
                    log.warning("node %s: %s", self.node, failure)  # once, not every retry
                self.failure = failure
                raise UnavailableError(f"node {self.node}: {self.failure}") from exc
            self.failure = ""  # a later failure is news again
            how = f"over {sock.version()}" if isinstance(sock, ssl.SSLSocket) else "in the clear"
            log.info("connected to node %s %s", self.node, how)
            self.sock = sock
            self.sender = Sender(sock, loop)
            self.last_reply = time.monotonic()
            self.rx = Receiver(sock, loop)
            self.reader = asyncio.create_task(self._read(sock, self.rx))
            if self.watchdog is None or self.watchdog.done():
                self.watchdog = asyncio.create_task(self._watch())
            return sock

    def _drop(self, sock: socket.socket, reason: str, hold: bool = True) -> None:
        """Fail everything in flight on `sock`: each caller decides what a lost copy means.
        `hold`: requests fail at once for RETRY_AFTER instead of connecting again."""
        if self.sock is not sock:
            # Dropped already (the reader of an old connection ending after the drop): what
            # is in flight now was sent on the next connection, and stays.
            sock.close()
            return
        self.sock = None
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        if self.rx is not None:
            self.rx.close()  # a read waiting on it ends
            self.rx = None
        if hold:
            self.failed_at = time.monotonic()
        self.failure = reason
        sock.close()
        pending, self.pending = self.pending, {}
        for item in pending.values():
            item.finish(UnavailableError(f"node {self.node}: {reason}"))

    async def _read(self, sock: socket.socket, rx: Receiver) -> None:
        try:
            while True:
                magic, status, rid, length = REPLY.unpack(await rx.exactly(REPLY.size))
                if magic != REPLY_MAGIC:
                    raise Disconnect(f"bad reply magic {magic:#x}")
                item = self.pending.pop(rid, None)
                self.last_reply = time.monotonic()
                if status == ABSENT and length == 0:
                    if item is not None:
                        if item.into is not None:
                            item.into[:] = bytes(len(item.into))
                        item.finish(None)
                    continue
                if item is not None and status == 0 and item.into is not None:
                    if length != len(item.into):
                        raise Disconnect(f"read reply of {length} bytes, {len(item.into)} asked")
                    await rx.into(item.into)
                    body = b""
                else:
                    buf = bytearray(length)
                    await rx.into(memoryview(buf))
                    body = bytes(buf)
                if item is not None:
                    error = _error(status, body.decode(errors="replace")) if status else None
                    item.finish(error, body)
        except (Disconnect, OSError) as exc:
            self._drop(sock, str(exc) or type(exc).__name__, holds_back(exc))

    async def _watch(self) -> None:
        """Drop a connection whose peer stopped answering (SIGSTOP, a hung disk): requests
        have no timeout of their own, a timer each would cost more than the request."""
        while self.sock is not None:
            await asyncio.sleep(self.timeout / 4)
            sock = self.sock
            stalled = time.monotonic() - self.last_reply > self.timeout
            if sock is not None and self.pending and stalled:
                self._drop(sock, f"no reply in {self.timeout:.0f}s")

    def send(
        self,
        op: int,
        volume: str,
        disk: str,
        chunk: int,
        offset: int,
        epoch: int,
        payload: memoryview,
        callback: Callable[[Exception | None], None],
        into: memoryview | None = None,
        held: Held | None = None,
    ) -> bool:
        """Start a write (or with `into`, a read) on an open connection, `callback` called
        with its outcome once. False (and no callback) when the connection is down: the
        caller takes the slow path."""
        sender = self.sender
        if self.sock is None or sender is None:
            return False
        rid = self.next_id
        self.next_id += 1
        if not self.pending:
            self.last_reply = time.monotonic()  # the stall clock starts with the first request
        self.pending[rid] = _Pending(into, callback=callback)
        length = len(into) if into is not None else len(payload)
        flags, word = held_word(held)
        header = REQUEST.pack(
            REQUEST_MAGIC, op, flags, word, rid, _volume_bytes(volume), _disk_bytes(disk),
            chunk, offset, length, epoch,
        )  # fmt: skip
        try:
            sender.send(header, payload)
            if len(payload) >= 65536:
                sender.flush()
        except OSError as exc:
            self._drop(self.sock, str(exc), holds_back(exc))
        return True

    async def call(
        self,
        op: int,
        volume: str,
        disk: str,
        chunk: int = 0,
        offset: int = 0,
        length: int = 0,
        epoch: int = 0,
        flags: int = 0,
        payload: memoryview | None = None,
        into: memoryview | None = None,
        held: Held | None = None,
    ) -> bytes:
        sock = self.sock if self.sock is not None else await self._connect()
        sender = self.sender
        assert sender is not None
        loop = asyncio.get_running_loop()
        rid = self.next_id
        self.next_id += 1
        future: asyncio.Future[bytes] = loop.create_future()
        if not self.pending:
            self.last_reply = time.monotonic()
        self.pending[rid] = _Pending(into, future=future)
        marked, word = held_word(held)
        header = REQUEST.pack(
            REQUEST_MAGIC, op, flags | marked, word, rid, _volume_bytes(volume),
            _disk_bytes(disk), chunk, offset, length, epoch,
        )  # fmt: skip
        try:
            sender.send(header, payload if payload is not None else b"")
        except OSError as exc:
            self._drop(sock, str(exc), holds_back(exc))
        # No timer per request: the watchdog drops a connection whose peer stops answering
        # (SIGSTOP, a hung disk), which fails this future like every other in flight.
        return await future

    async def close(self) -> None:
        if self.sock is not None:
            self._drop(self.sock, "closed")
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader


class RemoteTarget:
    """A disk on another node, reached through that node's PeerClient."""

    local = False

    def __init__(self, disk: str, client: PeerClient):
        self.disk = disk
        self.node = client.node
        self.client = client

    async def read_into(self, volume: str, chunk: int, offset: int, view: memoryview) -> None:
        await self.client.call(OP_READ, volume, self.disk, chunk, offset, len(view), into=view)

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
        flags = FLAG_DURABLE if durable else 0
        await self.client.call(OP_WRITE, volume, self.disk, chunk, offset, len(data), epoch,
                               flags, payload=data, held=held)  # fmt: skip

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
        flags = FLAG_DURABLE if durable else 0
        await self.client.call(
            OP_TRIM, volume, self.disk, chunk, offset, length, epoch, flags, held=held
        )

    async def sync(self, volume: str) -> None:
        await self.client.call(OP_SYNC, volume, self.disk)

    async def allocated(self, volume: str, first: int, count: int) -> list[bool]:
        body = await self.client.call(OP_ALLOCATED, volume, self.disk, first, 0, count)
        return [bool(b) for b in body]

    async def marks(self, volume: str, first: int, count: int, step: int) -> list[int | None]:
        # No payload: a heron-io without this op answers EINVAL and reads no bytes it does
        # not expect.
        body = await self.client.call(OP_MARKS, volume, self.disk, first, step, count)
        if len(body) != 2 * count:
            raise VolumeError(f"{len(body)} bytes of marks for {count} chunks", errno.EIO)
        words = struct.unpack(f"<{count}H", body)
        return [None if w == NO_MARK else w for w in words]

    async def adopt_mark(self, volume: str, chunk: int, held: int, epoch: int) -> None:
        await self.client.call(
            OP_ADOPT_MARK, volume, self.disk, chunk, epoch=epoch, held=Held(held, exact=True)
        )

    async def chunks(self, volume: str) -> list[int]:
        body = await self.client.call(OP_CHUNKS, volume, self.disk)
        return list(struct.unpack(f"<{len(body) // 8}Q", body))

    async def verify(self, volume: str, chunk: int) -> list[int]:
        body = await self.client.call(OP_VERIFY, volume, self.disk, chunk)
        return list(struct.unpack(f"<{len(body) // 4}I", body))

    async def delete(self, volume: str, chunk: int, epoch: int) -> None:
        await self.client.call(OP_DELETE, volume, self.disk, chunk, epoch=epoch)

    async def claim(self, volume: str, epoch: int) -> None:
        await self.client.call(OP_CLAIM, volume, self.disk, epoch=epoch)

    async def note_stale(self, volume: str, pairs: list[tuple[int, str]], added: bool) -> None:
        sign = "+" if added else "-"
        text = "".join(f"{sign} {c} {d}\n" for c, d in pairs).encode()
        await self.client.call(
            OP_STALE, volume, self.disk, length=len(text), payload=memoryview(text)
        )

    async def pin(self, volume: str, pin: bytes) -> bytes:
        return await self.client.call(
            OP_PIN, volume, self.disk, length=len(pin), payload=memoryview(pin)
        )

    async def stale_list(self, volume: str) -> list[tuple[int, str]]:
        body = await self.client.call(OP_STALE_LIST, volume, self.disk)
        return [(int(c), d) for c, d in (line.split() for line in body.decode().splitlines())]
