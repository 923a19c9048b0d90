"""Each network's DHCP server on this node: a dnsmasq in a namespace of its own.

The namespace keeps the guests' subnets off the host's routes (overlapping subnets are fine);
a veth pair joins it to the network's bridge, whose end the switch driver plugs in as an
isolated port. The server's address and MAC are the same on every node, and each node's
dnsmasq answers only that node's NICs: a guest sees one server wherever it runs, and one that
migrated renews its lease with the server of its new node.

dnsmasq daemonizes and writes its pidfile in the network's directory, so it outlives the agent
and is found again; its configuration's path in its command line tells it from any other.
"""

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from heron.network import dnsmasq, netns
from heron.network.dataplane import DataPlane
from heron.network.plan import DhcpServer, dhcp_link, dhcp_namespace
from heron.util.proc import alive, find_running, read_pidfile
from heron.util.wait import until_sync

OWNER = "heron"  # the alias marking the links Heron made
NETNS_DIR = Path("/run/netns")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
LOG_LIMIT = 8 << 20


class DhcpServers:
    """The DHCP servers of one node's data plane, their files under `directory`."""

    def __init__(self, plane: DataPlane, directory: Path) -> None:
        self.plane = plane
        self.directory = directory
        # One change at a time per network: two passes must not both start a dnsmasq.
        self._busy: dict[str, asyncio.Lock] = {}

    async def realise(self, server: DhcpServer) -> list[str]:
        """Make `server` run as planned: its namespace, its link, its dnsmasq with these
        hosts. Problems are returned as sentences; nothing that matches is disturbed."""
        async with self._busy.setdefault(server.network, asyncio.Lock()):
            return await asyncio.to_thread(self._realise, server)

    async def remove(self, network: str) -> None:
        """Stop `network`'s server and delete its namespace, links and files. Raises OSError
        if its dnsmasq outlives SIGKILL (then nothing else is removed)."""
        async with self._busy.setdefault(network, asyncio.Lock()):
            await asyncio.to_thread(self._remove, network)

    async def running(self) -> set[str]:
        """The networks with (anything left of) a server on this node: what `remove` clears."""
        return await asyncio.to_thread(self._running)

    # -- the work, in a thread -------------------------------------------------------------

    def _files(self, network: str) -> dnsmasq.ServerFiles:
        if not network or "/" in network or network in (".", ".."):
            raise ValueError(f"not a network's name: {network!r}")
        return dnsmasq.ServerFiles(self.directory / network)

    def _realise(self, server: DhcpServer) -> list[str]:
        what = f"DHCP of network {server.network}"
        if not self._plane_exists():
            return [f"{what}: the data plane's namespace {self.plane.netns} does not exist"]
        namespace = self.plane.namespace(server.namespace)
        files = self._files(server.network)
        try:
            netns.create(namespace)
            self._link(server, namespace)
        except (NetlinkError, OSError) as exc:
            return [f"{what}: its link: {exc}"]
        problem = self._dnsmasq(server, namespace, files)
        return [f"{what}: {problem}"] if problem else []

    def _plane_exists(self) -> bool:
        # The data plane is the agent's to make, never made here as a side effect.
        return self.plane.netns is None or netns.exists(self.plane.netns)

    def _link(self, server: DhcpServer, namespace: str) -> None:
        outside, inside = server.links
        with _ipr(self.plane.netns) as plane, _ipr(namespace) as dhcp:
            _set(dhcp, "lo", state="up")
            if not dhcp.link_lookup(ifname=inside):
                pair = [plane.link_lookup(ifname=name) for name in (outside, inside)]
                if not all(pair):
                    # None, or half a pair left by something else: ours is made anew.
                    for index in (i for found in pair for i in found):
                        plane.link("del", index=index)
                    plane.link("add", ifname=outside, kind="veth", peer=inside)
                    _set(plane, outside, ifalias=OWNER)
                plane.link("set", index=plane.link_lookup(ifname=inside)[0], net_ns_fd=namespace)
            _set(plane, outside, ifalias=OWNER, mtu=server.mtu, state="up")
            index = dhcp.link_lookup(ifname=inside)[0]
            link = dhcp.get_links(index)[0]
            if str(link.get("address")).lower() != server.mac.lower():
                # Not every driver changes a MAC while the link is up.
                dhcp.link("set", index=index, state="down")
                dhcp.link("set", index=index, address=server.mac)
            _set(dhcp, inside, ifalias=OWNER, mtu=server.mtu, state="up")
            address, _, prefix = server.address.partition("/")
            present = {
                (a.get("address"), a["prefixlen"])
                for a in dhcp.get_addr(index=index, family=socket.AF_INET)
            }
            for other, length in present - {(address, int(prefix))}:
                dhcp.addr("del", index=index, address=other, prefixlen=length)
            if (address, int(prefix)) not in present:
                dhcp.addr("add", index=index, address=address, prefixlen=int(prefix))

    def _dnsmasq(
        self, server: DhcpServer, namespace: str, files: dnsmasq.ServerFiles
    ) -> str | None:
        """dnsmasq running as `server` says; why it does not, or None."""
        files.directory.mkdir(parents=True, exist_ok=True)
        config = dnsmasq.config(server, files)
        hosts = dnsmasq.hosts_file(server)
        marker = dnsmasq.marker(files)
        pid = read_pidfile(files.pid, marker)
        # A NIC gone or given another address: dnsmasq would keep its lease and refuse the
        # address to the next NIC given it. With every address fixed by the cluster's IPAM its
        # leases are of no use: it starts afresh without them.
        loaded = _read(files.hosts_loaded) or ""
        forgotten = not set(loaded.splitlines()) <= set(hosts.splitlines())
        if pid is not None and (
            forgotten or _read(files.config) != config or not _in_namespace(pid, namespace)
        ):
            if not _stop(pid, marker):
                return f"dnsmasq {pid} does not stop"
            pid = None
        if pid is None:
            files.leases.unlink(missing_ok=True)
            # One whose pidfile was lost must not answer beside the new one.
            if not all(_stop(stray, marker) for stray in find_running(marker)):
                return "an earlier dnsmasq does not stop"
            _write(files.config, config)
            _write(files.hosts, hosts)
            problem = _start(namespace, files)
            if problem:
                return problem
            _write(files.hosts_loaded, hosts)
            return None
        if _read(files.hosts) != hosts or _read(files.hosts_loaded) != hosts:
            _write(files.hosts, hosts)
            _signal(pid, signal.SIGHUP)  # dnsmasq re-reads its hosts file
            _write(files.hosts_loaded, hosts)
        _rotate(files.log, pid)
        return None

    def _remove(self, network: str) -> None:
        files = self._files(network)
        marker = dnsmasq.marker(files)
        pid = read_pidfile(files.pid, marker)
        for found in {*([pid] if pid else []), *find_running(marker)}:
            if not _stop(found, marker):
                raise OSError(errno.EBUSY, f"dnsmasq {found} of network {network} does not stop")
        namespace = self.plane.namespace(dhcp_namespace(network))
        netns.remove(namespace)
        if not self._plane_exists():
            shutil.rmtree(files.directory, ignore_errors=True)
            return
        # The pair went with its end in the namespace, unless that end never got there. The
        # kernel deletes the pair after the namespace is gone, so the end found here may be
        # gone by the time it is read or deleted.
        with _ipr(self.plane.netns) as plane:
            for index in plane.link_lookup(ifname=dhcp_link(network)[0]):
                with contextlib.suppress(NetlinkError):  # gone meanwhile
                    if plane.get_links(index)[0].get("ifalias") == OWNER:
                        plane.link("del", index=index)
        shutil.rmtree(files.directory, ignore_errors=True)

    def _running(self) -> set[str]:
        found = set()
        if self.directory.is_dir():
            found = {entry.name for entry in self.directory.iterdir() if entry.is_dir()}
        prefix = self.plane.namespace(dhcp_namespace(""))
        for name in netns.names():
            if name.startswith(prefix) and len(name) > len(prefix):
                found.add(name[len(prefix) :])
        return found


