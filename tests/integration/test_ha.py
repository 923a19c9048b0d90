"""High availability on a real 3-node devcluster: leader failover, node failure, fencing."""

import os
import signal
import threading
import time
from pathlib import Path

from support import Api, qemu_homes, qemu_processes, serial_lines, wait_for

from heron.devcluster import DevCluster

BOOT = 120


def live_api(cluster: DevCluster, token: str, avoid: str) -> Api:
    """A client on a node other than `avoid`."""
    return Api(next(n.url for n in cluster.nodes if n.name != avoid), token, cluster.tls())


def create(api: Api, name: str, image: str, node: str, ha: bool = True) -> str:
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": name,
            "memory_mib": 128,
            "node": node,
            "start": True,
            "ha": {"enabled": ha},
            "disks": [{"pool": "shared", "source": image}],
        },
    )
    api.wait_task(reply["task"])
    return reply["vm"]


def set_agent_grace(api: Api, cluster: DevCluster, node: str, seconds: int) -> None:
    """Set the grace, and wait until `node`'s agent has told its watchdog."""
    settings = api.ok("GET", "/cluster/settings")
    api.ok("PUT", "/cluster/settings", json={**settings, "ha": {"agent_grace": seconds}})
    told = Path(cluster.node(node).state_dir) / "fence.grace"
    wait_for(
        lambda: told.exists() and told.read_text().strip() == str(seconds),
        10,
        f"{node}'s watchdog to be told the grace",
    )


def ready_on(cluster: DevCluster, vm_id: str, node: str) -> int:
    log = Path(cluster.node(node).state_dir) / "vms" / vm_id / "console.log"
    return len(serial_lines(log, f"HERON-GUEST-READY uuid={vm_id}"))


class DoubleRunChecker(threading.Thread):
    """Polls every QEMU on the machine; records if a VM ever runs on two nodes at once."""

    def __init__(self, vm_ids: list[str]):
        super().__init__(daemon=True)
        self.vm_ids = vm_ids
        self.most = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.most = max([self.most, *(len(qemu_homes(v)) for v in self.vm_ids)])
            self.halt.wait(0.02)  # the polling period


def test_a_new_leader_when_the_leader_dies(cluster3, api) -> None:
    cluster, token = cluster3
    leader = wait_for(lambda: api.ok("GET", "/cluster")["leader"], 20, "a leader")
    os.kill(cluster.herond_pid(cluster.node(leader)), signal.SIGKILL)
    other = live_api(cluster, token, leader)
    successor = wait_for(
        lambda: (new := other.ok("GET", "/cluster")["leader"]) != leader and new,
        10,
        "a new leader",
    )
    assert successor != leader
    cluster.start_node(leader)
    cluster.wait_api(cluster.node(leader), 60)


def test_ha_vms_of_a_dead_node_restart_elsewhere(cluster3, api, image) -> None:
    cluster, token = cluster3
    victim = "node2"
    ha_vms = [create(api, f"ha{i}", image, victim) for i in range(2)]
    plain = create(api, "plain", image, victim, ha=False)
    # A VM without HA of its own, in a group whose policy enables it, is protected too.
    api.ok("POST", "/groups", json={"name": "critical", "ha": {"enabled": True}})
    member = api.ok(
        "POST",
        "/vms",
        json={
            "name": "member",
            "memory_mib": 128,
            "node": victim,
            "start": True,
            "group": "critical",
            "disks": [{"pool": "shared", "source": image}],
        },
    )
    api.wait_task(member["task"])
    ha_vms.append(member["vm"])
    for vm_id in ha_vms:
        wait_for(lambda v=vm_id: ready_on(cluster, v, victim), BOOT, "first boot")
    checker = DoubleRunChecker(ha_vms)
    checker.start()
    cluster.kill_node(victim)
    other = live_api(cluster, token, victim)
    for vm_id in ha_vms:
        moved = wait_for(
            lambda v=vm_id: (vm := other.vm(v))["node"] != victim and vm,
            30,
            "the VM to be given to another node",
        )
        wait_for(
            lambda v=vm_id, n=moved["node"]: ready_on(cluster, v, n),
            BOOT,
            "the guest's serial line on its new node",
        )
        assert other.vm(vm_id)["state"] == "running"
    assert other.vm(plain)["node"] == victim and other.vm(plain)["state"] == "unknown"
    checker.halt.set()
    checker.join()
    assert checker.most == 1, "a VM ran on two nodes at once"
    events = other.ok("GET", "/events", params={"limit": 1000})
    assert {e["target"] for e in events if e.get("user") == "ha" and e["result"] == "ok"} >= set(
        ha_vms
    )
    cluster.start_node(victim)
    cluster.wait_api(cluster.node(victim), 60)


