"""The host's side of the test guest's network: its heron-net lines and command channel."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from heron.testguest import build, net
from heron.testguest.net import CommandResult, NicState
from heron.util.wait import until_sync

LOG = """\x1b[2JSYSLINUX 6.04
HERON-GUEST-READY uuid=1234
heron-net eth1 mac=52:54:00:00:00:02 addr=none
heron-tick 1
heron-net eth0 mac=52:54:00:AA:00:01 addr=10.0.2.15/24 mtu=1500 router=10.0.2.2\r
heron-out h1 heron-net eth0 mac=52:54:00:aa:00:01 addr=192.0.2.9/24 mtu=9000 router=none
heron-net eth1 mac=52:54:00:00:00:02 addr=10.1.0.5/24 mtu=1450 router=none
"""


def test_guest_addresses_keep_the_latest_line_per_nic() -> None:
    assert net.guest_addresses(LOG) == {
        "eth0": NicState(
            "eth0",
            "52:54:00:aa:00:01",
            IPv4Interface("10.0.2.15/24"),
            1500,
            IPv4Address("10.0.2.2"),
        ),
        "eth1": NicState("eth1", "52:54:00:00:00:02", IPv4Interface("10.1.0.5/24"), 1450, None),
    }
    first = net.guest_addresses(LOG.split("heron-tick")[0])
    assert first["eth1"].address is None and first["eth1"].mtu is None
    assert net.guest_addresses("") == {}


ANSWERS = """heron-tick 7
heron-out a1 PING 10.0.2.2 (10.0.2.2): 56 data bytes
heron-out b2 other command
heron-memcheck verified=3 errors=0 pass=0
heron-out a1 heron-done a1 rc=9
heron-out a1
heron-out a1 \r
heron-done b2 rc=0
heron-done a1 rc=1
"""


def test_command_result_collects_a_commands_lines_until_it_is_done() -> None:
    assert net.command_result(ANSWERS, "a1") == CommandResult(
        1, ("PING 10.0.2.2 (10.0.2.2): 56 data bytes", "heron-done a1 rc=9", "", "")
    )
    assert net.command_result(ANSWERS, "b2") == CommandResult(0, ("other command",))
    assert net.command_result(ANSWERS.replace("heron-done a1 rc=1", ""), "a1") is None
    assert net.command_result(ANSWERS, "a") is None
    assert net.command_result(ANSWERS, "a1") is not None
    assert net.command_result("heron-out x one\nheron-out x two\nheron-done x rc=0\n", "x") == (
        CommandResult(0, ("one", "two"))
    )
    assert CommandResult(0, ("one", "two")).output == "one\ntwo"


def test_requests_are_one_tagged_line() -> None:
    assert net.request("t-1_A", "ping -c 1 10.0.2.2") == b"heron-run t-1_A ping -c 1 10.0.2.2\n"
    for tag in ("", "a b", "a/b", "ä"):
        with pytest.raises(ValueError, match="tag"):
            net.request(tag, "true")
    for command in ("", "  ", "a\nb", "a\rb", "x" * net.MAX_REQUEST_BYTES):
        with pytest.raises(ValueError, match="command"):
            net.request("t", command)


class FakeGuest:
    """A serial socket whose far end answers requests as the guest does, in pieces."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(1)
        self.requests: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            buffer = b""
            while b"\n" not in buffer:
                buffer += conn.recv(4096)
            line = buffer.decode().strip()
            self.requests.append(line)
            tag = line.split()[1]
            # The answer arrives split mid-line, after the marker of another command.
            conn.sendall(f"heron-tick 3\nheron-out {tag} hello\nheron-do".encode())
            conn.sendall(f"ne {tag} rc=".encode())
            conn.sendall(b"4\n")
            conn.recv(1)  # until the client closes

    def close(self) -> None:
        self.server.close()
        self.thread.join(5)


@pytest.fixture
def fake_guest(tmp_path: Path) -> Iterator[tuple[Path, FakeGuest]]:
    path = tmp_path / "serial.sock"
    guest = FakeGuest(path)
    try:
        yield path, guest
    finally:
        guest.close()


def test_run_command_over_a_serial_socket(fake_guest: tuple[Path, FakeGuest]) -> None:
    path, guest = fake_guest
    assert net.run_command(path, "echo hello", timeout=10) == CommandResult(4, ("hello",))
    assert guest.requests[0].startswith("heron-run h")
    assert guest.requests[0].endswith(" echo hello")


def test_a_command_without_an_answer_fails_after_its_deadline(tmp_path: Path) -> None:
    path = tmp_path / "serial.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen(1)
        with net.CommandChannel(path) as channel:
            tag = channel.start("sleep 100")
            with pytest.raises(net.GuestCommandError, match=f"no answer to {tag}"):
                channel.wait(tag, timeout=0.3)
    with pytest.raises(net.GuestCommandError, match="no serial socket"):
        net.CommandChannel(tmp_path / "missing.sock", connect_timeout=0.2)


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash to stand in for busybox sh")
def test_the_guests_command_channel_script(tmp_path: Path) -> None:
    """The guest's own script, run by bash on a pipe instead of busybox on the console."""
    requests = (
        "junk heron-run t1 echo hi; echo err >&2; exit 3\r\n"
        "typed by a person\n"
        "heron-run bad/tag ls\n"
        "heron-run t2 sleep 0.3; printf 'no newline'\n"
        'heron-run t3 read x; echo "read rc=$?"\n'
        "heron-run t4\n"
    )
    log = tmp_path / "console"
    with log.open("w") as console:
        subprocess.run(
            ["bash", str(build.GUEST_SCRIPTS["bin/heron-commands"])],
            input=requests,
            stdout=console,
            stderr=subprocess.DEVNULL,  # stty: a pipe is no terminal
            text=True,
            timeout=30,
            check=True,
        )

    # The script ends with its input; the commands, started in the background, go on.
    def answers() -> list[CommandResult | None] | None:
        found = [net.command_result(log.read_text(), tag) for tag in ("t1", "t2", "t3")]
        return found if all(found) else None

    assert until_sync(answers, 10) == [
        CommandResult(3, ("hi", "err")),
        CommandResult(0, ("no newline",)),
        # A command never reads the console: its stdin is empty.
        CommandResult(0, ("read rc=1",)),
    ]
    out = log.read_text()
    assert "typed by a person" in out.splitlines()
    assert "ignored a request with a bad tag" in out
    assert net.command_result(out, "t4") == CommandResult(127, ())
