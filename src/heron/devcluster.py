"""A whole Heron cluster on one machine: etcd members and herond agents on loopback.

Used by the tests, by the benchmarks, by people trying Heron, and (with one node) by the
installer. Each process runs detached with its own state directory; `devcluster.json` in the
cluster's directory records ports and commands, so `down` and `start_node` work from any shell.
"""

import contextlib
import hashlib
import json
import os
import signal
import ssl
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from heron.agent.certificates import node_names
from heron.configdb import ConfigDB
from heron.configdb.client import EtcdTls
from heron.configdb.etcd import EtcdMember
from heron.errors import HeronError
from heron.network import fabric
from heron.tls import Authority, NodeCredentials, issue, make_authority
from heron.util.ports import DEVCLUSTER_PORTS, free_ports
from heron.util.proc import (
    alive,
    cmdline,
    find_running,
    read_pidfile,
    spawn_detached,
    terminate,
    wait_until,
)

STATE_FILE = "devcluster.json"


class DevClusterError(HeronError):
    pass


@dataclass
class NodeSpec:
    name: str
    api_port: int
    state_dir: str
    # With an embedded etcd: the client and peer port this node's member would use.
    etcd_ports: list[int] | None = None
    # A directory holding another version's `heron` package to run this node from (rolling
    # upgrade tests); None: the installed one.
    source: str | None = None
    # herond's --join, --join-token, --ca-fingerprint: a node that joins as an administrator
    # would add one (its certificate signed for a one-time token), not handed the CA.
    join: list[str] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.api_port}"

    @property
    def tls(self) -> bool:
        """HTTPS, as every release since issue 16 serves; an older `source` serves HTTP."""
        return self.source is None or (Path(self.source) / "heron" / "tls").is_dir()

    @property
    def ca_file(self) -> Path:
        """The cluster CA as this node keeps it (written when it got its certificate)."""
        return Path(self.state_dir) / "tls" / "ca-cert.pem"


@dataclass
class EtcdSpec:
    name: str
    client_port: int
    peer_port: int
    data_dir: str


