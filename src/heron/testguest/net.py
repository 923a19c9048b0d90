"""The test guest's network and command channel, seen from the host.

The guest reports each new state of a NIC on its serial console::

    heron-net eth0 mac=52:54:00:12:34:56 addr=10.1.0.5/24 mtu=1450 router=10.1.0.1
    heron-net eth0 mac=52:54:00:12:34:56 addr=none

and runs what tests ask over the same console::

    heron-run TAG COMMAND...        (sent by the host, one line)
    heron-out TAG LINE              (each line of the command's output)
    heron-done TAG rc=N

`guest_addresses` and `command_result` read such text (a console log or what a connection has
received); `CommandChannel` and `run_command` send commands over the VM's serial socket (the
unix socket QEMU listens on for the serial port) and wait for the answer.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from types import TracebackType

from heron.errors import HeronError

NET_PREFIX = "heron-net"
RUN_PREFIX = "heron-run"
OUT_PREFIX = "heron-out"
DONE_PREFIX = "heron-done"

_TAG = re.compile(r"[A-Za-z0-9_-]+")
_NET = re.compile(
    rf"{NET_PREFIX} (?P<nic>\S+) mac=(?P<mac>\S+) addr=(?:none|(?P<addr>\S+) mtu=(?P<mtu>\d+) "
    r"router=(?P<router>\S+))"
)
_DONE_RC = re.compile(r"rc=(\d+)")
_MARKER = re.compile(rf"(?:{RUN_PREFIX}|{OUT_PREFIX}|{DONE_PREFIX})(?= |$)")
# The guest's terminal reads a request as one line of at most 4095 bytes.
MAX_REQUEST_BYTES = 4000


class GuestCommandError(HeronError):
    """A command could not be sent to the test guest or got no answer in time."""


@dataclass(frozen=True)
class NicState:
    """One NIC as the guest last reported it; `address` is None while it has no lease."""

    nic: str
    mac: str
    address: IPv4Interface | None = None
    mtu: int | None = None
    router: IPv4Address | None = None


@dataclass(frozen=True)
class CommandResult:
    """What a command run in the guest printed, and how it ended."""

    rc: int
    lines: tuple[str, ...]

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def guest_addresses(text: str) -> dict[str, NicState]:
    """Each NIC's latest heron-net line in a console log: later lines win, as the guest prints
    one for each change (no lease yet, a lease, a new lease)."""
    states: dict[str, NicState] = {}
    for line in _lines(text):
        found = _NET.search(line)
        # A heron-net line in a command's output (a test that cats a log) is not the guest's.
        marker = _first_marker(line)
        if not found or (marker is not None and marker < found.start()):
            continue
        router = found.group("router")
        states[found.group("nic")] = NicState(
            nic=found.group("nic"),
            mac=found.group("mac").lower(),
            address=IPv4Interface(found.group("addr")) if found.group("addr") else None,
            mtu=int(found.group("mtu")) if found.group("mtu") else None,
            router=IPv4Address(router) if router and router != "none" else None,
        )
    return states


def request(tag: str, command: str) -> bytes:
    """The line that asks the guest to run `command` (with sh) and answer under `tag`."""
    if not _TAG.fullmatch(tag):
        raise ValueError(f"a command tag is [A-Za-z0-9_-]+, not {tag!r}")
    if not command.strip() or "\n" in command or "\r" in command:
        raise ValueError(f"a command for the guest is one non-empty line, not {command!r}")
    line = f"{RUN_PREFIX} {tag} {command}\n".encode()
    if len(line) > MAX_REQUEST_BYTES:
        raise ValueError(f"a command for the guest is at most {MAX_REQUEST_BYTES} bytes")
    return line


def command_result(text: str, tag: str) -> CommandResult | None:
    """The answer to the command tagged `tag` in console text, or None while it runs."""
    out = f"{OUT_PREFIX} {tag} "
    done = f"{DONE_PREFIX} {tag} "
    lines: list[str] = []
    for line in _lines(text):
        marker = _first_marker(line)
        if marker is None:
            continue
        rest = line[marker:]
        if rest.startswith(out):
            lines.append(rest[len(out) :])
        elif rest.startswith(done) and (rc := _DONE_RC.match(rest[len(done) :])):
            return CommandResult(int(rc.group(1)), tuple(lines))
        elif rest == out.rstrip():
            # An empty output line, its trailing space lost on the way.
            lines.append("")
    return None


def _lines(text: str) -> list[str]:
    return [line.rstrip("\r") for line in text.splitlines()]


def _first_marker(line: str) -> int | None:
    """Where the first command-channel marker in a line starts, if any.

    Only the first counts: a command's own output may look like a marker, but it always
    follows the heron-out marker of the line that carries it.
    """
    found = _MARKER.search(line)
    return found.start() if found else None


class CommandChannel:
    """A connection to a test guest's serial socket for running commands in it.

    QEMU serves one client at a time on a serial socket: hold one channel per VM, and close
    it (or use ``with``) so the console is free for others. Several commands may run at once:
    `start` each, then `wait` for each. Only output received on this connection is read, so
    answers to commands sent earlier by others never mix in.

    A thread reads the socket all the time the channel is open, not just while waiting: QEMU
    sends the console to its client a byte at a time, so an unread connection fills up after
    a few hundred bytes, and then the guest's console stalls, its log file too.
    """

    def __init__(self, serial_socket: Path, *, connect_timeout: float = 30) -> None:
        self.path = serial_socket
        self._received = ""
        self._closed = False
        self._changed = threading.Condition()
        # Unique per channel, so a log holding the answers of several channels stays readable.
        prefix = f"h{secrets.token_hex(3)}"
        self._tags = (f"{prefix}-{n}" for n in itertools.count(1))
        self._sock = self._connect(connect_timeout)
        self._reader = threading.Thread(
            target=self._read, name=f"serial {serial_socket.name}", daemon=True
        )
        self._reader.start()

    def _connect(self, timeout: float) -> socket.socket:
        # The socket appears once QEMU has started: a channel opened next to the QEMU it
        # starts waits for it.
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
                return sock
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise GuestCommandError(f"no serial socket at {self.path}: {exc}") from exc
                time.sleep(0.1)

    def _read(self) -> None:
        pending = b""
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            with self._changed:
                if not data:
                    self._closed = True
                    self._changed.notify_all()
                    return
                # Only whole lines: an answer is judged by complete lines, never half of one.
                complete, newline, pending = (pending + data).rpartition(b"\n")
                if newline:
                    self._received += (complete + newline).decode(errors="replace")
                    self._changed.notify_all()

    @property
    def received(self) -> str:
        """The whole lines the guest has written since this channel connected."""
        with self._changed:
            return self._received

    def start(self, command: str) -> str:
        """Send `command` to the guest; returns the tag to `wait` on."""
        tag = next(self._tags)
        try:
            self._sock.sendall(request(tag, command))
        except OSError as exc:
            raise GuestCommandError(f"cannot send to {self.path}: {exc}") from exc
        return tag

    def wait(self, tag: str, timeout: float) -> CommandResult:
        """The answer to the command `tag`, once the guest has said it ended."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while (result := command_result(self._received, tag)) is None:
                left = deadline - time.monotonic()
                if self._closed:
                    raise GuestCommandError(f"the serial socket {self.path} closed before {tag}")
                if left <= 0:
                    raise GuestCommandError(
                        f"no answer to {tag} from {self.path} within {timeout}s (is another "
                        "client connected to the serial socket?); the guest said: "
                        f"{self._received[-2000:]!r}"
                    )
                self._changed.wait(left)
        return result

    def run(self, command: str, timeout: float = 60) -> CommandResult:
        """Run `command` in the guest and wait for its answer."""
        return self.wait(self.start(command), timeout)

    def close(self) -> None:
        # shutdown() ends the reader's recv(); close() alone would leave it blocked.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._reader.join()
        self._sock.close()

    def __enter__(self) -> CommandChannel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def run_command(serial_socket: Path, command: str, timeout: float = 60) -> CommandResult:
    """Connect to a guest's serial socket, run one command, and return its answer."""
    with CommandChannel(serial_socket) as channel:
        return channel.run(command, timeout)
