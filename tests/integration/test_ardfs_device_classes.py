"""ARDFS device classes on a 3-node devcluster. Every disk here is a directory on the same
filesystem, so the classes are *given*: the directories named `*-as-ssd` stand for SSDs and
`*-as-hdd` for HDDs (what the kernel says of this machine's one virtual disk is checked only
for being told at all; telling classes apart is unit-tested on fake sysfs trees).

Two pools, one per class, each given both kinds of directories on every node: a volume's
chunks land only in its pool's class's directories; the pool's capacity counts only those;
when a node is lost past the grace, the copies it held are made again on the class's disks
left, never on the other class's; a disk set to the class is spread onto and one set to
another class is moved off; and a class change that would leave the class too few disks is
refused. A disk given without a class has it told by its node, and a change is audited."""

import os
import signal
import subprocess
from pathlib import Path

import pytest
from support import wait_for

from heron.devcluster import DevCluster

pytestmark = pytest.mark.integration

MiB = 2**20
PATTERN = [f"write -P {0x50 + i} {i * 4}M 4M" for i in range(6)]  # 6 blocks of 4 MiB
READS = [w.replace("write", "read") for w in PATTERN]


def heron_io_pid(cluster: DevCluster, node: str, pool: str) -> int | None:
    pidfile = Path(cluster.node(node).state_dir) / "ardfs" / pool / "heron-io.pid"
    try:
        pid = int(pidfile.read_text())
    except FileNotFoundError:
        return None
    return pid if os.path.exists(f"/proc/{pid}") else None


def qemu_io(cluster: DevCluster, node: str, pool: str, volume: str, *commands: str) -> None:
    socket_path = Path(cluster.node(node).state_dir) / "ardfs" / pool / "nbd.sock"
    args = [a for c in commands for a in ("-c", c)]
    uri = f"nbd+unix:///{volume}?socket={socket_path}"
    done = subprocess.run(["qemu-io", "-f", "raw", *args, uri], capture_output=True, text=True)
    assert done.returncode == 0 and "Pattern verification failed" not in done.stdout, (
        done.stdout + done.stderr
    )


def chunks(folder: Path, volume: str) -> int:
    held = folder / "volumes" / volume.replace("-", "")
    return sum(1 for p in held.iterdir() if len(p.name) == 16) if held.is_dir() else 0


