"""VM snapshots through the API with a disk on an ARDFS pool: heron-io takes them itself (a
new layer, no copy), the running VM paused around it; a middle snapshot is deleted while the
VM runs (merged online by the owner's heron-io, then dropped by its agent); reverts read
each snapshot back; each snapshot's size is what its own layer holds. A linked clone of a
snapshot (made by the pool driver, as the clone service does) reads it, and keeps it from
being deleted until the clone goes. A VM whose only disk is on ARDFS gets a memory snapshot
all the same: its memory goes into a volume of the pool made for it, and a revert brings the
guest back exactly where it was; an agent killed while QEMU saves that memory resumes the task
when it is back, and the snapshot is taken again, the guest running, nothing left behind."""

import asyncio
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from support import Api, rf2_pool_on_two_disks, serial_lines, wait_for

from heron.configdb import Txn, keys
from heron.devcluster import DevCluster
from heron.models.storage import Pool, Volume, VolumeFormat
from heron.storage.registry import driver_for
from heron.testguest.net import CommandChannel

pytestmark = pytest.mark.integration
CLUSTER_NODES = 1  # cluster1 for the `api` and `image` fixtures (tests/conftest.py)

MiB = 1024**2


def nbd(cluster: DevCluster, volume_id: str) -> str:
    sock = Path(cluster.nodes[0].state_dir) / "ardfs" / "hci" / "nbd.sock"
    return f"nbd+unix:///{volume_id}?socket={sock}"


def qemu_io(uri: str, command: str) -> str:
    said = subprocess.run(
        ["qemu-io", "-f", "raw", "-c", command, uri], capture_output=True, text=True, check=False
    )
    return said.stdout + said.stderr


def holds(uri: str, pattern: int) -> bool:
    said = qemu_io(uri, f"read -P {pattern} 0 1M")
    assert "read 1048576/1048576" in said or "Pattern verification failed" in said, said
    return "Pattern verification failed" not in said


def write(uri: str, pattern: int, mib: int = 1) -> None:
    said = qemu_io(uri, f"write -P {pattern} 0 {mib}M")
    assert f"wrote {mib * MiB}/{mib * MiB}" in said, said


def sizes(api: Api, vm_id: str) -> dict[str, int | None]:
    """Each snapshot's size of the ARDFS disk (disk1)."""
    listing = api.ok("GET", f"/vms/{vm_id}/snapshots")["snapshots"]
    return {s["name"]: s["disks"][1]["size"] for s in listing}


def power(api: Api, vm_id: str, action: str) -> None:
    api.wait_task(api.ok("POST", f"/vms/{vm_id}/actions/{action}")["task"])


def snapshot(api: Api, vm_id: str, name: str, **extra: object) -> dict:
    reply = api.ok("POST", f"/vms/{vm_id}/snapshots", json={"name": name, **extra})
    api.wait_task(reply["task"], timeout=300)
    return api.ok("GET", f"/vms/{vm_id}/snapshots/{name}")


def act(api: Api, vm_id: str, method: str, path: str) -> dict:
    reply = api.ok(method, f"/vms/{vm_id}/snapshots/{path}")
    return api.wait_task(reply["task"], timeout=300)


async def clone_of(
    cluster: DevCluster, source_id: str, snapshot: str, name: str, linked: bool = True
) -> str:
    """A new volume record, made a clone of the snapshot by the node's pool driver."""
    node = cluster.nodes[0]
    async with cluster.configdb() as db:
        pool = await db.get(Pool, keys.pool("hci"))
        source = await db.get(Volume, keys.volume(source_id))
        assert pool is not None and source is not None
        target = Volume(id=str(uuid.uuid4()), pool="hci", name=name, format=VolumeFormat.raw,
                        size=source.value.size, state="ready", created_at=time.time())  # fmt: skip
        await db.commit(
            Txn()
            .require_absent(keys.volume_name("hci", name))
            .put(keys.volume_name("hci", name), target.id)
            .put(keys.volume(target.id), target)
        )
        driver = driver_for(pool.value, Path(node.state_dir), db)
        await driver.clone(source.value, snapshot, target, linked=linked, progress=None)
        return target.id


@pytest.fixture(scope="module")
def hci(cluster1: tuple[DevCluster, str], api: Api) -> str:
    """The rf2 ARDFS pool "hci" over two disks of the node."""
    node = cluster1[0].nodes[0]
    return rf2_pool_on_two_disks(node.name, node.state_dir, api)


