"""Where a node's Open vSwitch runs: its database server and ovs-vswitchd.

On a real host they are the system's (Debian's openvswitch-switch service): Heron only talks
to them. On a devcluster, where one network namespace stands for each node's host, every node
has its own pair, started here inside that namespace, detached (their own session, reparented
to init) with their database, sockets, logs and pid files in a directory of the node's: they
outlive the agent that started them, and an agent starting again finds them by their pid files
and keeps them, so the switches go on forwarding while the agent restarts.
"""

import asyncio
import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from heron.errors import HeronError
from heron.network.dataplane import DataPlane
from heron.util.proc import alive, read_pidfile
from heron.util.wait import until, until_sync

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
SYSTEM_SOCKET = Path("/var/run/openvswitch/db.sock")
KERNEL_MODULE = Path("/sys/module/openvswitch")
DAEMONS = ("ovsdb-server", "ovs-vswitchd")
STOP_SECONDS = 10.0
# Of the bridges: the kernel's datapath, or the userspace one where the kernel has none.
DatapathType = Literal["system", "netdev"]


class OvsError(HeronError):
    """Open vSwitch failed: its daemons did not start, or its database refused a command."""


def kernel_datapath() -> bool:
    """Whether the kernel has Open vSwitch's datapath (loading its module if it can): if not,
    bridges use the userspace datapath ("netdev"), slower but the same to Heron."""
    if not KERNEL_MODULE.exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["modprobe", "-q", "openvswitch"], capture_output=True, timeout=30)
    return KERNEL_MODULE.exists()


@dataclass(frozen=True)
class OvsRuntime:
    """An OVS database (at `socket`) and the ovs-vswitchd realising it in `netns`."""

    socket: Path
    datapath_type: DatapathType
    netns: str | None = None
    directory: Path | None = None  # of a runtime of Heron's own; None: the system's

    @classmethod
    def system(cls) -> "OvsRuntime":
        """The host's Open vSwitch, run by its service."""
        return cls(SYSTEM_SOCKET, "system" if kernel_datapath() else "netdev")

    @classmethod
    async def start(cls, netns: str | None, directory: Path) -> "OvsRuntime":
        """A runtime of Heron's own in `netns` (None: the host's), its files in `directory`:
        the daemons already running from there are kept, the missing ones started.

        Raises OvsError if a daemon does not start."""
        datapath: DatapathType = "system" if await asyncio.to_thread(kernel_datapath) else "netdev"
        runtime = cls(directory / "db.sock", datapath, netns, directory)
        await asyncio.to_thread(runtime._start)
        return runtime

    @classmethod
    async def for_plane(cls, plane: DataPlane, directory: Path) -> "OvsRuntime":
        """The runtime of a node's data plane: the system's on a real host, where Open
        vSwitch is a service of its own (upgraded, restarted and logged like the host's
        others, and alone in driving the kernel datapath); one of Heron's own, its files in
        `directory`, for a node standing in a namespace of a devcluster.

        Raises OvsError if the daemons of Heron's own do not start."""
        if plane.netns is None:
            return await asyncio.to_thread(cls.system)
        return await cls.start(plane.netns, directory)

    def ctl_args(self) -> list[str]:
        """The options telling ovs-vsctl (or ovs-ofctl, ovsdb-client) which database to use."""
        return [f"--db=unix:{self.socket}"]

    def ofctl_target(self, bridge: str) -> str:
        """How ovs-ofctl reaches `bridge`'s OpenFlow switch: ovs-vswitchd's socket for it,
        in the run directory of a runtime of Heron's own (the system's is the default)."""
        if self.directory is None:
            return bridge
        return f"unix:{self.directory / bridge}.mgmt"

    def running(self) -> bool:
        """Whether both daemons run (for the system's: whether its database is there)."""
        if self.directory is None:
            return self.socket.exists()
        return all(self._pid(daemon) is not None for daemon in DAEMONS)

    async def stop(self) -> None:
        """Stop the daemons of a runtime of Heron's own (never the system's): its switches
        stop forwarding and their bridges' devices go."""
        if self.directory is None:
            return
        for daemon in reversed(DAEMONS):
            pid = self._pid(daemon)
            if pid is not None:
                await _terminate(pid, self._marker(daemon))

    def _marker(self, daemon: str) -> str:
        assert self.directory is not None
        return f"--pidfile={self.directory / daemon}.pid"

    def _pid(self, daemon: str) -> int | None:
        assert self.directory is not None
        return read_pidfile(self.directory / f"{daemon}.pid", self._marker(daemon))

    def _start(self) -> None:
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        for daemon in DAEMONS:
            pid = self._pid(daemon)
            if pid is not None and not self._in_netns(pid):
                # The namespace was made again: a daemon in the old one serves nobody.
                _kill(pid, self._marker(daemon))
                pid = None
            if pid is not None:
                continue
            if daemon == "ovsdb-server":
                self._prepare_database()
                self._daemon(
                    daemon, str(self.directory / "conf.db"), f"--remote=punix:{self.socket}"
                )
                self._run(["ovs-vsctl", *self.ctl_args(), "--no-wait", "init"])
            else:
                self._daemon(daemon, f"unix:{self.socket}")

    def _in_netns(self, pid: int) -> bool:
        mine = Path(f"/run/netns/{self.netns}") if self.netns else Path("/proc/self/ns/net")
        try:
            return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(mine).st_ino
        except OSError:
            return False

    def _prepare_database(self) -> None:
        assert self.directory is not None
        database = self.directory / "conf.db"
        if not database.exists():
            # Created aside and renamed: a crash half-way leaves no half database.
            fresh = self.directory / "conf.db.new"
            fresh.unlink(missing_ok=True)
            self._run(["ovsdb-tool", "create", str(fresh), str(SCHEMA)])
            fresh.rename(database)
        elif self._run(["ovsdb-tool", "needs-conversion", str(database), str(SCHEMA)]) == "yes":
            # Open vSwitch was upgraded since the database was made.
            self._run(["ovsdb-tool", "convert", str(database), str(SCHEMA)])

    def _daemon(self, daemon: str, *args: str) -> None:
        assert self.directory is not None
        enter = ["nsenter", f"--net=/run/netns/{self.netns}"] if self.netns else []
        # --detach returns once the daemon is ready (its database open, its socket listening),
        # so nothing needs polling.
        command = [
            *enter,
            daemon,
            *args,
            f"--pidfile={self.directory / daemon}.pid",
            f"--unixctl={self.directory / daemon}.ctl",
            f"--log-file={self.directory / daemon}.log",
            "--detach",
        ]
        self._run(command)

    def _run(self, command: list[str]) -> str:
        assert self.directory is not None
        # Each runtime's own run directory: ovs-vswitchd puts a socket per bridge there
        # (BRIDGE.mgmt), and two nodes of a devcluster have bridges of the same names.
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env.update(OVS_RUNDIR=str(self.directory), OVS_LOGDIR=str(self.directory))
        env.update(OVS_DBDIR=str(self.directory))
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OvsError(f"{command[0]} failed: {exc}") from exc
        if done.returncode != 0:
            raise OvsError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
        return done.stdout.strip()


def _kill(pid: int, marker: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    until_sync(lambda: not alive(pid, marker), STOP_SECONDS)


async def _terminate(pid: int, marker: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)

    async def gone() -> bool:
        return not alive(pid, marker)

    if await until(gone, STOP_SECONDS) is None:
        await asyncio.to_thread(_kill, pid, marker)
