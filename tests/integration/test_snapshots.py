"""Snapshots of VMs through the API, on a real node with real test guests and qcow2 disks on
a node-local dir pool: disk snapshots taken off and running, a middle one deleted, reverts;
a memory snapshot brings back what the running guest held in RAM (through its command
channel); bad requests are refused and change nothing."""

import json
import subprocess
from pathlib import Path

import pytest
from support import Api, cli, serial_lines, wait_for

from heron.devcluster import DevCluster
from heron.testguest.net import CommandChannel

pytestmark = pytest.mark.integration
CLUSTER_NODES = 1  # cluster1 for the `api` and `image` fixtures (tests/conftest.py)

BOOT = 180
MiB = 1024**2


def vm_dir(cluster: DevCluster, vm_id: str) -> Path:
    return Path(cluster.nodes[0].state_dir) / "vms" / vm_id


def readies(cluster: DevCluster, vm_id: str) -> int:
    log = vm_dir(cluster, vm_id) / "console.log"
    return len(serial_lines(log, f"HERON-GUEST-READY uuid={vm_id}"))


def guest(api: Api, cluster: DevCluster, name: str, image: str) -> str:
    """A running test guest with a blank 16 MiB qcow2 data disk (vdb), once it is up."""
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": name,
            "memory_mib": 128,
            "start": True,
            "disks": [{"pool": "local", "source": image}, {"pool": "local", "size": 16 * MiB}],
        },
    )
    api.wait_task(reply["task"])
    wait_for(lambda: readies(cluster, reply["vm"]) >= 1, BOOT, f"{name} to boot")
    return str(reply["vm"])


def run(cluster: DevCluster, vm_id: str, command: str) -> str:
    with CommandChannel(vm_dir(cluster, vm_id) / "serial.sock") as channel:
        result = channel.run(command, timeout=60)
    assert result.rc == 0, result
    return result.output


def data_image(cluster: DevCluster, vm_name: str) -> Path:
    """The data disk's qcow2 file in the node's local pool."""
    return Path(cluster.nodes[0].state_dir) / "pools" / "local" / f"{vm_name}-disk1.qcow2"


def qemu_io(image: Path, command: str, *, shared: bool = False) -> str:
    """qemu-io on the image: alone while the VM is off, or read-only beside its QEMU."""
    extra = ["-U", "-r"] if shared else []
    said = subprocess.run(
        ["qemu-io", *extra, "-f", "qcow2", "-c", command, str(image)],
        capture_output=True,
        text=True,
        check=False,
    )
    return said.stdout + said.stderr


def holds(image: Path, pattern: int, *, shared: bool = False) -> bool:
    said = qemu_io(image, f"read -P {pattern} 0 1M", shared=shared)
    assert "read 1048576/1048576" in said or "Pattern verification failed" in said, said
    return "Pattern verification failed" not in said


def power(api: Api, vm_id: str, action: str) -> None:
    api.wait_task(api.ok("POST", f"/vms/{vm_id}/actions/{action}")["task"])


def snapshot(api: Api, vm_id: str, name: str, **body: object) -> dict:
    reply = api.ok("POST", f"/vms/{vm_id}/snapshots", json={"name": name, **body})
    api.wait_task(reply["task"], timeout=300)
    return api.ok("GET", f"/vms/{vm_id}/snapshots/{name}")


def act(api: Api, vm_id: str, method: str, path: str) -> dict:
    reply = api.ok(method, f"/vms/{vm_id}/snapshots/{path}")
    return api.wait_task(reply["task"], timeout=300)


