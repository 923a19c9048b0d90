"""An ardfs pool in a real devcluster: every node's agent runs heron-io, a VM (a linked clone
of a template: its volume reads the template's frozen layer under a layer of its own) boots
from a replicated volume, takes a memory snapshot, live-migrates (the volume changes owner at
the switch) and is reverted to the snapshot on its new node (the guest back where it was),
and when its node dies as a whole (agent, QEMU, heron-io) HA starts it on another node, which
claims the volume with a new epoch and boots from the surviving copies of both layers. Copies
on a node gone past the grace, a template's layer shared with its clone among them, are made
on the disks left."""

import contextlib
import json
import os
import re
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support import etcd_snapshot, guest_intact, serial_lines, wait_for

from heron.configdb import keys
from heron.devcluster import DevCluster
from heron.testguest.net import CommandChannel
from heron.util.proc import find_running

pytestmark = pytest.mark.integration

BOOT = 180


def console(cluster: DevCluster, vm_id: str, node: str) -> Path:
    return Path(cluster.node(node).state_dir) / "vms" / vm_id / "console.log"


def ticks(log: Path) -> list[int]:
    return [
        int(m.group(1))
        for line in serial_lines(log, r"heron-tick \d+")
        if (m := re.search(r"heron-tick (\d+)", line))
    ]


def guest_run(cluster: DevCluster, vm_id: str, node: str, command: str) -> str:
    """Run a shell command in the test guest through its serial command channel."""
    sock = Path(cluster.node(node).state_dir) / "vms" / vm_id / "serial.sock"
    with CommandChannel(sock) as channel:
        result = channel.run(command, timeout=60)
    assert result.rc == 0, result
    return result.output


def heron_io_pid(cluster: DevCluster, node: str, pool: str) -> int | None:
    pidfile = Path(cluster.node(node).state_dir) / "ardfs" / pool / "heron-io.pid"
    try:
        pid = int(pidfile.read_text())
    except FileNotFoundError:
        return None
    return pid if os.path.exists(f"/proc/{pid}") else None


