"""The socket receiver of heron-io: registered once, read in the readiness callback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from heron.ardfs.receiver import DIRECT, Closed, Receiver


def registered(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bool:
    return sock.fileno() in loop._selector.get_map()  # type: ignore[attr-defined]


def run(test: Callable[[asyncio.AbstractEventLoop, socket.socket, socket.socket], Awaitable[None]]):
    async def main() -> None:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        try:
            await test(asyncio.get_running_loop(), ours, theirs)
        finally:
            ours.close()
            theirs.close()

    asyncio.run(main())


def test_small_messages_and_a_large_payload_arrive_whole() -> None:
    async def test(loop: asyncio.AbstractEventLoop, ours: socket.socket, theirs: socket.socket):
        rx = Receiver(ours, loop, size=64)
        payload = bytes(range(256)) * (4 * DIRECT // 256)
        theirs.sendall(b"head" + b"x" * 40 + b"tail")
        assert bytes(await rx.exactly(4)) == b"head"
        assert bytes(await rx.exactly(40)) == b"x" * 40
        assert bytes(await rx.exactly(4)) == b"tail"
        sent = loop.run_in_executor(None, theirs.sendall, b"ab" + payload)
        assert bytes(await rx.exactly(2)) == b"ab"
        target = bytearray(len(payload))
        await rx.into(memoryview(target))
        await sent
        assert target == payload
        rx.close()
        assert not registered(loop, ours)

    run(test)


def test_bytes_nobody_waits_for_stop_the_watching_and_are_received_later() -> None:
    async def test(loop: asyncio.AbstractEventLoop, ours: socket.socket, theirs: socket.socket):
        rx = Receiver(ours, loop)
        theirs.sendall(b"one")
        assert bytes(await rx.exactly(3)) == b"one"
        assert registered(loop, ours)
        theirs.sendall(b"two")  # the connection is busy elsewhere: nobody receives
        for _ in range(20):
            if not rx.watching:
                break
            await asyncio.sleep(0)  # let the loop see the socket readable
        assert not rx.watching and not registered(loop, ours)
        assert bytes(await rx.exactly(3)) == b"two"
        rx.close()

    run(test)


def test_closing_ends_a_waiting_receive_and_unregisters() -> None:
    async def test(loop: asyncio.AbstractEventLoop, ours: socket.socket, theirs: socket.socket):
        rx = Receiver(ours, loop)
        waiting = asyncio.ensure_future(rx.exactly(8))
        for _ in range(20):
            if rx.waiter is not None:
                break
            await asyncio.sleep(0)
        rx.close()
        with pytest.raises(Closed):
            await waiting
        assert not registered(loop, ours)
        with pytest.raises(Closed):
            await rx.exactly(1)

    run(test)


def test_the_peer_closing_is_reported() -> None:
    async def test(loop: asyncio.AbstractEventLoop, ours: socket.socket, theirs: socket.socket):
        rx = Receiver(ours, loop)
        theirs.sendall(b"abc")
        theirs.shutdown(socket.SHUT_WR)
        with pytest.raises(Closed):
            await rx.exactly(4)
        rx.close()

    run(test)
