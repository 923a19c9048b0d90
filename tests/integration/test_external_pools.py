"""External storage pools: an iSCSI target (Debian's tgt on loopback, reached by QEMU's own
initiator) and block devices standing for FC/multipath LUNs (loop devices; no FC here). The
test guest, written into a LUN on the array side, boots from it and live-migrates between
nodes. NFS cannot be mounted on these machines (no NFS client in the kernel): a real mount is
checked to fail clearly, and a stand-in for the kernel client (named as such, below) lets the
rest of an nfs pool's life run for real. RBD needs a Ceph cluster: see
test_rbd_pool_where_ceph_is_reachable.
"""

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import Api, guest_intact, qemu_homes, serial_lines, wait_for

from heron.devcluster import DevCluster
from heron.storage.dirpool import mounted
from heron.util.ports import free_ports
from heron.util.wait import until_sync

pytestmark = pytest.mark.integration

BOOT = 180
IQN = "iqn.2026-11.org.heron:test-array"
FAKE_NAS = "fake-nas"  # the one NFS server name the stand-in client answers for

STAND_IN = """#!/bin/sh
# Heron's tests: a stand-in for the kernel NFS client, which this machine lacks.
# `mount -t nfs -o OPTIONS fake-nas:EXPORT DIR` bind-mounts {exports}EXPORT at DIR;
# every other mount, NFS from any other server included, is the real one.
if [ "$1" = -t ] && [ "$2" = nfs ] && [ "${{5%%:*}}" = {server} ]; then
    echo "$6" >> {log}
    exec /usr/bin/mount --bind "{exports}${{5#*:}}" "$6"
fi
exec /usr/bin/mount "$@"
"""


@pytest.fixture(scope="module", autouse=True)
def nfs_stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The FAKE kernel NFS client for this module's devcluster (see STAND_IN): a `mount` first
    on the PATH the nodes inherit. Everything Heron does around the mount is real: when and
    where each node mounts, the volumes' files, the VM's I/O, unmounting. Yields the directory
    that stands for the server's exports."""
    directory = tmp_path_factory.mktemp("fake-nas")
    exports, bin_dir, log = directory / "exports", directory / "bin", directory / "mounts.log"
    exports.mkdir()
    bin_dir.mkdir()
    (bin_dir / "mount").write_text(STAND_IN.format(exports=exports, server=FAKE_NAS, log=log))
    (bin_dir / "mount").chmod(0o755)
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{bin_dir}:{path}"  # before cluster3 starts: autouse comes first
    try:
        yield exports
    finally:
        os.environ["PATH"] = path
        for point in log.read_text().split() if log.exists() else []:
            if mounted(Path(point)):  # left by a failed test
                subprocess.run(["umount", "-l", point], check=False)


@dataclass
class Target:
    portal: str
    control: int
    pid: int

    def admin(self, *args: str) -> None:
        subprocess.run(
            ["tgtadm", "-C", str(self.control), "--lld", "iscsi", *args],
            check=True,
            capture_output=True,
        )


