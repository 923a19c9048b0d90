"""Fixtures with real parts: the test guest image, etcd members and devclusters."""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# Integration modules that keep no guests running (heron-io, etcd, the API of one node, the
# network backends on namespaces, one QEMU; a few boot the test guest once and stop it): they
# run in the second worker after the unit and browser tests, beside the modules whose clusters
# of guests keep the first worker busy, so that both end at about the same time.
BESIDE_THE_GUESTS = {
    "test_api_contract", "test_ardfs_device_classes", "test_ardfs_erasure", "test_ardfs_layers",
    "test_ardfs_move", "test_ardfs_nbd", "test_ardfs_peer_key", "test_ardfs_replication",
    "test_configdb", "test_configdb_contract", "test_election", "test_etcd_growth",
    "test_etcd_join", "test_etcd_tls", "test_iscsi_export", "test_monica", "test_monitor_vm",
    "test_network_bridge", "test_network_dhcp", "test_network_firewall_driver",
    "test_network_ovs", "test_network_tap",
    "test_network_vxlan", "test_migration_tls", "test_notify_smtp", "test_notify_snmp",
    "test_notify_webhook", "test_prometheus", "test_qemu_contract", "test_qemu_snapshot",
    "test_registration", "test_support_bundle", "test_tasks", "test_testguest_memcheck",
    "test_v2v_import", "test_v2v_scan", "test_v2v_vsphere",
}  # fmt: skip


def lane(nodeid: str) -> int:
    """0: the integration modules with clusters of guests; 1: the rest, in `rank` order."""
    path = Path(nodeid.split("::", 1)[0])
    return 0 if path.parent.name == "integration" and path.stem not in BESIDE_THE_GUESTS else 1


def rank(nodeid: str) -> int:
    """Within the second lane: unit tests first (quick to fail), then browser, integration."""
    return {"unit": 0, "e2e": 1}.get(Path(nodeid.split("::", 1)[0]).parent.name, 2)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """scripts/test runs two xdist workers, and this schedules the tests in two lanes (`lane`):
    the integration tests with clusters of guests stay in one worker, one module after another
    as they were written to run; the other worker runs the unit tests, the browser tests (which
    mostly wait on pages), then the other integration tests. Items are sent by their
    index: the contract test's operations share one node id, which xdist's scope schedulers
    would collapse into one test (and its `loadgroup` loses its groups with pytest 9.2:
    pytest-dev/pytest-xdist#1386)."""
    from xdist.scheduler import LoadScheduling

    class InLanes(LoadScheduling):
        def schedule(self) -> None:
            if self.collection is not None or not self._check_nodes_have_same_collection():
                return  # sent once, all of it; a different collection is xdist's to report
            self.collection = collection = next(iter(self.node2collection.values()))
            first = [i for i, nodeid in enumerate(collection) if lane(nodeid) == 0]
            rest = [i for i, nodeid in enumerate(collection) if lane(nodeid) == 1]
            rest.sort(key=lambda i: rank(collection[i]))  # stable: modules stay whole
            lanes = [first, rest] if len(self.nodes) > 1 else [first + rest]
            self.pending = []
            for node, items in zip(self.nodes, [*lanes, *[[]] * len(self.nodes)], strict=False):
                if items:
                    self.node2pending[node].extend(items)
                    node.send_runtest_some(items)
                node.shutdown()  # once its lane has run

    return InLanes(config, log)


_MODULE_SECONDS: dict[tuple[int, str], float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each module's time (setup, call and teardown of its tests), by lane: summed on the
    controller, printed at the end, so a run's log says which modules its lanes spend on."""
    module = report.nodeid.split("::", 1)[0]
    key = (lane(report.nodeid), module)
    _MODULE_SECONDS[key] = _MODULE_SECONDS.get(key, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _MODULE_SECONDS:
        return
    terminalreporter.section("time by lane and module")
    for number in (0, 1):
        modules = {m: t for (n, m), t in _MODULE_SECONDS.items() if n == number}
        if not modules:
            continue
        terminalreporter.write_line(f"lane {number}: {sum(modules.values()):.0f}s in all")
        for module, seconds in sorted(modules.items(), key=lambda x: -x[1])[:15]:
            terminalreporter.write_line(f"  {seconds:7.1f}s {module}")


@pytest.fixture(scope="module", autouse=True)
def _module_files(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """What a module's tests and fixtures wrote under the base temporary directory goes once
    the module has passed (its module fixtures, set up after this one, are down by then); a
    module with a failure keeps its files for a look. Kept all, a whole run's reach 18 GiB."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)


def _cluster(factory: pytest.TempPathFactory, nodes: int) -> Iterator[tuple[DevCluster, str]]:
    # Each node's data plane in a namespace of its own: a switch made by a test (schemathesis
    # makes them by the dozen) never touches this machine's own interfaces.
    with devcluster.running(factory.mktemp(f"cluster{nodes}"), nodes, network=True) as made:
        yield made


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


def _module_cluster(request: pytest.FixtureRequest) -> tuple[DevCluster, str]:
    """The module's devcluster: cluster3, or cluster1 in a module that sets `CLUSTER_NODES = 1`."""
    nodes = getattr(request.module, "CLUSTER_NODES", 3)
    found: tuple[DevCluster, str] = request.getfixturevalue(f"cluster{nodes}")
    return found


@pytest.fixture(scope="module")
def api(request: pytest.FixtureRequest) -> Api:
    """An admin client of the first node of the module's devcluster (see `_module_cluster`)."""
    cluster, token = _module_cluster(request)
    return Api(cluster.nodes[0].url, token, cluster.tls())


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest, api: Api, testguest: Path) -> str:
    """The test guest imported into a pool: on one node its local pool; on three a pool every
    node sees (a stand-in for an NFS mount)."""
    cluster, _ = _module_cluster(request)
    if len(cluster.nodes) == 1:
        pool = "local"
    else:
        pool = "shared"
        shared = Path(cluster.dir) / "shared"
        shared.mkdir()
        api.ok("POST", "/pools", json={"name": pool, "path": str(shared), "shared": True})
    name = "guest" if pool == "local" else "testguest"
    reply = api.ok(
        "POST",
        f"/pools/{pool}/volumes/import",
        json={"name": name, "path": str(testguest), "format": "qcow2"},
    )
    api.wait_task(reply["task"])
    return f"{pool}/{name}"
