"""DR protection through the API on a one-node cluster with one real test guest (TCG): the
node's agent runs a round each interval into its replica store; the inventory shows the
points and the RPO achieved; retention keeps N; a point restored as a new VM holds what the
guest had written before it (and not what it wrote after); unprotect stops the rounds; bad
input is refused with the field, a VM on a raw volume with 409."""

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support import Api, serial_lines, wait_for

from heron.devcluster import DevCluster
from heron.testguest.net import CommandChannel

pytestmark = pytest.mark.integration
CLUSTER_NODES = 1  # cluster1 for the `api` and `image` fixtures (tests/conftest.py)

BOOT = 180
ROUNDS = 240  # three rounds of a TCG guest on a shared machine, with room
MiB = 1024**2


def vm_dir(cluster: DevCluster, vm_id: str) -> Path:
    return Path(cluster.nodes[0].state_dir) / "vms" / vm_id


def run(cluster: DevCluster, vm_id: str, command: str) -> str:
    with CommandChannel(vm_dir(cluster, vm_id) / "serial.sock") as channel:
        result = channel.run(command, timeout=60)
    assert result.rc == 0, result
    return result.output


def write(cluster: DevCluster, vm_id: str, offset: int, first: int, last: int) -> bytes:
    """The guest writes the numbers first..last at `offset` of its data disk, and fsyncs."""
    said = run(
        cluster,
        vm_id,
        f"seq {first} {last} | dd of=/dev/vdb bs=4096 seek={offset // 4096} "
        "conv=notrunc,fsync 2>/dev/null && echo written",
    )
    assert "written" in said, said
    return "".join(f"{n}\n" for n in range(first, last + 1)).encode()


def row(api: Api, vm_id: str) -> dict[str, Any]:
    found = [r for r in api.ok("GET", "/dr/vms")["vms"] if r["vm"] == vm_id]
    assert len(found) == 1, found
    return found[0]


def rounds(api: Api, vm_id: str) -> list[dict[str, Any]]:
    return [
        t for t in api.ok("GET", "/tasks", params={"limit": 1000})
        if t["kind"] == "dr.replicate" and t["target"] == vm_id
    ]  # fmt: skip


def field_of(reply: Any) -> list[str]:
    return [f["field"] for f in reply.json()["fields"]]