@pytest.fixture(scope="module")
def array(tmp_path_factory: pytest.TempPathFactory, testguest: Path) -> Iterator[Target]:
    """An iSCSI target with two LUNs: 1 holds the test guest, 2 is empty."""
    directory = tmp_path_factory.mktemp("array")
    guest_lun = directory / "lun1.raw"
    shutil.copyfile(testguest, guest_lun)
    empty_lun = directory / "lun2.raw"
    with open(empty_lun, "wb") as f:
        f.truncate(64 * 2**20)
    [port] = free_ports(1)
    control = 1000 + port % 30000  # tgtd's control socket number, unique per instance
    log = open(directory / "tgtd.log", "wb")  # noqa: SIM115 - closed with the daemon
    proc = subprocess.Popen(
        ["tgtd", "-f", "-C", str(control), "--iscsi", f"portal=127.0.0.1:{port}"],
        stdout=log,
        stderr=log,
    )
    target = Target(f"127.0.0.1:{port}", control, proc.pid)
    try:
        wait_for(
            lambda: (
                subprocess.run(
                    ["tgtadm", "-C", str(control), "--lld", "iscsi", "--op", "show", "--mode",
                     "target"], capture_output=True,
                ).returncode == 0
            ),
            10,
            "tgtd to answer",
        )  # fmt: skip
        target.admin("--op", "new", "--mode", "target", "--tid", "1", "-T", IQN)
        for lun, backing in ((1, guest_lun), (2, empty_lun)):
            target.admin(
                "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", str(lun),
                "-b", str(backing),
            )  # fmt: skip
        target.admin("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        yield target
    finally:
        proc.kill()  # a test array: its LUNs' files go with the test's directory
        proc.wait(10)
        log.close()


def ticks(log: Path) -> list[int]:
    return [
        int(m.group(1))
        for line in serial_lines(log, r"heron-tick \d+")
        if (m := re.search(r"heron-tick (\d+)", line))
    ]


def console(cluster: DevCluster, vm_id: str, node: str) -> Path:
    return Path(cluster.node(node).state_dir) / "vms" / vm_id / "console.log"


def iscsi(name: str, array: Target) -> dict[str, str]:
    return {"name": name, "type": "iscsi", "portal": array.portal, "target": IQN}


def scan(api: Api, pool: str) -> dict:
    task = api.wait_task(api.ok("POST", f"/pools/{pool}/scan")["task"])
    assert task["state"] == "succeeded", task
    return task["result"]


def test_iscsi_luns_become_volumes_a_vm_boots_from_and_migrates_with(cluster3, api, array) -> None:
    cluster, _ = cluster3
    pool = api.ok("POST", "/pools", json=iscsi("san", array))
    assert pool["shared"] is True
    assert scan(api, "san") == {"added": ["lun1", "lun2"], "resized": [], "missing": []}
    volumes = {v["name"]: v for v in api.ok("GET", "/pools/san/volumes")}
    assert volumes["lun2"]["size"] == 64 * 2**20 and volumes["lun1"]["format"] == "raw"
    assert {v["state"] for v in volumes.values()} == {"ready"}
    assert scan(api, "san")["added"] == []  # a second scan finds nothing new

    reply = api.ok(
        "POST",
        "/vms",
        json={"name": "on-san", "memory_mib": 128, "node": "node2", "start": True,
              "disks": [{"volume": "san/lun1"}]},
    )  # fmt: skip
    api.wait_task(reply["task"])
    vm_id = reply["vm"]
    log = console(cluster, vm_id, "node2")
    wait_for(lambda: serial_lines(log, "HERON-GUEST-READY"), BOOT, "the guest to boot from the LUN")
    wait_for(lambda: len(ticks(log)) >= 2, BOOT, "the guest to tick")
    # QEMU's own initiator: no iSCSI session or device node on the host.
    assert not Path("/sys/class/iscsi_session").exists() or not os.listdir(
        "/sys/class/iscsi_session"
    )
    seen = ticks(log)[-1]

    # The LUN is on every node: the VM live-migrates with nothing to copy.
    task = api.wait_task(
        api.ok("POST", f"/vms/{vm_id}/actions/migrate", json={"target": "node3"})["task"]
    )
    assert task["state"] == "succeeded" and task["result"]["disks_copied"] == 0, task
    assert qemu_homes(vm_id) == {cluster.node("node3").state_dir}
    guest_intact(console(cluster, vm_id, "node3"), last_tick=seen)

    # A LUN in use cannot be forgotten; grown on the array, a scan finds its new size.
    assert api.delete("/pools/san/volumes/lun1").status_code == 409
    assert api.patch("/pools/san/volumes/lun2", json={"size": 2**27}).status_code == 409


def test_what_lun_pools_refuse(cluster3, api, array) -> None:
    api.ok("POST", "/pools", json=iscsi("san2", array))
    refused = api.post("/pools/san2/volumes", json={"name": "new", "size": 2**20})
    assert refused.status_code == 422 and refused.json()["fields"][0]["field"] == "path.name"
    refused = api.post(
        "/vms",
        json={"name": "nope", "memory_mib": 64, "disks": [{"pool": "san2", "size": 2**20}]},
    )
    assert refused.status_code == 422
    assert refused.json()["fields"][0]["field"] == "body.disks.0.pool", refused.text
    assert api.post("/pools/local/scan").status_code in (404, 409)
    bad = api.post("/pools", json={"name": "half", "type": "iscsi", "portal": array.portal})
    assert bad.status_code == 422 and "target" in bad.json()["message"], bad.text
    bad = api.post("/pools", json={"name": "bad", "type": "nfs", "server": "x", "export": "rel"})
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "body.export"
    # A target the portal does not offer: the scan fails and says so.
    api.ok(
        "POST",
        "/pools",
        json={"name": "wrong", "type": "iscsi", "portal": array.portal, "target": IQN + "-x"},
    )
    task = api.task_end(api.ok("POST", "/pools/wrong/scan")["task"])
    assert task["state"] == "failed" and "offers no target" in task["error"], task
    assert api.ok("GET", "/pools/wrong/volumes") == []


@pytest.fixture
def loop_lun(tmp_path: Path, testguest: Path) -> Iterator[Path]:
    """A loop device holding the test guest, under a by-id style name (an FC LUN stand-in)."""
    backing = tmp_path / "fc-lun.raw"
    shutil.copyfile(testguest, backing)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    link = by_id / "wwn-0x5000c500a1b2c3d4"
    link.symlink_to(device)
    try:
        yield link
    finally:
        # The kernel may hold the device a moment after QEMU exits.
        until_sync(lambda: subprocess.run(["losetup", "-d", device]).returncode == 0, 10, 0.2)


def test_block_device_luns_boot_a_vm(cluster3, api, loop_lun, testguest) -> None:
    cluster, _ = cluster3
    api.ok(
        "POST",
        "/pools",
        json={"name": "fc", "type": "block", "path": str(loop_lun.parent), "pattern": "wwn-*"},
    )
    assert scan(api, "fc")["added"] == ["wwn-0x5000c500a1b2c3d4"]
    [volume] = api.ok("GET", "/pools/fc/volumes")
    assert volume["location"] == str(loop_lun) and volume["size"] == testguest.stat().st_size
    reply = api.ok(
        "POST",
        "/vms",
        json={"name": "on-fc", "memory_mib": 128, "node": "node1", "start": True,
              "disks": [{"volume": "fc/wwn-0x5000c500a1b2c3d4"}]},
    )  # fmt: skip
    api.wait_task(reply["task"])
    log = console(cluster, reply["vm"], "node1")
    wait_for(lambda: serial_lines(log, "HERON-GUEST-READY"), BOOT, "the guest to boot")
    api.wait_task(api.ok("DELETE", f"/vms/{reply['vm']}")["task"])
    # Forgetting the volume leaves the LUN's data alone.
    api.wait_task(api.ok("DELETE", "/pools/fc/volumes/wwn-0x5000c500a1b2c3d4")["task"])
    assert api.ok("GET", "/pools/fc/volumes") == []
    assert scan(api, "fc")["added"] == ["wwn-0x5000c500a1b2c3d4"]


def test_nfs_pool_that_cannot_be_mounted_says_why(cluster3, api) -> None:
    api.ok(
        "POST",
        "/pools",
        json={"name": "filer", "type": "nfs", "server": "127.0.0.1", "export": "/exports/vm"},
    )
    reply = api.ok("POST", "/pools/filer/volumes", json={"name": "d1", "size": 2**20})
    task = api.task_end(reply["task"])
    assert task["state"] == "failed"
    assert "cannot mount 127.0.0.1:/exports/vm" in task["error"], task
    volume = api.ok("GET", f"/pools/filer/volumes/{reply['volume']}")
    assert volume["state"] == "error" and "cannot mount" in volume["error"]


def test_nfs_pool_each_node_mounts_it_where_used_and_unmounts_it_when_deleted(
    cluster3, api, image, nfs_stand_in
) -> None:
    cluster, _ = cluster3
    (nfs_stand_in / "vm").mkdir()
    body = {"name": "nas", "type": "nfs", "server": FAKE_NAS, "export": "/vm"}
    assert api.ok("POST", "/pools", json=body)["shared"] is True
    points = {n.name: Path(n.state_dir) / "mnt" / "nas" for n in cluster.nodes}
    reply = api.ok(
        "POST",
        "/vms",
        json={"name": "on-nfs", "memory_mib": 128, "node": "node1", "start": True,
              "disks": [{"pool": "nas", "source": image}]},
    )  # fmt: skip
    assert api.wait_task(reply["task"])["state"] == "succeeded"
    vm_id = reply["vm"]
    log = console(cluster, vm_id, "node1")
    wait_for(lambda: serial_lines(log, "HERON-GUEST-READY"), BOOT, "the guest to boot from NFS")
    [volume] = api.ok("GET", "/pools/nas/volumes")
    assert (nfs_stand_in / "vm" / f"{volume['name']}.qcow2").is_file()  # on the server
    assert mounted(points["node1"]) and not mounted(points["node3"])  # only where used
    assert api.ok("GET", "/pools/nas")["capacity"]["total_bytes"] > 0

    # Shared: node2 mounts it too, and the VM moves with nothing to copy.
    seen = ticks(log)[-1] if ticks(log) else 0
    task = api.wait_task(
        api.ok("POST", f"/vms/{vm_id}/actions/migrate", json={"target": "node2"})["task"]
    )
    assert task["state"] == "succeeded" and task["result"]["disks_copied"] == 0, task
    assert mounted(points["node2"])
    guest_intact(console(cluster, vm_id, "node2"), last_tick=seen)

    assert api.delete("/pools/nas").status_code == 409  # it holds a volume
    api.wait_task(api.ok("DELETE", f"/vms/{vm_id}", params={"volumes": True})["task"])
    assert api.delete("/pools/nas").status_code in (200, 204)
    wait_for(
        lambda: not any(mounted(p) or p.exists() for p in points.values()),
        30,
        "every node to unmount the deleted pool",
    )
    assert sorted(p.name for p in (nfs_stand_in / "vm").iterdir()) == []  # the file went too


@dataclass
class Ceph:
    """The Ceph pool of HERON_TEST_RBD, seen through the real rbd tool and qemu-io."""

    pool: str
    conf: str

    def rbd(self, *args: str) -> Any:
        found = subprocess.run(
            ["rbd", *(["-c", self.conf] if self.conf else []), *args, "--format", "json"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return json.loads(found) if found.strip() else None

    def snapshots(self, image: str) -> dict[str, bool]:
        """The image's snapshots: name -> protected."""
        return {s["name"]: s["protected"] == "true"
                for s in self.rbd("snap", "ls", f"{self.pool}/{image}")}  # fmt: skip

    def qemu_io(self, image: str, command: str, *, shared: bool = False) -> str:
        name = f"rbd:{self.pool}/{image}" + (f":conf={self.conf}" if self.conf else "")
        extra = ["-U", "-r"] if shared else []
        said = subprocess.run(["qemu-io", *extra, "-f", "raw", "-c", command, name],
                              capture_output=True, text=True, check=False)  # fmt: skip
        return said.stdout + said.stderr

    def holds(self, image: str, pattern: int, *, shared: bool = False) -> bool:
        said = self.qemu_io(image, f"read -P {pattern} 0 1M", shared=shared)
        assert "read 1048576/1048576" in said or "Pattern verification failed" in said, said
        return "Pattern verification failed" not in said


@pytest.mark.skipif(
    not os.environ.get("HERON_TEST_RBD"),
    reason="needs a Ceph cluster: set HERON_TEST_RBD=<pool>[,<ceph.conf>] where one is reachable",
)
def test_rbd_pool_where_ceph_is_reachable(cluster3, api, image) -> None:
    rbd_pool, _, conf = os.environ["HERON_TEST_RBD"].partition(",")
    ceph = Ceph(rbd_pool, conf)
    body = {"name": "ceph", "type": "rbd", "rbd_pool": rbd_pool}
    if conf:
        body["conf"] = conf
    api.ok("POST", "/pools", json=body)
    capabilities = api.ok("GET", "/pools/ceph")["capabilities"]
    assert capabilities["native_snapshots"] and capabilities["linked_clones"], capabilities
    reply = api.ok(
        "POST",
        "/vms",
        json={"name": "on-ceph", "memory_mib": 128, "start": True,
              "disks": [{"pool": "ceph", "source": image, "format": "raw"},
                        {"pool": "ceph", "size": 16 * 2**20}]},
    )  # fmt: skip
    api.wait_task(reply["task"])
    cluster, _ = cluster3
    vm = reply["vm"]
    node = api.vm(vm)["node"]
    log = console(cluster, vm, node)
    wait_for(lambda: serial_lines(log, "HERON-GUEST-READY"), BOOT, "the guest to boot from RBD")

    # Snapshots: RBD snapshots of both images, taken with the guest paused. The guest runs
    # from its initramfs: the data disk is written with qemu-io while the VM is off.
    def act(method: str, path: str, **body: object) -> dict:
        return api.wait_task(api.ok(method, path, **body)["task"], timeout=300)

    act("POST", f"/vms/{vm}/actions/stop")
    assert "wrote 1048576/1048576" in ceph.qemu_io("on-ceph-disk1", "write -P 1 0 1M")
    act("POST", f"/vms/{vm}/actions/start")
    act("POST", f"/vms/{vm}/snapshots", json={"name": "s1"})
    s1 = api.ok("GET", f"/vms/{vm}/snapshots/s1")
    assert [d["method"] for d in s1["disks"]] == ["native", "native"], s1
    for disk in ("on-ceph-disk0", "on-ceph-disk1"):
        assert ceph.snapshots(disk) == {s1["id"]: False}
    act("POST", f"/vms/{vm}/actions/stop")
    assert "wrote" in ceph.qemu_io("on-ceph-disk1", "write -P 2 0 1M")
    act("POST", f"/vms/{vm}/snapshots/s1/revert")
    assert ceph.holds("on-ceph-disk1", 1)

    # Clones of the snapshot: linked (rbd clone of the protected snapshot) and full (rbd cp).
    linked = api.ok("POST", f"/vms/{vm}/clone",
                    json={"name": "ceph-linked", "snapshot": "s1", "linked": True})  # fmt: skip
    full = api.ok("POST", f"/vms/{vm}/clone", json={"name": "ceph-full", "snapshot": "s1"})
    api.wait_task(linked["task"], timeout=300)
    api.wait_task(full["task"], timeout=300)
    parent = ceph.rbd("info", f"{rbd_pool}/ceph-linked-disk1")["parent"]
    assert (parent["image"], parent["snapshot"]) == ("on-ceph-disk1", s1["id"])
    assert "parent" not in ceph.rbd("info", f"{rbd_pool}/ceph-full-disk1")
    assert ceph.holds("ceph-linked-disk1", 1) and ceph.holds("ceph-full-disk1", 1)
    assert ceph.snapshots("on-ceph-disk1") == {s1["id"]: True}
    assert api.delete(f"/vms/{vm}/snapshots/s1").status_code == 409  # a clone reads it
    for clone in (linked, full):
        act("DELETE", f"/vms/{clone['vm']}", params={"volumes": True})
    act("DELETE", f"/vms/{vm}/snapshots/s1")  # unprotected, then removed
    assert ceph.snapshots("on-ceph-disk1") == {}

    # A template and a linked clone of it: the clone's base snapshot goes with the clone.
    api.ok("PUT", f"/vms/{vm}/template", json={"template": True})
    child = api.ok("POST", f"/vms/{vm}/clone", json={"name": "ceph-child", "linked": True})
    api.wait_task(child["task"], timeout=300)
    base = ceph.rbd("info", f"{rbd_pool}/ceph-child-disk1")["parent"]["snapshot"]
    assert base.startswith("heron-base-") and ceph.snapshots("on-ceph-disk1") == {base: True}
    assert ceph.holds("ceph-child-disk1", 1)
    assert api.delete(f"/vms/{vm}", params={"volumes": True}).status_code == 409
    act("DELETE", f"/vms/{child['vm']}", params={"volumes": True})
    assert ceph.snapshots("on-ceph-disk1") == {}
    act("DELETE", f"/vms/{vm}", params={"volumes": True})
    left = set(ceph.rbd("ls", rbd_pool) or [])
    assert not left & {"on-ceph-disk0", "on-ceph-disk1", "ceph-linked-disk0", "ceph-full-disk0"}
