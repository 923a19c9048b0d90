"""Live migration between the nodes of a real devcluster. The guest checks itself: it counts on
without a reboot, and its memory checker finds every word it wrote (`support.guest_intact`)."""

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Api, guest_intact, qemu_homes, serial_lines, wait_for

from heron.devcluster import DevCluster
from heron.testguest import build
from heron.testguest.console import GuestReport
from heron.testguest.console import read as read_console

BOOT = 120
# The loop test's guest: 48 MiB checked, 256 hot pages rewritten 100 times a second, and a
# sweep of 1024 pages a second: busy enough that a migration which loses writes shows it.
BUSY_MEMCHECK = "48:256:1024"
MOVES = 3  # per storage kind in CI (each setting once, both ways); bench/migration_soak: hundreds
# Alternated from one move to the next: capped (many dirty-sync rounds) or not, with and
# without auto-converge.
SETTINGS = (
    {"max_bandwidth_mib": 32},
    {"auto_converge": False},
    {"max_bandwidth_mib": 32, "auto_converge": False},
)


def console(cluster: DevCluster, vm_id: str, node: str) -> Path:
    return Path(cluster.node(node).state_dir) / "vms" / vm_id / "console.log"


def ticks(log: Path) -> list[int]:
    return [
        int(m.group(1))
        for line in serial_lines(log, r"heron-tick \d+")
        if (m := re.search(r"heron-tick (\d+)", line))
    ]


def reverted_part(text: str, last_before: int) -> str:
    """What the guest printed since a revert to a memory snapshot, from `text` (the console
    from just before the revert was asked): the old QEMU may print a tick or two before the
    revert stops it, continuing its count past `last_before`; the reverted guest counts on
    from the snapshot's instant, below it."""
    for found in re.finditer(r"heron-tick (\d+)", text):
        if int(found.group(1)) <= last_before:
            return text[text.rfind("\n", 0, found.start()) + 1 :]
    return ""


def running_guest(
    cluster: DevCluster, api: Api, name: str, image: str, node: str, pool: str = "shared"
) -> str:
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": name,
            "memory_mib": 128,
            "node": node,
            "start": True,
            "disks": [{"pool": pool, "source": image}],
        },
    )
    api.wait_task(reply["task"])
    vm_id = reply["vm"]
    wait_for(lambda: len(ticks(console(cluster, vm_id, node))) >= 2, BOOT, "the guest to tick")
    return vm_id


def test_live_migration_keeps_the_guest_running(cluster3, api, image) -> None:
    cluster, _ = cluster3
    vm_id = running_guest(cluster, api, "mover", image, "node1")
    # An edit made while it runs waits for its next start: the guest moves as it is.
    assert api.ok("PATCH", f"/vms/{vm_id}", json={"vcpus": 2})["pending"] == ["vcpus"]
    seen = ticks(console(cluster, vm_id, "node1"))[-1]
    reply = api.ok(
        "POST", f"/vms/{vm_id}/actions/migrate", json={"target": "node2", "max_downtime_ms": 300}
    )
    task = api.wait_task(reply["task"])
    assert task["result"]["node"] == "node2" and task["result"]["downtime_ms"] is not None
    # Both nodes run this release: the guest crossed over TLS (test_migration_tls.py shows
    # what that keeps off the wire).
    assert any("go over TLS" in line for line in task["log"]), task["log"]
    vm = api.vm(vm_id)
    assert vm["node"] == "node2" and vm["state"] == "running"
    assert vm["pending"] == ["vcpus"] and vm["status"]["hardware"]["vcpus"] == 1
    assert qemu_homes(vm_id) == {cluster.node("node2").state_dir}
    # The counter goes on past where it was (moved, not rebooted), memory intact.
    guest_intact(console(cluster, vm_id, "node2"), last_tick=seen)

    # Without a target, placement picks a node other than the current one.
    task = api.wait_task(api.ok("POST", f"/vms/{vm_id}/actions/migrate")["task"])
    assert task["result"]["node"] != "node2" and api.vm(vm_id)["node"] == task["result"]["node"]
    # The moment a migration has ended, the next one may begin.
    again = api.post(f"/vms/{vm_id}/actions/migrate", json={"target": "node2"})
    assert again.status_code == 202, again.text
    assert api.wait_task(again.json()["task"])["result"]["node"] == "node2"
    guest_intact(console(cluster, vm_id, "node2"))


