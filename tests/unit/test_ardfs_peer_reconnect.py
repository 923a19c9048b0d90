"""A peer connection that ends: when it holds requests back, and what a late end of an old
connection may touch; and the parity marks a peer write carries. In-process: PeerServers over
a chunk store on loopback."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from support import eventually

from heron.ardfs.chunkstore import ChunkStore, Held
from heron.ardfs.peer import OP_WRITE, PeerClient, PeerServer, RemoteTarget, _Pending, holds_back
from heron.ardfs.receiver import Closed
from heron.ardfs.target import LocalTarget

VOL = "0" * 31 + "9"
KEY = bytes(range(32))


def test_only_a_slow_or_odd_loss_holds_requests_back() -> None:
    # The peer's end closed or reset it (a heron-io killed or restarted): connect again.
    assert not holds_back(Closed("connection closed by the peer"))
    assert not holds_back(ConnectionResetError(104, "Connection reset by peer"))
    assert not holds_back(BrokenPipeError(32, "Broken pipe"))
    # A network that stopped answering, or a peer speaking garbage: hold back for a while.
    assert holds_back(TimeoutError("no reply"))
    assert holds_back(OSError(113, "No route to host"))
    assert holds_back(ValueError("bad reply magic"))


async def test_a_peer_restarted_at_once_is_read_from_at_once(tmp_path: Path) -> None:
    """A heron-io killed and started again within RETRY_AFTER (1 s) used to be refused by
    its peers until that second had passed, counted from the end of the old connection: a
    read whose other copy was gone failed with EIO although this node held the data."""
    store = ChunkStore(tmp_path / "disk")
    disks = {"d1": LocalTarget("d1", "n2", store)}.get
    first = PeerServer(disks, key=KEY)
    port = await first.listen("127.0.0.1", 0)
    client = PeerClient("n2", "127.0.0.1", port, key=KEY)
    second: PeerServer | None = None
    try:
        disk = RemoteTarget("d1", client)
        await disk.write(VOL, 0, 0, memoryview(b"\x77" * 4096), durable=True, epoch=1)
        await first.close()  # its connections end: the peer's process is gone

        async def noticed() -> bool:
            return not client.up

        await eventually(noticed, 10, "the client to see its connection end", 0.01)
        second = PeerServer(disks, key=KEY)
        await second.listen("127.0.0.1", port)
        back = bytearray(4096)
        await disk.read_into(VOL, 0, 0, memoryview(back))
        assert back == b"\x77" * 4096
    finally:
        await client.close()
        for server in (first, second):
            if server is not None:
                await server.close()
        store.close()


async def test_the_late_end_of_an_old_connection_leaves_the_new_one_alone() -> None:
    """The reader of a dropped connection may end after the next connection carries
    requests: those are not failed with it."""
    client = PeerClient("n2", "127.0.0.1", 9, key=KEY)
    old, new = socket.socketpair()
    try:
        client.sock = new  # the current connection, with a request in flight
        waiting: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        client.pending[7] = _Pending(None, future=waiting)
        client._drop(old, "connection closed by the peer", hold=False)
        assert client.sock is new and 7 in client.pending and not waiting.done()
    finally:
        client.sock = None
        old.close()
        new.close()


async def test_parity_marks_cross_the_peer_protocol(tmp_path: Path) -> None:
    """A write or trim tells the peer's store how a parity's mark changes, on the callback
    path too; the marks are read back in one request."""
    store = ChunkStore(tmp_path / "disk")
    server = PeerServer({"d1": LocalTarget("d1", "n2", store)}.get, key=KEY)
    port = await server.listen("127.0.0.1", 0)
    client = PeerClient("n2", "127.0.0.1", port, key=KEY)
    try:
        disk = RemoteTarget("d1", client)
        await disk.write(VOL, 2, 0, memoryview(b"p" * 4096), True, 1, Held(add=0b01))
        done: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        payload = memoryview(b"q" * 4096)
        assert client.send(OP_WRITE, VOL, "d1", 5, 0, 1, payload, done.set_result,
                           held=Held(add=0b10))  # fmt: skip
        assert await done is None
        await disk.trim(VOL, 8, 0, 4096, False, 1, Held(remove=0b01))  # absent: stays so
        assert await disk.marks(VOL, 2, 3, 3) == [0b01, 0b10, None]
        await disk.write(VOL, 2, 0, memoryview(b"x" * 4096), False, 1)  # says nothing
        await disk.write(VOL, 5, 0, memoryview(bytes(4 << 20)), True, 1, Held(3, exact=True))
        assert await disk.marks(VOL, 2, 2, 3) == [None, 0b11]
        await disk.adopt_mark(VOL, 2, 0b01, 1)  # the owner found only data shard 0 there
        assert await disk.marks(VOL, 2, 1, 1) == [0b01]
    finally:
        await client.close()
        await server.close()
        store.close()
