"""The guest agent against a real qemu-ga: the Debian guest (PostgreSQL, MariaDB, the fsfreeze
hooks Heron ships) started on Heron's own command line with its agent channel (`guest_agent`),
launched as herond launches QEMU. One boot for the module: ping and what the agent reports, a
bounded freeze and thaw through both database hooks, a body that outlives the limit thawed
under it, and hooks installed through the agent, one of them failing the freeze after MariaDB's
lock was taken (the runner releases it).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator

import pytest
from fakes.running import short_directory
from support import eventually

from heron.hypervisor import command, guest_hooks
from heron.hypervisor.command import ResolvedDisk, RuntimePaths
from heron.hypervisor.qemu import QemuVM
from heron.hypervisor.qga import FreezeError, FreezeWindowExceeded, GuestAgent, frozen
from heron.models.common import new_id
from heron.models.vm import VM, VMSpec
from heron.testguest import build, debian

pytestmark = pytest.mark.integration

BOOT = 400  # TCG on a shared machine: the guest takes 25-60 s alone, far more under load
AGENT = 180  # qemu-ga starts once udev has seen its port
FREEZE_LIMIT = 120.0  # the hook's CHECKPOINT under TCG, with room


@pytest.fixture(scope="module")
async def qemu(debian_guest: debian.DebianGuest) -> AsyncIterator[QemuVM]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    with short_directory() as root:
        disk = root / "disk.qcow2"
        made = await asyncio.create_subprocess_exec(
            "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
            str(debian_guest.image), str(disk),
        )  # fmt: skip
        assert await made.wait() == 0
        spec = VMSpec(name="qga", memory_mib=1024, guest_agent=True)
        vm = VM(id=new_id(), spec=spec, node="n", created_at=1)
        qemu = QemuVM(vm.id, RuntimePaths(root / "run"))
        resolved = [ResolvedDisk("virtio", {"driver": "file", "filename": str(disk)}, "qcow2")]
        args = command.build(vm, resolved, qemu.paths, "tcg", ram=1024 * 1024 + 8)
        await qemu.launch(args)
        started = time.monotonic()
        try:

            async def ready() -> bool:
                log = qemu.paths.console_log
                return log.exists() and build.READY_MARKER in log.read_text(errors="replace")

            await eventually(ready, BOOT, "the Debian guest's ready line")
            await eventually(qemu.guest_agent().ping, AGENT, "the guest agent to answer")
            print(f"guest agent answered {time.monotonic() - started:.0f}s after launch")
            yield qemu
        finally:
            await qemu.kill()
            await qemu.close()


@pytest.fixture
def agent(qemu: QemuVM) -> GuestAgent:
    return qemu.guest_agent()


async def shell(agent: GuestAgent, script: str) -> str:
    result = await agent.exec("/bin/sh", ["-c", script], timeout=60)
    assert result.exitcode == 0, f"{script}: {result.exitcode} {result.stderr!r}"
    return result.stdout.decode()


async def test_the_agent_reports_itself_and_the_guests_addresses(agent: GuestAgent) -> None:
    assert await agent.ping()
    info = await agent.info()
    assert info.version.startswith("7.")
    assert {"guest-fsfreeze-freeze", "guest-exec"} <= set(info.commands)
    interfaces = {i.name: i for i in await agent.network_interfaces()}
    assert "127.0.0.1/8" in interfaces["lo"].addresses
    assert await agent.freeze_status() == "thawed"


async def test_a_freeze_runs_the_database_hooks_and_thaws(agent: GuestAgent) -> None:
    async with frozen(agent, FREEZE_LIMIT) as report:
        assert report.filesystems >= 1
        assert await agent.freeze_status() == "frozen"
    assert await agent.freeze_status() == "thawed"
    assert report.window_s is not None and not report.thawed_at_limit
    print(f"frozen {report.filesystems} filesystems for {report.window_s:.1f}s")
    lines = (await shell(agent, "tail -n 20 /var/lib/heron/fsfreeze.log")).splitlines()
    first = max(i for i, line in enumerate(lines) if "freeze checkpoint_lsn=" in line)
    log = lines[first:]
    # A thaw whose reply came late (a slow guest) is sent again and runs the thaw hooks
    # again: only thaws may follow.
    assert all("thaw" in line for line in log[2:]), log
    # Freeze in name order (10-postgresql, 90-mysql), thaw in reverse.
    assert log[0].startswith("heron-fsfreeze freeze checkpoint_lsn="), log
    assert log[1].startswith("heron-fsfreeze mysql freeze locked connection="), log
    session = log[1].split("connection=")[1].split()[0]
    assert log[2] == (
        f"heron-fsfreeze mysql thaw unlocked connection={session}: the lock was held until the thaw"
    )
    assert log[3] == "heron-fsfreeze thaw"


async def test_a_body_past_the_limit_is_thawed_at_the_limit(agent: GuestAgent) -> None:
    # The limit counts from the freeze's reply: the hook's CHECKPOINT before it is not in it.
    limit = 2.0
    with pytest.raises(FreezeWindowExceeded):
        async with frozen(agent, limit) as report:

            async def thawed() -> bool:
                return await agent.freeze_status() == "thawed"

            # The body "hangs" past the limit: it ends only once the watchdog has thawed.
            await eventually(thawed, limit + 120, "the watchdog to thaw the guest")
    assert report.thawed_at_limit and report.frozen_s is not None and report.frozen_s >= limit
    assert await agent.freeze_status() == "thawed"


async def test_a_failing_hook_fails_the_freeze_and_leaves_the_guest_thawed(
    agent: GuestAgent,
) -> None:
    failing = b'#!/bin/sh\n[ "$1" = freeze ] && { echo "not now" >&2; exit 7; }\nexit 0\n'
    await guest_hooks.install_hook(agent, "zz-fail", failing)
    try:
        listing = await guest_hooks.list_hooks(agent)
        assert listing.runner
        names = [hook.name for hook in listing.hooks]
        assert names == ["10-postgresql", "90-mysql", "zz-fail"]  # the order they run in
        assert all(hook.executable for hook in listing.hooks)
        with pytest.raises(FreezeError, match="7"):
            async with frozen(agent, FREEZE_LIMIT):
                raise AssertionError("the body ran")
        assert await agent.freeze_status() == "thawed"
        # Both database hooks ran their freeze before the failing one: they were thawed too,
        # MariaDB's lock released (a thaw Heron sends after a failed freeze may follow).
        log = (await shell(agent, "cat /var/lib/heron/fsfreeze.log")).splitlines()
        locked = max(i for i, line in enumerate(log) if "mysql freeze locked" in line)
        after = log[locked + 1 :]
        assert any(line.startswith("heron-fsfreeze mysql thaw unlocked") for line in after), log
        assert log[-1] == "heron-fsfreeze thaw"
    finally:
        await guest_hooks.remove_hook(agent, "zz-fail")
    assert [h.name for h in (await guest_hooks.list_hooks(agent)).hooks] == [
        "10-postgresql",
        "90-mysql",
    ]
    with pytest.raises(guest_hooks.NoSuchHook):
        await guest_hooks.remove_hook(agent, "zz-fail")