def test_a_vm_on_ardfs_boots_and_survives_the_loss_of_its_node(cluster3, api, image) -> None:
    cluster, _ = cluster3
    api.ok("POST", "/pools", json={"name": "hci", "type": "ardfs", "protection": "rf2"})
    for node in cluster.nodes:
        disk = f"{node.state_dir}/ardfs-disk0"
        api.ok("POST", "/pools/hci/disks", json={"node": node.name, "path": disk})
    again = {"node": "node1", "path": f"{cluster.node('node1').state_dir}/ardfs-disk0"}
    refused = api.post("/pools/hci/disks", json=again)
    assert refused.status_code == 409  # that directory is already one of its disks

    def members_ready() -> bool:
        members = api.ok("GET", "/pools/hci/members")
        return len(members) == 3 and all(m["address"] and m["disks"] for m in members)

    wait_for(members_ready, 30, "every node to join the pool with its disk")
    wait_for(
        lambda: all(heron_io_pid(cluster, n.name, "hci") for n in cluster.nodes),
        30,
        "heron-io on every node",
    )
    # One peer key for the pool, in the ConfigDB and in a 0600 file on every node (heron-io
    # refuses any other mode); no API reply carries it.
    secret = etcd_snapshot(cluster)[keys.ardfs_secret("hci")][0].decode()
    assert len(bytes.fromhex(secret)) >= 32
    for node in cluster.nodes:
        key_file = Path(node.state_dir) / "ardfs" / "hci" / "peer.key"
        assert key_file.read_text().strip() == secret
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    for path in ("/pools", "/pools/hci", "/pools/hci/members", "/pools/hci/volumes", "/nodes"):
        assert secret not in api.get(path).text

    # Capacity: the three disks' space, halved by the two copies of every block.
    capacity = wait_for(
        lambda: api.ok("GET", "/pools/hci")["capacity"], 30, "the disks' space to be reported"
    )
    assert capacity["raw_total_bytes"] > 0
    assert capacity["total_bytes"] == capacity["raw_total_bytes"] // 2

    # qcow2 is refused, raw is the default: the volume is the disk.
    refused = api.post(
        "/vms",
        json={"name": "bad", "memory_mib": 64, "disks": [{"pool": "hci", "size": 2**20,
                                                          "format": "qcow2"}]},
    )  # fmt: skip
    assert refused.status_code == 422 and refused.json()["fields"][0]["field"] == (
        "body.disks.0.format"
    )
    # The VM is a linked clone of a template on ARDFS: its disk reads the template's frozen
    # layer and writes a layer of its own (no data copied), through everything below.
    reply = api.ok(
        "POST",
        "/vms",
        json={"name": "hci-tpl", "memory_mib": 128, "node": "node1", "ha": {"enabled": True},
              # hybrid: its boot disk on ARDFS, a data disk on another (shared) pool
              "disks": [{"pool": "hci", "source": image}, {"pool": "shared", "size": 2**20}]},
    )  # fmt: skip
    api.wait_task(reply["task"], timeout=180)
    template_id = reply["vm"]
    api.ok("PUT", "/vms/hci-tpl/template", json={"template": True})
    reply = api.ok(
        "POST", "/vms/hci-tpl/clone",
        json={"name": "hci-vm", "linked": True, "node": "node1", "start": True},
    )  # fmt: skip
    api.wait_task(reply["task"], timeout=180)
    vm_id = reply["vm"]
    first = console(cluster, vm_id, "node1")
    wait_for(lambda: serial_lines(first, "HERON-GUEST-READY"), BOOT, "the guest to boot on ARDFS")
    template_volume = api.vm(template_id)["spec"]["disks"][0]["volume"]
    volume_id = api.vm(vm_id)["spec"]["disks"][0]["volume"]
    volume = api.ok("GET", f"/pools/hci/volumes/{volume_id}")
    assert (volume["format"], volume["owner"], volume["epoch"]) == ("raw", "node1", 1)
    assert volume["origin"] == {"volume": template_volume, "snapshot": None, "linked": True}
    shared = [x for x in volume["layers"] if x["volume"] == template_volume]
    assert len(shared) == 1 and len(volume["layers"]) == 2  # the template's, and its own top
    # Two copies of each block, on two different nodes' disks.
    holders = [
        n.name
        for n in cluster.nodes
        if any(p.is_file() for p in Path(f"{n.state_dir}/ardfs-disk0").rglob("*"))
    ]
    assert len(holders) >= 2, holders
    # The copies crossed between the nodes' heron-io in TLS: every node runs this release,
    # so TLS is required (agent/ardfs.py), with the node certificates herond keeps.
    root = Path(cluster.node("node1").state_dir) / "ardfs" / "hci"
    wait_for(
        lambda: json.loads((root / "io.json").read_text())["peer_tls"] == "require",
        30,
        "heron-io to require TLS",
    )
    assert "over TLSv1.3" in (root / "heron-io.log").read_text()

    # Grown online: heron-io serves the larger volume, QEMU takes a new NBD connection to it
    # (an NBD client learns a size only when it connects) and the guest's disk grows.
    grown = volume["size"] + 64 * 2**20
    reply = api.ok("PATCH", f"/pools/hci/volumes/{volume_id}", json={"size": grown})
    assert api.wait_task(reply["task"])["result"] == {"volume": volume_id, "size": grown,
                                                      "online": True}  # fmt: skip
    assert api.ok("GET", f"/pools/hci/volumes/{volume_id}")["size"] == grown

    # A memory snapshot on node1: the memory goes into the data disk's qcow2 image on the
    # shared pool, the ARDFS disk gets a frozen layer of heron-io's.
    wait_for(lambda: len(ticks(first)) >= 2, BOOT, "the guest to tick")
    guest_run(cluster, vm_id, "node1", "echo before > /tmp/mark")
    before_snapshot = ticks(first)[-1]
    reply = api.ok("POST", f"/vms/{vm_id}/snapshots", json={"name": "warm", "memory": True})
    api.wait_task(reply["task"], timeout=300)
    warm = api.ok("GET", f"/vms/{vm_id}/snapshots/warm")
    assert warm["state"] == "ready" and warm["memory"], warm
    assert [(d["method"], d["vm_state"]) for d in warm["disks"]] == [
        ("native", False), ("qcow2", True)
    ]  # fmt: skip
    after_snapshot = ticks(first)[-1]  # the snapshot's instant lies between the two
    guest_run(cluster, vm_id, "node1", "echo after > /tmp/mark")

    # Live migration to node2: the volume changes owner while the guest is stopped at the
    # switch, and the guest counts on without a reboot.
    wait_for(lambda: ticks(first)[-1] > after_snapshot, BOOT, "the guest to tick on")
    seen = ticks(first)[-1]
    reply = api.ok("POST", f"/vms/{vm_id}/actions/migrate", json={"target": "node2"})
    task = api.wait_task(reply["task"], timeout=180)
    assert task["result"]["node"] == "node2", task
    guest_intact(console(cluster, vm_id, "node2"), last_tick=seen)
    volume = api.ok("GET", f"/pools/hci/volumes/{volume_id}")
    assert (volume["owner"], volume["epoch"], volume["standby"]) == ("node2", 2, None)

    # Reverted to the snapshot on node2, the guest is back exactly where it was on node1:
    # the same boot, its RAM saying "before", its counter going on from the snapshot.
    on_node2 = console(cluster, vm_id, "node2")
    offset = len(on_node2.read_bytes())
    last_before = ticks(on_node2)[-1]
    reply = api.ok("POST", f"/vms/{vm_id}/snapshots/warm/revert")
    done = api.wait_task(reply["task"], timeout=300)
    assert done["result"] == {"snapshot": warm["id"], "memory": True, "state": "running"}
    assert api.vm(vm_id)["node"] == "node2"
    assert guest_run(cluster, vm_id, "node2", "cat /tmp/mark").strip() == "before"

    def reverted_ticks() -> list[int] | None:
        text = on_node2.read_bytes()[offset:].decode(errors="replace")
        # Ticks the old QEMU printed before the revert stopped it continue its count past
        # `last_before`; the reverted guest counts on from the snapshot's instant, below it.
        found = [int(t) for t in re.findall(r"heron-tick (\d+)", text)]
        return [t for t in found if t <= last_before] or None

    after = wait_for(reverted_ticks, 60, "a tick after the revert")
    assert before_snapshot + 1 <= after[0] <= after_snapshot + 1, (before_snapshot, after)
    assert not serial_lines(on_node2, "HERON-GUEST-READY")  # booted once, on node1
    volume = api.ok("GET", f"/pools/hci/volumes/{volume_id}")
    assert (volume["owner"], volume["epoch"]) == ("node2", 2)

    # node2 dies as a whole: its agent, watchdog, QEMU and heron-io.
    io_pid = heron_io_pid(cluster, "node2", "hci")
    assert io_pid is not None
    cluster.kill_node("node2")
    os.kill(io_pid, signal.SIGKILL)

    def restarted() -> dict | None:
        vm = api.vm(vm_id)
        return vm if vm["node"] != "node2" and vm["state"] == "running" else None

    vm = wait_for(restarted, 90, "HA to restart the VM on another node")
    second = console(cluster, vm_id, vm["node"])
    wait_for(lambda: serial_lines(second, "HERON-GUEST-READY"), BOOT, "the guest to boot again")
    volume = api.ok("GET", f"/pools/hci/volumes/{volume_id}")
    assert (volume["owner"], volume["epoch"]) == (vm["node"], 3)  # read through both layers

    # Written while node2 is away, the copies there are stale: the volume is degraded and its
    # owner follows the rebuild as a task, which ends once node2 is back and caught up. (The
    # whole volume is written, so that blocks with a copy on node2 are among them whatever the
    # placement; the guest runs from memory by now.)
    socket_path = Path(cluster.node(vm["node"]).state_dir) / "ardfs/hci/nbd.sock"
    written = subprocess.run(
        ["qemu-io", "-f", "raw", "-c", f"write -P 0x5a 0 {volume['size']}",
         f"nbd+unix:///{volume_id}?socket={socket_path}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    # The guest lives on, node2 still away: it keeps counting.
    seen = ticks(second)[-1] if ticks(second) else -1
    wait_for(lambda: ticks(second) and ticks(second)[-1] > seen, 60, "the guest to tick on")

    def health() -> dict:
        return api.ok("GET", f"/pools/hci/volumes/{volume_id}")["health"] or {}

    degraded = wait_for(lambda: health().get("state") == "degraded" and health(), 30, "degraded")
    assert degraded["stale_chunks"] >= 1 and degraded["node"] == vm["node"]

    def rebuild_task() -> dict | None:
        tasks = [t for t in api.ok("GET", "/tasks") if t["kind"] == "volume.rebuild"]
        return tasks[0] if tasks and tasks[0]["target"] == volume_id else None

    first = wait_for(rebuild_task, 30, "a rebuild task")
    assert first["node"] == vm["node"] and first["state"] in ("queued", "running")
    # The VM moves on while still degraded: the old owner's heron-io keeps its stale view but
    # no longer rebuilds, so its task ends and the new owner follows the rebuild instead.
    other = next(n.name for n in cluster.nodes if n.name not in ("node2", vm["node"]))
    api.wait_task(api.ok("POST", f"/vms/{vm_id}/actions/migrate", json={"target": other})["task"])
    moved = api.wait_task(first["id"], timeout=30)
    assert moved["state"] == "succeeded" and moved["result"] == {"moved_to": other}, moved
    task = wait_for(lambda: (t := rebuild_task()) and t["node"] == other and t, 30, "a new one")
    cluster.start_node("node2")
    done = api.wait_task(task["id"], timeout=120)
    assert done["result"]["rebuilt_chunks"] >= 1, done
    wait_for(lambda: health().get("state") == "healthy", 30, "healthy again")

    def chunk_dirs(record: dict) -> list[Path]:
        """Where the nodes keep the chunks of a volume's own layers."""
        own = [x["id"] for x in record["layers"] if x["volume"] is None]
        return [Path(f"{n.state_dir}/ardfs-disk0/volumes/{layer}")
                for n in cluster.nodes for layer in own]  # fmt: skip

    # Deleted with the VM, the clone's chunks leave every node's disk; the template's stay
    # until it goes too (it cannot while the clone reads it).
    refused = api.delete("/vms/hci-tpl", params={"volumes": True})
    assert refused.status_code == 409, refused.text
    clone_dirs = chunk_dirs(api.ok("GET", f"/pools/hci/volumes/{volume_id}"))
    template_dirs = chunk_dirs(api.ok("GET", f"/pools/hci/volumes/{template_volume}"))
    assert any(d.exists() for d in clone_dirs) and any(d.exists() for d in template_dirs)
    api.wait_task(api.ok("DELETE", f"/vms/{vm_id}", params={"volumes": True})["task"])
    wait_for(lambda: not any(d.exists() for d in clone_dirs), 60, "the chunks to be removed")
    assert api.get(f"/pools/hci/volumes/{volume_id}").status_code == 404
    assert any(d.exists() for d in template_dirs)
    api.ok("PUT", "/vms/hci-tpl/template", json={"template": False})
    api.wait_task(api.ok("DELETE", "/vms/hci-tpl", params={"volumes": True})["task"])
    wait_for(lambda: not any(d.exists() for d in template_dirs), 60, "the template's chunks")

    # The pool's peer key goes with the pool.
    api.ok("DELETE", "/pools/hci")
    left = etcd_snapshot(cluster)
    assert keys.ardfs_secret("hci") not in left
    assert not [k for k in left if k.startswith(f"{keys.ARDFS_MEMBERS}hci/")]
    # and every node stops the pool's heron-io
    wait_for(
        lambda: not any(heron_io_pid(cluster, n.name, "hci") for n in cluster.nodes),
        60,
        "the deleted pool's heron-io to stop",
    )


def test_copies_on_a_node_down_past_the_grace_are_made_on_the_others(cluster3, api) -> None:
    cluster, _ = cluster3
    api.ok("POST", "/pools", json={"name": "moves", "type": "ardfs", "protection": "rf2",
                                   "rebuild_grace_s": 3})  # fmt: skip
    disks = {n.name: Path(n.state_dir) / "moves-disk0" for n in cluster.nodes}
    for node, path in disks.items():
        api.ok("POST", "/pools/moves/disks", json={"node": node, "path": str(path)})

    def members_ready() -> bool:
        members = api.ok("GET", "/pools/moves/members")
        return len(members) == 3 and all(m["address"] and m["disks"] for m in members)

    wait_for(members_ready, 30, "every node to join the pool with its disk")
    reply = api.ok("POST", "/pools/moves/volumes", json={"name": "data", "size": 48 * 2**20})
    api.wait_task(reply["task"], timeout=120)
    volume_id = reply["volume"]
    volume = api.ok("GET", f"/pools/moves/volumes/{volume_id}")
    assert sorted(d["node"] for d in volume["placement"]) == ["node1", "node2", "node3"]

    def qemu_io(node: str, *commands: str, volume: str = volume_id) -> None:
        socket_path = Path(cluster.node(node).state_dir) / "ardfs/moves/nbd.sock"
        args = [a for c in commands for a in ("-c", c)]
        uri = f"nbd+unix:///{volume}?socket={socket_path}"
        done = subprocess.run(["qemu-io", "-f", "raw", *args, uri], capture_output=True,
                              text=True)  # fmt: skip
        assert done.returncode == 0 and "Pattern verification failed" not in done.stdout, (
            done.stdout + done.stderr
        )

    pattern = [f"write -P {0x40 + i} {i * 4}M 4M" for i in range(12)]
    qemu_io("node1", *pattern, "flush")
    hexid = volume_id.replace("-", "")

    def chunks(node: str, layer: str = hexid) -> int:
        folder = disks[node] / "volumes" / layer
        return sum(1 for p in folder.iterdir() if len(p.name) == 16) if folder.is_dir() else 0

    assert chunks("node3") > 0

    # A template's disk and a linked clone of it: the clone reads the template's frozen layer
    # (shared, one copy set for both) under a top of its own. node3 holds copies of it.
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": "mv-tpl",
            "memory_mib": 64,
            "node": "node1",
            "disks": [{"pool": "moves", "size": 48 * 2**20}],
        },
    )
    api.wait_task(reply["task"], timeout=120)
    template_volume = api.vm(reply["vm"])["spec"]["disks"][0]["volume"]
    golden = [f"write -P {0x70 + i} {i * 4}M 4M" for i in range(12)]
    qemu_io("node1", *golden, "flush", volume=template_volume)
    api.ok("PUT", "/vms/mv-tpl/template", json={"template": True})
    reply = api.ok("POST", "/vms/mv-tpl/clone", json={"name": "mv-lc", "linked": True,
                                                      "node": "node1"})  # fmt: skip
    api.wait_task(reply["task"], timeout=120)
    clone_vm = reply["vm"]
    clone_volume = api.vm(clone_vm)["spec"]["disks"][0]["volume"]
    record = api.ok("GET", f"/pools/moves/volumes/{clone_volume}")
    base = next(x["id"] for x in record["layers"] if x["volume"] == template_volume)
    qemu_io("node1", "write -P 0x6f 4M 4M", "flush", volume=clone_volume)
    clone_view = [w.replace("write", "read") for w in golden]
    clone_view[1] = "read -P 0x6f 4M 4M"
    assert chunks("node3", base) > 0 and sum(chunks(n, base) for n in disks) == 2 * 12

    def placed_on(*nodes: str) -> Callable[[], bool]:
        """The volume is placed on those nodes' disks, and no move is under way."""

        def check() -> bool:
            volume = api.ok("GET", f"/pools/moves/volumes/{volume_id}")
            on = sorted(d["node"] for d in volume["placement"])
            return on == sorted(nodes) and volume["moving_to"] is None

        return check

    # node3 dies as a whole and stays away past the pool's grace: the leader moves the
    # volume onto the two disks left, under a live owner, as a task with progress.
    io_pid = heron_io_pid(cluster, "node3", "moves")
    assert io_pid is not None
    cluster.kill_node("node3")
    os.kill(io_pid, signal.SIGKILL)

    def rebalance_task() -> dict | None:
        tasks = [t for t in api.ok("GET", "/tasks")
                 if t["kind"] == "volume.rebalance" and t["target"] == volume_id]  # fmt: skip
        return tasks[0] if tasks else None

    task = wait_for(rebalance_task, 60, "a rebalance task")
    done = api.wait_task(task["id"], timeout=180)
    volume = api.ok("GET", f"/pools/moves/volumes/{volume_id}")
    assert sorted(d["node"] for d in volume["placement"]) == ["node1", "node2"]
    assert done["result"]["disks"] == [d["id"] for d in volume["placement"]]
    assert volume["moving_to"] is None and volume["owner"] in ("node1", "node2")
    wait_for(
        lambda: (
            (api.ok("GET", f"/pools/moves/volumes/{volume_id}")["health"] or {}).get("state")
            == "healthy"
        ),
        30,
        "healthy on two disks",
    )
    # Two copies of every block again: each of the two disks holds all twelve.
    assert (chunks("node1"), chunks("node2")) == (12, 12)
    qemu_io(volume["owner"], *[w.replace("write", "read") for w in pattern])
    # The template and its clone moved too, the shared layer with them: its twelve blocks
    # have their two copies on the disks left, and the clone reads what it read before
    # (through its owner; the template's volume through its own).
    for moved_volume in (template_volume, clone_volume):
        wait_for(
            lambda v=moved_volume: (
                (r := api.ok("GET", f"/pools/moves/volumes/{v}"))["moving_to"] is None
                and sorted(d["node"] for d in r["placement"]) == ["node1", "node2"]
                and (r["health"] or {}).get("state") == "healthy"
            ),
            90,
            f"volume {moved_volume} moved onto node1 and node2, healthy",
        )
    assert (chunks("node1", base), chunks("node2", base)) == (12, 12)
    record = api.ok("GET", f"/pools/moves/volumes/{clone_volume}")
    qemu_io(record["owner"], *clone_view, volume=clone_volume)
    record = api.ok("GET", f"/pools/moves/volumes/{template_volume}")
    qemu_io(record["owner"], *[w.replace("write", "read") for w in golden],
            volume=template_volume)  # fmt: skip
    # They go (node3's copies with its return), so that what follows moves "data" alone.
    api.wait_task(api.ok("DELETE", f"/vms/{clone_vm}", params={"volumes": True})["task"])
    api.ok("PUT", "/vms/mv-tpl/template", json={"template": False})
    api.wait_task(api.ok("DELETE", "/vms/mv-tpl", params={"volumes": True})["task"])

    # node3 comes back: the volume spreads onto its disk again (a move like the one before),
    # and no disk keeps a chunk the placement does not give it (node3 held old copies).
    cluster.start_node("node3")

    wait_for(placed_on("node1", "node2", "node3"), 120, "the volume spread onto node3 again")
    wait_for(lambda: sum(chunks(n) for n in disks) == 2 * 12, 90, "two copies of each block")
    volume = api.ok("GET", f"/pools/moves/volumes/{volume_id}")
    qemu_io(volume["owner"], *[w.replace("write", "read") for w in pattern])

    # A disk taken out of the pool (failed, say) has its copies made on the others at once;
    # the last disks the protection needs cannot be taken out.
    disk1 = next(m for m in api.ok("GET", "/pools/moves/members") if m["node"] == "node1")
    disk1 = disk1["disks"][0]["id"]
    api.ok("DELETE", f"/pools/moves/disks/{disk1}")

    wait_for(placed_on("node2", "node3"), 120, "the volume moved off node1's disk")
    volume = api.ok("GET", f"/pools/moves/volumes/{volume_id}")
    qemu_io(volume["owner"], *[w.replace("write", "read") for w in pattern])
    disk2 = next(m for m in api.ok("GET", "/pools/moves/members") if m["node"] == "node2")
    refused = api.delete(f"/pools/moves/disks/{disk2['disks'][0]['id']}")
    assert refused.status_code == 409, refused.text

    # A disk whose filesystem is gone (its mount point left empty): heron-io does not serve
    # it, its node reports it, and after the grace its copies are made on the other disks.
    spare = Path(cluster.node("node1").state_dir) / "moves-disk1"
    api.ok("POST", "/pools/moves/disks", json={"node": "node1", "path": str(spare)})
    wait_for(placed_on("node1", "node2", "node3"), 120, "the volume spread onto node1's new disk")
    io_pid = heron_io_pid(cluster, "node3", "moves")
    assert io_pid is not None
    os.kill(io_pid, signal.SIGKILL)
    disks["node3"].rename(disks["node3"].with_name("moves-disk0-unmounted"))
    disks["node3"].mkdir()  # node3's agent starts heron-io again, on the empty directory

    wait_for(placed_on("node1", "node2"), 120, "the volume moved off node3's failed disk")
    volume = api.ok("GET", f"/pools/moves/volumes/{volume_id}")
    qemu_io(volume["owner"], *[w.replace("write", "read") for w in pattern])