@contextlib.contextmanager
def _ipr(namespace: str | None) -> Iterator[IPRoute]:
    ipr = netns.netlink(namespace)
    try:
        yield ipr
    finally:
        ipr.close()


def _set(ipr: IPRoute, name: str, **changes: object) -> None:
    """Set what differs on link `name`: a link that matches is not touched."""
    index = ipr.link_lookup(ifname=name)[0]
    link = ipr.get_links(index)[0]
    current = {
        "ifalias": link.get("ifalias"),
        "mtu": link.get("mtu"),
        "state": "up" if link["flags"] & 1 else "down",
    }
    wanted = {key: value for key, value in changes.items() if current.get(key) != value}
    if wanted:
        ipr.link("set", index=index, **wanted)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _write(path: Path, text: str) -> None:
    """Replace `path` whole: dnsmasq never reads half a file."""
    partial = path.with_name(path.name + ".new")
    partial.write_text(text)
    partial.replace(path)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it died: the next pass starts it
        os.kill(pid, sig)


def _rotate(log: Path, pid: int) -> None:
    """Keep the previous log and start a new one past LOG_LIMIT: log-dhcp writes a dozen
    lines for every lease given or renewed."""
    try:
        if log.stat().st_size < LOG_LIMIT:
            return
    except FileNotFoundError:
        return
    log.replace(log.with_name(log.name + ".1"))
    _signal(pid, signal.SIGUSR2)  # dnsmasq reopens its log file


def _in_namespace(pid: int, namespace: str) -> bool:
    """Whether `pid` serves in `namespace` as it is now, not in one deleted and made anew."""
    try:
        theirs = os.stat(f"/proc/{pid}/ns/net")
        ours = os.stat(NETNS_DIR / namespace)
    except FileNotFoundError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def _start(namespace: str, files: dnsmasq.ServerFiles) -> str | None:
    """Start dnsmasq; the reason it did not start, or None. dnsmasq's first process returns
    once the daemon has started (or failed to: its status says so), its pidfile written."""
    program = shutil.which("dnsmasq") or next(
        (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.access(p, os.X_OK)), None
    )
    if program is None:
        return "dnsmasq is not installed"
    files.pid.unlink(missing_ok=True)
    with open(files.output, "wb") as output:
        try:
            status = subprocess.run(
                dnsmasq.command(program, namespace, files),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
                timeout=START_TIMEOUT,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            return "dnsmasq did not start in time"
        except OSError as exc:  # nsenter missing
            return f"dnsmasq could not be started: {exc}"
    marker = dnsmasq.marker(files)
    if status != 0 or until_sync(lambda: read_pidfile(files.pid, marker), 5.0) is None:
        said = (_read(files.output) or "").strip().splitlines()
        return f"dnsmasq did not start: {said[-1] if said else f'exit status {status}'}"
    return None


def _stop(pid: int, marker: str) -> bool:
    """SIGTERM, then SIGKILL; whether it is gone. dnsmasq daemonized: it is not our child,
    there is nothing to reap."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        if until_sync(lambda: not alive(pid, marker), STOP_TIMEOUT, 0.02):
            return True
    return False