def test_local_disks_are_copied_while_the_guest_runs(cluster3, api, image) -> None:
    cluster, _ = cluster3
    vm_id = running_guest(cluster, api, "rooted", image, "node3", pool="local")
    volume_id = api.vm(vm_id)["spec"]["disks"][0]["volume"]
    source_file = Path(cluster.node("node3").state_dir) / "pools/local/rooted-disk0.qcow2"
    target_file = Path(cluster.node("node1").state_dir) / "pools/local/rooted-disk0.qcow2"
    assert source_file.exists() and not target_file.exists()
    seen = ticks(console(cluster, vm_id, "node3"))[-1]

    task = api.wait_task(
        api.ok("POST", f"/vms/{vm_id}/actions/migrate", json={"target": "node1"})["task"]
    )
    assert task["result"]["disks_copied"] == 1
    assert any("go over TLS" in line for line in task["log"]), task["log"]
    assert api.vm(vm_id)["node"] == "node1" and api.vm(vm_id)["state"] == "running"
    assert api.ok("GET", f"/pools/local/volumes/{volume_id}")["node"] == "node1"
    assert target_file.exists() and not source_file.exists()
    log = console(cluster, vm_id, "node1")
    guest_intact(log, last_tick=seen)

    # The copy is a whole disk: the guest boots from it on its new node.
    api.wait_task(api.ok("POST", f"/vms/{vm_id}/actions/reboot")["task"])
    wait_for(
        lambda: serial_lines(log, f"HERON-GUEST-READY uuid={vm_id}"),
        BOOT,
        "a boot from the copied disk",
    )


def test_refusals_leave_the_vm_where_it_is(cluster3, api, image) -> None:
    cluster, _ = cluster3
    vm_id = running_guest(cluster, api, "stay", image, "node2")
    assert api.post(f"/vms/{vm_id}/actions/migrate", json={"target": "node2"}).status_code == 422
    assert api.post(f"/vms/{vm_id}/actions/migrate", json={"target": "nope"}).status_code == 422
    api.wait_task(api.ok("POST", f"/vms/{vm_id}/actions/stop")["task"])
    assert api.post(f"/vms/{vm_id}/actions/migrate", json={"target": "node1"}).status_code == 409
    assert api.vm(vm_id)["node"] == "node2"


def test_a_cancelled_migration_leaves_the_vm_running_where_it_was(cluster3, api, image) -> None:
    cluster, _ = cluster3
    vm_id = running_guest(cluster, api, "halted", image, "node1")
    # A 1 MiB/s cap keeps the copy going long enough to cancel it half way.
    reply = api.ok(
        "POST", f"/vms/{vm_id}/actions/migrate", json={"target": "node3", "max_bandwidth_mib": 1}
    )
    wait_for(
        lambda: api.ok("GET", f"/tasks/{reply['task']}")["progress"] > 0.05,
        60,
        "the copy to be under way",
    )
    api.ok("POST", f"/tasks/{reply['task']}/cancel")
    task = wait_for(
        lambda: (
            (t := api.ok("GET", f"/tasks/{reply['task']}"))["state"]
            in ("cancelled", "failed", "succeeded")
            and t
        ),
        60,
        "the migration to stop",
    )
    assert task["state"] == "cancelled"
    vm = api.vm(vm_id)
    assert vm["node"] == "node1" and vm["state"] == "running"
    assert qemu_homes(vm_id) == {cluster.node("node1").state_dir}
    log = console(cluster, vm_id, "node1")
    seen = ticks(log)[-1]
    wait_for(lambda: ticks(log)[-1] > seen, 30, "the guest to keep counting")
    guest_intact(log, booted_here=True)
    seen = ticks(log)[-1]
    again = api.post(f"/vms/{vm_id}/actions/migrate", json={"target": "node3"})
    assert again.status_code == 202, again.text  # the record of the cancelled one is gone
    assert api.wait_task(again.json()["task"])["result"]["node"] == "node3"
    guest_intact(console(cluster, vm_id, "node3"), last_tick=seen)