def test_a_heron_io_whose_pidfile_is_lost_is_taken_back_not_doubled(cluster3, api) -> None:
    """An agent can die between starting heron-io and writing its pidfile: the agent must
    find the one running, not start a second one on the same disks. (It may still restart
    it, as nodes join the pool: never two at once.)"""
    cluster, _ = cluster3
    api.ok("POST", "/pools", json={"name": "lost", "type": "ardfs", "protection": "rf1"})
    path = Path(cluster.node("node2").state_dir) / "lost-disk0"
    api.ok("POST", "/pools/lost/disks", json={"node": "node2", "path": str(path)})
    wait_for(lambda: heron_io_pid(cluster, "node2", "lost"), 30, "node2's heron-io")
    folder = Path(cluster.node("node2").state_dir) / "ardfs/lost"
    pidfile, marker = folder / "heron-io.pid", str(folder / "io.json")

    def just_one() -> bool:
        found = find_running(marker)
        with contextlib.suppress(FileNotFoundError, ValueError):
            return len(found) == 1 and found[0] == int(pidfile.read_text())
        return False

    pidfile.unlink()
    wait_for(pidfile.exists, 30, "the agent's next look at its heron-io")
    wait_for(just_one, 30, "one heron-io, the one its pidfile names")
    api.ok("DELETE", "/pools/lost")
    wait_for(lambda: not find_running(marker), 90, "heron-io stopped with its pool")
