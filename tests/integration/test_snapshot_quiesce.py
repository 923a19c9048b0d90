"""An application-consistent snapshot through the API: the Debian guest (qemu-ga, the
PostgreSQL freeze hook Heron ships) frozen by its agent for a snapshot with quiesce required,
thawed after it, and the record saying so with the freeze window. One boot of a 1 GiB TCG
guest: the slowest snapshot test, kept in a file of its own."""

import pytest
from support import Api, wait_for

from heron.devcluster import DevCluster
from heron.testguest import debian

pytestmark = pytest.mark.integration

BOOT = 400  # TCG on a shared machine (see test_guest_agent.py)


@pytest.fixture(scope="module")
def api(cluster1: tuple[DevCluster, str]) -> Api:
    cluster, token = cluster1
    return Api(cluster.nodes[0].url, token)


def test_required_quiesce_freezes_the_guest_through_its_agent(
    api: Api, debian_guest: debian.DebianGuest
) -> None:
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
            "name": "quiet",
            "memory_mib": 1024,
            "start": True,
            "guest_agent": True,
            "disks": [{"volume": "local/debian"}],
        },
    )
    api.wait_task(reply["task"])
    vm = reply["vm"]

    def answering() -> bool:
        agent = (api.vm(vm)["status"] or {}).get("guest_agent") or {}
        return bool(agent.get("connected"))

    wait_for(answering, BOOT, "the guest agent to answer", interval=1)
    taken = api.ok(
        "POST",
        f"/vms/{vm}/snapshots",
        json={"name": "consistent", "quiesce": "required", "freeze_limit_s": 60},
    )
    task = api.wait_task(taken["task"], timeout=300)
    assert task["result"]["consistency"] == "application", task
    snapshot = api.ok("GET", f"/vms/{vm}/snapshots/consistent")
    assert snapshot["consistency"] == "application" and snapshot["state"] == "ready"
    assert "frozen by the guest agent" in snapshot["consistency_reason"]
    assert snapshot["freeze_ms"] is not None and snapshot["freeze_ms"] > 0
    # Thawed after it: the agent answers, and says so.
    assert api.vm(vm)["state"] == "running"
    api.ok("DELETE", f"/vms/{vm}", params={"volumes": True})


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