@pytest.fixture(scope="module")
def ardfs_guest(api: Api, image: str, hci: str) -> str:
    """A running test guest whose only disk is on the ARDFS pool (no qcow2 disk at all): its
    id. The first test asks for it too, without using it: a TCG guest takes tens of seconds
    to boot, and this one boots meanwhile."""
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": "ardfs-mem",
            "memory_mib": 128,
            "start": True,
            "disks": [{"pool": hci, "source": image}],
        },
    )
    api.wait_task(reply["task"], timeout=180)
    return str(reply["vm"])


@pytest.mark.usefixtures("ardfs_guest")
def test_snapshots_of_a_vm_with_an_ardfs_disk(
    cluster1: tuple[DevCluster, str], api: Api, image: str, hci: str
) -> None:
    cluster, _ = cluster1
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": "ardfs-snap",
            "memory_mib": 128,
            "disks": [{"pool": "local", "source": image}, {"pool": "hci", "size": 16 * MiB}],
        },
    )
    api.wait_task(reply["task"], timeout=180)
    vm = reply["vm"]
    volume_id = api.vm(vm)["spec"]["disks"][1]["volume"]
    uri = nbd(cluster, volume_id)
    # A snapshot deleted before the VM ever ran (its volume has no owner yet): the node
    # doing the delete takes the volume, so that its heron-io merges the layer.
    write(uri, 9)
    snapshot(api, vm, "s0")
    write(uri, 1)
    act(api, vm, "DELETE", "s0")
    wait_for(
        lambda: len(api.ok("GET", f"/pools/hci/volumes/{volume_id}")["layers"]) == 1 or None,
        120, "s0's layer merged away",
    )  # fmt: skip
    assert holds(uri, 1)
    taken = snapshot(api, vm, "s1")  # the VM off
    assert taken["state"] == "ready", taken
    assert [d["method"] for d in taken["disks"]] == ["qcow2", "native"]
    power(api, vm, "start")
    # Written beside the running VM (its guest does not use the disk): three whole blocks
    # before s2, 1 MiB of one block before s3.
    for index, mib in ((2, 12), (3, 1)):
        write(uri, index, mib)
        taken = snapshot(api, vm, f"s{index}")  # paused, heron-io switches its top layer
        assert taken["state"] == "ready", taken
    write(uri, 4)
    record = api.ok("GET", f"/pools/hci/volumes/{volume_id}")
    assert len(record["layers"]) == 4  # three frozen by s1..s3, and the top
    assert holds(uri, 4)
    # Each snapshot's size is what its own layer holds, in whole 4 MiB blocks, counted once
    # though the pool keeps two copies: s1 block 0, s2 blocks 0-2, s3 block 0 (1 MiB of it
    # written). The owner's agent writes it shortly after the snapshot.
    own = {"s1": 4 * MiB, "s2": 12 * MiB, "s3": 4 * MiB}
    wait_for(lambda: sizes(api, vm) == own or None, 30, f"the sizes {own}")

    # The middle snapshot goes while the VM runs: merged into s3's layer, then dropped.
    act(api, vm, "DELETE", "s2")
    names = [s["name"] for s in api.ok("GET", f"/vms/{vm}/snapshots")["snapshots"]]
    assert names == ["s1", "s3"]

    def merged() -> bool:
        layers = api.ok("GET", f"/pools/hci/volumes/{volume_id}")["layers"]
        return len(layers) == 3 and not any(x["merging"] for x in layers)

    wait_for(merged, 120, "the owner to merge and drop s2's layer")
    assert holds(uri, 4)
    # s3's layer took the two blocks of s2's that it lacked: it holds three now.
    own = {"s1": 4 * MiB, "s3": 12 * MiB}
    wait_for(lambda: sizes(api, vm) == own or None, 30, f"the sizes {own}")

    for name, pattern in (("s3", 3), ("s1", 1)):
        done = act(api, vm, "POST", f"{name}/revert")
        assert done["result"]["state"] == "running", done
        assert holds(uri, pattern)
    write(uri, 5)  # after a revert the volume is written as usual
    assert holds(uri, 5)
    # A linked clone of s1: it reads s1's data, its writes are its own, and s1 stays while
    # it exists.
    s1 = api.ok("GET", f"/vms/{vm}/snapshots/s1")["id"]
    clone = asyncio.run(clone_of(cluster, volume_id, s1, "s1-clone"))
    clone_uri = nbd(cluster, clone)
    assert holds(clone_uri, 1)
    write(clone_uri, 7)
    assert holds(clone_uri, 7) and holds(uri, 5)
    record = api.ok("GET", f"/pools/hci/volumes/{clone}")
    assert record["origin"] == {"volume": volume_id, "snapshot": s1, "linked": True}
    # Refused up front (the service finds the clone by its origin), the snapshot untouched.
    refused = api.delete(f"/vms/{vm}/snapshots/s1")
    assert refused.status_code == 409 and "linked clones read it" in refused.text, refused.text
    assert api.ok("GET", f"/vms/{vm}/snapshots/s1")["state"] == "ready"
    api.wait_task(api.ok("DELETE", f"/pools/hci/volumes/{clone}")["task"], timeout=120)
    # A full clone of s1: made linked, then every block copied into its own top; it no
    # longer reads s1's layer, so s1 may go before it.
    copy = asyncio.run(clone_of(cluster, volume_id, s1, "s1-copy", linked=False))
    record = api.ok("GET", f"/pools/hci/volumes/{copy}")
    assert record["origin"] == {"volume": volume_id, "snapshot": s1, "linked": False}
    assert len(record["layers"]) == 1
    assert holds(nbd(cluster, copy), 1)

    act(api, vm, "DELETE", "s3")  # s1's stack has no layer above s3's: it goes at once
    act(api, vm, "DELETE", "s1")
    assert api.ok("GET", f"/vms/{vm}/snapshots")["snapshots"] == []
    wait_for(
        lambda: len(api.ok("GET", f"/pools/hci/volumes/{volume_id}")["layers"]) == 1 or None,
        120, "every snapshot's layer merged away",
    )  # fmt: skip
    assert holds(uri, 5)
    assert holds(nbd(cluster, copy), 1)
    api.wait_task(api.ok("DELETE", f"/pools/hci/volumes/{copy}")["task"], timeout=120)
    api.ok("DELETE", f"/vms/{vm}", params={"volumes": True})