@dataclass
class DevCluster:
    dir: str
    nodes: list[NodeSpec] = field(default_factory=list)
    etcd: list[EtcdSpec] = field(default_factory=list)
    # The pre-existing etcd (e.g. the embedded one of a single-node install) if not ours.
    external_etcd: list[str] = field(default_factory=list)
    # Memory each node offers to VMs, when smaller than the host's (capacity tests).
    memory_mib: int | None = None
    # etcd runs inside the nodes: node1's member first, the others join as the cluster grows.
    embedded: bool = False
    # Each node's data plane in a network namespace of its own, on a fabric of veths (see
    # heron.network.fabric): two nodes on one machine are as apart as two hosts.
    network: bool = False
    # etcd speaks TLS with client certificates of the cluster CA, which the devcluster makes
    # (in ca/) and hands to the etcd members and nodes it starts. False: plain etcd (a cluster
    # of an older release, or an external etcd).
    etcd_tls: bool = False

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    def authority(self) -> Authority:
        """The devcluster's CA, made on first use (the key 0600 beside it)."""
        cert, key = self.ca_dir / "ca-cert.pem", self.ca_dir / "ca-key.pem"
        if not key.exists():
            made = make_authority(f"dev-{self.netns_prefix}", time.time())
            self.ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            cert.write_text(made.certificate)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(made.key)
        return Authority(cert.read_text(), key.read_text())

    def credentials(self, directory: Path, name: str) -> EtcdTls:
        """A certificate of the devcluster's CA for `name` (on loopback) in `directory`,
        made once: for the etcd members it starts and for clients (tests, benchmarks)."""
        store = NodeCredentials(directory)
        if store.certificate() is None:
            authority = self.authority()
            names = node_names(name, "127.0.0.1")
            store.write(issue(authority, names, time.time()), authority.certificate)
        return EtcdTls.of(store)

    def etcd_tls_files(self) -> EtcdTls | None:
        """What a client of this devcluster's etcd shows (None: plain etcd)."""
        return self.credentials(self.root / "client-tls", "client") if self.etcd_tls else None

    def configdb(self) -> ConfigDB:
        """A ConfigDB client of this devcluster's etcd (TLS or not, as it runs)."""
        return ConfigDB(self.endpoints, self.etcd_tls_files())

    @property
    def netns_prefix(self) -> str:
        """Short, and distinct for every devcluster directory on the machine."""
        return "hn" + hashlib.blake2s(self.dir.encode(), digest_size=3).hexdigest()

    def fabric_nodes(self) -> list[fabric.FabricNode]:
        return fabric.nodes_of(self.netns_prefix, [n.name for n in self.nodes])

    @property
    def root(self) -> Path:
        return Path(self.dir)

    @property
    def password_file(self) -> Path:
        return self.root / "admin-password"

    @property
    def ca_file(self) -> Path:
        """The cluster CA's certificate (PEM): clients of this devcluster verify with it."""
        for node in self.nodes:
            if node.ca_file.exists():
                return node.ca_file
        return self.nodes[0].ca_file

    def tls(self) -> ssl.SSLContext:
        """A client context that trusts this cluster's CA (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def endpoints(self) -> list[str]:
        prefix = "https://" if self.etcd_tls else ""
        if self.embedded:
            assert self.nodes[0].etcd_ports is not None
            return [f"{prefix}127.0.0.1:{self.nodes[0].etcd_ports[0]}"]
        return self.external_etcd or [f"{prefix}127.0.0.1:{e.client_port}" for e in self.etcd]

    def members(self) -> list[EtcdMember]:
        if self.embedded:
            return [
                EtcdMember(
                    node.name,
                    Path(node.state_dir) / "etcd",
                    node.etcd_ports[0],
                    node.etcd_ports[1],
                    tls=EtcdTls.in_state_dir(Path(node.state_dir)) if self.etcd_tls else None,
                )
                for node in self.nodes
                if node.etcd_ports
            ]
        scheme = "https" if self.etcd_tls else "http"
        cluster = {e.name: f"{scheme}://127.0.0.1:{e.peer_port}" for e in self.etcd}
        return [
            EtcdMember(
                name=e.name,
                data_dir=Path(e.data_dir),
                client_port=e.client_port,
                peer_port=e.peer_port,
                initial_cluster=cluster,
                tls=self.credentials(Path(e.data_dir + "-tls"), e.name) if self.etcd_tls else None,
            )
            for e in self.etcd
        ]

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> "DevCluster":
        try:
            data = json.loads((directory / STATE_FILE).read_text())
        except FileNotFoundError as exc:
            raise DevClusterError(f"no devcluster in {directory}") from exc
        return cls(
            dir=data["dir"],
            nodes=[NodeSpec(**n) for n in data["nodes"]],
            etcd=[EtcdSpec(**e) for e in data["etcd"]],
            external_etcd=data.get("external_etcd", []),
            memory_mib=data.get("memory_mib"),
            embedded=data.get("embedded", False),
            network=data.get("network", False),
            etcd_tls=data.get("etcd_tls", False),
        )

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise DevClusterError(f"no node {name} in this devcluster")

    # -- processes -----------------------------------------------------------------------

    def herond_command(self, node: NodeSpec) -> list[str]:
        return [
            sys.executable,
            "-m",
            _herond_module(node.source),
            "--name",
            node.name,
            "--state-dir",
            node.state_dir,
            "--address",
            "127.0.0.1",
            "--api-port",
            str(node.api_port),
            "--etcd",
            ",".join(self.endpoints),
            "--admin-password-file",
            str(self.password_file),
            *self._node_options(node),
        ]

    def _node_options(self, node: NodeSpec) -> list[str]:
        options = ["--memory-mib", str(self.memory_mib)] if self.memory_mib else []
        if self.etcd_tls:
            options.append("--etcd-tls")
            if node.join:
                options += node.join
            else:
                self.authority()
                options += [
                    "--ca-cert",
                    str(self.ca_dir / "ca-cert.pem"),
                    "--ca-key",
                    str(self.ca_dir / "ca-key.pem"),
                ]
        if self.network:
            for place in self.fabric_nodes():
                if place.name == node.name:
                    options += ["--data-netns", place.netns, "--underlay", place.underlay]
        if self.embedded and node.etcd_ports:
            client, peer = node.etcd_ports
            if node is self.nodes[0]:
                options += [
                    "--embedded-etcd",
                    "--etcd-client-port",
                    str(client),
                    "--etcd-peer-port",
                    str(peer),
                ]
            else:
                options += ["--etcd-member-ports", f"{client}:{peer}"]
        return options

    def add_node(self, timeout: float = 120.0, join: list[str] | None = None) -> NodeSpec:
        """Start one more node and let it join the running cluster; `join`: herond's
        --join options (a one-time token) instead of handing it the devcluster's CA."""
        ports = free_ports(3 if self.embedded else 1, span=DEVCLUSTER_PORTS)
        name = f"node{len(self.nodes) + 1}"
        node = NodeSpec(
            name,
            ports[0],
            str(self.root / "nodes" / name),
            ports[1:] if self.embedded else None,
            join=join,
        )
        self.nodes.append(node)
        self.save()
        if self.network:
            fabric.build(self.netns_prefix, self.fabric_nodes())
        self.start_node(name)
        self.wait_api(node, timeout)
        return node

    def herond_pid(self, node: NodeSpec) -> int | None:
        return read_pidfile(Path(node.state_dir) / "herond.pid", node.state_dir)

    def start_node(self, name: str) -> int:
        """Start a node's herond unless it runs; returns its pid."""
        node = self.node(name)
        pid = self.herond_pid(node)
        if pid is not None:
            return pid
        state = Path(node.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": node.source} if node.source else None
        return spawn_detached(
            self.herond_command(node), state / "herond.log", state / "herond.pid", env
        )

    def fence_pid(self, node: NodeSpec) -> int | None:
        return read_pidfile(Path(node.state_dir) / "fence.pid", node.state_dir)

    def stop_node(self, name: str) -> None:
        """Stop the node's agent and its fence watchdog (its VMs keep running)."""
        node = self.node(name)
        for pid in (self.herond_pid(node), self.fence_pid(node)):
            if pid is not None:
                terminate(pid, node.state_dir)

    def kill_node(self, name: str) -> None:
        """The whole node dies at once: agent, watchdog and every QEMU, by SIGKILL."""
        node = self.node(name)
        pids = [self.herond_pid(node), self.fence_pid(node), *self.qemu_pids(name).values()]
        for pid in pids:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def qemu_pids(self, name: str) -> dict[str, int]:
        """VM id -> pid of every QEMU the node started that still runs."""
        found = {}
        for pidfile in (Path(self.node(name).state_dir) / "vms").glob("*/qemu.pid"):
            vm_id = pidfile.parent.name
            pid = read_pidfile(pidfile, vm_id)
            if pid is not None:
                found[vm_id] = pid
        return found

    def wait_api(self, node: NodeSpec, timeout: float) -> None:
        def answers() -> bool:
            if node.tls and not node.ca_file.exists():
                return False
            try:
                verify = ssl.create_default_context(cafile=str(node.ca_file)) if node.tls else True
                reply = httpx.get(f"{node.url}/api/v1/openapi.json", timeout=1, verify=verify)
                return reply.status_code == 200
            except httpx.HTTPError:
                return False

        if not wait_until(answers, timeout, interval=0.1):
            log = Path(node.state_dir) / "herond.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise DevClusterError(f"node {node.name} did not answer in {timeout}s\n{tail}")

    def login(self) -> str:
        password = self.password_file.read_text().strip()
        reply = httpx.post(
            f"{self.nodes[0].url}/api/v1/auth/login",
            json={"username": "admin", "password": password},
            timeout=10,
            verify=self._verify(self.nodes[0]),
        )
        reply.raise_for_status()
        return str(reply.json()["token"])

    def wait_registered(self, token: str, timeout: float) -> None:
        want = {n.name for n in self.nodes}

        def registered() -> bool:
            reply = httpx.get(
                f"{self.nodes[0].url}/api/v1/nodes",
                timeout=5,
                headers={"authorization": f"Bearer {token}"},
                verify=self._verify(self.nodes[0]),
            )
            return reply.status_code == 200 and want <= {n["name"] for n in reply.json()}

        if not wait_until(registered, timeout, interval=0.1):
            raise DevClusterError("not every node registered in time")

    def _verify(self, node: NodeSpec) -> ssl.SSLContext | bool:
        return self.tls() if node.tls else True


def up(
    directory: Path,
    nodes: int,
    etcd_members: int | None = None,
    external_etcd: list[str] | None = None,
    timeout: float = 120.0,
    memory_mib: int | None = None,
    embedded: bool = False,
    source: str | None = None,
    network: bool = False,
    etcd_tls: bool | None = None,
) -> tuple[DevCluster, str]:
    """Start (or find running) a devcluster; returns it and an admin token. `etcd_tls`:
    etcd over TLS (default: yes, unless the nodes run an older release or the etcd is
    external)."""
    directory = directory.resolve()
    if (directory / STATE_FILE).exists():
        cluster = DevCluster.load(directory)
        if len(cluster.nodes) != nodes:
            raise DevClusterError(
                f"{directory} holds a devcluster of {len(cluster.nodes)} "
                f"nodes; run `down` first or use another --dir"
            )
    else:
        members = 0 if external_etcd or embedded else (etcd_members or (1 if nodes == 1 else 3))
        per_node = 3 if embedded else 1
        ports = free_ports(2 * members + per_node * nodes, span=DEVCLUSTER_PORTS)
        base = 2 * members
        cluster = DevCluster(
            dir=str(directory),
            etcd=[
                EtcdSpec(
                    f"etcd{i + 1}",
                    ports[2 * i],
                    ports[2 * i + 1],
                    str(directory / "etcd" / f"etcd{i + 1}"),
                )
                for i in range(members)
            ],
            nodes=[
                NodeSpec(
                    f"node{i + 1}",
                    ports[base + per_node * i],
                    str(directory / "nodes" / f"node{i + 1}"),
                    ports[base + per_node * i + 1 : base + per_node * (i + 1)] or None,
                    source,
                )
                for i in range(nodes)
            ],
            external_etcd=external_etcd or [],
            memory_mib=memory_mib,
            embedded=embedded,
            network=network,
            etcd_tls=(source is None and not external_etcd) if etcd_tls is None else etcd_tls,
        )
        cluster.save()
    if cluster.network:
        fabric.build(cluster.netns_prefix, cluster.fabric_nodes())
    if not cluster.embedded:  # embedded members are started by their nodes
        for member in cluster.members():
            member.start()
        for member in cluster.members():
            member.wait_healthy(timeout)
    for node in cluster.nodes:
        cluster.start_node(node.name)
    for node in cluster.nodes:
        cluster.wait_api(node, timeout)
    token = cluster.login()
    cluster.wait_registered(token, timeout)
    return cluster, token


@contextlib.contextmanager
def running(directory: Path, nodes: int, **options: Any) -> Iterator[tuple[DevCluster, str]]:
    """`up` for the length of a block, then `down` however it ends — also when `up` itself
    failed half-way (it records the cluster before it starts anything): no process, QEMU or
    namespace outlives the block. `options`: those of `up`."""
    try:
        yield up(directory, nodes, **options)
    finally:
        if (directory / STATE_FILE).exists():
            down(directory)


def down(directory: Path) -> None:
    """Stop every agent, every QEMU and heron-io they started, and the etcd members."""
    cluster = DevCluster.load(directory.resolve())
    for node in cluster.nodes:
        cluster.stop_node(node.name)
    for node in cluster.nodes:
        for vm_id, pid in cluster.qemu_pids(node.name).items():
            terminate(pid, vm_id, timeout=5)
        # iSCSI exports (agent/iscsi.py): tgtd first (it holds the LUN files open; it leaves
        # on SIGINT), then the storage daemons under them, before the heron-io they read.
        marker = f"{Path(node.state_dir) / 'iscsi'}/"
        for pid in find_running(marker):
            if "tgtd" in " ".join(cmdline(pid)):
                _interrupt(pid, marker)
        for pid in find_running(marker):
            terminate(pid, marker, timeout=10)
        # The ARDFS data path outlives agents too; it goes after the VMs that use it. Found by
        # command line, not pidfile: one whose pool folder is gone would be missed.
        marker = f"{Path(node.state_dir) / 'ardfs'}/"
        for pid in find_running(marker):
            terminate(pid, marker, timeout=30)
        # So do the DHCP servers and Open vSwitch daemons of the node's switches.
        marker = f"{Path(node.state_dir) / 'network'}/"
        for pid in find_running(marker):
            terminate(pid, marker, timeout=10)
    if cluster.network:
        fabric.remove(cluster.netns_prefix)
    for member in cluster.members():
        member.stop()


def _interrupt(pid: int, marker: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    wait_until(lambda: not alive(pid, marker), 10)


def _herond_module(source: str | None) -> str:
    """herond's module in the code a node runs: releases before issue 12 kept it in the agent
    package (the rolling upgrade test starts one)."""
    if source is not None and not (Path(source) / "heron" / "herond.py").exists():
        return "heron.agent.main"
    return "heron.herond"
