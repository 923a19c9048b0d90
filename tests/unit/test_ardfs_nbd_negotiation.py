"""NBD negotiation paths the real clients of the integration tests do not take: the old
NBD_OPT_EXPORT_NAME, ABORT, unknown options, meta contexts before structured replies, simple
replies. The server runs in this process on a memory volume, spoken to over a socketpair."""

from __future__ import annotations

import asyncio
import socket
import struct

from heron.ardfs.nbd import TRANSMISSION_FLAGS, Connection, ExportTable
from heron.ardfs.volume import Extent
from heron.nbd import proto as p

SIZE = 1024 * 1024


class MemoryVolume:
    def __init__(self) -> None:
        self.data = bytearray(SIZE)

    @property
    def size(self) -> int:
        return SIZE

    async def read_into(self, offset: int, view: memoryview) -> None:
        view[:] = self.data[offset : offset + len(view)]

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        self.data[offset : offset + len(data)] = data

    async def flush(self) -> None:
        pass

    async def trim(self, offset: int, length: int, fua: bool) -> None:
        self.data[offset : offset + length] = bytes(length)

    async def write_zeroes(self, offset: int, length: int, fua: bool, may_trim: bool) -> None:
        await self.trim(offset, length, fua)

    async def extents(self, offset: int, length: int) -> list[Extent]:
        return [Extent(length, False)]


class Client:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    async def recv(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = await self.loop.sock_recv(self.sock, n - len(out))
            assert chunk, "server closed the connection"
            out += chunk
        return out

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def option(self, option: int, data: bytes = b"") -> list[tuple[int, bytes]]:
        """Send an option; the replies up to the final one (ACK or an error)."""
        await self.send(p.OPTION.pack(p.IHAVEOPT, option, len(data)) + data)
        replies = []
        while True:
            magic, opt, kind, length = p.OPTION_REPLY.unpack(await self.recv(p.OPTION_REPLY.size))
            assert (magic, opt) == (p.OPTION_REPLY_MAGIC, option)
            replies.append((kind, await self.recv(length)))
            if kind not in (p.REP_SERVER, p.REP_INFO, p.REP_META_CONTEXT):
                return replies


async def session(no_zeroes: bool = True) -> tuple[Client, asyncio.Task[None], MemoryVolume]:
    volume = MemoryVolume()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    table = ExportTable(lambda name: volume if name == "disk" else None, lambda: ["disk"])
    server = asyncio.create_task(Connection(ours, table).run())
    client = Client(theirs)
    magic, opt, flags = p.HANDSHAKE.unpack(await client.recv(p.HANDSHAKE.size))
    assert (magic, opt) == (p.NBDMAGIC, p.IHAVEOPT)
    assert flags & p.FLAG_FIXED_NEWSTYLE
    client_flags = p.CLIENT_FLAG_FIXED_NEWSTYLE | (p.CLIENT_FLAG_NO_ZEROES if no_zeroes else 0)
    await client.send(struct.pack(">I", client_flags))
    return client, server, volume


async def test_export_name_with_zero_padding_then_simple_replies() -> None:
    client, server, volume = await session(no_zeroes=False)
    await client.send(p.OPTION.pack(p.IHAVEOPT, p.OPT_EXPORT_NAME, 4) + b"disk")
    size, flags = struct.unpack(">QH", await client.recv(10))
    assert size == SIZE
    assert flags & p.FLAG_SEND_TRIM and flags & p.FLAG_CAN_MULTI_CONN
    assert await client.recv(124) == bytes(124)
    # write, then read back: without structured replies, reads get simple replies
    await client.send(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_WRITE, 7, 4096, 3) + b"abc")
    assert p.SIMPLE_REPLY.unpack(await client.recv(16)) == (p.SIMPLE_REPLY_MAGIC, 0, 7)
    await client.send(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_READ, 8, 4095, 5))
    assert p.SIMPLE_REPLY.unpack(await client.recv(16)) == (p.SIMPLE_REPLY_MAGIC, 0, 8)
    assert await client.recv(5) == b"\0abc\0"
    # beyond the end: EINVAL, and the connection carries on
    await client.send(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_READ, 9, SIZE - 1, 2))
    assert p.SIMPLE_REPLY.unpack(await client.recv(16)) == (p.SIMPLE_REPLY_MAGIC, p.EINVAL, 9)
    # block status without a negotiated meta context is refused
    await client.send(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_BLOCK_STATUS, 10, 0, 4096))
    assert p.SIMPLE_REPLY.unpack(await client.recv(16)) == (p.SIMPLE_REPLY_MAGIC, p.EINVAL, 10)
    await client.send(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_DISC, 11, 0, 0))
    await asyncio.wait_for(server, 10)
    assert volume.data[4096:4099] == b"abc"