def test_an_agent_away_keeps_its_ha_vms_for_the_grace_and_is_fenced_after(
    cluster3, api, image
) -> None:
    cluster, token = cluster3
    victim = "node3"
    set_agent_grace(api, cluster, victim, 60)
    vm_id = create(api, "fenced", image, victim)
    wait_for(lambda: ready_on(cluster, vm_id, victim), BOOT, "first boot")
    other = live_api(cluster, token, victim)
    # Killed (or restarted for an upgrade) while its watchdog keeps the node present: the HA
    # VM is neither fenced nor restarted elsewhere, though the agent's lease is gone.
    pid = api.vm(vm_id)["status"]["pid"]
    os.kill(cluster.herond_pid(cluster.node(victim)), signal.SIGKILL)
    wait_for(
        lambda: victim not in {n["name"] for n in other.ok("GET", "/nodes")},
        30,
        "the agent's lease to expire",
    )
    deadline = time.monotonic() + 3  # a bounded observation window past the old fence deadline
    while time.monotonic() < deadline:
        assert other.vm(vm_id)["node"] == victim
        assert qemu_processes(vm_id) == [pid], "the watchdog fenced within the grace"
        time.sleep(0.2)
    cluster.start_node(victim)
    cluster.wait_api(cluster.node(victim), 60)
    wait_for(lambda: api.vm(vm_id)["state"] == "running", 30, "the VM seen running again")
    assert api.vm(vm_id)["status"]["pid"] == pid and api.vm(vm_id)["node"] == victim
    assert not (Path(cluster.node(victim).state_dir) / "vms" / vm_id / "fenced").exists()
    # Hung past the grace: fenced by its own watchdog, then restarted elsewhere.
    set_agent_grace(api, cluster, victim, 5)
    checker = DoubleRunChecker([vm_id])
    checker.start()
    herond = cluster.herond_pid(cluster.node(victim))
    os.kill(herond, signal.SIGSTOP)  # hung agent: QEMU runs, nobody renews the lease
    try:
        moved = wait_for(
            lambda: (vm := other.vm(vm_id))["node"] != victim and vm,
            30,
            "the VM to be given to another node",
        )
        fenced = Path(cluster.node(victim).state_dir) / "vms" / vm_id / "fenced"
        assert fenced.exists(), "the old QEMU was not stopped by the node's own watchdog"
        wait_for(lambda: ready_on(cluster, vm_id, moved["node"]), BOOT, "boot on the new node")
    finally:
        os.kill(herond, signal.SIGCONT)
    # The agent wakes up, finds its lease gone and the VM elsewhere, and leaves it there.
    wait_for(lambda: victim in {n["name"] for n in api.ok("GET", "/nodes")}, 30, "re-register")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # a bounded observation window, not synchronisation
        assert len(qemu_processes(vm_id)) == 1
        time.sleep(0.1)
    checker.halt.set()
    checker.join()
    assert checker.most == 1, "a VM ran on two nodes at once"
    assert api.vm(vm_id)["node"] == moved["node"]


def test_a_crashed_ha_vm_is_restarted_in_place(api, image) -> None:
    vm_id = create(api, "phoenix", image, "node1")
    pid = api.vm(vm_id)["status"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: (vm := api.vm(vm_id))["state"] == "running" and vm["status"]["pid"] != pid,
        30,
        "the HA VM to run again",
    )
    assert api.vm(vm_id)["node"] == "node1"


def test_a_clean_agent_stop_never_runs_an_ha_vm_twice(cluster3, api, image) -> None:
    """SIGTERM (as systemd sends) must not revoke the lease while HA VMs run: the watchdog
    stops them before the leader may start them elsewhere."""
    cluster, token = cluster3
    victim = "node2"
    set_agent_grace(api, cluster, victim, 5)
    vm_id = create(api, "graceful", image, victim)
    wait_for(lambda: ready_on(cluster, vm_id, victim), BOOT, "first boot")
    checker = DoubleRunChecker([vm_id])
    checker.start()
    os.kill(cluster.herond_pid(cluster.node(victim)), signal.SIGTERM)
    other = live_api(cluster, token, victim)
    moved = wait_for(
        lambda: (vm := other.vm(vm_id))["node"] != victim and vm,
        30,
        "the VM to be given to another node",
    )
    wait_for(lambda: ready_on(cluster, vm_id, moved["node"]), BOOT, "boot on the new node")
    assert other.vm(vm_id)["state"] == "running"
    checker.halt.set()
    checker.join()
    assert checker.most == 1, "a VM ran on two nodes at once"
    cluster.start_node(victim)
    cluster.wait_api(cluster.node(victim), 60)
    # The old node, back, keeps nothing of the VM that left it.
    stale = Path(cluster.node(victim).state_dir) / "vms" / vm_id
    wait_for(lambda: not stale.exists(), 30, "the old runtime directory to go")
