"""`heron vm console`: the terminal's raw mode, Ctrl-], and the relay against a local websocket."""

import asyncio
import contextlib
import io
import os
import sys
import termios
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import websockets

from heron.cli import console

DEADLINE = 10


def test_ctrl_close_bracket_leaves_and_what_came_before_is_sent() -> None:
    assert console.split_at_escape(b"ls\r") == (b"ls\r", False)
    assert console.split_at_escape(b"ls\x1dmore") == (b"ls", True)
    assert console.split_at_escape(b"\x1d") == (b"", True)


def test_raw_mode_is_undone_on_every_way_out() -> None:
    leader, follower = os.openpty()
    try:
        before = termios.tcgetattr(follower)
        with console.raw_terminal(follower):
            lflag = termios.tcgetattr(follower)[3]
            assert not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)
        assert termios.tcgetattr(follower) == before
        with pytest.raises(RuntimeError), console.raw_terminal(follower):
            raise RuntimeError("the session broke")
        assert termios.tcgetattr(follower) == before
    finally:
        os.close(leader)
        os.close(follower)


def test_a_pipe_is_left_as_it_is() -> None:
    read, write = os.pipe()
    try:
        with console.raw_terminal(read):
            pass
    finally:
        os.close(read)
        os.close(write)


class Screen(io.BytesIO):
    """What the console printed, with a way to wait for a piece of it."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.changed.set()
        return super().write(data)

    async def shows(self, text: bytes) -> None:
        async with asyncio.timeout(DEADLINE):
            while text not in self.getvalue():
                self.changed.clear()
                await self.changed.wait()


Handler = Callable[[websockets.ServerConnection], Awaitable[None]]


async def shouting(connection: websockets.ServerConnection) -> None:
    """A stand-in for a guest: greets, then answers every line in capitals."""
    await connection.send(b"login: ")
    async for data in connection:
        assert isinstance(data, bytes)
        await connection.send(data.upper())


async def hanging_up(connection: websockets.ServerConnection) -> None:
    await connection.send(b"bye\r\n")


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    async with websockets.serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/"


async def session(handler: Handler, drive: Callable[[int, Screen], Awaitable[None]]) -> int:
    """Run a console session against `handler`, typed into through a pipe by `drive`."""
    read, write = os.pipe()
    screen = Screen()
    try:
        async with serving(handler) as url:
            task = asyncio.ensure_future(console._session(url, "vm1", read, screen, sys.stderr))
            await drive(write, screen)
            async with asyncio.timeout(DEADLINE):
                return await task
    finally:
        os.close(read)
        with contextlib.suppress(OSError):  # `drive` may have closed it: the end of stdin
            os.close(write)


def test_typing_reaches_the_console_and_ctrl_close_bracket_leaves() -> None:
    async def drive(typed: int, screen: Screen) -> None:
        await screen.shows(b"login: ")
        os.write(typed, b"root\r")
        await screen.shows(b"ROOT\r")
        os.write(typed, b"\x1d")

    assert asyncio.run(session(shouting, drive)) == console.LEFT


def test_the_end_of_stdin_leaves() -> None:
    async def drive(typed: int, screen: Screen) -> None:
        await screen.shows(b"login: ")
        os.close(typed)

    assert asyncio.run(session(shouting, drive)) == console.LEFT


def test_a_console_closed_by_the_node_ends_the_session() -> None:
    async def drive(typed: int, screen: Screen) -> None:
        await screen.shows(b"bye")

    assert asyncio.run(session(hanging_up, drive)) == console.CLOSED
