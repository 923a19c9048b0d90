"""Issue 15's consistency test through Heron: the Debian guest (qemu-ga, the PostgreSQL and
MySQL freeze hooks Heron ships) under a continuous insert load into PostgreSQL and into MariaDB
(InnoDB) at once; an application-consistent snapshot and a crash-consistent one; a clone of each
boots, and both its databases hold every row the loads had reported committed before the
snapshot began. From the application-consistent one, PostgreSQL's recovery replays only what
was written after the hook's checkpoint (a filesystem frozen under a running PostgreSQL always
opens as "not shut down": what the hook buys is a known, short redo), and MariaDB's read lock
was taken before the freeze and held until the thaw (the snapshot holds the hook's "locked"
line and not its "unlocked" one; the source's hook saw the locking session still asleep under
the lock at the thaw, then killed it, and the load went on). From the crash-consistent one,
both run their crash recovery, which must succeed. Also: quiesce required without a channel
fails cleanly, leaving nothing taken. The crash-consistent clone carries a cloud-init seed: its
hostname, instance-id and user are checked inside. Three 1 GiB TCG boots: the slowest snapshot
test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Api, serial_lines, wait_for

from heron.devcluster import DevCluster
from heron.testguest import build, debian
from heron.testguest.net import CommandChannel

pytestmark = pytest.mark.integration
CLUSTER_NODES = 1  # cluster1 for the `api` and `image` fixtures (tests/conftest.py)

BOOT = 600  # TCG on a shared machine: systemd, PostgreSQL, MariaDB, in one clone cloud-init
COMMAND = 120
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHeronCloudInitTestKey alice@heron"
# The user's own part is merged by cloud-init with Heron's: this guest has no locales and no
# OpenSSH (the locale module would fail, host keys would not be made).
SEED = {
    "users": [{"name": "alice", "ssh_keys": [KEY], "sudo": True}],
    "user_data": "#cloud-config\nlocale: false\nssh_genkeytypes: []\nssh_deletekeys: false\n",
}


@pytest.fixture(scope="module")
def cluster(cluster1: tuple[DevCluster, str]) -> DevCluster:
    return cluster1[0]


def vm_dir(cluster: DevCluster, vm_id: str) -> Path:
    return Path(cluster.nodes[0].state_dir) / "vms" / vm_id


def run(cluster: DevCluster, vm_id: str, command: str, timeout: float = COMMAND) -> str:
    with CommandChannel(vm_dir(cluster, vm_id) / "serial.sock") as channel:
        result = channel.run(command, timeout)
    assert result.rc == 0, f"{command}: rc={result.rc} {result.output}"
    return result.output


def booted(api: Api, cluster: DevCluster, vm_id: str) -> None:
    log = vm_dir(cluster, vm_id) / "console.log"
    wait_for(
        lambda: bool(serial_lines(log, build.READY_MARKER)), BOOT, f"{vm_id} to boot", interval=1
    )


@pytest.fixture(scope="module")
def source(api: Api, cluster: DevCluster, debian_guest: debian.DebianGuest) -> Iterator[str]:
    """The Debian guest running the insert load, its agent answering."""
    reply = api.ok(
        "POST",
        "/pools/local/volumes/import",
        json={"name": "debian", "path": str(debian_guest.image), "format": "qcow2"},
    )
    api.wait_task(reply["task"], timeout=300)
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": "db",
            "memory_mib": 1024,
            "start": True,
            "guest_agent": True,
            "disks": [{"volume": "local/debian"}],
        },
    )
    api.wait_task(reply["task"])
    vm = str(reply["vm"])
    booted(api, cluster, vm)
    wait_for(
        lambda: bool(((api.vm(vm)["status"] or {}).get("guest_agent") or {}).get("connected")),
        BOOT,
        "the guest agent to answer",
        interval=1,
    )
    for db in DATABASES:
        run(cluster, vm, f"heron-insert-load {db} start")
        wait_for(lambda db=db: last(cluster, vm, db) > 0, COMMAND, f"{db}'s load to commit a row")
    yield vm


DATABASES = ("postgresql", "mariadb")


def last(cluster: DevCluster, vm: str, db: str) -> int:
    return int(run(cluster, vm, f"heron-insert-load {db} last").strip() or 0)


def snapshot_under_load(
    api: Api, cluster: DevCluster, vm: str, name: str, quiesce: str
) -> dict[str, int]:
    """Take the snapshot while the loads run; the last row each committed before it began."""
    before = {db: last(cluster, vm, db) for db in DATABASES}
    taken = api.ok(
        "POST",
        f"/vms/{vm}/snapshots",
        json={"name": name, "quiesce": quiesce, "freeze_limit_s": 60},
    )
    task = api.wait_task(taken["task"], timeout=300)
    expected = "application" if quiesce == "required" else "crash"
    assert task["result"]["consistency"] == expected, task
    record = api.ok("GET", f"/vms/{vm}/snapshots/{name}")
    assert record["state"] == "ready" and record["consistency"] == expected
    if quiesce == "required":
        assert "frozen by the guest agent" in record["consistency_reason"]
        assert record["freeze_ms"] is not None and record["freeze_ms"] > 0
    else:
        assert record["consistency_reason"] == "quiesce was off" and record["freeze_ms"] is None
    # The loads went on through it (MariaDB's only once the hook's lock was released).
    for db in DATABASES:
        wait_for(lambda db=db: last(cluster, vm, db) > before[db], COMMAND, f"{db}'s load to go on")
    return before


def clone_and_boot(
    api: Api, cluster: DevCluster, vm: str, snapshot: str, name: str, **extra: object
) -> str:
    # A full copy: a snapshot inside a qcow2 image cannot back an overlay.
    body = {"name": name, "snapshot": snapshot, "start": True, **extra}
    reply = api.ok("POST", f"/vms/{vm}/clone", json=body)
    api.wait_task(reply["task"], timeout=600)
    clone = str(reply["vm"])
    booted(api, cluster, clone)
    return clone


def postgres_start(cluster: DevCluster, vm: str) -> list[str]:
    """The clone's PostgreSQL log since its last start, once it accepts connections."""
    wait_for(
        lambda: "ready to accept connections" in "".join(_since_start(cluster, vm)),
        COMMAND,
        "the clone's PostgreSQL to accept connections",
    )
    return _since_start(cluster, vm)