def test_protect_rounds_retention_restore_unprotect(
    cluster1: tuple[DevCluster, str], api: Api, image: str, tmp_path: Path
) -> None:
    cluster, _ = cluster1
    api.ok("PUT", "/cluster/settings", json={"dr": {"min_interval_seconds": 1}})
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": "dr-src",
            "memory_mib": 128,
            "start": True,
            "disks": [{"pool": "local", "source": image}, {"pool": "local", "size": 16 * MiB}],
        },
    )
    api.wait_task(reply["task"])
    vm = reply["vm"]
    log = vm_dir(cluster, vm) / "console.log"
    wait_for(lambda: serial_lines(log, f"HERON-GUEST-READY uuid={vm}"), BOOT, "the guest to boot")
    run(cluster, vm, "timeout 60 sh -c 'until [ -b /dev/vdb ]; do sleep 0.2; done'")
    first = write(cluster, vm, 1 * MiB, 1, 20000)

    # Bad input: the field and the reason.
    for body, field in (
        ({"interval_seconds": 0}, "body.interval_seconds"),
        ({"retention": 0}, "body.retention"),
        ({"retention": 101}, "body.retention"),
    ):
        refused = api.put(f"/dr/vms/{vm}/protection", json=body)
        assert refused.status_code == 422 and field in field_of(refused), refused.text
    api.ok("PUT", "/cluster/settings", json={"dr": {"min_interval_seconds": 30}})
    refused = api.put(f"/dr/vms/{vm}/protection", json={"interval_seconds": 5})
    assert refused.status_code == 422 and field_of(refused) == ["body.interval_seconds"]
    api.ok("PUT", "/cluster/settings", json={"dr": {"min_interval_seconds": 1}})
    # A VM whose disk cannot be replicated (raw: no persistent dirty bitmaps): 409, why.
    raw = api.ok(
        "POST",
        "/vms",
        json={"name": "dr-raw", "memory_mib": 64,
              "disks": [{"pool": "local", "size": 4 * MiB, "format": "raw"}]},
    )  # fmt: skip
    api.wait_task(raw["task"])
    refused = api.put(f"/dr/vms/{raw['vm']}/protection", json={"interval_seconds": 5})
    assert refused.status_code == 409, refused.text
    assert "ReplicationUnsupported" in refused.text and field_of(refused) == ["disks.0"]
    assert not row(api, raw["vm"])["protected"]

    protected = api.ok(
        "PUT", f"/dr/vms/{vm}/protection", json={"interval_seconds": 4, "retention": 2}
    )
    assert protected["policy"] == {
        "interval_seconds": 4, "retention": 2, "hourly": 0, "daily": 0, "monthly": 0
    }  # fmt: skip
    full = wait_for(lambda: row(api, vm)["last_point"], ROUNDS, "the first point")
    points = api.ok("GET", f"/dr/vms/{vm}/points")["points"]
    assert points[0]["id"] == full and points[0]["kind"] == "full", points
    second = write(cluster, vm, 5 * MiB, 100000, 120000)
    written = time.time()

    def after_write() -> dict[str, Any] | None:
        found = api.ok("GET", f"/dr/vms/{vm}/points")["points"]
        return found[-1] if found and found[-1]["created"] > written else None

    latest = wait_for(after_write, ROUNDS, "a point after the second write")
    assert latest["kind"] == "incremental" and latest["parent"], latest
    # An increment sends the chunks the guest changed, not the disks.
    assert latest["chunks_sent"] <= 4, latest
    # Retention: three rounds or more, two points kept.
    wait_for(
        lambda: sum(t["state"] == "succeeded" for t in rounds(api, vm)) >= 3,
        ROUNDS,
        "a third round",
    )
    shown = row(api, vm)
    assert shown["protected"] and shown["points"] == 2, shown
    assert shown["rpo_seconds"] is not None and shown["rpo_seconds"] >= 0
    assert shown["last_point_at"] and shown["last_error"] is None
    assert shown["last_kind"] == "incremental" and shown["store_node"] == cluster.nodes[0].name
    points = api.ok("GET", f"/dr/vms/{vm}/points")["points"]
    assert len(points) == 2 and full not in [p["id"] for p in points]

    # Unprotect: the rounds stop (a running one ends first).
    api.ok("DELETE", f"/dr/vms/{vm}/protection")
    unprotected = time.time()
    assert not row(api, vm)["protected"] and row(api, vm)["rpo_seconds"] is None
    wait_for(
        lambda: all(t["state"] in ("succeeded", "failed", "cancelled") for t in rounds(api, vm)),
        ROUNDS,
        "the last round to end",
    )
    chosen = api.ok("GET", f"/dr/vms/{vm}/points")["points"][-1]
    # What the guest writes after the point is not in it.
    write(cluster, vm, 1 * MiB, 900000, 920000)

    bad = api.post(f"/dr/vms/{vm}/points/{chosen['id']}/restore", json={"name": "dr-copy"})
    assert bad.status_code == 422 and "body.pool" in field_of(bad), bad.text
    missing = api.post(f"/dr/vms/{vm}/points/nope/restore", json={"name": "x", "pool": "local"})
    assert missing.status_code == 404, missing.text
    taken = api.post(
        f"/dr/vms/{vm}/points/{chosen['id']}/restore", json={"name": "dr-src", "pool": "local"}
    )
    assert taken.status_code == 409, taken.text
    restore = api.ok(
        "POST",
        f"/dr/vms/{vm}/points/{chosen['id']}/restore",
        json={"name": "dr-copy", "pool": "local"},
    )
    api.wait_task(restore["task"], timeout=300)
    copy = api.vm(restore["vm"])
    assert copy["spec"]["name"] == "dr-copy" and len(copy["spec"]["disks"]) == 2
    data = Path(cluster.nodes[0].state_dir) / "pools" / "local" / "dr-copy-disk1.qcow2"
    flat = tmp_path / "data.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(data), str(flat)], check=True
    )
    content = flat.read_bytes()
    assert len(content) == 16 * MiB
    assert content[1 * MiB : 1 * MiB + len(first)] == first
    assert content[5 * MiB : 5 * MiB + len(second)] == second
    # No round ran after unprotect (the restore took longer than an interval): a task the
    # scheduler wrote in the instant of the DELETE finds the VM unprotected and does nothing.
    late = [t for t in rounds(api, vm) if t["created_at"] >= unprotected]
    assert all((t["result"] or {}).get("skipped") for t in late), late
    points = api.ok("GET", f"/dr/vms/{vm}/points")["points"]
    assert points[-1]["id"] == chosen["id"] and points[-1]["created"] < unprotected
