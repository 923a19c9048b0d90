"""Peer connections are authenticated: a client without the key, or one that skips the
handshake, gets nothing served and writes nothing; a server without the key gets no request.
In-process: a PeerServer over a chunk store in a temporary directory, on loopback."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import eventually

from heron.ardfs import peerauth
from heron.ardfs.chunkstore import ChunkStore
from heron.ardfs.peer import (
    OP_WRITE,
    REQUEST,
    REQUEST_MAGIC,
    PeerClient,
    PeerServer,
    RemoteTarget,
)
from heron.ardfs.peerauth import PeerKeyError, read_key, write_key
from heron.ardfs.target import LocalTarget
from heron.ardfs.volume import UnavailableError

VOL = "0" * 31 + "7"
KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


@dataclass
class Served:
    store: ChunkStore
    server: PeerServer
    port: int

    def client(self, key: bytes, timeout: float = 30) -> PeerClient:
        return PeerClient("n2", "127.0.0.1", self.port, timeout, key=key)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    store = ChunkStore(tmp_path / "disk")
    target = LocalTarget("d1", "n2", store)
    server = PeerServer({"d1": target}.get, key=KEY)
    port = await server.listen("127.0.0.1", 0)
    try:
        yield Served(store, server, port)
    finally:
        await server.close()
        store.close()


async def until(predicate: Callable[[], object], what: str, timeout: float = 10) -> None:
    async def check() -> object:
        return predicate()

    await eventually(check, timeout, what, 0.01)


async def read_to_end(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (bounded in time)."""
    loop = asyncio.get_running_loop()
    received = b""
    try:
        async with asyncio.timeout(10):
            while part := await loop.sock_recv(sock, 65536):
                received += part
    except ConnectionResetError:
        pass  # closed with bytes of ours unread: a reset rather than an orderly close
    return received


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for r in caplog.records if (m := r.getMessage()).startswith("peer connection from")]


async def test_the_right_key_writes_and_reads(served: Served) -> None:
    client = served.client(KEY)
    try:
        disk = RemoteTarget("d1", client)
        await disk.write(VOL, 3, 4096, memoryview(b"\x5a" * 4096), durable=True, epoch=1)
        back = bytearray(4096)
        await disk.read_into(VOL, 3, 4096, memoryview(back))
        assert back == b"\x5a" * 4096 and served.store.exists(VOL, 3)
    finally:
        await client.close()


async def test_a_client_with_another_key_is_refused_and_writes_nothing(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="heron.ardfs.peer")
    client = served.client(OTHER)
    try:
        disk = RemoteTarget("d1", client)
        with pytest.raises(UnavailableError, match="refused our key"):
            await disk.write(VOL, 0, 0, memoryview(b"\x01" * 4096), durable=True, epoch=1)
        assert not client.up
        # The next request fails at once too (no reconnection storm with a wrong key).
        with pytest.raises(UnavailableError, match="peer authentication failed"):
            await disk.write(VOL, 0, 0, memoryview(b"\x01" * 4096), durable=True, epoch=1)
    finally:
        await client.close()
    await until(lambda: refusals(caplog), "the server's warning")
    [warning] = refusals(caplog)
    assert "127.0.0.1:" in warning and "wrong peer key" in warning
    assert not any((served.store.root / "volumes").iterdir())


async def test_a_request_without_authentication_is_disconnected(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """A well-formed write header and payload, sent straight away: the server takes it as a
    failed handshake and closes the connection; no chunk is written, no reply is sent."""
    caplog.set_level(logging.WARNING, logger="heron.ardfs.peer")
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", served.port))
    header = REQUEST.pack(
        REQUEST_MAGIC, OP_WRITE, 0, 0, 1, bytes.fromhex(VOL), b"d1".ljust(16, b"\0"),
        0, 0, 4096, 1,
    )  # fmt: skip
    await loop.sock_sendall(sock, header + b"\x66" * 4096)
    try:
        received = await read_to_end(sock)
    finally:
        sock.close()
    # Only the server's challenge came back, never a reply to the request.
    assert len(received) == peerauth.HELLO.size
    assert peerauth.HELLO.unpack(received)[0] == peerauth.HELLO_MAGIC
    await until(lambda: refusals(caplog), "the server's warning")
    assert "no authentication answer" in refusals(caplog)[0]
    assert not any((served.store.root / "volumes").iterdir())


async def test_a_silent_connection_is_dropped_after_the_handshake_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="heron.ardfs.peer")
    server = PeerServer(lambda _: None, key=KEY)
    server.handshake_timeout = 0.2  # (a few seconds in heron-io)
    port = await server.listen("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))

        def serving() -> list[asyncio.Task[None]]:
            return [t for t in server.tasks if "_serve" in repr(t.get_coro())]

        await until(serving, "the connection to be accepted")
        [task] = serving()
        async with asyncio.timeout(10):
            await asyncio.wait({task})  # ended by the server itself, the client still there
        assert "no authentication within 0.2s" in refusals(caplog)[0]
        assert len(await read_to_end(sock)) == peerauth.HELLO.size  # the challenge, then EOF
    finally:
        sock.close()
        await server.close()


async def test_a_server_without_the_key_gets_no_request() -> None:
    """An impostor that answers the challenge without the key: the client sends nothing."""
    got: list[bytes] = []

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(peerauth.HELLO.pack(peerauth.HELLO_MAGIC, peerauth.VERSION, 0, os.urandom(32)))
        await reader.readexactly(peerauth.ANSWER.size)
        writer.write(peerauth.VERDICT.pack(peerauth.VERDICT_MAGIC, 0, os.urandom(32)))
        got.append(await reader.read(65536))  # what the client sends next: nothing
        writer.close()

    server = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = PeerClient("n9", "127.0.0.1", port, key=KEY)
    try:
        with pytest.raises(UnavailableError, match="did not prove"):
            await RemoteTarget("d1", client).write(
                VOL, 0, 0, memoryview(b"x" * 4096), durable=False, epoch=1
            )
        await until(lambda: got, "the impostor to see the connection close")
        assert got == [b""]
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_a_client_gives_up_on_a_server_that_does_not_authenticate() -> None:
    """An older heron-io (or anything else) that never sends a challenge."""

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = PeerClient("n9", "127.0.0.1", port, timeout=0.3, key=KEY)
    try:
        with pytest.raises(UnavailableError, match="no authentication within"):
            await RemoteTarget("d1", client).sync(VOL)
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


def test_the_key_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "peer.key"
    with pytest.raises(PeerKeyError, match="does not exist"):
        read_key(path)
    assert write_key(path, peerauth.new_key())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(read_key(path)) == 32
    assert not write_key(path, path.read_text())  # unchanged: not rewritten
    path.chmod(0o644)
    with pytest.raises(PeerKeyError, match="readable by others"):
        read_key(path)
    path.chmod(0o640)
    with pytest.raises(PeerKeyError, match="mode 0640"):
        read_key(path)
    path.write_text("")
    path.chmod(0o600)
    with pytest.raises(PeerKeyError, match="empty"):
        read_key(path)
    path.write_text("zz" * 32)
    with pytest.raises(PeerKeyError, match="hex"):
        read_key(path)
    path.write_text("ab" * 16)
    with pytest.raises(PeerKeyError, match="at least 32"):
        read_key(path)
    path.write_text("ab" * 32 + "\n")
    assert read_key(path) == b"\xab" * 32
    path.chmod(0o644)
    assert write_key(path, "ab" * 32)  # same key, wrong mode: written again, 0600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