def _since_start(cluster: DevCluster, vm: str) -> list[str]:
    text = run(cluster, vm, "cat /var/log/postgresql/postgresql-15-main.log")
    return text.rsplit("starting PostgreSQL", 1)[-1].splitlines()


def mariadb_start(cluster: DevCluster, vm: str) -> list[str]:
    """The clone's MariaDB error log since its last start, once it accepts connections."""

    def since_start() -> list[str]:
        text = run(cluster, vm, "cat /var/log/mysql/error.log")
        return text.rsplit("Starting MariaDB", 1)[-1].splitlines()

    wait_for(
        lambda: "ready for connections" in "".join(since_start()),
        COMMAND,
        "the clone's MariaDB to accept connections",
    )
    return since_start()


def rows(cluster: DevCluster, vm: str, db: str) -> tuple[int, int]:
    count, top = map(int, run(cluster, vm, f"heron-insert-load {db} count").split())
    return count, top


def test_an_application_consistent_clone_holds_every_committed_row(
    api: Api, cluster: DevCluster, source: str
) -> None:
    before = snapshot_under_load(api, cluster, source, "app", "required")
    clone = clone_and_boot(api, cluster, source, "app", "db-app")
    started = postgres_start(cluster, clone)
    mariadb = mariadb_start(cluster, clone)
    found = {db: rows(cluster, clone, db) for db in DATABASES}
    # Freeze order is name order (10-postgresql, 90-mysql), each line synced before the
    # freeze: the snapshot ends with both freeze lines and neither thaw line.
    pg_hook, mysql_hook = run(cluster, clone, "tail -n 2 /var/lib/heron/fsfreeze.log").splitlines()
    print(f"before {before}; clone has (count, max) {found}; hooks: {pg_hook}, {mysql_hook}")
    print("clone's PostgreSQL:", [line.split("LOG:", 1)[-1] for line in started])
    print("clone's MariaDB:", [line.split("[Note]", 1)[-1] for line in mariadb if "InnoDB" in line])
    for db in DATABASES:
        count, top = found[db]
        assert count == top >= before[db], db
    assert pg_hook.startswith("heron-fsfreeze freeze checkpoint_lsn="), pg_hook
    redo_lsn = _lsn(pg_hook.split("redo_lsn=")[1].strip())
    redo = [line for line in started if "redo starts at" in line]
    for line in redo:
        assert _lsn(line.split("redo starts at ")[1].split()[0]) >= redo_lsn, line
    # MariaDB: locked before the freeze, in the session the source's thaw found still holding
    # the lock, and then killed.
    assert mysql_hook.startswith("heron-fsfreeze mysql freeze locked connection="), mysql_hook
    session = int(mysql_hook.split("connection=")[1].split()[0])
    thaw = f"heron-fsfreeze mysql thaw unlocked connection={session}: the lock was held until"
    assert thaw in run(cluster, source, "cat /var/lib/heron/fsfreeze.log")
    alive = f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {session}"
    assert run(cluster, source, f'mariadb -N -e "{alive}"').strip() == "0"
    assert not any("[ERROR]" in line for line in mariadb), mariadb
    api.ok("POST", f"/vms/{clone}/actions/stop")


