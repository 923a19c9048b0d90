"""Launching etcd members: Debian's etcd-server, run as processes of their own.

A member is started detached from its launcher (herond or `heron devcluster`), so restarting
or killing the agent never takes the ConfigDB down with it; the launcher finds a running member
again through its pidfile.
"""

import json
import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from heron.configdb.client import EtcdTls
from heron.errors import ConfigDBError
from heron.util.proc import read_pidfile, spawn_detached, terminate, wait_until

HEARTBEAT_MS = 100
ELECTION_MS = 500


class EtcdError(ConfigDBError):
    pass


@dataclass
class EtcdMember:
    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    host: str = "127.0.0.1"
    # name -> peer URL of every voting member, this one included
    initial_cluster: dict[str, str] = field(default_factory=dict)
    cluster_state: str = "new"
    # TLS on the client and peer URLs, with a certificate asked of every client and peer and
    # checked against the cluster CA alone; None: plain (clusters from before issue 16).
    tls: EtcdTls | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        """What a ConfigDB is given: host:port, or the https:// URL of a TLS member."""
        return self.client_url if self.tls else f"{self.host}:{self.client_port}"

    @property
    def pidfile(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.pid"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def command(self) -> list[str]:
        binary = shutil.which("etcd") or "/usr/bin/etcd"
        cluster = self.initial_cluster or {self.name: self.peer_url}
        return [
            binary,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            ",".join(f"{n}={u}" for n, u in cluster.items()),
            "--initial-cluster-state",
            self.cluster_state,
            "--initial-cluster-token",
            "heron",
            # Clients ping every 2 s to notice a dead member; allow it.
            "--grpc-keepalive-min-time",
            "1s",
            # A new raft leader within about a second of losing one (defaults: 100 ms and
            # 1 s, which took 1.3 s and more here): meanwhile no lease can be renewed, and
            # a node's fence watchdog stops its HA VMs 2.5 s after the last renewal of both
            # its leases.
            "--heartbeat-interval",
            str(HEARTBEAT_MS),
            "--election-timeout",
            str(ELECTION_MS),
            # History is kept for an hour: enough for any watcher to resume after a reconnect,
            # bounded so the database does not grow without end.
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "1h",
            "--log-level",
            "warn",
            "--logger",
            "zap",
            *self._tls_options(),
        ]

    def _tls_options(self) -> list[str]:
        if self.tls is None:
            return []
        cert, key, ca = str(self.tls.cert_file), str(self.tls.key_file), str(self.tls.ca_file)
        return [
            "--cert-file", cert, "--key-file", key,
            "--trusted-ca-file", ca, "--client-cert-auth",
            "--peer-cert-file", cert, "--peer-key-file", key,
            "--peer-trusted-ca-file", ca, "--peer-client-cert-auth",
        ]  # fmt: skip

    def pid(self) -> int | None:
        return read_pidfile(self.pidfile, str(self.data_dir))

    def start(self) -> int:
        """Start the member unless it already runs; returns its pid."""
        pid = self.pid()
        if pid is not None:
            return pid
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        return spawn_detached(self.command(), self.log_path, self.pidfile)

    def healthy(self) -> bool:
        try:
            context = self.tls.ssl_context() if self.tls else None
            with urllib.request.urlopen(
                self.client_url + "/health", timeout=1, context=context
            ) as reply:
                return json.load(reply).get("health") == "true"
        except (OSError, ValueError):
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        if not wait_until(self.healthy, timeout, interval=0.1):
            tail = (
                self.log_path.read_text(errors="replace")[-2000:]
                if (self.log_path.exists())
                else ""
            )
            raise EtcdError(f"etcd member {self.name} not healthy after {timeout}s\n{tail}")

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            terminate(pid, str(self.data_dir))
