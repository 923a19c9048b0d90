"""What the VM controller relies on from QEMU, as tests: run against qemu-system-x86_64
(tests/integration/test_qemu_contract.py) and against the fake (tests/unit/test_fake_qemu.py),
so the fake's QMP answers stay QEMU's.

Each QEMU is launched as the VM controller launches it (heron.hypervisor: the command line
for a VM without disks, under TCG, daemonized) and driven through QemuVM. A subclass provides
`qemu_on_path`: whatever makes `qemu-system-x86_64` the program under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.running import short_directory

from heron.hypervisor import command
from heron.hypervisor.command import RuntimePaths
from heron.hypervisor.qemu import QemuError, QemuVM
from heron.models.common import new_id
from heron.models.vm import VM, VMSpec

RAM_KIB = 64 * 1024 + 8  # small, and not a multiple of 256 KiB: as under TCG (command.py)

Launch = Callable[..., Awaitable[QemuVM]]


async def next_events(qemu: QemuVM, count: int, timeout: float = 10.0) -> list[str]:
    """The names of the next `count` QMP events."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    names: list[str] = []
    while len(names) < count and loop.time() < deadline:
        event = await qemu.next_event(timeout=deadline - loop.time())
        if event is not None:
            names.append(str(event["event"]))
    return names


class QemuContract:
    @pytest.fixture
    def qemu_on_path(self) -> None:
        raise NotImplementedError

    @pytest.fixture
    def root(self) -> Iterator[Path]:
        with short_directory() as directory:
            yield directory

    @pytest.fixture
    async def launch(self, root: Path, qemu_on_path: Any) -> AsyncIterator[Launch]:
        started: list[QemuVM] = []

        async def start(*extra: str, vm_id: str | None = None) -> QemuVM:
            vm = VM(
                id=vm_id or new_id(), spec=VMSpec(name="c", memory_mib=64), node="n", created_at=1
            )
            qemu = QemuVM(vm.id, RuntimePaths(root / vm.id))
            args = command.build(vm, [], qemu.paths, "tcg", ram=RAM_KIB)
            await qemu.launch([*args, *extra])
            started.append(qemu)
            return qemu

        yield start
        for qemu in started:
            await qemu.kill()
            await qemu.close()

    async def test_it_runs_and_answers_what_the_controller_asks(self, launch: Launch) -> None:
        qemu = await launch()
        assert qemu.running()
        assert await qemu.run_state() == "running"
        assert await qemu.ram_kib() == RAM_KIB
        vnc = await qemu.vnc_address()
        assert vnc is not None and vnc.startswith("127.0.0.1:59")
        assert (await qemu.outgoing_migration()).status == "none"  # none yet

    async def test_dash_s_starts_paused_and_cont_and_stop_say_so(self, launch: Launch) -> None:
        qemu = await launch("-S")
        # QEMU says "prelaunch" (never run); to its callers that is paused, resumed by cont.
        assert await qemu.run_state() == "paused"
        assert (await qemu.execute("query-status"))["status"] == "prelaunch"
        await qemu.execute("cont")
        assert await qemu.run_state() == "running"
        await qemu.execute("stop")
        assert await qemu.run_state() == "paused"
        assert await next_events(qemu, 2) == ["RESUME", "STOP"]

    async def test_an_incoming_qemu_waits_for_its_migration(self, launch: Launch) -> None:
        qemu = await launch("-incoming", "defer")
        assert await qemu.run_state() == "inmigrate"

    async def test_an_unknown_command_is_an_error(self, launch: Launch) -> None:
        qemu = await launch()
        with pytest.raises(QemuError, match="The command no-such-thing has not been found"):
            await qemu.execute("no-such-thing")
        assert await qemu.run_state() == "running"  # the session survives it

    async def test_the_power_button_is_an_event(self, launch: Launch) -> None:
        qemu = await launch()
        await qemu.execute("system_reset")
        await qemu.execute("system_powerdown")
        assert await next_events(qemu, 2) == ["RESET", "POWERDOWN"]

    async def test_quit_ends_it_and_removes_its_pidfile(self, launch: Launch) -> None:
        qemu = await launch()
        await qemu.execute("quit")
        assert await qemu.wait_gone(10)
        assert not qemu.paths.pidfile.exists()

    async def test_a_second_qemu_for_the_same_vm_is_refused(self, launch: Launch) -> None:
        first = await launch()
        pid = first.pid()
        with pytest.raises(QemuError, match=r"QEMU failed to start .*lock"):
            await launch(vm_id=first.vm_id)
        assert first.pid() == pid and first.running()
        assert await first.run_state() == "running"  # its QMP socket untouched
