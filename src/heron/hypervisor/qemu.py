"""One running QEMU: launched daemonized, found again by pidfile, driven over QMP.

QEMU daemonizes itself, so it is never the agent's child: killing or restarting herond leaves
every VM running, and a new herond reconnects to the QMP socket it finds in the VM's runtime
directory. The pidfile is also QEMU's own lock: a second QEMU for the same VM cannot start.

Every QMP command Heron sends is a method of `QemuVM`: run control here, the others by topic
in `qmp_migration`, `qmp_block`, `qmp_net`, `qmp_snapshot`, `qmp_stats` and `qmp_replica`.
Each says what it raises, from the tree in `qmp_base`.
"""

import asyncio
import contextlib
import logging
import os
import shlex
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.error import QMPError

from heron.hypervisor.command import RuntimePaths
from heron.hypervisor.qga import GuestAgent
from heron.hypervisor.qmp_base import QemuError as QemuError  # the agent catches it from here
from heron.hypervisor.qmp_base import QMPCommandError, QMPSessionError
from heron.hypervisor.qmp_block import BlockCommands
from heron.hypervisor.qmp_hotplug import HotplugCommands
from heron.hypervisor.qmp_migration import MigrationCommands
from heron.hypervisor.qmp_net import NetCommands
from heron.hypervisor.qmp_replica import ReplicaCommands
from heron.hypervisor.qmp_snapshot import SnapshotCommands
from heron.hypervisor.qmp_stats import StatsCommands
from heron.util.proc import alive, read_pidfile
from heron.util.wait import until

log = logging.getLogger(__name__)


class _Client(QMPClient):
    """qemu.qmp's client, without the debug log line of every message when that log is off:
    qemu.qmp formats the line (a JSON encoding of the message) before the logger decides,
    which cost Monica's collection half its CPU with a hundred VMs."""

    def _cb_outbound(self, msg: Any) -> Any:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("--> %s", msg)
        return msg

    def _cb_inbound(self, msg: Any) -> Any:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("<-- %s", msg)
        return msg


