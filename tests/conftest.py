"""Fixtures with real parts: the test guest image, etcd members and devclusters."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from heron import devcluster
from heron.testguest import build

CACHE = Path(os.environ.get("HERON_CACHE_DIR", "/var/cache/heron"))


@pytest.fixture(scope="session")
def testguest() -> Path:
    """The test guest's disk image, built from Debian packages (cached across runs)."""
    return build.build(CACHE / "testguest")


@pytest.fixture(scope="module")
def cluster3(
    tmp_path_factory: pytest.TempPathFactory, testguest: Path
) -> Iterator[tuple[devcluster.DevCluster, str]]:
    """A 3-node devcluster with a shared pool holding the test guest image."""
    directory = tmp_path_factory.mktemp("cluster3")
    cluster, token = devcluster.up(directory, 3)
    try:
        yield cluster, token
    finally:
        devcluster.down(directory)


@pytest.fixture(scope="module")
def cluster1(
    tmp_path_factory: pytest.TempPathFactory, testguest: Path
) -> Iterator[tuple[devcluster.DevCluster, str]]:
    """A single-node devcluster."""
    directory = tmp_path_factory.mktemp("cluster1")
    cluster, token = devcluster.up(directory, 1)
    try:
        yield cluster, token
    finally:
        devcluster.down(directory)