def test_a_migration_survives_a_crash_of_the_source_agent(cluster3, api, image) -> None:
    cluster, _ = cluster3
    vm_id = running_guest(cluster, api, "orphaned", image, "node2")
    seen = ticks(console(cluster, vm_id, "node2"))[-1]
    # A bandwidth cap keeps the memory transfer going while the source's agent dies.
    reply = api.ok(
        "POST", f"/vms/{vm_id}/actions/migrate", json={"target": "node3", "max_bandwidth_mib": 4}
    )
    wait_for(
        lambda: api.ok("GET", f"/tasks/{reply['task']}")["progress"] > 0.05,
        60,
        "the memory transfer to be under way",
    )
    source = cluster.node("node2")
    pid = cluster.herond_pid(source)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: cluster.herond_pid(source) is None, 10, "the agent to die")
    # QEMU migrates on without the agent; the restarted agent picks the task up again.
    cluster.start_node("node2")
    task = api.wait_task(reply["task"], timeout=120)
    assert task["state"] == "succeeded", task
    assert any("resumed" in line for line in task["log"]), task["log"]
    vm = api.vm(vm_id)
    assert vm["node"] == "node3" and vm["state"] == "running"
    assert qemu_homes(vm_id) == {cluster.node("node3").state_dir}
    guest_intact(console(cluster, vm_id, "node3"), last_tick=seen)
    assert api.get(f"/vms/{vm_id}").json()["status"]["node"] == "node3"


def test_a_migrated_in_guest_whose_next_move_fails_stays_where_it_is(cluster3, api, image) -> None:
    """A QEMU that was migrated in reports that incoming migration as "completed" until it
    sends one of its own: a failure before its own migration starts must not be taken for
    the end of one (which would hand the VM to a target that holds nothing). The target
    that left never closes the failed move: the VM moves on all the same, and the target,
    back, acts on nothing of it."""
    cluster, _ = cluster3
    vm_id = running_guest(cluster, api, "twice", image, "node1")
    api.wait_task(api.ok("POST", f"/vms/{vm_id}/actions/migrate", json={"target": "node2"})["task"])
    seen = wait_for(lambda: ticks(console(cluster, vm_id, "node2")), 30, "ticks on node2")[-1]
    # node3's agent hangs: it never prepares, and the source gives up when its lease is gone.
    target = cluster.herond_pid(cluster.node("node3"))
    assert target is not None
    os.kill(target, signal.SIGSTOP)
    try:
        reply = api.ok("POST", f"/vms/{vm_id}/actions/migrate", json={"target": "node3"})
        task = api.task_end(reply["task"], timeout=180)
        assert task["state"] == "failed" and "no answer from node node3" in task["error"], task
        assert any("closed the migration record" in line for line in task["log"]), task["log"]
        vm = api.vm(vm_id)
        assert vm["node"] == "node2" and vm["state"] == "running", vm
        log = console(cluster, vm_id, "node2")
        wait_for(lambda: ticks(log)[-1] > seen, 30, "the guest to count on where it was")
        guest_intact(log)
        seen = ticks(log)[-1]
        # node3 still away: the VM moves to the third node all the same.
        again = api.post(f"/vms/{vm_id}/actions/migrate", json={"target": "node1"})
        assert again.status_code == 202, again.text
        assert api.wait_task(again.json()["task"])["result"]["node"] == "node1"
    finally:
        os.kill(target, signal.SIGCONT)
    wait_for(
        lambda: "node3" in {n["name"] for n in api.ok("GET", "/nodes")}, 30, "node3 to be back"
    )
    # Back, node3 runs the receive task of the closed move: it finds nothing of its own.
    receive = [
        t for t in api.ok("GET", "/tasks", params={"limit": 1000})
        if t["kind"] == "vm.receive" and t["target"] == vm_id and t["node"] == "node3"
    ]  # fmt: skip
    assert len(receive) == 1, receive
    ended = api.task_end(receive[0]["id"], timeout=30)
    assert ended["result"] == {"skipped": "no migration to this node"}, ended
    vm = api.vm(vm_id)
    assert vm["node"] == "node1" and vm["state"] == "running", vm
    assert qemu_homes(vm_id) == {cluster.node("node1").state_dir}
    guest_intact(console(cluster, vm_id, "node1"), last_tick=seen)
    closed = [
        e for e in api.ok("GET", "/events", params={"limit": 1000})
        if e.get("method") == "MIGRATION" and e.get("target") == vm_id
    ]  # fmt: skip
    assert [(e["node"], e["result"]) for e in closed] == [("node2", "closed")], closed
    assert "node node3 left the cluster before closing it" in closed[0]["reason"]
    seen = ticks(console(cluster, vm_id, "node1"))[-1]

    # Now node3 has its incoming QEMU and its receive task is waiting for the verdict when
    # its agent hangs; the move is cancelled and closed without it, and the VM moves on.
    slow = api.ok(
        "POST",
        f"/vms/{vm_id}/actions/migrate",
        json={"target": "node3", "max_bandwidth_mib": 1, "auto_converge": False},
    )
    wait_for(
        lambda: (api.vm(vm_id).get("migration") or {}).get("state") == "running",
        60,
        "the memory transfer to node3",
    )
    os.kill(target, signal.SIGSTOP)
    try:
        api.ok("POST", f"/tasks/{slow['task']}/cancel")
        task = api.task_end(slow["task"], timeout=60)
        assert task["state"] == "cancelled", task
        assert any("closed the migration record" in line for line in task["log"]), task["log"]
        assert api.vm(vm_id)["migration"] is None
        again = api.post(f"/vms/{vm_id}/actions/migrate", json={"target": "node2"})
        assert again.status_code == 202, again.text
        assert api.wait_task(again.json()["task"])["result"]["node"] == "node2"
    finally:
        os.kill(target, signal.SIGCONT)
    # Back, node3's receive task finds the record gone: it drops its side, runs nothing.
    receive = [
        t for t in api.ok("GET", "/tasks", params={"limit": 1000})
        if t["kind"] == "vm.receive" and t["target"] == vm_id and t["node"] == "node3"
        and t["id"] != ended["id"]
    ]  # fmt: skip
    assert len(receive) == 1, receive
    dropped = api.task_end(receive[0]["id"], timeout=60)
    # It says so; or, on a loaded machine, it gave up reading the ConfigDB first: either way
    # it fails and starts nothing.
    assert dropped["state"] == "failed", dropped
    assert any(
        why in dropped["error"] for why in ("closed without this node", "Deadline Exceeded")
    ), dropped
    vm = api.vm(vm_id)
    assert vm["node"] == "node2" and vm["state"] == "running", vm
    assert qemu_homes(vm_id) == {cluster.node("node2").state_dir}
    guest_intact(console(cluster, vm_id, "node2"), last_tick=seen)