def test_disk_snapshots_of_a_running_vm(cluster1: tuple[DevCluster, str], api: Api, image: str):
    # The test guest has no block driver (it runs from its initramfs): data goes into the
    # disk with qemu-io while the VM is off, and is read beside its running QEMU (-U).
    cluster, _ = cluster1
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": "snap-disks",
            "memory_mib": 128,
            "disks": [{"pool": "local", "source": image}, {"pool": "local", "size": 16 * MiB}],
        },
    )
    api.wait_task(reply["task"])
    vm = reply["vm"]
    data = data_image(cluster, "snap-disks")
    for index in (1, 2, 3):
        qemu_io(data, f"write -P {index} 0 1M")
        if index > 1:
            power(api, vm, "start")  # s2 and s3 are taken while it runs
        taken = snapshot(api, vm, f"s{index}", description=f"after pattern {index}")
        assert taken["state"] == "ready" and taken["current"], taken
        assert taken["consistency"] == "crash" and taken["consistency_reason"]
        assert [d["method"] for d in taken["disks"]] == ["qcow2", "qcow2"]
        if index > 1:
            power(api, vm, "stop")
    qemu_io(data, "write -P 4 0 1M")
    power(api, vm, "start")
    listed = api.ok("GET", f"/vms/{vm}/snapshots")
    s1, s2, s3 = listed["snapshots"]
    assert (s1["parent"], s2["parent"], s3["parent"]) == (None, s1["id"], s2["id"])

    # A live migration would copy the local disks without their snapshots: refused.
    refused = api.post(f"/vms/{vm}/actions/migrate", json={})
    assert refused.status_code == 409 and "snapshots" in refused.json()["message"], refused.text

    # The middle one goes while the VM runs; its child follows its parent.
    act(api, vm, "DELETE", "s2")
    listed = api.ok("GET", f"/vms/{vm}/snapshots")
    assert [(s["name"], s["parent"]) for s in listed["snapshots"]] == [
        ("s1", None),
        ("s3", s1["id"]),
    ]
    assert holds(data, 4, shared=True)

    # Disk-only: QEMU is stopped for the revert, and the VM, running before, runs again.
    ids = {s["name"]: s["id"] for s in listed["snapshots"]}
    for name, pattern in (("s3", 3), ("s1", 1)):
        pid = api.vm(vm)["status"]["pid"]
        done = act(api, vm, "POST", f"{name}/revert")
        assert done["result"]["state"] == "running" and not done["result"]["memory"], done
        assert api.vm(vm)["status"]["pid"] != pid  # a new QEMU
        assert holds(data, pattern, shared=True)
        assert api.ok("GET", f"/vms/{vm}/snapshots")["current"] == ids[name]
    api.ok("DELETE", f"/vms/{vm}", params={"volumes": True})


def test_a_memory_snapshot_comes_back_running(
    cluster1: tuple[DevCluster, str], api: Api, image: str
):
    cluster, _ = cluster1
    vm = guest(api, cluster, "snap-memory", image)
    run(cluster, vm, "echo before > /tmp/mark")
    taken = snapshot(api, vm, "warm", memory=True)
    assert taken["memory"] and taken["vm_state_size"] > 0, taken
    assert [d["vm_state"] for d in taken["disks"]] == [True, False]
    run(cluster, vm, "echo after > /tmp/mark")
    done = act(api, vm, "POST", "warm/revert")
    assert done["result"] == {"snapshot": taken["id"], "memory": True, "state": "running"}
    # The same boot, its memory as it was: no new boot, the file in RAM says "before".
    assert run(cluster, vm, "cat /tmp/mark").strip() == "before"
    assert readies(cluster, vm) == 1
    # Off, the VM comes back from the snapshot too: a new QEMU with that memory, running.
    run(cluster, vm, "echo after > /tmp/mark")
    api.wait_task(api.ok("POST", f"/vms/{vm}/actions/stop")["task"])
    done = act(api, vm, "POST", "warm/revert")
    assert done["result"] == {"snapshot": taken["id"], "memory": True, "state": "running"}
    assert api.vm(vm)["power"] == "running"
    assert run(cluster, vm, "cat /tmp/mark").strip() == "before"
    assert readies(cluster, vm) == 1
    act(api, vm, "DELETE", "warm")
    assert api.ok("GET", f"/vms/{vm}/snapshots")["snapshots"] == []
    api.ok("DELETE", f"/vms/{vm}", params={"volumes": True})


