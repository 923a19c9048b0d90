"""`heron vm console` against a real devcluster and the test guest's serial console.

The test guest has no shell on its console: it prints ticks. What is typed still reaches it:
the guest echoes each line that arrives on ttyS0, so a word sent through the console comes
back in its output.
"""

import os
import ssl
import subprocess
import termios
import threading
from pathlib import Path
from typing import IO

import pytest
from support import HERON, Api, wait_for, websocket_first_message
from websockets.exceptions import InvalidStatus

from heron.devcluster import DevCluster

BOOT = 180


class Console:
    """A running `heron vm console`, fed through a pipe, its output collected."""

    def __init__(self, env: dict[str, str], vm: str, pty: tuple[int, int] | None = None):
        # With a pty, its follower is stdin and what is typed goes in through its leader.
        self.terminal = pty[0] if pty else None
        self.process = subprocess.Popen(
            [*HERON, "vm", "console", vm],
            stdin=pty[1] if pty else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **env},
        )
        self.output = bytearray()
        self.errors = bytearray()
        assert self.process.stdout is not None and self.process.stderr is not None
        streams = ((self.process.stdout, self.output), (self.process.stderr, self.errors))
        self._readers = [
            threading.Thread(target=self._collect, args=(stream, buffer), daemon=True)
            for stream, buffer in streams
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(stream: IO[bytes], buffer: bytearray) -> None:
        while data := os.read(stream.fileno(), 4096):
            buffer.extend(data)

    def type(self, data: bytes) -> None:
        if self.terminal is not None:
            os.write(self.terminal, data)
            return
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def shows(self, text: bytes, timeout: float = 60) -> None:
        wait_for(lambda: text in self.output, timeout, f"{text!r} on the console: {self}")

    def exit_code(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def __str__(self) -> str:
        return f"stdout {bytes(self.output[-500:])!r}, stderr {bytes(self.errors)!r}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def env_for(cluster: DevCluster, token: str, node: int) -> dict[str, str]:
    return {
        "HERON_URL": cluster.nodes[node].url,
        "HERON_TOKEN": token,
        "HERON_CONFIG": str(Path(cluster.dir) / "cli.json"),
        "HERON_CA_FILE": str(cluster.ca_file),
    }


@pytest.fixture(scope="module")
def vm(cluster3: tuple[DevCluster, str], api: Api, image: str) -> str:
    """A running test guest on node2, booted."""
    cluster, _ = cluster3
    body = {
        "name": "console1",
        "memory_mib": 128,
        "node": "node2",
        "start": True,
        "disks": [{"pool": "local", "source": image}],
    }
    reply = api.ok("POST", "/vms", json=body)
    api.wait_task(reply["task"])
    log = Path(cluster.node("node2").state_dir) / "vms" / reply["vm"] / "console.log"
    wait_for(lambda: log.exists() and b"heron-tick" in log.read_bytes(), BOOT, "the guest")
    return reply["vm"]


@pytest.mark.parametrize("node", [0, 1], ids=["relayed-by-another-node", "on-the-vms-node"])
def test_console_shows_the_guest_and_carries_what_is_typed(cluster3, vm, node) -> None:
    cluster, token = cluster3
    session = Console(env_for(cluster, token, node), "console1")
    try:
        session.shows(b"heron-tick")
        word = f"heron-typed-{node}".encode()
        session.type(word + b"\r")
        session.shows(word)  # echoed by the guest
        session.type(b"\x1d")
        assert session.exit_code() == 0, str(session)
        assert b"connected to console1 serial console, Ctrl-] to leave" in session.errors
        assert b"Traceback" not in session.errors
    finally:
        session.close()


def test_a_terminal_is_raw_during_the_session_and_restored_after(cluster3, vm) -> None:
    cluster, token = cluster3
    leader, follower = os.openpty()
    before = termios.tcgetattr(follower)
    session = Console(env_for(cluster, token, 0), "console1", (leader, follower))
    try:
        session.shows(b"heron-tick")
        raw = lambda: not termios.tcgetattr(follower)[3] & (termios.ICANON | termios.ECHO)  # noqa: E731
        wait_for(raw, 10, "the terminal in raw mode")
        session.type(b"heron-raw\r")
        session.shows(b"heron-raw")
        session.type(b"\x1d")
        assert session.exit_code() == 0, str(session)
        assert termios.tcgetattr(follower) == before
    finally:
        session.close()
        os.close(leader)
        os.close(follower)


def first_bytes(node_url: str, vm_id: str, kind: str, ticket: str, tls: ssl.SSLContext) -> bytes:
    """Over wss, checked against the cluster CA (the node relays over wss to the VM's node)."""
    url = node_url.replace("https://", "wss://") + f"/api/v1/vms/{vm_id}/console/{kind}"
    return websocket_first_message(f"{url}?ticket={ticket}", tls)


def test_both_consoles_check_tickets_and_use_them_once(cluster3, api, vm) -> None:
    cluster, _ = cluster3
    for node in cluster.nodes[:2]:  # relayed by node1, and direct on node2 where the VM runs
        for kind, first in (("vnc", b"RFB 003."), ("serial/ws", b"")):
            with pytest.raises(InvalidStatus):
                first_bytes(node.url, vm, kind, "forged", cluster.tls())
            ticket = api.ok("POST", f"/vms/{vm}/console/ticket")["ticket"]
            assert first_bytes(node.url, vm, kind, ticket, cluster.tls()).startswith(first)
            with pytest.raises(InvalidStatus):
                first_bytes(node.url, vm, kind, ticket, cluster.tls())


def test_a_vm_that_stops_ends_the_console_and_a_stopped_one_has_none(cluster3, api, vm) -> None:
    cluster, token = cluster3
    env = env_for(cluster, token, 0)
    session = Console(env, "console1")
    try:
        session.shows(b"heron-tick")
        api.wait_task(api.ok("POST", f"/vms/{vm}/actions/stop")["task"])
        assert session.exit_code() == 1, str(session)
        lines = bytes(session.errors).decode().splitlines()
        assert lines[-1] == (
            "heron: the console of console1 closed: it stopped, moved, or its node left"
        )
    finally:
        session.close()
    again = Console(env, "console1")
    try:
        assert again.exit_code() == 1
        assert bytes(again.errors).decode().splitlines() == [
            "heron: VM console1 is shutoff: it has a console only while it runs"
        ]
    finally:
        again.close()