def test_a_target_that_cannot_prepare_leaves_the_vm_where_it_was(cluster3, api, image) -> None:
    """The target fails to make the disk copy: the move fails at once, the guest goes on on
    its node, and the VM can be moved again as soon as the target can take it."""
    cluster, _ = cluster3
    vm_id = running_guest(cluster, api, "unmade", image, "node1", pool="local")
    local = Path(cluster.node("node2").state_dir) / "pools" / "local"
    aside = local.with_name("local.aside")
    if local.exists():
        local.rename(aside)
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text("not a directory")  # node2 cannot create the empty volume here
    try:
        reply = api.ok("POST", f"/vms/{vm_id}/actions/migrate", json={"target": "node2"})
        task = api.task_end(reply["task"])
    finally:
        local.unlink()
        if aside.exists():
            aside.rename(local)
    assert task["state"] == "failed", task
    assert api.vm(vm_id)["node"] == "node1" and api.vm(vm_id)["state"] == "running"
    guest_intact(console(cluster, vm_id, "node1"), booted_here=True)
    seen = ticks(console(cluster, vm_id, "node1"))[-1]
    again = api.post(f"/vms/{vm_id}/actions/migrate", json={"target": "node2"})
    assert again.status_code == 202, again.text
    assert api.wait_task(again.json()["task"])["result"]["node"] == "node2"
    guest_intact(console(cluster, vm_id, "node2"), last_tick=seen)


@pytest.fixture(scope="module")
def busy_image(cluster3, api: Api, image: str, testguest: Path) -> str:
    """The self-checking guest with a busier memory checker, in the shared pool."""
    variant = build.variant(testguest.parent, BUSY_MEMCHECK)
    reply = api.ok(
        "POST", "/pools/shared/volumes/import", json={"name": "busyguest", "path": str(variant)}
    )
    api.wait_task(reply["task"])
    return "shared/busyguest"


