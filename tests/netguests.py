"""Real test guests on a devcluster with networking, shared by the network test modules:
the cluster (each node's data plane a namespace on a fabric of veths) with the guest image in a
shared pool, guests started with NICs, their leases as they report them, and commands in them.
"""

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Api, wait_for

from heron import devcluster
from heron.devcluster import DevCluster
from heron.testguest.net import CommandChannel, NicState, guest_addresses

BOOT = 180


def network_cluster(
    factory: pytest.TempPathFactory, testguest: Path, name: str, nodes: int = 3
) -> Iterator[tuple[DevCluster, Api]]:
    """For a module fixture: the cluster and an admin client, taken down afterwards."""
    with devcluster.running(factory.mktemp(name), nodes, network=True) as (cluster, token):
        api = Api(cluster.nodes[0].url, token, cluster.tls())
        shared = Path(cluster.dir) / "shared"
        shared.mkdir()
        api.ok("POST", "/pools", json={"name": "shared", "path": str(shared), "shared": True})
        reply = api.ok(
            "POST",
            "/pools/shared/volumes/import",
            json={"name": "testguest", "path": str(testguest), "format": "qcow2"},
        )
        api.wait_task(reply["task"])
        yield cluster, api


def vm_dir(cluster: DevCluster, vm: dict[str, Any]) -> Path:
    """The VM's runtime directory on the node it ran on when `vm` was read."""
    return Path(cluster.node(vm["node"]).state_dir) / "vms" / vm["id"]


def start_guest(
    cluster: DevCluster, api: Api, name: str, node: str, *nics: str | dict[str, Any]
) -> dict[str, Any]:
    """A running test guest on `node` with a NIC per network name (or NIC request)."""
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": name,
            "memory_mib": 128,
            "node": node,
            "start": True,
            "disks": [{"pool": "shared", "source": "shared/testguest"}],
            "nics": [{"network": n} if isinstance(n, str) else n for n in nics],
        },
    )
    api.wait_task(reply["task"])
    return api.vm(reply["vm"])


def leased(cluster: DevCluster, vm: dict[str, Any], nic: str = "eth0") -> NicState:
    """The guest's report of `nic` once it has an address (read from its console log)."""
    log = vm_dir(cluster, vm) / "console.log"

    def lease() -> NicState | None:
        if not log.exists():
            return None
        state = guest_addresses(log.read_text(errors="replace")).get(nic)
        return state if state and state.address else None

    return wait_for(lease, BOOT, f"{vm['name']} to get an address on {nic}")


def shell(cluster: DevCluster, vm: dict[str, Any]) -> CommandChannel:
    return CommandChannel(vm_dir(cluster, vm) / "serial.sock")


def ping(channel: CommandChannel, address: str, count: int = 3, source: str | None = None) -> bool:
    via = f"-I {source} " if source else ""
    return channel.run(f"ping -c {count} -W 2 {via}{address}", timeout=30).rc == 0


def in_netns(netns: str, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", *command],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
