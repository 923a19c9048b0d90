"""The fake QEMU against the QEMU contract (the same tests run on qemu-system-x86_64 in
tests/integration/test_qemu_contract.py), and the faults only the fake can be told to make."""

import asyncio
import os
import signal
from pathlib import Path

import pytest
from contracts.qemu import Launch, QemuContract, next_events
from fakes import qemu as fake_qemu
from fakes.running import fake_qemu_on_path

from heron.hypervisor.qemu import QemuError


class TestFakeQemu(QemuContract):
    @pytest.fixture
    def qemu_on_path(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> fake_qemu.Script:
        return fake_qemu_on_path(tmp_path, monkeypatch)

    async def test_start_error(self, launch: Launch, qemu_on_path: fake_qemu.Script) -> None:
        qemu_on_path.set(start_error="-device foo: 'foo' is not a valid device model name")
        with pytest.raises(QemuError, match=r"exit 1.*'foo' is not a valid device model name"):
            await launch()

    async def test_scripted_error_hang_and_crash(
        self, launch: Launch, qemu_on_path: fake_qemu.Script
    ) -> None:
        qemu = await launch()
        qemu_on_path.set(errors={"stop": "not now"}, hang=["query-vnc"], crash=["system_reset"])
        with pytest.raises(QemuError, match="stop: not now"):
            await qemu.execute("stop")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(qemu.vnc_address(), 0.5)
        with pytest.raises(QemuError, match="system_reset"):
            await qemu.execute("system_reset")
        assert await qemu.wait_gone(5)
        assert qemu.paths.pidfile.exists()  # killed, not exited: nothing was cleaned up
        sent = [c["execute"] for c in fake_qemu.read_journal(qemu.paths.root)]
        assert sent == ["stop", "query-vnc", "system_reset"]

    async def test_migration_follows_its_script(
        self, launch: Launch, qemu_on_path: fake_qemu.Script
    ) -> None:
        steps = [{"status": "active", "ram": {"total": 10, "transferred": 5}}]
        qemu_on_path.set(migration=[*steps, {"status": "completed", "downtime": 3, "ram": {}}])
        qemu = await launch()
        await qemu.migrate("tcp:127.0.0.1:1")
        first = await qemu.outgoing_migration()
        assert (first.status, first.ram_transferred, first.ram_total) == ("active", 5, 10)
        assert (await qemu.outgoing_migration()).downtime_ms == 3
        assert (await qemu.outgoing_migration()).status == "completed"  # the last repeats
        assert await qemu.run_state() == "postmigrate"  # the guest stopped at the switch

    async def test_the_guest_powers_off_on_the_button_or_by_itself(
        self, launch: Launch, qemu_on_path: fake_qemu.Script
    ) -> None:
        pressed, itself, prelaunch = await launch(), await launch(), await launch("-S")
        await pressed.execute("system_powerdown")
        assert await next_events(pressed, 2) == ["POWERDOWN", "SHUTDOWN"]
        assert await pressed.wait_gone(5)

        await itself.run_state()  # a session to hear it on
        os.kill(itself.pid() or 0, signal.SIGUSR1)
        assert await next_events(itself, 1) == ["SHUTDOWN"]
        assert await itself.wait_gone(5)

        await prelaunch.execute("system_powerdown")  # no OS has booted to see it
        await prelaunch.execute("query-status")  # answered after the button was handled
        assert prelaunch.running()