def test_volumes_stay_on_the_disks_of_their_pools_class(cluster3, api) -> None:
    cluster, _ = cluster3
    nodes = [n.name for n in cluster.nodes]
    # Bad input: an unknown class, a class for a pool that has no disks of its own.
    bad = api.post("/pools", json={"name": "x", "type": "ardfs", "device_class": "tape"})
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "body.device_class"
    bad = api.post("/pools", json={"name": "x", "type": "dir", "device_class": "ssd"})
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "body.device_class"

    dirs: dict[tuple[str, str, str], Path] = {}  # (pool, node, class) -> its directory
    for pool, wanted in (("fast", "ssd"), ("slow", "hdd")):
        api.ok("POST", "/pools", json={"name": pool, "type": "ardfs", "protection": "rf2",
                                       "device_class": wanted, "rebuild_grace_s": 3})  # fmt: skip
        for node in nodes:
            for kind in ("ssd", "hdd"):
                path = Path(cluster.node(node).state_dir) / f"{pool}-as-{kind}"
                dirs[pool, node, kind] = path
                body = {"node": node, "path": str(path), "device_class": kind}
                api.ok("POST", f"/pools/{pool}/disks", json=body)
            if node == nodes[0] and pool == "fast":
                # One ssd disk: too few for rf2, refused with the count and the field.
                refused = api.post("/pools/fast/volumes", json={"name": "v", "size": MiB})
                assert refused.status_code == 422, refused.text
                (field,) = refused.json()["fields"]
                assert field["field"] == "path.name"  # the pool's name in the path
                assert "ssd disks" in field["reason"] and "rf2 needs 2" in field["reason"]

    # A disk given without a class: node1's agent tells it from the kernel.
    probe = Path(cluster.node(nodes[0]).state_dir) / "slow-told-by-kernel"
    api.ok("POST", "/pools/slow/disks", json={"node": nodes[0], "path": str(probe)})

    def members(pool: str) -> list[dict]:
        return api.ok("GET", f"/pools/{pool}/members")

    def disk_at(pool: str, path: Path) -> dict:
        return next(d for m in members(pool) for d in m["disks"] if d["path"] == str(path))

    told = wait_for(lambda: disk_at("slow", probe)["device_class"] and disk_at("slow", probe),
                    30, "the kernel's word on the disk")  # fmt: skip
    assert told["class_source"] in ("detected", "assumed") and told["class_note"], told
    # Whatever it said, the administrator sets it to ssd: the slow pool does not use it.
    bad = api.patch(f"/pools/slow/disks/{told['id']}", json={"device_class": "floppy"})
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "body.device_class"
    assert api.patch("/pools/slow/disks/dnone", json={"device_class": "ssd"}).status_code == 404
    api.ok("PATCH", f"/pools/slow/disks/{told['id']}", json={"device_class": "ssd"})
    changed = disk_at("slow", probe)
    assert (changed["device_class"], changed["class_source"]) == ("ssd", "set")
    # Audited: who, which disk, from which class to which.
    audit = api.ok("GET", "/events", params={"limit": 200, "local": True})
    entry = next(e for e in audit if e["method"] == "PATCH" and told["id"] in e["path"])
    assert entry["target"] == f"slow/{nodes[0]}/{told['id']}" and entry["result"] == "ok"
    assert entry["reason"] == f"device class {told['device_class']} -> ssd"

    for pool in ("fast", "slow"):
        wait_for(lambda p=pool: all(m["address"] for m in members(p)) and len(members(p)) == 3,
                 30, f"every node in pool {pool}")  # fmt: skip

    # A volume asking another class than its pool's is refused.
    bad = api.post("/pools/fast/volumes", json={"name": "x", "size": MiB, "device_class": "hdd"})
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "body.device_class"

    # A volume per pool: placed on its class's disks only, and its chunks there.
    volumes = {}
    for pool, kind in (("fast", "ssd"), ("slow", "hdd")):
        reply = api.ok("POST", f"/pools/{pool}/volumes", json={"name": "data", "size": 24 * MiB})
        api.wait_task(reply["task"], timeout=120)
        volume = volumes[pool] = reply["volume"]
        record = api.ok("GET", f"/pools/{pool}/volumes/{volume}")
        mine = {disk_at(pool, dirs[pool, n, kind])["id"] for n in nodes}
        assert {d["id"] for d in record["placement"]} == mine
        qemu_io(cluster, nodes[0], pool, volume, *PATTERN, "flush")
        other = "hdd" if kind == "ssd" else "ssd"
        assert sum(chunks(dirs[pool, n, kind], volume) for n in nodes) == 2 * 6
        assert all(chunks(dirs[pool, n, other], volume) == 0 for n in nodes)
        assert chunks(probe, volume) == 0

    # Capacity: the class's three disks (all on one filesystem here), halved by rf2.
    fs = os.statvfs(dirs["fast", nodes[0], "ssd"])
    one_disk = fs.f_blocks * fs.f_frsize
    capacity = wait_for(
        lambda: api.ok("GET", "/pools/fast")["capacity"], 30, "fast's disks reported"
    )
    assert capacity["raw_total_bytes"] == 3 * one_disk
    assert capacity["total_bytes"] == capacity["raw_total_bytes"] // 2

    # The third node dies past the grace: its copies are made again within each class.
    lost = nodes[2]
    pids = [heron_io_pid(cluster, lost, pool) for pool in ("fast", "slow")]
    cluster.kill_node(lost)
    for pid in pids:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
    for pool, kind in (("fast", "ssd"), ("slow", "hdd")):
        volume = volumes[pool]

        def moved(p: str = pool, v: str = volume) -> dict | None:
            record = api.ok("GET", f"/pools/{p}/volumes/{v}")
            on = sorted(d["node"] for d in record["placement"])
            healthy = (record["health"] or {}).get("state") == "healthy"
            return record if on == nodes[:2] and record["moving_to"] is None and healthy else None

        record = wait_for(moved, 150, f"{pool}'s volume made again on the nodes left")
        mine = {disk_at(pool, dirs[pool, n, kind])["id"] for n in nodes[:2]}
        assert {d["id"] for d in record["placement"]} == mine
        other = "hdd" if kind == "ssd" else "ssd"
        assert [chunks(dirs[pool, n, kind], volume) for n in nodes[:2]] == [6, 6]
        assert all(chunks(dirs[pool, n, other], volume) == 0 for n in nodes[:2])
        qemu_io(cluster, record["owner"], pool, volume, *READS)

    # In slow: node1's extra disk joins the class, and the volume spreads onto it; then
    # node1's first hdd disk leaves the class, and the volume's copies move off it.
    volume = volumes["slow"]
    n1_hdd = disk_at("slow", dirs["slow", nodes[0], "hdd"])["id"]
    n2_hdd = disk_at("slow", dirs["slow", nodes[1], "hdd"])["id"]

    def placed_on(*ids: str) -> dict | None:
        record = api.ok("GET", f"/pools/slow/volumes/{volume}")
        healthy = (record["health"] or {}).get("state") == "healthy"
        on = {d["id"] for d in record["placement"]}
        return record if on == set(ids) and record["moving_to"] is None and healthy else None

    api.ok("PATCH", f"/pools/slow/disks/{told['id']}", json={"device_class": "hdd"})
    wait_for(lambda: placed_on(n1_hdd, told["id"], n2_hdd), 120, "spread onto the new hdd")
    api.ok("PATCH", f"/pools/slow/disks/{n1_hdd}", json={"device_class": "ssd"})
    record = wait_for(lambda: placed_on(told["id"], n2_hdd), 120, "moved off the ex-hdd disk")
    assert [chunks(probe, volume), chunks(dirs["slow", nodes[1], "hdd"], volume)] == [6, 6]
    qemu_io(cluster, record["owner"], "slow", volume, *READS)

    # Class changes: a disk outside the class may become anything; node3's ssd disk (its
    # copies made elsewhere) leaves the class, leaving two; one more would leave one for rf2,
    # which needs two: refused, with the reason.
    hdd = disk_at("fast", dirs["fast", nodes[0], "hdd"])["id"]
    api.ok("PATCH", f"/pools/fast/disks/{hdd}", json={"device_class": "nvme"})
    gone_ssd = disk_at("fast", dirs["fast", lost, "ssd"])["id"]
    api.ok("PATCH", f"/pools/fast/disks/{gone_ssd}", json={"device_class": "hdd"})
    left_ssd = disk_at("fast", dirs["fast", nodes[0], "ssd"])["id"]
    refused = api.patch(f"/pools/fast/disks/{left_ssd}", json={"device_class": "hdd"})
    assert refused.status_code == 409 and "rf2 needs 2" in refused.text, refused.text
    assert disk_at("fast", dirs["fast", nodes[0], "ssd"])["device_class"] == "ssd"
