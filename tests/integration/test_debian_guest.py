"""The Debian guest of the snapshot tests, proven under a plain QEMU (TCG, q35, -cpu max) before
Heron's snapshots rely on it: it boots from its own disk (SeaBIOS, syslinux) to the command
channel, PostgreSQL takes the insert load's rows, and the guest agent answers, freezes and thaws
with the PostgreSQL hook run on the way.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import wait_for

from heron.testguest import build, debian, net

pytestmark = pytest.mark.integration

BOOT = 300
COMMAND = 120


class Agent:
    """A minimal QEMU guest agent client: one JSON request a line, one answer a line."""

    def __init__(self, path: Path, timeout: float) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(str(path))
        self._buffer = b""
        self._sync_id = int(time.time())

    def read(self) -> dict[str, Any]:
        while b"\n" not in self._buffer or self._buffer.startswith(b'{"event"'):
            # QMP's events come between answers (this client asks for none of them).
            if self._buffer.startswith(b'{"event"') and b"\n" in self._buffer:
                self._buffer = self._buffer.partition(b"\n")[2]
                continue
            data = self._sock.recv(65536)
            if not data:
                raise AssertionError("the guest agent socket closed")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        # guest-sync-delimited's answer starts with 0xff, which resets the agent's parser.
        reply: dict[str, Any] = json.loads(line.lstrip(b"\xff") or b"{}")
        return reply

    def sync(self) -> None:
        """Skip whatever an earlier client left unread: read up to our own sync id."""
        self._sync_id += 1
        self._send("guest-sync", {"id": self._sync_id})
        while self.read().get("return") != self._sync_id:
            pass

    def _send(self, command: str, arguments: dict[str, Any] | None = None) -> None:
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")

    def call(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        self._send(command, arguments)
        reply = self.read()
        assert "error" not in reply, f"{command}: {reply}"
        return reply["return"]

    def timeout(self, seconds: float) -> None:
        self._sock.settimeout(seconds)

    def close(self) -> None:
        self._sock.close()


@dataclass
class Guest:
    log: Path
    serial: Path
    agent: Path
    boot_seconds: float

    def text(self) -> str:
        return self.log.read_bytes().decode(errors="replace")


@contextlib.contextmanager
def booted(
    image: debian.DebianGuest, tmp: Path, *, direct: bool = False, disk: Path | None = None
) -> Iterator[Guest]:
    """The guest under QEMU as Heron runs it (q35, TCG, -cpu max, the agent's virtio-serial
    port), from its own disk through SeaBIOS, or `direct` with -kernel/-initrd; killed after.
    Its writes go to `disk` (a qcow2 overlay of the image) if given, else nowhere; QMP is on
    ``tmp/qmp.sock``."""
    log, serial, agent = tmp / "console.log", tmp / "serial.sock", tmp / "qga.sock"
    drive = f"file={image.image},format=qcow2,if=virtio,snapshot=on"
    if disk is not None:
        drive = f"file={disk},format=qcow2,if=virtio,id=disk0"
    kernel = ["-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", image.cmdline]
    process = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max", "-m", "1024",
         "-nodefaults", "-no-user-config", "-display", "none",
         "-chardev", f"socket,id=serial0,path={serial},server=on,wait=off,logfile={log}",
         "-serial", "chardev:serial0",
         "-drive", drive,
         "-chardev", f"socket,id=qmp,path={tmp / 'qmp.sock'},server=on,wait=off",
         "-mon", "chardev=qmp,mode=control",
         "-device", "virtio-serial-pci,id=vser0",
         "-chardev", f"socket,id=qga0,path={agent},server=on,wait=off",
         "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
         *(kernel if direct else [])],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    started = time.monotonic()
    try:
        wait_for(
            lambda: (
                process.poll() is not None
                or (
                    log.exists() and build.READY_MARKER in log.read_bytes().decode(errors="replace")
                )
            ),
            BOOT,
            f"the Debian guest's {build.READY_MARKER} in {log}",
        )
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        yield Guest(log, serial, agent, time.monotonic() - started)
    finally:
        process.kill()
        process.wait()
        if process.stderr:
            process.stderr.close()


@pytest.fixture(scope="module")
def guest(
    debian_guest: debian.DebianGuest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Guest]:
    with booted(debian_guest, tmp_path_factory.mktemp("debian")) as guest:
        yield guest


@pytest.fixture(scope="module")
def channel(guest: Guest) -> Iterator[net.CommandChannel]:
    with net.CommandChannel(guest.serial) as channel:
        yield channel


def run(channel: net.CommandChannel, command: str) -> str:
    result = channel.run(command, COMMAND)
    assert result.rc == 0, f"{command}: rc={result.rc} {result.output}"
    return result.output


def test_boots_to_the_command_channel(guest: Guest, channel: net.CommandChannel) -> None:
    print(f"booted to the command channel in {guest.boot_seconds:.0f}s")
    assert run(channel, "cat /etc/debian_version").startswith("12.")
    assert run(channel, "systemctl is-active postgresql@15-main").strip() == "active"


def test_postgresql_takes_the_insert_load(channel: net.CommandChannel) -> None:
    last = int(run(channel, "heron-insert-load run 20").strip())
    count, top = map(int, run(channel, "heron-insert-load count").split())
    assert top == last and count >= 20
    run(channel, "heron-insert-load start")
    wait_for(
        lambda: int(run(channel, "heron-insert-load last").strip() or 0) > last,
        COMMAND,
        "the background load to commit a row",
    )
    stopped = int(run(channel, "heron-insert-load stop").split()[-1])
    count, top = map(int, run(channel, "heron-insert-load count").split())
    # Every row the load reported committed is there, and nothing beyond one in flight.
    assert stopped <= top <= stopped + 1 and count == top


def test_guest_agent_freezes_with_the_postgresql_hook(
    guest: Guest, channel: net.CommandChannel
) -> None:
    agent = wait_for(lambda: _agent(guest.agent), COMMAND, "the guest agent to answer")
    try:
        agent.call("guest-ping")
        assert agent.call("guest-fsfreeze-status") == "thawed"
        frozen = agent.call("guest-fsfreeze-freeze")
        assert frozen >= 1
        assert agent.call("guest-fsfreeze-status") == "frozen"
        assert agent.call("guest-fsfreeze-thaw") == frozen
        assert agent.call("guest-fsfreeze-status") == "thawed"
    finally:
        agent.close()
    hook_log = run(channel, "cat /var/lib/heron/fsfreeze.log").splitlines()
    print(f"hook: {hook_log[-2:]}")
    assert hook_log[-2].startswith("heron-fsfreeze freeze checkpoint_lsn=")
    assert hook_log[-1] == "heron-fsfreeze thaw"
    pg_log = run(channel, "cat /var/log/postgresql/postgresql-15-main.log")
    assert "checkpoint starting: immediate force wait" in pg_log


def _agent(path: Path) -> Agent | None:
    # qemu-ga starts once udev has seen its port; until then the socket's other end is silent.
    try:
        agent = Agent(path, timeout=5)
    except OSError:
        return None
    try:
        agent.sync()
    except (OSError, ValueError):
        agent.close()
        return None
    # A freeze runs the PostgreSQL hook's CHECKPOINT first: give it a command's time.
    agent.timeout(COMMAND)
    return agent


def test_a_freeze_holds_the_load_and_a_thaw_lets_it_go_on(
    guest: Guest, channel: net.CommandChannel
) -> None:
    run(channel, "heron-insert-load start")
    agent = wait_for(lambda: _agent(guest.agent), COMMAND, "the guest agent to answer")
    try:
        wait_for(lambda: _last(channel) > 0, COMMAND, "the load to commit a row")
        agent.call("guest-fsfreeze-freeze")
        try:
            at_freeze = _last(channel)
        finally:
            agent.call("guest-fsfreeze-thaw")
    finally:
        agent.close()
    wait_for(lambda: _last(channel) > at_freeze, COMMAND, "the load to go on after the thaw")
    stopped = int(run(channel, "heron-insert-load stop").split()[-1])
    count, top = map(int, run(channel, "heron-insert-load count").split())
    assert stopped <= top <= stopped + 1 and count == top


def _last(channel: net.CommandChannel) -> int:
    # The load's log is on the root, but reading it needs no write: it answers while frozen.
    return int(run(channel, "heron-insert-load last").strip() or 0)


def test_boots_with_its_kernel_and_initramfs_given_to_qemu(
    debian_guest: debian.DebianGuest, tmp_path: Path
) -> None:
    with booted(debian_guest, tmp_path, direct=True) as guest:
        print(f"booted with -kernel to the command channel in {guest.boot_seconds:.0f}s")
        with net.CommandChannel(guest.serial) as channel:
            assert run(channel, "cat /proc/cmdline").strip() == debian_guest.cmdline


def test_a_clone_of_a_frozen_snapshot_holds_every_committed_row(
    debian_guest: debian.DebianGuest, tmp_path: Path
) -> None:
    """What issue 15's snapshot tests will do through Heron, done here with QEMU alone: under
    the insert load, freeze, take an external snapshot, thaw; a VM on the snapshot has every
    row the load had reported committed, and its PostgreSQL redoes only from the hook's
    checkpoint."""
    snapshot, after = tmp_path / "snapshot.qcow2", tmp_path / "after.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(debian_guest.image),
         str(snapshot)],
        check=True,
    )  # fmt: skip
    source = tmp_path / "source"
    source.mkdir()
    with (
        booted(debian_guest, source, disk=snapshot) as guest,
        net.CommandChannel(guest.serial) as channel,
    ):
        run(channel, "heron-insert-load start")
        agent = wait_for(lambda: _agent(guest.agent), COMMAND, "the guest agent to answer")
        qmp = Agent(source / "qmp.sock", COMMAND)
        try:
            qmp.read()  # the greeting
            qmp.call("qmp_capabilities")
            wait_for(lambda: _last(channel) > 0, COMMAND, "the load to commit a row")
            agent.call("guest-fsfreeze-freeze")
            try:
                at_freeze = _last(channel)
                # From here on the guest writes to `after`; `snapshot` keeps the frozen disk.
                qmp.call(
                    "blockdev-snapshot-sync",
                    {"device": "disk0", "snapshot-file": str(after), "format": "qcow2"},
                )
            finally:
                agent.call("guest-fsfreeze-thaw")
        finally:
            agent.close()
            qmp.close()
        wait_for(lambda: _last(channel) > at_freeze, COMMAND, "the load to go on")
    clone_disk = tmp_path / "clone.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(snapshot),
         str(clone_disk)],
        check=True,
    )  # fmt: skip
    clone = tmp_path / "clone"
    clone.mkdir()
    with (
        booted(debian_guest, clone, disk=clone_disk) as guest,
        net.CommandChannel(guest.serial) as channel,
    ):
        count, top = map(int, run(channel, "heron-insert-load count").split())
        hook = run(channel, "tail -n 1 /var/lib/heron/fsfreeze.log")
        pg_log = run(channel, "cat /var/log/postgresql/postgresql-15-main.log")
    started = pg_log.rsplit("starting PostgreSQL", 1)[1]
    print(f"at freeze {at_freeze}, clone has {count} rows up to {top}; hook: {hook}")
    print("clone's PostgreSQL:", [line.split("LOG:", 1)[-1] for line in started.splitlines()])
    assert count == top >= at_freeze
    # The snapshot was taken frozen, after the hook's freeze and before its thaw.
    assert hook.startswith("heron-fsfreeze freeze checkpoint_lsn=")
    redo_lsn = hook.split("redo_lsn=")[1]
    # Recovery in the clone replays WAL from the hook's checkpoint on, not from further back.
    redo = [line for line in started.splitlines() if "redo starts at" in line]
    if redo:
        assert _lsn(redo[0].split("redo starts at ")[1].split()[0]) >= _lsn(redo_lsn)
    assert "database system is ready to accept connections" in started


def _lsn(text: str) -> int:
    high, low = text.rstrip(",").split("/")
    return (int(high, 16) << 32) | int(low, 16)
