"""A VM's serial console in this terminal, like a serial line: `heron vm console NAME`.

The API relays a websocket to the serial port of the VM's QEMU, on whichever node it runs
(the ticket that opens it is the one the web UI uses for VNC). What is typed goes to the
guest byte for byte, so the terminal is put in raw mode: Ctrl-C, Ctrl-Z and Ctrl-D belong to
the guest, and Ctrl-] (as in telnet and `qm terminal`) is the one key that leaves. Stdin may
be a pipe too, which is how scripts and tests drive a console; its end also leaves.
"""

import asyncio
import contextlib
import os
import signal
import ssl
import stat
import termios
import tty
from collections.abc import Callable, Iterator
from typing import BinaryIO, TextIO

import websockets
from websockets.exceptions import InvalidStatus, WebSocketException

from heron.cli.client import Client, CliError

ESCAPE = b"\x1d"  # Ctrl-]
_CHUNK = 4096

# Why a session ended, and the exit code for each.
LEFT = 0  # Ctrl-] or the end of stdin: the user is done
CLOSED = 1  # the node or QEMU closed the console: the VM stopped, moved, or the node went away


def split_at_escape(data: bytes) -> tuple[bytes, bool]:
    """What to send of what was typed, and whether the user asked to leave (Ctrl-])."""
    head, escape, _ = data.partition(ESCAPE)
    return head, bool(escape)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode for the block if `fd` is a terminal; the old mode is back on every way out."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def websocket_url(client: Client, vm_id: str, ticket: str) -> str:
    base = client.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return f"{base}/api/v1/vms/{vm_id}/console/serial/ws?ticket={ticket}"


def attach(client: Client, ref: str, stdin: int, out: BinaryIO, err: TextIO) -> int:
    """Connect this terminal to the serial console of VM `ref` until the user leaves or the
    console closes; returns the exit code (LEFT, CLOSED, or 128 + a signal that ended it).
    Raises CliError when the console cannot be opened."""
    vm = client.get(f"/vms/{ref}")
    if vm["state"] not in ("running", "paused"):
        raise CliError(f"VM {vm['name']} is {vm['state']}: it has a console only while it runs")
    ticket = client.post(f"/vms/{vm['id']}/console/ticket")
    url = websocket_url(client, ticket["vm"], ticket["ticket"])
    tls = client.tls if url.startswith("wss://") else None
    code = asyncio.run(_session(url, vm["name"], stdin, out, err, tls))
    if code == CLOSED:
        raise CliError(f"the console of {vm['name']} closed: it stopped, moved, or its node left")
    return code


async def _session(
    url: str, name: str, stdin: int, out: BinaryIO, err: TextIO, tls: ssl.SSLContext | None = None
) -> int:
    try:
        connection = await websockets.connect(url, max_size=None, compression=None, ssl=tls)
    except InvalidStatus as exc:
        # The node refuses before the handshake when the ticket or the VM's state is wrong.
        code = exc.response.status_code
        raise CliError(f"the node refused the console of {name} (HTTP {code})") from None
    except (OSError, WebSocketException, TimeoutError) as exc:
        raise CliError(f"cannot open the console of {name}: {exc}") from None
    async with connection:
        err.write(f"connected to {name} serial console, Ctrl-] to leave\n")
        err.flush()
        with raw_terminal(stdin):
            return await _relay(connection, stdin, out)


async def _relay(connection: websockets.ClientConnection, stdin: int, out: BinaryIO) -> int:
    """Typed bytes to the console and the console's bytes to `out`, until one side ends."""
    loop = asyncio.get_running_loop()
    typed: asyncio.Queue[bytes] = asyncio.Queue()
    ended: asyncio.Future[int] = loop.create_future()

    async def upstream() -> int:
        while data := await typed.get():
            head, leave = split_at_escape(data)
            if head:
                await connection.send(head)
            if leave:
                return LEFT
        return LEFT  # end of stdin

    async def downstream() -> int:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in connection:
                out.write(message if isinstance(message, bytes) else message.encode())
                out.flush()
        return CLOSED

    with _reading(loop, stdin, typed.put_nowait), _signals_end(loop, ended):
        jobs = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream()), ended]
        try:
            done, _ = await asyncio.wait(jobs, return_when=asyncio.FIRST_COMPLETED)
            return next(iter(done)).result()
        finally:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)


@contextlib.contextmanager
def _reading(
    loop: asyncio.AbstractEventLoop, fd: int, deliver: Callable[[bytes], None]
) -> Iterator[None]:
    """Deliver what arrives on `fd` (b"" once at its end) while in the block."""
    if stat.S_ISREG(os.fstat(fd).st_mode):
        # A file is always readable and epoll refuses it: read it in one go.
        while data := os.read(fd, _CHUNK):
            deliver(data)
        deliver(b"")
        yield
        return

    def readable() -> None:
        try:
            data = os.read(fd, _CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # e.g. the terminal hung up: as good as the end of input
        if not data:
            loop.remove_reader(fd)
        deliver(data)

    loop.add_reader(fd, readable)
    try:
        yield
    finally:
        loop.remove_reader(fd)


@contextlib.contextmanager
def _signals_end(loop: asyncio.AbstractEventLoop, ended: asyncio.Future[int]) -> Iterator[None]:
    """SIGTERM and SIGHUP end the session the ordinary way, so the terminal is restored."""
    caught = (signal.SIGTERM, signal.SIGHUP)

    def end(signum: int) -> None:
        if not ended.done():
            ended.set_result(128 + signum)

    for signum in caught:
        loop.add_signal_handler(signum, end, signum)
    try:
        yield
    finally:
        for signum in caught:
            loop.remove_signal_handler(signum)