TICK = re.compile(r"heron-tick (\d+)")


def console_text(cluster: DevCluster, vm_id: str) -> str:
    log = Path(cluster.nodes[0].state_dir) / "vms" / vm_id / "console.log"
    return log.read_bytes().decode(errors="replace") if log.exists() else ""


def guest_run(cluster: DevCluster, vm_id: str, command: str) -> str:
    sock = Path(cluster.nodes[0].state_dir) / "vms" / vm_id / "serial.sock"
    with CommandChannel(sock) as channel:
        result = channel.run(command, timeout=60)
    assert result.rc == 0, result
    return result.output


def test_a_memory_snapshot_of_a_vm_all_on_ardfs(
    cluster1: tuple[DevCluster, str], api: Api, ardfs_guest: str
) -> None:
    cluster, _ = cluster1
    vm = ardfs_guest

    def ticks() -> list[int]:
        return [int(t) for t in TICK.findall(console_text(cluster, vm))]

    wait_for(lambda: len(ticks()) >= 1 or None, 180, "the guest to boot and tick")
    guest_run(cluster, vm, "echo before > /tmp/mark")
    first = ticks()[-1]
    taken = snapshot(api, vm, "warm", memory=True)
    # No qcow2 disk: the memory went into a volume of the VM's own pool, made for it.
    assert taken["state"] == "ready" and taken["memory"], taken
    assert [d["method"] for d in taken["disks"]] == ["native"]
    assert taken["state_pool"] == "hci" and taken["vm_state_size"] > 0, taken
    state = api.ok("GET", f"/pools/hci/volumes/{taken['state_volume']}")
    assert state["state_of"] == {"vm": vm, "snapshot": taken["id"]} and state["state"] == "ready"
    assert state["attached_to"] is None and len(api.vm(vm)["spec"]["disks"]) == 1
    refused = api.delete(f"/pools/hci/volumes/{state['id']}")
    assert refused.status_code == 409 and "memory state" in refused.text, refused.text
    last = ticks()[-1]  # the snapshot's instant lies between `first` and this tick

    # The guest goes on, then comes back to the snapshot: no new boot, its RAM as it was,
    # its counter going on from the snapshot's instant.
    guest_run(cluster, vm, "echo after > /tmp/mark")
    wait_for(lambda: ticks()[-1] >= last + 2 or None, 30, "the guest to tick on")
    before_revert = len(console_text(cluster, vm))
    done = act(api, vm, "POST", "warm/revert")
    assert done["result"] == {"snapshot": taken["id"], "memory": True, "state": "running"}
    assert guest_run(cluster, vm, "cat /tmp/mark").strip() == "before"

    def resumed() -> list[int] | None:
        after = [int(t) for t in TICK.findall(console_text(cluster, vm)[before_revert:])]
        return after or None

    after = wait_for(resumed, 30, "a tick after the revert")
    assert first + 1 <= after[0] <= last + 1, (first, last, after)
    assert len(serial_lines(Path(cluster.nodes[0].state_dir) / "vms" / vm / "console.log",
                            f"HERON-GUEST-READY uuid={vm}")) == 1  # fmt: skip

    act(api, vm, "DELETE", "warm")  # its memory-state volume goes with it
    assert api.get(f"/pools/hci/volumes/{state['id']}").status_code == 404

    # The agent killed (SIGKILL) while QEMU saves the guest's memory into the state volume:
    # QEMU and heron-io carry on without it. The restarted agent resumes the task: it waits
    # for QEMU's save, removes what the cut-off run took (the disk's snapshot layer), lets the
    # paused guest run and takes the snapshot again, into the same state volume.
    node = cluster.nodes[0]
    guest_run(cluster, vm, "echo cut > /tmp/mark")
    reply = api.ok("POST", f"/vms/{vm}/snapshots", json={"name": "cut", "memory": True})

    def saving() -> dict | None:
        # Past 0.1, QEMU's save job exists and reports progress: the log line comes before
        # the job is started, and an agent killed in between leaves no job to find.
        task = api.ok("GET", f"/tasks/{reply['task']}")
        return task if task["progress"] > 0.1 or task["state"] != "running" else None

    wait_for(saving, 120, "QEMU to save the guest's memory", interval=0.02)
    herond = cluster.herond_pid(node)
    assert herond is not None
    killed = time.time()
    os.kill(herond, signal.SIGKILL)
    wait_for(lambda: cluster.herond_pid(node) is None, 10, "herond to die")
    killed_at = ticks()[-1]
    cluster.start_node(node.name)
    cluster.wait_api(node, 120)
    done = api.wait_task(reply["task"], timeout=300)
    # Killed while QEMU saved, as it nearly always is: once, under load, the task ended in
    # the moment between the look above and the kill, and its record's time says so. Whether
    # QEMU's save still runs when the restarted agent looks depends on how long the restart
    # took (under load the save has ended: no "left running" line, the job already gone);
    # either way what the cut-off run took goes, and the checks below hold.
    if done["updated_at"] > killed:
        assert "resumed after an agent restart" in done["log"], done["log"]
    cut = api.ok("GET", f"/vms/{vm}/snapshots/cut")
    assert cut["state"] == "ready" and cut["memory"] and cut["vm_state_size"] > 0, cut
    states = [v for v in api.ok("GET", "/pools/hci/volumes") if v["state_of"]]
    assert [v["id"] for v in states] == [cut["state_volume"]], states
    # Not left paused: the guest counts on.
    wait_for(lambda: ticks()[-1] >= killed_at + 2 or None, 60, "the guest to tick on")
    # The half-made snapshot's layer is merged away: the frozen layer of "cut" and the top.
    disk = api.vm(vm)["spec"]["disks"][0]["volume"]
    wait_for(
        lambda: len(api.ok("GET", f"/pools/hci/volumes/{disk}")["layers"]) == 2 or None,
        120, "the cut-off run's layer merged away",
    )  # fmt: skip
    guest_run(cluster, vm, "echo later > /tmp/mark")
    done = act(api, vm, "POST", "cut/revert")
    assert done["result"] == {"snapshot": cut["id"], "memory": True, "state": "running"}
    assert guest_run(cluster, vm, "cat /tmp/mark").strip() == "cut"
    act(api, vm, "DELETE", "cut")
    assert api.get(f"/pools/hci/volumes/{cut['state_volume']}").status_code == 404
    api.ok("DELETE", f"/vms/{vm}", params={"volumes": True})