def test_a_crash_consistent_clone_recovers_every_committed_row(
    api: Api, cluster: DevCluster, source: str
) -> None:
    """This clone also gets a cloud-init seed of its own (one boot fewer for the test of
    cloud-init in a real guest): its identity and its user are checked inside."""
    before = snapshot_under_load(api, cluster, source, "crash", "off")
    clone = clone_and_boot(api, cluster, source, "crash", "db-crash", cloud_init=SEED)
    started = postgres_start(cluster, clone)
    mariadb = mariadb_start(cluster, clone)
    found = {db: rows(cluster, clone, db) for db in DATABASES}
    print(f"before {before}; clone has (count, max) {found}")
    print("clone's PostgreSQL:", [line.split("LOG:", 1)[-1] for line in started])
    print("clone's MariaDB:", [line.split("[Note]", 1)[-1] for line in mariadb if "InnoDB" in line])
    for db in DATABASES:
        count, top = found[db]
        assert count == top >= before[db], db
    assert any("not properly shut down" in line or "interrupted" in line for line in started)
    # InnoDB found its redo log ahead of its checkpoint (the load ran), and recovered.
    assert any("crash recovery" in line for line in mariadb), mariadb
    assert not any("[ERROR]" in line for line in mariadb), mariadb
    # cloud-init: all its stages done in this boot, with the clone's own identity.
    status = run(cluster, clone, "cloud-init status --wait || cloud-init status --long", BOOT)
    assert "done" in status, status
    assert run(cluster, clone, "hostname").strip() == "db-crash"
    assert run(cluster, clone, "cat /var/lib/cloud/data/instance-id").strip() == clone
    assert run(cluster, clone, "id -un alice").strip() == "alice"
    assert KEY in run(cluster, clone, "cat /home/alice/.ssh/authorized_keys")
    assert "NOPASSWD:ALL" in run(cluster, clone, "cat /etc/sudoers.d/90-cloud-init-users")


def _lsn(text: str) -> int:
    high, low = text.rstrip(",").split("/")
    return (int(high, 16) << 32) | int(low, 16)


def test_nothing_to_quiesce_without_a_channel(api: Api) -> None:
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": "no-agent",
            "memory_mib": 64,
            "start": True,
            "guest_agent": False,
            "disks": [{"pool": "local", "size": 1 << 20}],
        },
    )
    api.wait_task(reply["task"])
    vm = reply["vm"]
    taken = api.ok("POST", f"/vms/{vm}/snapshots", json={"name": "x", "quiesce": "required"})
    task = api.task_end(taken["task"], timeout=120)
    assert task["state"] == "failed" and "no guest agent answered" in task["error"], task
    assert api.ok("GET", f"/vms/{vm}/snapshots/x")["state"] == "error"
    api.wait_task(api.ok("DELETE", f"/vms/{vm}/snapshots/x")["task"])
    assert api.ok("GET", f"/vms/{vm}/snapshots")["snapshots"] == []
    api.ok("DELETE", f"/vms/{vm}", params={"volumes": True})