class QemuVM(
    MigrationCommands,
    BlockCommands,
    NetCommands,
    SnapshotCommands,
    HotplugCommands,
    StatsCommands,
    ReplicaCommands,
):
    """The QEMU of one VM on this node: its process, and one QMP session to it that is
    (re)connected when a command needs it."""

    def __init__(self, vm_id: str, paths: RuntimePaths):
        self.vm_id = vm_id
        self.paths = paths
        self._qmp: QMPClient | None = None
        self._lock = asyncio.Lock()
        self._fd_lock = asyncio.Lock()
        self._agent: GuestAgent | None = None

    def guest_agent(self) -> GuestAgent:
        """The VM's guest agent, through the socket beside its QMP one: one object per VM, so
        its callers take turns (QEMU serves the channel to one client at a time). It answers
        only if the VM was started with `guest_agent` and qemu-ga runs in the guest."""
        if self._agent is None:
            self._agent = GuestAgent(self.paths.guest_agent)
        return self._agent

    def pid(self) -> int | None:
        return read_pidfile(self.paths.pidfile, self.vm_id)

    def running(self) -> bool:
        pid = self.pid()
        return pid is not None and alive(pid, self.vm_id)

    async def launch(
        self, args: list[str], pass_fds: tuple[int, ...] = (), cgroups: Sequence[Path] = ()
    ) -> int:
        """Start QEMU, handing it `pass_fds` (its taps), in the control groups whose
        cgroup.procs files are `cgroups` (joined before it runs); returns once it has
        daemonized (its devices and sockets exist).

        Raises QemuError when QEMU exits with an error or leaves no pidfile.
        """
        self.paths.root.mkdir(parents=True, exist_ok=True)
        if cgroups:
            args = _joining(cgroups, args)
        with open(self.paths.qemu_log, "ab") as qemu_log:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=qemu_log,
                start_new_session=True,
                pass_fds=pass_fds,
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
        """The QMP session, (re)connected on demand.

        Raises QMPSessionError when QEMU's QMP socket does not accept in time.
        """
        async with self._lock:
            if self._qmp is not None and self._qmp.runstate.name == "RUNNING":
                return self._qmp
            if self._qmp is not None:
                with contextlib.suppress(Exception):
                    await self._qmp.disconnect()
            client = _Client(f"heron-{self.vm_id[:8]}")
            client.logger.setLevel(logging.WARNING)
            try:
                await asyncio.wait_for(client.connect(str(self.paths.qmp)), timeout=10)
            except (OSError, QMPError, TimeoutError) as exc:
                raise QMPSessionError(f"cannot reach QMP of VM {self.vm_id}: {exc}") from exc
            self._qmp = client
            return client

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Send one QMP command; returns the "return" member of QEMU's reply. Callers outside
        hypervisor/ use the method named after the command instead (a unit test checks).

        Raises QMPCommandError when QEMU refuses the command, QMPSessionError when it does
        not answer within 30 s.
        """
        client = await self.qmp()
        try:
            return await asyncio.wait_for(client.execute(command, arguments), timeout=30)
        except ExecuteError as exc:
            raise QMPCommandError(command, exc.error_class, str(exc)) from exc
        except (QMPError, TimeoutError, OSError) as exc:
            raise QMPSessionError(f"{command}: {exc}") from exc

    async def pass_fd(self, name: str, fd: int) -> None:
        """Hand QEMU the open file `fd` under `name`: QMP `getfd` takes the fd that travels
        with it over the socket (SCM_RIGHTS). Our copy stays open.

        Raises QMPCommandError, QMPSessionError.
        """
        client = await self.qmp()
        async with self._fd_lock:  # the fd belongs to the very next command
            try:
                client.send_fd_scm(fd)
            except (QMPError, OSError) as exc:
                raise QMPSessionError(f"getfd: {exc}") from exc
            await self.execute("getfd", {"fdname": name})

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

    # -- run control (QMP) ---------------------------------------------------------------

    async def run_state(self) -> str:
        """QEMU's run state: 'running', 'paused', 'shutdown', 'inmigrate'...

        A QEMU started with -S says 'prelaunch' until its first `cont`: its guest is paused
        like any other and resumes the same way, so it is 'paused' here (callers that cont
        only a paused guest would otherwise leave it never booted).

        Raises QMPSessionError; QEMU refuses no `query-status`.
        """
        reply = await self.execute("query-status")
        status = str(reply["status"])
        return "paused" if status == "prelaunch" else status

    async def pause(self) -> None:
        """Stop the guest's CPUs (QMP `stop`); a no-op when they are stopped already. A QEMU
        awaiting an incoming migration keeps the guest paused once it has arrived.

        Raises QMPSessionError; QEMU does not refuse it.
        """
        await self.execute("stop")

    async def resume(self) -> None:
        """Let the guest's CPUs run (QMP `cont`); a no-op when they run already. A QEMU
        awaiting an incoming migration runs the guest once it has arrived.

        Raises QMPCommandError when QEMU needs a reset first ("Resetting the Virtual Machine
        is required", after a guest panic or shutdown) or is sending the guest's last state
        away ("Migration is not finished"); QMPSessionError.
        """
        await self.execute("cont")

    async def powerdown(self) -> None:
        """Press the ACPI power button; returns at once. The guest decides: it may shut
        down, take its time, or ignore it. A paused guest sees it only once resumed.

        Raises QMPSessionError.
        """
        await self.execute("system_powerdown")

    async def reset(self) -> None:
        """Press the reset button: the guest restarts at once, without shutting down.

        Raises QMPSessionError.
        """
        await self.execute("system_reset")

    async def quit(self) -> None:
        """Make QEMU exit at once, as if the power cord were pulled.

        Raises QMPSessionError, also when QEMU quit before its reply reached us.
        """
        await self.execute("quit")

    async def ram_kib(self) -> int:
        """The guest's RAM as this QEMU was given it, in KiB.

        Raises QMPSessionError.
        """
        reply = await self.execute("query-memory-size-summary")
        return int(reply["base-memory"]) // 1024

    async def vnc_address(self) -> str | None:
        """HOST:PORT of the VNC server, or None when it has none.

        Raises QMPSessionError.
        """
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
            await self.quit()
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


def _joining(cgroups: Sequence[Path], args: list[str]) -> list[str]:
    """`args` run by a shell that first joins the groups and then becomes QEMU (exec), so all
    QEMU ever allocates is theirs. A shell, not a preexec_fn: Python code between fork and
    exec in a process with threads can crash the child (it did: SIGSEGV)."""
    joins = "".join(f"echo $$ > {shlex.quote(str(procs))} && " for procs in cgroups)
    return ["/bin/sh", "-c", f'{joins}exec "$0" "$@"', *args]
