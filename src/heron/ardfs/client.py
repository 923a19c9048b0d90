"""Running heron-io from Python: configurations for a cluster of them, start, stop, NBD URIs.

What herond (and the tests and benchmarks) need to drive the data path: write an IoConfig,
start `heron-io --config`, wait until it serves, point QEMU at `nbd_uri`, SIGHUP after
changing volumes, SIGTERM to stop (it flushes every volume first).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heron.ardfs.config import DiskSpec, IoConfig, NodeSpec, VolumeSpec
from heron.ardfs.errors import ArdfsError
from heron.ardfs.io import READY
from heron.ardfs.peerauth import PeerKeyError, new_key, read_key, write_key


class IoError(ArdfsError):
    """heron-io did not start or stop as expected."""


def nbd_uri(socket_path: Path, volume: str) -> str:
    """The NBD URI of a volume as qemu-img, qemu-io, nbdinfo and fio understand it."""
    return f"nbd+unix:///{volume}?socket={socket_path}"


def qemu_blockdev(socket_path: Path, volume: str) -> dict[str, object]:
    """A QEMU -blockdev for the volume (driver nbd), to put under a raw format node."""
    return {
        "driver": "nbd",
        "server": {"type": "unix", "path": str(socket_path)},
        "export": volume,
    }


def local_cluster(
    base: Path,
    nodes: int,
    volumes: list[VolumeSpec],
    sites: list[str] | None = None,
    disks_per_node: int = 1,
    settings: dict[str, Any] | None = None,
    tls: Path | None = None,
) -> list[IoConfig]:
    """Configurations of `nodes` heron-io processes on loopback, each with its own dirs, and
    one peer key for them all (`base/peer.key`, made unless a valid one is there already).
    `tls`: a directory with one per node (n1, n2, ...) holding node-key.pem, node-cert.pem
    and ca-cert.pem (a node's credentials, as herond keeps them): peers speak TLS."""
    key_file = base / "peer.key"
    try:
        read_key(key_file)
    except PeerKeyError:
        write_key(key_file, new_key())
    specs = []
    ports = _listen_ports(nodes)
    for i in range(nodes):
        name = f"n{i + 1}"
        disks = [
            DiskSpec(id=f"{name}d{j}", path=base / name / f"disk{j}") for j in range(disks_per_node)
        ]
        site = sites[i % len(sites)] if sites else "default"
        specs.append(NodeSpec(name=name, site=site, address=f"127.0.0.1:{ports[i]}", disks=disks))
    return [
        IoConfig(
            node=node.name,
            nbd_socket=base / node.name / "nbd.sock",
            state_dir=base / node.name / "state",
            nodes=specs,
            volumes=volumes,
            **({"peer_key_file": key_file} | _tls_files(tls, node.name) | (settings or {})),
        )
        for node in specs
    ]


def _tls_files(tls: Path | None, node: str) -> dict[str, Any]:
    if tls is None:
        return {}
    return {
        "peer_tls_key": tls / node / "node-key.pem",
        "peer_tls_cert": tls / node / "node-cert.pem",
        "peer_tls_ca": tls / node / "ca-cert.pem",
    }


@dataclass
class IoProcess:
    config: IoConfig
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.config.nbd_socket

    def uri(self, volume: str) -> str:
        return nbd_uri(self.config.nbd_socket, volume)

    def status(self) -> dict[str, Any]:
        """heron-io's status file: volumes (healthy/degraded, stale and rebuilt chunks), scrub."""
        try:
            return json.loads((self.config.state_dir / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def alive(self) -> bool:
        return self.process.poll() is None

    def update(self, config: IoConfig) -> None:
        """Write a new configuration and have heron-io apply it (volumes: add, drop, resize)."""
        config.save(self.config_path)
        self.config = config
        self.process.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed by the process itself."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise IoError(f"heron-io {self.config.node} did not stop in {timeout}s") from None
        return self.process.returncode


def start(config: IoConfig, directory: Path, timeout: float = 30) -> IoProcess:
    """Start heron-io with `config` (written under `directory`) and wait until it serves."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "io.json"
    log_path = directory / "io.log"
    config.save(config_path)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "heron.ardfs.io", "--config", str(config_path)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    io = IoProcess(config, config_path, log_path, process)
    deadline = time.monotonic() + timeout
    offset = log_path.stat().st_size if log_path.exists() else 0
    while True:
        if READY.encode() in log_path.read_bytes()[offset:]:
            return io
        if process.poll() is not None:
            raise IoError(f"heron-io {config.node} exited: {log_path.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            io.kill()
            raise IoError(f"heron-io {config.node} not ready after {timeout}s")
        time.sleep(0.05)


# Below the kernel's usual ephemeral range (32768-60999): the nodes started first connect to
# one another while the later ones start, and one of those outgoing connections could take a
# later node's port from the ephemeral range before it binds it.
_LOCAL_PEER_PORTS = (28000, 32768)


def _listen_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that are free now, outside the ephemeral range."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(*_LOCAL_PEER_PORTS)
        if port in chosen:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    return chosen


@contextlib.contextmanager
def io_cluster(
    base: Path,
    nodes: int,
    volumes: list[VolumeSpec],
    sites: list[str] | None = None,
    disks_per_node: int = 1,
    settings: dict[str, Any] | None = None,
    tls: Path | None = None,
) -> Iterator[list[IoProcess]]:
    """`nodes` heron-io processes on loopback, stopped (or killed) however the block ends."""
    configs = local_cluster(base, nodes, volumes, sites, disks_per_node, settings, tls)
    started: list[IoProcess] = []
    try:
        for config in configs:
            started.append(start(config, base / config.node))
        yield started
    finally:
        for io in started:
            if io.alive():
                try:
                    io.stop()
                except IoError:
                    io.kill()
