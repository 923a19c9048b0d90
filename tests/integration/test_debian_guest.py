"""The Debian guest of the snapshot tests, proven under a plain QEMU (TCG, q35, -cpu max) before
Heron's snapshots rely on it: it boots from its own disk (SeaBIOS, syslinux) to the command
channel, PostgreSQL takes the insert load's rows, and the guest agent answers, freezes and thaws
with the PostgreSQL hook run on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from qemu.qmp import QMPClient
from support import eventually, wait_for

from heron.hypervisor.qga import GuestAgent, frozen
from heron.testguest import build, debian, net

pytestmark = pytest.mark.integration

BOOT = 300
COMMAND = 120


@dataclass
class Guest:
    log: Path
    serial: Path
    agent: Path
    boot_seconds: float

    def text(self) -> str:
        return self.log.read_bytes().decode(errors="replace")


@contextlib.contextmanager
def booted(image: debian.DebianGuest, tmp: Path, *, disk: Path | None = None) -> Iterator[Guest]:
    """The guest under QEMU as Heron runs it (q35, TCG, -cpu max, the agent's virtio-serial
    port), from its own disk through SeaBIOS; killed after.
    Its writes go to `disk` (a qcow2 overlay of the image) if given, else nowhere; QMP is on
    ``tmp/qmp.sock``."""
    log, serial, agent = tmp / "console.log", tmp / "serial.sock", tmp / "qga.sock"
    drive = f"file={image.image},format=qcow2,if=virtio,snapshot=on"
    if disk is not None:
        drive = f"file={disk},format=qcow2,if=virtio,id=disk0"
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
         "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"],
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
    async def freeze_and_thaw() -> None:
        agent = await _agent(guest.agent)
        assert await agent.freeze_status() == "thawed"
        # A freeze runs the PostgreSQL hook's CHECKPOINT first: give it a command's time.
        count = await agent.freeze(timeout=COMMAND)
        assert count >= 1
        assert await agent.freeze_status() == "frozen"
        assert await agent.thaw(timeout=COMMAND) == count
        assert await agent.freeze_status() == "thawed"

    asyncio.run(freeze_and_thaw())
    hook_log = run(channel, "cat /var/lib/heron/fsfreeze.log").splitlines()
    print(f"hook: {hook_log[-2:]}")
    assert hook_log[-2].startswith("heron-fsfreeze freeze checkpoint_lsn=")
    assert hook_log[-1] == "heron-fsfreeze thaw"
    pg_log = run(channel, "cat /var/log/postgresql/postgresql-15-main.log")
    assert "checkpoint starting: immediate force wait" in pg_log


async def _agent(path: Path) -> GuestAgent:
    # qemu-ga starts once udev has seen its port; until then the socket's other end is silent.
    agent = GuestAgent(path)
    await eventually(agent.ping, COMMAND, "the guest agent to answer")
    return agent


def test_a_freeze_holds_the_load_and_a_thaw_lets_it_go_on(
    guest: Guest, channel: net.CommandChannel
) -> None:
    run(channel, "heron-insert-load start")
    wait_for(lambda: _last(channel) > 0, COMMAND, "the load to commit a row")

    async def freeze() -> int:
        async with frozen(await _agent(guest.agent), COMMAND):
            return await asyncio.to_thread(_last, channel)

    at_freeze = asyncio.run(freeze())
    wait_for(lambda: _last(channel) > at_freeze, COMMAND, "the load to go on after the thaw")
    stopped = int(run(channel, "heron-insert-load stop").split()[-1])
    count, top = map(int, run(channel, "heron-insert-load count").split())
    assert stopped <= top <= stopped + 1 and count == top


def _last(channel: net.CommandChannel) -> int:
    # The load's log is on the root, but reading it needs no write: it answers while frozen.
    return int(run(channel, "heron-insert-load last").strip() or 0)


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
        wait_for(lambda: _last(channel) > 0, COMMAND, "the load to commit a row")
        at_freeze = asyncio.run(_snapshot_frozen(guest, source / "qmp.sock", after, channel))
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


async def _snapshot_frozen(
    guest: Guest, qmp_path: Path, after: Path, channel: net.CommandChannel
) -> int:
    """Freeze, take an external snapshot, thaw; the load's last row at the freeze."""
    agent = await _agent(guest.agent)
    qmp = QMPClient("test")
    await qmp.connect(str(qmp_path))
    try:
        async with frozen(agent, COMMAND):
            at_freeze = await asyncio.to_thread(_last, channel)
            # From here on the guest writes to `after`; the snapshot keeps the frozen disk.
            await qmp.execute(
                "blockdev-snapshot-sync",
                {"device": "disk0", "snapshot-file": str(after), "format": "qcow2"},
            )
    finally:
        await qmp.disconnect()
    return at_freeze


def _lsn(text: str) -> int:
    high, low = text.rstrip(",").split("/")
    return (int(high, 16) << 32) | int(low, 16)
