"""An asyncio NBD server: fixed newstyle negotiation, structured replies, block status.

Requests are received straight into preallocated buffers (receiver.py; a StreamReader copies
every payload through its own buffer, which costs most of the throughput of 4 MiB writes).
Each request runs as its own task, so one connection keeps as many requests in flight as the
client sends (QEMU: up to 16); replies go out in completion order, which NBD allows because the
client matches them by cookie.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as host_errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from heron.ardfs.errors import ArdfsError
from heron.ardfs.receiver import Receiver
from heron.ardfs.sender import Sender
from heron.ardfs.volume import Volume, VolumeError
from heron.nbd import proto as p

log = logging.getLogger(__name__)

# Requests in flight per connection: bounds the memory a client can make us hold.
MAX_IN_FLIGHT = 64
BLOCK = 4 * 1024 * 1024  # the block size of ARDFS volumes: whole-block writes are the large ones
# How long the last replies may take to leave when a client disconnects.
DRAIN_TIMEOUT = 10.0

TRANSMISSION_FLAGS = (
    p.FLAG_HAS_FLAGS
    | p.FLAG_SEND_FLUSH
    | p.FLAG_SEND_FUA
    | p.FLAG_SEND_TRIM
    | p.FLAG_SEND_WRITE_ZEROES
    | p.FLAG_SEND_DF
    # Every connection to an export shares one Volume object and a flush syncs every copy of
    # the whole volume, so a flush on one connection covers writes completed on another.
    | p.FLAG_CAN_MULTI_CONN
)


class Disconnect(ArdfsError):
    """The client went away or broke the protocol: drop the connection."""


@dataclass
class ExportTable:
    """How the server finds volumes: by export name, and all names for NBD_OPT_LIST."""

    lookup: Callable[[str], Volume | None]
    names: Callable[[], list[str]]
    default: str | None = None  # what the empty export name means


class Connection:
    """One client connection: negotiation, then the transmission phase."""

    def __init__(self, sock: socket.socket, exports: ExportTable):
        self.sock = sock
        self.exports = exports
        self.loop = asyncio.get_running_loop()
        self.no_zeroes = False
        self.structured = False
        self.base_allocation = False
        self.volume: Volume | None = None
        self.sender = Sender(sock, self.loop)
        self.rx = Receiver(sock, self.loop)
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        # Receive buffers of whole-block writes, used again once a write is carried out: a
        # fresh 4 MiB bytearray per write cost more CPU (page faults) than the receive itself.
        self.spare: list[bytearray] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.callbacks = 0  # writes in flight that complete by callback, not as tasks
        self.callbacks_idle = asyncio.Event()
        self.callbacks_idle.set()

    async def recv(self, n: int) -> bytearray:
        buf = bytearray(n)
        await self.rx.into(memoryview(buf))
        return buf

    def send(self, *parts: bytes | bytearray | memoryview) -> None:
        self.sender.send(*parts)

    # -- negotiation -------------------------------------------------------------------------

    async def option_reply(self, option: int, kind: int, data: bytes = b"") -> None:
        header = p.OPTION_REPLY.pack(p.OPTION_REPLY_MAGIC, option, kind, len(data))
        self.send(header + data)

    async def negotiate(self) -> Volume | None:
        flags = p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES
        self.send(p.HANDSHAKE.pack(p.NBDMAGIC, p.IHAVEOPT, flags))
        (client_flags,) = struct.unpack(">I", await self.recv(4))
        if not client_flags & p.CLIENT_FLAG_FIXED_NEWSTYLE:
            raise Disconnect("client does not speak fixed newstyle negotiation")
        self.no_zeroes = bool(client_flags & p.CLIENT_FLAG_NO_ZEROES)
        while True:
            magic, option, length = p.OPTION.unpack(await self.recv(p.OPTION.size))
            if magic != p.IHAVEOPT:
                raise Disconnect(f"bad option magic {magic:#x}")
            if length > p.MAX_OPTION:
                raise Disconnect(f"option {option} of {length} bytes")
            data = bytes(await self.recv(length))
            volume = await self.option(option, data)
            if volume is not None:
                return volume
            if option == p.OPT_ABORT:
                return None

    async def option(self, option: int, data: bytes) -> Volume | None:
        if option == p.OPT_EXPORT_NAME:
            volume = self.find(data.decode(errors="replace"))
            if volume is None:
                # This option has no error reply: closing is the only answer the protocol has.
                raise Disconnect(f"unknown export {data!r}")
            reply = struct.pack(">QH", volume.size, TRANSMISSION_FLAGS)
            self.send(reply if self.no_zeroes else reply + bytes(124))
            return volume
        if option == p.OPT_ABORT:
            await self.option_reply(option, p.REP_ACK)
            return None
        if option == p.OPT_LIST:
            if data:
                await self.option_reply(option, p.REP_ERR_INVALID, b"LIST takes no data")
                return None
            for name in self.exports.names():
                raw = name.encode()
                await self.option_reply(option, p.REP_SERVER, struct.pack(">I", len(raw)) + raw)
            await self.option_reply(option, p.REP_ACK)
            return None
        if option in (p.OPT_INFO, p.OPT_GO):
            return await self.info_or_go(option, data)
        if option == p.OPT_STRUCTURED_REPLY:
            if data:
                await self.option_reply(option, p.REP_ERR_INVALID, b"no data expected")
            else:
                self.structured = True
                await self.option_reply(option, p.REP_ACK)
            return None
        if option in (p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT):
            await self.meta_context(option, data)
            return None
        await self.option_reply(option, p.REP_ERR_UNSUP, b"option not supported")
        return None

    def find(self, name: str) -> Volume | None:
        if not name and self.exports.default is not None:
            name = self.exports.default
        return self.exports.lookup(name)

    async def info_or_go(self, option: int, data: bytes) -> Volume | None:
        try:
            (name_len,) = struct.unpack_from(">I", data, 0)
            name = data[4 : 4 + name_len].decode()
            (count,) = struct.unpack_from(">H", data, 4 + name_len)
            if len(data) != 4 + name_len + 2 + 2 * count:
                raise ValueError("length mismatch")
        except (struct.error, ValueError, UnicodeDecodeError):
            await self.option_reply(option, p.REP_ERR_INVALID, b"malformed INFO/GO request")
            return None
        volume = self.find(name)
        if volume is None:
            await self.option_reply(option, p.REP_ERR_UNKNOWN, f"no export {name!r}".encode())
            return None
        info = p.EXPORT_INFO.pack(p.INFO_EXPORT, volume.size, TRANSMISSION_FLAGS)
        await self.option_reply(option, p.REP_INFO, info)
        # Any byte range works, but 4 KiB-aligned I/O avoids read-modify-write of checksums.
        sizes = p.BLOCK_SIZE_INFO.pack(p.INFO_BLOCK_SIZE, 1, 4096, p.MAX_PAYLOAD)
        await self.option_reply(option, p.REP_INFO, sizes)
        await self.option_reply(option, p.REP_ACK)
        return volume if option == p.OPT_GO else None

    async def meta_context(self, option: int, data: bytes) -> None:
        try:
            (name_len,) = struct.unpack_from(">I", data, 0)
            name = data[4 : 4 + name_len].decode()
            pos = 4 + name_len
            (count,) = struct.unpack_from(">I", data, pos)
            pos += 4
            queries = []
            for _ in range(count):
                (qlen,) = struct.unpack_from(">I", data, pos)
                queries.append(data[pos + 4 : pos + 4 + qlen].decode())
                pos += 4 + qlen
            if pos != len(data):
                raise ValueError("trailing bytes")
        except (struct.error, ValueError, UnicodeDecodeError):
            await self.option_reply(option, p.REP_ERR_INVALID, b"malformed meta context request")
            return
        if option == p.OPT_SET_META_CONTEXT and not self.structured:
            await self.option_reply(option, p.REP_ERR_INVALID, b"structured replies first")
            return
        if self.find(name) is None:
            await self.option_reply(option, p.REP_ERR_UNKNOWN, f"no export {name!r}".encode())
            return
        wanted = p.BASE_ALLOCATION in queries or (
            option == p.OPT_LIST_META_CONTEXT and (not queries or "base:" in queries)
        )
        if option == p.OPT_SET_META_CONTEXT:
            self.base_allocation = p.BASE_ALLOCATION in queries
        if wanted:
            raw = p.BASE_ALLOCATION.encode()
            reply = struct.pack(">I", p.BASE_ALLOCATION_ID) + raw
            await self.option_reply(option, p.REP_META_CONTEXT, reply)
        await self.option_reply(option, p.REP_ACK)

    # -- transmission ------------------------------------------------------------------------

    async def transmit(self, volume: Volume) -> None:
        self.volume = volume
        rx = self.rx
        try:
            while True:
                header = await rx.exactly(p.REQUEST.size)
                magic, flags, cmd, cookie, offset, length = p.REQUEST.unpack(header)
                if magic != p.REQUEST_MAGIC:
                    raise Disconnect(f"bad request magic {magic:#x}")
                if cmd == p.CMD_DISC:
                    return
                payload = None
                if cmd == p.CMD_WRITE:
                    if length > p.MAX_PAYLOAD:
                        raise Disconnect(f"write of {length} bytes is over the limit")
                    payload = self.buffer(length)
                    await rx.into(memoryview(payload))
                if cmd == p.CMD_READ and self.read_now(volume, offset, length, cookie):
                    continue
                await self.in_flight.acquire()
                if payload is not None and self.write_now(volume, flags, cookie, offset, payload):
                    continue
                if cmd == p.CMD_READ and self.read_start(volume, offset, length, cookie):
                    continue
                task = asyncio.create_task(
                    self.request(cmd, flags, cookie, offset, length, payload)
                )
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        finally:
            # DISC: the client expects everything it sent before to be carried out.
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.callbacks_idle.wait()

    def buffer(self, length: int) -> bytearray:
        """A write's receive buffer: a spare one for a whole block (filled entirely)."""
        if length == BLOCK and self.spare:
            return self.spare.pop()
        return bytearray(length)

    def recycle(self, payload: bytearray | None) -> None:
        """A write is carried out: nothing refers to its buffer any more."""
        if payload is not None and len(payload) == BLOCK and len(self.spare) < MAX_IN_FLIGHT:
            self.spare.append(payload)

    def read_now(self, volume: Volume, offset: int, length: int, cookie: int) -> bool:
        """Answer a read at once when the volume can from this node's page cache (no task)."""
        now = getattr(volume, "read_now", None)
        if now is None or offset + length > volume.size or length > p.MAX_PAYLOAD:
            return False
        data = bytearray(length)
        if not now(offset, memoryview(data)):
            return False
        self.read_reply(cookie, offset, data)
        return True

    def read_start(self, volume: Volume, offset: int, length: int, cookie: int) -> bool:
        """Start a read that completes by callback (a remote copy; see read_start of the
        volumes). The caller holds an in-flight permit, released on completion."""
        start = getattr(volume, "read_start", None)
        if start is None or offset + length > volume.size or length > p.MAX_PAYLOAD:
            return False
        data = bytearray(length)

        def done(error: Exception | None) -> None:
            self.callback_done()
            try:
                if error is None:
                    self.read_reply(cookie, offset, data)
                else:
                    log.warning("read at %d+%d failed: %s", offset, length, error)
                    code = error.errno if isinstance(error, VolumeError) else p.EIO
                    self.error_now(p.CMD_READ, cookie, code, str(error))
            except OSError as exc:
                log.debug("reply to %s failed: %s", cookie, exc)

        self.callback_start()
        if start(offset, memoryview(data), done):
            return True
        self.callback_abandon()
        return False

    def callback_start(self) -> None:
        self.callbacks += 1
        self.callbacks_idle.clear()

    def callback_done(self) -> None:
        self.callbacks -= 1
        self.in_flight.release()
        if not self.callbacks:
            self.callbacks_idle.set()

    def callback_abandon(self) -> None:
        """Nothing was started: the permit stays with the caller's general path."""
        self.callbacks -= 1
        if not self.callbacks:
            self.callbacks_idle.set()

    def write_now(
        self, volume: Volume, flags: int, cookie: int, offset: int, payload: bytearray
    ) -> bool:
        """Start a write that completes by callback (see ReplicatedVolume.write_now)."""
        now = getattr(volume, "write_now", None)
        if now is None or offset + len(payload) > volume.size:
            return False

        def done(error: Exception | None) -> None:
            self.callback_done()
            self.recycle(payload)
            try:
                if error is None:
                    self.send(p.SIMPLE_REPLY.pack(p.SIMPLE_REPLY_MAGIC, 0, cookie))
                else:
                    log.warning("write at %d+%d failed: %s", offset, len(payload), error)
                    code = error.errno if isinstance(error, VolumeError) else p.EIO
                    self.send(p.SIMPLE_REPLY.pack(p.SIMPLE_REPLY_MAGIC, code, cookie))
            except OSError as exc:
                log.debug("reply to %s failed: %s", cookie, exc)

        self.callback_start()
        if now(offset, memoryview(payload), bool(flags & p.CMD_FLAG_FUA), done):
            return True
        self.callback_abandon()
        return False

    async def request(
        self, cmd: int, flags: int, cookie: int, offset: int, length: int, payload: bytearray | None
    ) -> None:
        try:
            await self.carry_out(cmd, flags, cookie, offset, length, payload)
        except (Disconnect, OSError) as exc:
            log.debug("reply to %s failed: %s", cookie, exc)
        else:
            self.recycle(payload)
        finally:
            self.in_flight.release()

    async def carry_out(
        self, cmd: int, flags: int, cookie: int, offset: int, length: int, payload: bytearray | None
    ) -> None:
        volume = self.volume
        assert volume is not None
        fua = bool(flags & p.CMD_FLAG_FUA)
        if (
            cmd
            in (
                p.CMD_READ,
                p.CMD_WRITE,
                p.CMD_TRIM,
                p.CMD_WRITE_ZEROES,
                p.CMD_BLOCK_STATUS,
                p.CMD_CACHE,
            )
            and offset + length > volume.size
        ):
            await self.error(cmd, cookie, p.EINVAL, "request beyond the end of the volume")
            return
        try:
            if cmd == p.CMD_READ:
                if length > p.MAX_PAYLOAD:
                    await self.error(cmd, cookie, p.EINVAL, "read over the size limit")
                    return
                data = bytearray(length)
                await volume.read_into(offset, memoryview(data))
                self.read_reply(cookie, offset, data)
                return
            if cmd == p.CMD_WRITE:
                assert payload is not None
                await volume.write(offset, memoryview(payload), fua)
            elif cmd == p.CMD_FLUSH:
                await volume.flush()
            elif cmd == p.CMD_TRIM:
                await volume.trim(offset, length, fua)
            elif cmd == p.CMD_WRITE_ZEROES:
                may_trim = not flags & p.CMD_FLAG_NO_HOLE
                await volume.write_zeroes(offset, length, fua, may_trim)
            elif cmd == p.CMD_CACHE:
                pass  # a hint; the data is already as close as it gets
            elif cmd == p.CMD_BLOCK_STATUS:
                if not self.base_allocation:
                    await self.error(cmd, cookie, p.EINVAL, "no meta context negotiated")
                    return
                await self.block_status(cookie, offset, length, bool(flags & p.CMD_FLAG_REQ_ONE))
                return
            else:
                await self.error(cmd, cookie, p.EINVAL, f"unknown command {cmd}")
                return
        except VolumeError as exc:
            log.warning("%s at %d+%d failed: %s", cmd, offset, length, exc)
            await self.error(cmd, cookie, exc.errno, str(exc))
            return
        except OSError as exc:
            log.warning("%s at %d+%d failed: %s", cmd, offset, length, exc)
            await self.error(cmd, cookie, _nbd_errno(exc), str(exc))
            return
        self.send(p.SIMPLE_REPLY.pack(p.SIMPLE_REPLY_MAGIC, 0, cookie))

    def read_reply(self, cookie: int, offset: int, data: bytearray) -> None:
        if not self.structured:
            header = p.SIMPLE_REPLY.pack(p.SIMPLE_REPLY_MAGIC, 0, cookie)
        else:
            header = p.STRUCTURED_REPLY.pack(
                p.STRUCTURED_REPLY_MAGIC,
                p.REPLY_FLAG_DONE,
                p.REPLY_TYPE_OFFSET_DATA,
                cookie,
                8 + len(data),
            ) + struct.pack(">Q", offset)
        self.send(header, data)

    async def block_status(self, cookie: int, offset: int, length: int, one: bool) -> None:
        assert self.volume is not None
        extents = await self.volume.extents(offset, length)
        if one:
            extents = extents[:1]
        body = bytearray(struct.pack(">I", p.BASE_ALLOCATION_ID))
        for extent in extents:
            state = p.STATE_HOLE | p.STATE_ZERO if extent.hole else 0
            body += p.EXTENT.pack(extent.length, state)
        header = p.STRUCTURED_REPLY.pack(
            p.STRUCTURED_REPLY_MAGIC,
            p.REPLY_FLAG_DONE,
            p.REPLY_TYPE_BLOCK_STATUS,
            cookie,
            len(body),
        )
        self.send(header + body)

    async def error(self, cmd: int, cookie: int, code: int, message: str) -> None:
        self.error_now(cmd, cookie, code, message)

    def error_now(self, cmd: int, cookie: int, code: int, message: str) -> None:
        if self.structured and cmd in (p.CMD_READ, p.CMD_BLOCK_STATUS):
            raw = message.encode()[:4096]
            body = struct.pack(">IH", code, len(raw)) + raw
            header = p.STRUCTURED_REPLY.pack(
                p.STRUCTURED_REPLY_MAGIC, p.REPLY_FLAG_DONE, p.REPLY_TYPE_ERROR, cookie, len(body)
            )
            self.send(header + body)
        else:
            self.send(p.SIMPLE_REPLY.pack(p.SIMPLE_REPLY_MAGIC, code, cookie))

    async def run(self) -> None:
        try:
            volume = await self.negotiate()
            if volume is not None:
                await self.transmit(volume)
            await asyncio.wait_for(self.sender.drain(), DRAIN_TIMEOUT)
        except (Disconnect, ConnectionError, TimeoutError) as exc:
            log.debug("NBD connection ended: %s", exc)
        finally:
            self.sender.close()
            self.rx.close()
            self.sock.close()