@pytest.fixture(scope="module")
def ardfs_pool(cluster3, api: Api) -> str:
    """An RF2 ardfs pool over a disk directory on every node."""
    cluster, _ = cluster3
    api.ok("POST", "/pools", json={"name": "moving", "type": "ardfs", "protection": "rf2"})
    for node in cluster.nodes:
        path = f"{node.state_dir}/moving-disk0"
        api.ok("POST", "/pools/moving/disks", json={"node": node.name, "path": path})
    wait_for(
        lambda: sum(bool(m["address"]) for m in api.ok("GET", "/pools/moving/members")) == 3,
        60,
        "heron-io on every node",
    )
    return "moving"


@pytest.fixture
def noisy_neighbour() -> Iterator[None]:
    """A process that keeps one core busy, as another VM would."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


@pytest.mark.parametrize("storage", ["shared", "local", "ardfs"])
def test_back_and_forth_the_guest_stays_whole(
    cluster3, api, busy_image, ardfs_pool, noisy_neighbour, storage
) -> None:
    """A bounded soak: every move with another setting, each one checked from inside. On
    ARDFS the guest also takes a memory snapshot before the first move and is reverted to
    it after the last, on another node than the one that saved it."""
    cluster, _ = cluster3
    pool = {"shared": "shared", "local": "local", "ardfs": ardfs_pool}[storage]
    nodes = ["node1", "node3"]
    vm_id = running_guest(cluster, api, f"soak-{storage}", busy_image, nodes[0], pool=pool)
    guest_intact(console(cluster, vm_id, nodes[0]), booted_here=True)
    if storage == "ardfs":  # no qcow2 disk: the memory goes into a volume of the pool
        log = console(cluster, vm_id, nodes[0])
        before_snapshot = ticks(log)[-1]
        reply = api.ok("POST", f"/vms/{vm_id}/snapshots", json={"name": "warm", "memory": True})
        api.wait_task(reply["task"], timeout=300)
        warm = api.ok("GET", f"/vms/{vm_id}/snapshots/warm")
        assert warm["state_pool"] == ardfs_pool and warm["vm_state_size"] > 0, warm
        after_snapshot = ticks(log)[-1]  # the snapshot's instant lies between the two
    for move in range(MOVES):
        source, target = nodes[move % 2], nodes[(move + 1) % 2]
        log = console(cluster, vm_id, source)
        seen = wait_for(lambda log=log: ticks(log), 30, f"a tick on {source}")[-1]
        settings = SETTINGS[move % len(SETTINGS)]
        reply = api.ok("POST", f"/vms/{vm_id}/actions/migrate", json={"target": target, **settings})
        task = api.wait_task(reply["task"], timeout=300)
        assert task["state"] == "succeeded" and task["result"]["node"] == target, task
        try:
            guest_intact(console(cluster, vm_id, target), last_tick=seen)
        except AssertionError as exc:
            raise AssertionError(f"move {move + 1} ({settings}): {exc}") from None
    if storage == "ardfs":
        # Reverted where it is now, its memory read from the volume node1 wrote: the guest is
        # back at the snapshot's instant, without a new boot, and its memory checker finds
        # every word as it was then.
        here = nodes[MOVES % 2]
        assert here != nodes[0] and api.vm(vm_id)["node"] == here
        log = console(cluster, vm_id, here)
        offset = len(log.read_bytes())
        last_before = ticks(log)[-1]
        done = api.wait_task(
            api.ok("POST", f"/vms/{vm_id}/snapshots/warm/revert")["task"], timeout=300
        )
        assert done["result"] == {"snapshot": warm["id"], "memory": True, "state": "running"}

        def checked_after() -> GuestReport | None:
            text = reverted_part(log.read_bytes()[offset:].decode(errors="replace"), last_before)
            report = read_console(text, booted_here=False)
            done = report.verifications >= 1 and report.ticks
            return report if report.problems or done else None

        report = wait_for(checked_after, 60, "a memory check and a tick after the revert")
        assert report.intact and report.ticks, report.problems[:10]
        assert before_snapshot + 1 <= report.ticks[0] <= after_snapshot + 1, report.ticks[:3]
    api.wait_task(api.ok("DELETE", f"/vms/{vm_id}?volumes=true")["task"])
