"""Fixtures with real parts: the test guest image, etcd members and devclusters."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Api

from heron import devcluster
from heron.devcluster import DevCluster
from heron.testguest import build, debian

CACHE = Path(os.environ.get("HERON_CACHE_DIR", "/var/cache/heron"))


@pytest.fixture(scope="session")
def testguest() -> Path:
    """The test guest's disk image, built from Debian packages (cached across runs)."""
    return build.build(CACHE / "testguest")


@pytest.fixture(scope="session")
def debian_guest() -> debian.DebianGuest:
    """The Debian guest of the snapshot tests (systemd, qemu-guest-agent, PostgreSQL 15), built
    from Debian packages on first use (about a minute) and cached across runs."""
    return debian.build(CACHE / "debian")


def _cluster(factory: pytest.TempPathFactory, nodes: int) -> Iterator[tuple[DevCluster, str]]:
    directory = factory.mktemp(f"cluster{nodes}")
    # Each node's data plane in a namespace of its own: a switch made by a test (schemathesis
    # makes them by the dozen) never touches this machine's own interfaces.
    cluster, token = devcluster.up(directory, nodes, network=True)
    try:
        yield cluster, token
    finally:
        devcluster.down(directory)


@pytest.fixture(scope="module")
def cluster3(
    tmp_path_factory: pytest.TempPathFactory, testguest: Path
) -> Iterator[tuple[DevCluster, str]]:
    """A 3-node devcluster (a 3-member etcd), for the module's tests."""
    yield from _cluster(tmp_path_factory, 3)


@pytest.fixture(scope="module")
def cluster1(
    tmp_path_factory: pytest.TempPathFactory, testguest: Path
) -> Iterator[tuple[DevCluster, str]]:
    """A single-node devcluster."""
    yield from _cluster(tmp_path_factory, 1)


@pytest.fixture(scope="module")
def api(cluster3: tuple[DevCluster, str]) -> Api:
    """An admin client of the 3-node devcluster's first node."""
    cluster, token = cluster3
    return Api(cluster.nodes[0].url, token)


@pytest.fixture(scope="module")
def image(cluster3: tuple[DevCluster, str], api: Api, testguest: Path) -> str:
    """The test guest imported into a pool every node sees (a stand-in for an NFS mount)."""
    cluster, _ = cluster3
    shared = Path(cluster.dir) / "shared"
    shared.mkdir()
    api.ok("POST", "/pools", json={"name": "shared", "path": str(shared), "shared": True})
    reply = api.ok(
        "POST",
        "/pools/shared/volumes/import",
        json={"name": "testguest", "path": str(testguest), "format": "qcow2"},
    )
    api.wait_task(reply["task"])
    return "shared/testguest"