def test_bad_requests_change_nothing(api: Api) -> None:
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": "snap-raw",
            "memory_mib": 64,
            "disks": [{"pool": "local", "size": MiB, "format": "raw"}],
        },
    )
    api.wait_task(reply["task"])
    raw = reply["vm"]
    refused = api.post(f"/vms/{raw}/snapshots", json={"name": "x"})
    assert refused.status_code == 409, refused.text
    assert refused.json()["fields"][0]["field"] == "disks.0"
    assert "raw" in refused.json()["fields"][0]["reason"]

    reply = api.ok(
        "POST",
        "/vms",
        json={"name": "snap-off", "memory_mib": 64, "disks": [{"pool": "local", "size": MiB}]},
    )
    api.wait_task(reply["task"])
    off = reply["vm"]
    cases = [
        ({"name": "Bad Name"}, 422, "body.name"),
        ({"name": "ok", "freeze_limit_s": 0}, 422, "body.freeze_limit_s"),
        ({"name": "ok", "quiesce": "sometimes"}, 422, "body.quiesce"),
        ({"name": "ok", "memory": True}, 422, "body.memory"),  # it is off: no memory
    ]
    for body, status, field in cases:
        answer = api.post(f"/vms/{off}/snapshots", json=body)
        assert answer.status_code == status, (body, answer.text)
        assert field in [f["field"] for f in answer.json()["fields"]], (body, answer.text)
    assert api.ok("GET", f"/vms/{off}/snapshots")["snapshots"] == []

    # Off, it is taken with qemu-img; a name is taken once.
    taken = snapshot(api, off, "cold")
    assert taken["state"] == "ready" and "off" in taken["consistency_reason"]
    again = api.post(f"/vms/{off}/snapshots", json={"name": "cold"})
    assert again.status_code == 409 and again.json()["fields"][0]["field"] == "body.name"
    assert api.post(f"/vms/{off}/snapshots/nothing/revert").status_code == 404
    renamed = api.ok("PATCH", f"/vms/{off}/snapshots/cold", json={"name": "frozen"})
    assert renamed["name"] == "frozen" and renamed["id"] == taken["id"]
    assert len(api.ok("GET", f"/vms/{off}/snapshots")["snapshots"]) == 1
    done = act(api, off, "POST", "frozen/revert")
    assert done["result"]["state"] == "shutoff", done  # off it was, off it stays
    act(api, off, "DELETE", "frozen")
    for vm in (raw, off):
        api.ok("DELETE", f"/vms/{vm}", params={"volumes": True})


def test_the_cli(cluster1: tuple[DevCluster, str], api: Api, tmp_path: Path) -> None:
    cluster, token = cluster1
    env = {
        "HERON_URL": cluster.nodes[0].url,
        "HERON_TOKEN": token,
        "HERON_CONFIG": str(tmp_path / "cli.json"),
        "HERON_CA_FILE": str(cluster.ca_file),
    }
    cli(env, "vm", "create", "snap-cli", "--memory", "64M", "--disk", "local:1M")
    cli(env, "vm", "snapshot", "create", "snap-cli", "one", "--quiesce", "off")
    cli(env, "vm", "snapshot", "create", "snap-cli", "two", "--description", "second")
    cli(env, "vm", "snapshot", "set", "snap-cli", "two", "--name", "deux")
    listed = cli(env, "vm", "snapshot", "list", "snap-cli").stdout
    assert "one" in listed and "└ deux *" in listed and "second" in listed, listed
    refused = cli(env, "vm", "snapshot", "revert", "snap-cli", "one", check=False)
    # It asked, had no answer, and reverted nothing.
    assert refused.returncode == 130 and "Revert VM snap-cli to one?" in refused.stdout
    assert api.ok("GET", "/vms/snap-cli/snapshots/deux")["current"]
    cli(env, "vm", "snapshot", "revert", "snap-cli", "one", "--yes")
    cli(env, "vm", "snapshot", "delete", "snap-cli", "deux")
    shown = json.loads(cli(env, "vm", "snapshot", "list", "snap-cli", "--json").stdout)
    assert [(s["name"], s["current"]) for s in shown["snapshots"]] == [("one", True)]
    bad = cli(env, "vm", "snapshot", "create", "snap-cli", "x", "--quiesce", "maybe", check=False)
    assert bad.returncode == 2 and "--quiesce" in bad.stderr, bad.stderr
    api.ok("DELETE", "/vms/snap-cli", params={"volumes": True})