async def test_options_errors_and_abort() -> None:
    client, server, _ = await session()
    assert await client.option(99) == [(p.REP_ERR_UNSUP, b"option not supported")]
    assert (await client.option(p.OPT_STARTTLS))[0][0] == p.REP_ERR_UNSUP
    listed = await client.option(p.OPT_LIST)
    assert listed == [(p.REP_SERVER, struct.pack(">I", 4) + b"disk"), (p.REP_ACK, b"")]
    # a meta context needs structured replies first
    query = struct.pack(">I", 4) + b"disk" + struct.pack(">I", 1)
    query += struct.pack(">I", len(p.BASE_ALLOCATION)) + p.BASE_ALLOCATION.encode()
    assert (await client.option(p.OPT_SET_META_CONTEXT, query))[0][0] == p.REP_ERR_INVALID
    # GO on an unknown export is an error reply, not a closed connection
    go = struct.pack(">I", 4) + b"nope" + struct.pack(">H", 0)
    assert (await client.option(p.OPT_GO, go))[0][0] == p.REP_ERR_UNKNOWN
    # malformed INFO
    assert (await client.option(p.OPT_INFO, b"\0\0"))[0][0] == p.REP_ERR_INVALID
    assert await client.option(p.OPT_ABORT) == [(p.REP_ACK, b"")]
    await asyncio.wait_for(server, 10)


async def test_structured_replies_meta_context_and_block_status() -> None:
    client, server, _ = await session()
    assert await client.option(p.OPT_STRUCTURED_REPLY) == [(p.REP_ACK, b"")]
    query = struct.pack(">I", 4) + b"disk" + struct.pack(">I", 1)
    query += struct.pack(">I", len(p.BASE_ALLOCATION)) + p.BASE_ALLOCATION.encode()
    replies = await client.option(p.OPT_SET_META_CONTEXT, query)
    context = struct.pack(">I", p.BASE_ALLOCATION_ID) + p.BASE_ALLOCATION.encode()
    assert replies == [(p.REP_META_CONTEXT, context), (p.REP_ACK, b"")]
    go = struct.pack(">I", 4) + b"disk" + struct.pack(">H", 0)
    replies = await client.option(p.OPT_GO, go)
    assert replies[-1] == (p.REP_ACK, b"")
    assert replies[0] == (p.REP_INFO, p.EXPORT_INFO.pack(p.INFO_EXPORT, SIZE, TRANSMISSION_FLAGS))
    await client.send(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_READ, 1, 100, 4))
    magic, flags, kind, cookie, length = p.STRUCTURED_REPLY.unpack(await client.recv(20))
    assert (magic, flags, kind, cookie, length) == (
        p.STRUCTURED_REPLY_MAGIC, p.REPLY_FLAG_DONE, p.REPLY_TYPE_OFFSET_DATA, 1, 12,
    )  # fmt: skip
    assert await client.recv(12) == struct.pack(">Q", 100) + bytes(4)
    await client.send(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_BLOCK_STATUS, 2, 0, SIZE))
    magic, flags, kind, cookie, length = p.STRUCTURED_REPLY.unpack(await client.recv(20))
    assert (kind, cookie, length) == (p.REPLY_TYPE_BLOCK_STATUS, 2, 12)
    body = await client.recv(12)
    assert struct.unpack(">III", body) == (p.BASE_ALLOCATION_ID, SIZE, 0)
    await client.send(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_DISC, 3, 0, 0))
    await asyncio.wait_for(server, 10)
