"""A VM's life on one node: power actions, crashes, disks on every bus, volumes, deletion."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from support import Api, qemu_processes, serial_lines, wait_for

from heron.devcluster import DevCluster

BOOT = 120
CLUSTER_NODES = 1  # cluster1 for the `api` and `image` fixtures (tests/conftest.py)


def console(cluster: DevCluster, vm_id: str) -> Path:
    return Path(cluster.nodes[0].state_dir) / "vms" / vm_id / "console.log"


def readies(cluster: DevCluster, vm_id: str) -> int:
    return len(serial_lines(console(cluster, vm_id), f"HERON-GUEST-READY uuid={vm_id}"))


def create(api: Api, name: str, image: str, start: bool = True, **extra: object) -> str:
    body = {
        "name": name,
        "memory_mib": 128,
        "start": start,
        "disks": [{"pool": "local", "source": image}],
        **extra,
    }
    reply = api.ok("POST", "/vms", json=body)
    api.wait_task(reply["task"])
    return reply["vm"]


def act(api: Api, vm_id: str, action: str, **body: object) -> dict:
    reply = api.ok("POST", f"/vms/{vm_id}/actions/{action}", json=body or None)
    return api.wait_task(reply["task"])


def state(api: Api, vm_id: str) -> str:
    return api.vm(vm_id)["state"]


def test_power_actions(cluster1, api, image) -> None:
    cluster, _ = cluster1
    vm = create(api, "life", image)
    wait_for(lambda: readies(cluster, vm) == 1, BOOT, "first boot")

    act(api, vm, "shutdown", timeout=60)
    assert state(api, vm) == "shutoff" and not qemu_processes(vm)
    assert serial_lines(console(cluster, vm), "HERON-GUEST-POWEROFF"), "not an ACPI shutdown"

    act(api, vm, "start")
    wait_for(lambda: readies(cluster, vm) == 2, BOOT, "second boot")
    act(api, vm, "pause")
    assert state(api, vm) == "paused" and api.vm(vm)["power"] == "paused"
    act(api, vm, "resume")
    assert state(api, vm) == "running"

    pid = api.vm(vm)["status"]["pid"]
    act(api, vm, "reboot")
    wait_for(lambda: readies(cluster, vm) == 3, BOOT, "boot after reset")
    assert api.vm(vm)["status"]["pid"] == pid  # a reset, not a new QEMU

    poweroffs = len(serial_lines(console(cluster, vm), "HERON-GUEST-POWEROFF"))
    act(api, vm, "stop")
    assert state(api, vm) == "shutoff" and not qemu_processes(vm)
    assert len(serial_lines(console(cluster, vm), "HERON-GUEST-POWEROFF")) == poweroffs


def test_a_dead_qemu_shows_as_crashed_and_stays_down(api, image) -> None:
    vm = create(api, "crashy", image)
    pid = api.vm(vm)["status"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: state(api, vm) == "crashed", 10, "crashed state")
    assert api.vm(vm)["power"] == "running"  # the wish is unchanged; nobody restarts it
    assert not qemu_processes(vm)
    act(api, vm, "start")
    assert state(api, vm) == "running" and qemu_processes(vm)
    act(api, vm, "stop")


@pytest.mark.parametrize(("bus", "machine"), [("scsi", "q35"), ("sata", "q35"), ("ide", "pc")])
def test_boot_from_every_disk_bus(cluster1, api, image, bus: str, machine: str) -> None:
    cluster, _ = cluster1
    vm_id = api.ok(
        "POST",
        "/vms",
        json={
            "name": f"bus-{bus}",
            "memory_mib": 128,
            "machine": machine,
            "start": True,
            "disks": [{"pool": "local", "source": image, "bus": bus}],
        },
    )["vm"]
    wait_for(lambda: readies(cluster, vm_id) == 1, BOOT, f"boot from {bus}")
    api.wait_task(api.ok("DELETE", f"/vms/{vm_id}", params={"volumes": True})["task"])


def test_uefi_vm_runs_under_ovmf(api) -> None:
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": "efi",
            "memory_mib": 128,
            "firmware": "uefi",
            "disks": [{"pool": "local", "size": 16 << 20}],
            "start": True,
        },
    )
    api.wait_task(reply["task"])
    vm = api.vm(reply["vm"])
    assert vm["state"] == "running" and vm["status"]["vnc"].startswith("127.0.0.1:")
    api.wait_task(api.ok("DELETE", f"/vms/{vm['id']}", params={"volumes": True})["task"])


def _info(path: Path) -> dict:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def test_volumes_create_upload_resize_delete(cluster1, api, testguest) -> None:
    cluster, _ = cluster1
    pool_dir = Path(cluster.nodes[0].state_dir) / "pools" / "local"
    api.wait_task(
        api.ok(
            "POST", "/pools/local/volumes", json={"name": "data", "size": 64 << 20, "format": "raw"}
        )["task"]
    )
    assert _info(pool_dir / "data.raw")["virtual-size"] == 64 << 20
    api.wait_task(api.ok("PATCH", "/pools/local/volumes/data", json={"size": 96 << 20})["task"])
    assert _info(pool_dir / "data.raw")["virtual-size"] == 96 << 20
    assert api.ok("GET", "/pools/local/volumes/data")["size"] == 96 << 20

    with open(testguest, "rb") as handle:
        reply = api.ok(
            "POST",
            "/pools/local/volumes/upload",
            data={"name": "uploaded"},
            files={"file": ("guest.raw", handle)},
        )
    api.wait_task(reply["task"])
    uploaded = api.ok("GET", "/pools/local/volumes/uploaded")
    assert uploaded["state"] == "ready" and uploaded["format"] == "qcow2"
    assert uploaded["size"] == testguest.stat().st_size
    assert 0 < uploaded["allocation"] < testguest.stat().st_size  # qcow2 keeps only data
    assert not list((Path(cluster.nodes[0].state_dir) / "uploads").iterdir())

    api.wait_task(api.ok("DELETE", "/pools/local/volumes/data")["task"])
    assert not (pool_dir / "data.raw").exists()
    assert api.get("/pools/local/volumes/data").status_code == 404


def test_online_resize_and_delete_with_volumes(cluster1, api, image) -> None:
    cluster, _ = cluster1
    vm_id = create(api, "grow", image)
    volume = api.vm(vm_id)["spec"]["disks"][0]["volume"]
    size = api.ok("GET", f"/pools/local/volumes/{volume}")["size"]
    task = api.wait_task(
        api.ok("PATCH", f"/pools/local/volumes/{volume}", json={"size": size + (32 << 20)})["task"]
    )
    assert task["result"]["online"] is True
    path = Path(cluster.nodes[0].state_dir) / "pools" / "local" / "grow-disk0.qcow2"
    assert _info(path)["virtual-size"] == size + (32 << 20)

    api.wait_task(api.ok("DELETE", f"/vms/{vm_id}", params={"volumes": True})["task"])
    assert api.get(f"/vms/{vm_id}").status_code == 404
    assert not qemu_processes(vm_id) and not path.exists()
    assert api.get(f"/pools/local/volumes/{volume}").status_code == 404
    # The name is free again.
    create(api, "grow", image, start=False)


def test_edits_of_a_running_vm_wait_for_its_next_start(api, image) -> None:
    vm = create(api, "edited", image)
    assert api.vm(vm)["pending"] == []
    changed = api.ok("PATCH", f"/vms/{vm}", json={"vcpus": 2, "description": "at once"})
    assert changed["pending"] == ["vcpus"] and changed["spec"]["description"] == "at once"

    api.wait_task(
        api.ok("POST", "/pools/local/volumes", json={"name": "extra", "size": 16 << 20})["task"]
    )
    attached = api.ok("POST", f"/vms/{vm}/disks", json={"volume": "local/extra", "bus": "scsi"})
    assert attached["pending"] == ["vcpus", "disks"] and len(attached["spec"]["disks"]) == 2
    # Its QEMU does not have the disk yet: the volume grows offline, not through QMP.
    grown = api.ok("PATCH", "/pools/local/volumes/extra", json={"size": 32 << 20})
    assert api.wait_task(grown["task"])["result"]["online"] is False
    taken = api.post(f"/vms/{vm}/disks", json={"volume": "local/extra"})
    assert taken.status_code == 409 and "a disk of VM edited" in taken.json()["message"]
    # Its QEMU does not have the disk, but nothing may take the volume from under a restart.
    running = api.request("DELETE", f"/vms/{vm}/disks/1")
    assert running.status_code == 409 and "switch it off" in running.json()["message"]
    assert api.request("DELETE", f"/vms/{vm}/disks/7").status_code == 404

    act(api, vm, "stop")
    assert api.vm(vm)["pending"] == []  # nothing runs: nothing waits
    act(api, vm, "start")
    view = api.vm(vm)
    assert view["pending"] == [] and view["status"]["hardware"]["vcpus"] == 2
    args = Path(f"/proc/{qemu_processes(vm)[0]}/cmdline").read_bytes().split(b"\0")
    assert args[args.index(b"-smp") + 1] == b"2,maxcpus=2"  # layout 3: no room asked for
    act(api, vm, "stop")
    detached = api.ok("DELETE", f"/vms/{vm}/disks/1")
    assert len(detached["spec"]["disks"]) == 1
    assert api.ok("GET", "/pools/local/volumes/extra")["attached_to"] is None
    api.wait_task(api.ok("DELETE", f"/vms/{vm}", params={"volumes": True})["task"])
    api.wait_task(api.ok("DELETE", "/pools/local/volumes/extra")["task"])


def test_group_and_ha_policy_change_at_once(cluster1, api, image) -> None:
    cluster, _ = cluster1
    vm = create(api, "policy", image)
    refused = api.request("PATCH", f"/vms/{vm}", json={"group": "nope"})
    assert refused.status_code == 422 and refused.json()["fields"][0]["field"] == "body.group"
    api.ok("POST", "/groups", json={"name": "web"})
    assert api.ok("PATCH", f"/vms/{vm}", json={"group": "web"})["spec"]["group"] == "web"
    assert api.ok("PATCH", f"/vms/{vm}", json={"description": "kept"})["spec"]["group"] == "web"
    assert api.ok("PATCH", f"/vms/{vm}", json={"group": None})["spec"]["group"] is None

    # The running QEMU is marked for fencing as soon as HA is turned on, and unmarked after.
    marker = Path(cluster.nodes[0].state_dir) / "vms" / vm / "ha"
    assert not marker.exists()
    view = api.ok("PATCH", f"/vms/{vm}", json={"ha": {"enabled": True, "priority": 70}})
    assert view["pending"] == []
    wait_for(marker.exists, 10, "the HA mark of the running QEMU")
    api.ok("PATCH", f"/vms/{vm}", json={"ha": {"enabled": False}})
    wait_for(lambda: not marker.exists(), 10, "the HA mark to go")
    api.wait_task(api.ok("DELETE", f"/vms/{vm}", params={"volumes": True})["task"])
    assert api.request("DELETE", "/groups/web").status_code == 204