def _nbd_errno(exc: OSError) -> int:
    if exc.errno == host_errno.ENOSPC:
        return p.ENOSPC
    if exc.errno == host_errno.EDQUOT:
        return p.ENOSPC
    return p.EIO


class NbdServer:
    """Accepts NBD clients on unix and TCP sockets and serves them from an ExportTable."""

    def __init__(self, exports: ExportTable):
        self.exports = exports
        self.listeners: list[socket.socket] = []
        self.accepting: list[asyncio.Task[None]] = []
        self.connections: set[asyncio.Task[None]] = set()

    async def listen_unix(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        os.chmod(path, 0o660)
        self._start(sock)

    async def listen_tcp(self, host: str, port: int) -> int:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self._start(sock)
        return int(sock.getsockname()[1])

    def _start(self, sock: socket.socket) -> None:
        sock.listen(128)
        sock.setblocking(False)
        self.listeners.append(sock)
        self.accepting.append(asyncio.create_task(self._accept(sock)))

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.create_task(Connection(sock, self.exports).run())
            self.connections.add(task)
            task.add_done_callback(self.connections.discard)

    async def close(self) -> None:
        for task in self.accepting:
            task.cancel()
        for sock in self.listeners:
            sock.close()
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.accepting, *self.connections, return_exceptions=True)
