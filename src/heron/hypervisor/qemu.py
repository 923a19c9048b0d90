"""One running QEMU: launched daemonized, found again by pidfile, driven over QMP.

QEMU daemonizes itself, so it is never the agent's child: killing or restarting herond leaves
every VM running, and a new herond reconnects to the QMP socket it finds in the VM's runtime
directory. The pidfile is also QEMU's own lock: a second QEMU for the same VM cannot start.
"""

import asyncio
import contextlib
import logging
import os
import signal
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from heron.errors import HypervisorError
from heron.hypervisor.command import RuntimePaths
from heron.util.proc import alive, read_pidfile
from heron.util.wait import until

log = logging.getLogger(__name__)


class QemuError(HypervisorError):
    pass


class QemuVM:
    def __init__(self, vm_id: str, paths: RuntimePaths):
        self.vm_id = vm_id
        self.paths = paths
        self._qmp: QMPClient | None = None
        self._lock = asyncio.Lock()

    def pid(self) -> int | None:
        return read_pidfile(self.paths.pidfile, self.vm_id)

    def running(self) -> bool:
        pid = self.pid()
        return pid is not None and alive(pid, self.vm_id)

    async def launch(self, args: list[str]) -> int:
        """Start QEMU; returns once it has daemonized (its devices and sockets exist)."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        with open(self.paths.qemu_log, "ab") as qemu_log:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=qemu_log,
                start_new_session=True,
            )
            code = await proc.wait()
        if code != 0:
            raise QemuError(f"QEMU failed to start (exit {code}): {self.last_error()}")
        pid = self.pid()
        if pid is None:
            raise QemuError(f"QEMU started but left no pidfile: {self.last_error()}")
        return pid

    def last_error(self) -> str:
        try:
            lines = self.paths.qemu_log.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return "no log"
        return lines[-1] if lines else "no output"

    async def qmp(self) -> QMPClient:
        """The QMP session, (re)connected on demand."""
        async with self._lock:
            if self._qmp is not None and self._qmp.runstate.name == "RUNNING":
                return self._qmp
            if self._qmp is not None:
                with contextlib.suppress(Exception):
                    await self._qmp.disconnect()
            client = QMPClient(f"heron-{self.vm_id[:8]}")
            client.logger.setLevel(logging.WARNING)
            try:
                await asyncio.wait_for(client.connect(str(self.paths.qmp)), timeout=10)
            except (OSError, QMPError, TimeoutError) as exc:
                raise QemuError(f"cannot reach QMP of VM {self.vm_id}: {exc}") from exc
            self._qmp = client
            return client

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        client = await self.qmp()
        try:
            return await asyncio.wait_for(client.execute(command, arguments), timeout=30)
        except (QMPError, TimeoutError, OSError) as exc:
            raise QemuError(f"{command}: {exc}") from exc

    async def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The next QMP event, or None after `timeout` seconds or a lost session."""
        client = self._qmp
        if client is None or client.runstate.name != "RUNNING":
            await asyncio.sleep(timeout)  # nothing to listen to: just pace the caller
            return None
        try:
            event = await asyncio.wait_for(client.events.get(), timeout)
        except TimeoutError:
            return None
        return dict(event)

    async def run_state(self) -> str:
        """QEMU's run state: 'running', 'paused', 'shutdown', ..."""
        reply = await self.execute("query-status")
        return str(reply["status"])

    async def outgoing_migration(self) -> dict[str, Any]:
        """`query-migrate` about the migration this QEMU sends. A QEMU that was itself
        migrated in says "completed" about that incoming one, without transfer figures, until
        it sends one: that is no migration of its own, so its status is "none" here."""
        info = dict(await self.execute("query-migrate"))
        if info.get("status") == "completed" and "ram" not in info:
            return {"status": "none"}
        return info

    async def ram_kib(self) -> int:
        """The guest's RAM as this QEMU was given it, in KiB."""
        reply = await self.execute("query-memory-size-summary")
        return int(reply["base-memory"]) // 1024

    async def vnc_address(self) -> str | None:
        reply = await self.execute("query-vnc")
        if not reply.get("enabled"):
            return None
        return f"{reply['host']}:{reply['service']}"

    async def kill(self, timeout: float = 10.0) -> None:
        """Stop QEMU at once (power cord pulled); waits until the process is gone."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(QemuError):
            await self.execute("quit")
        if not await self.wait_gone(timeout / 2):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await self.wait_gone(timeout / 2)

    async def wait_gone(self, timeout: float) -> bool:
        async def gone() -> bool:  # polling the pid: QEMU is not our child to wait on
            return not self.running()

        if await until(gone, timeout, 0.05) is None:
            return False
        await self.close()
        return True

    async def close(self) -> None:
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                await self._qmp.disconnect()
            self._qmp = None
