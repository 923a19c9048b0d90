"""VM networking across the nodes of a real devcluster, each node's data plane in a network
namespace of its own on a fabric of veths (heron.network.fabric), with real test guests that
get their addresses by DHCP and ping each other (heron.testguest.net).

What this kernel cannot do is done by what can: VLANs through Open vSwitch's userspace
datapath (no bridge VLAN filtering, no 802.1Q devices here), VXLAN through the kernel.
"""

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netguests import in_netns, leased, network_cluster, ping, shell, start_guest
from support import Api, cli, wait_for

from heron.devcluster import DevCluster
from heron.network import fabric

pytestmark = pytest.mark.integration

UNDERLAY_MTU = 1500


@pytest.fixture(scope="module")
def netcluster(
    tmp_path_factory: pytest.TempPathFactory, testguest: Path
) -> Iterator[tuple[DevCluster, Api]]:
    yield from network_cluster(tmp_path_factory, testguest, "netcluster")


def segment_peers(cluster: DevCluster, node: str, vni: int) -> str:
    """Where `node`'s VXLAN device for `vni` sends floods: its all-zero FDB entries, one a
    peer (the MACs it learned point at nodes too, until they age out)."""
    place = next(p for p in cluster.fabric_nodes() if p.name == node)
    fdb = in_netns(place.netns, "bridge", "fdb", "show", "dev", f"hv{vni:x}").stdout
    return "\n".join(line for line in fdb.splitlines() if line.startswith("00:00:00:00:00:00"))


def dhcp_logs(cluster: DevCluster, network: str) -> dict[str, str]:
    """Each node's DHCP server log for `network` (empty where it runs none)."""
    logs = {}
    for node in cluster.nodes:
        found = list((Path(node.state_dir) / "network" / "dhcp").glob(f"**/{network}*/*.log"))
        found += list((Path(node.state_dir) / "network" / "dhcp" / network).glob("*.log"))
        logs[node.name] = "".join(p.read_text(errors="replace") for p in set(found))
    return logs


def test_a_vxlan_segment_spans_nodes_with_one_dhcp_answer_per_guest(
    netcluster: tuple[DevCluster, Api],
) -> None:
    cluster, api = netcluster
    api.ok("POST", "/switches", json={"name": "dvs", "mtu": UNDERLAY_MTU})
    api.ok(
        "POST",
        "/networks",
        json={
            "name": "overlay",
            "switch": "dvs",
            "kind": "vxlan",
            "vni": 4242,
            "subnet": {"cidr": "10.42.0.0/24", "gateway": "10.42.0.1"},
        },
    )
    guests = [
        start_guest(cluster, api, f"ov-{n}", n, "overlay") for n in ("node1", "node2", "node3")
    ]
    states = [leased(cluster, g) for g in guests]
    for guest, state in zip(guests, states, strict=True):
        nic = guest["spec"]["nics"][0]
        assert str(state.address.ip) == nic["address"]  # the IPAM's address, by DHCP
        assert state.mac == nic["mac"]
        assert state.mtu == UNDERLAY_MTU - 50  # the segment's MTU, given by DHCP
        assert str(state.router) == "10.42.0.1"
    with shell(cluster, guests[0]) as channel:
        for other in states[1:]:
            assert ping(channel, str(other.address.ip))
        # Full-size frames cross: the guest's MTU (1450) leaves room for VXLAN's 50 bytes in
        # the underlay's 1500, and the tunnel sets DF, so a frame too big would be dropped.
        payload = UNDERLAY_MTU - 50 - 28
        assert channel.run(f"ping -c 2 -W 2 -s {payload} {states[1].address.ip}").rc == 0
    # Exactly one server answered each guest: its own node's. The others never saw it.
    logs = dhcp_logs(cluster, "overlay")
    for guest in guests:
        mac = guest["spec"]["nics"][0]["mac"]
        for node, text in logs.items():
            answered = re.search(rf"DHCP(OFFER|ACK)\(\S+\) \S+ {mac}", text)
            seen = mac in text
            if node == guest["node"]:
                assert answered, f"{node} did not answer {guest['name']}: {text[-2000:]}"
            else:
                assert not seen, f"{node}'s DHCP server saw {guest['name']}"
    status = {s["node"]: s for s in api.ok("GET", "/switches/status")}
    assert all(status[n.name]["switches"]["dvs"]["in_sync"] for n in cluster.nodes), status


def test_vlans_are_tagged_on_the_wire_and_kept_apart(netcluster: tuple[DevCluster, Api]) -> None:
    cluster, api = netcluster
    uplinks = {n.name: fabric.UPLINK for n in cluster.nodes}
    api.ok("POST", "/switches", json={"name": "phys", "backend": "ovs", "uplinks": uplinks})
    subnet = {"cidr": "10.100.0.0/24"}
    for vlan in (100, 200):
        api.ok(
            "POST",
            "/networks",
            json={
                "name": f"v{vlan}",
                "switch": "phys",
                "kind": "vlan",
                "vlan": vlan,
                "subnet": subnet,
            },
        )
    d = start_guest(cluster, api, "v100-a", "node1", "v100")
    e = start_guest(cluster, api, "v100-b", "node2", "v100")
    # The same subnet in the other VLAN, and an address of its own in it.
    f = start_guest(cluster, api, "v200-a", "node2", {"network": "v200", "address": "10.100.0.50"})
    d_ip, e_ip = (str(leased(cluster, g).address.ip) for g in (d, e))
    leased(cluster, f)
    node2 = next(p for p in cluster.fabric_nodes() if p.name == "node2")
    capture = subprocess.Popen(
        [
            "nsenter",
            f"--net=/run/netns/{fabric.fabric_netns(cluster.netns_prefix)}",
            "tcpdump",
            "-e",
            "-n",
            "-l",
            "-i",
            node2.fabric_port("up"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        with shell(cluster, e) as channel:
            assert ping(channel, d_ip)
        with shell(cluster, f) as channel:
            # Same subnet, other VLAN: the ARP request goes out tagged 200 and nobody answers.
            assert not ping(channel, d_ip, count=2)
    finally:
        capture.terminate()
        seen, _ = capture.communicate(timeout=30)
    assert "vlan 100" in seen and "vlan 200" in seen, seen
    assert e_ip != d_ip

    # A security group on an Open vSwitch port: enforced by OVS itself (OpenFlow, its
    # connection tracking), through the agent like on a Linux bridge.
    api.ok("POST", "/security-groups", json={"name": "closed"})
    reply = api.ok("PATCH", f"/vms/{e['id']}/nics/0", json={"security_groups": ["closed"]})
    if reply.get("task"):
        api.wait_task(reply["task"])
    with shell(cluster, d) as channel:
        wait_for(lambda: not ping(channel, e_ip, count=1) or None, 90, "the group to close e")
        rule = {"protocol": "icmp", "remote": subnet["cidr"]}
        api.ok("POST", "/security-groups/closed/rules", json=rule)
        wait_for(lambda: ping(channel, e_ip, count=1) or None, 90, "the rule to let pings in")
    delete(api, d, e, f)


def delete(api: Api, *vms: dict[str, Any]) -> None:
    """Delete VMs a test is done with: fewer TCG guests for the next tests' two cores."""
    for vm in vms:
        api.wait_task(api.ok("DELETE", f"/vms/{vm['id']}")["task"])


def nic_task(api: Api, method: str, path: str, **body: Any) -> dict[str, Any]:
    reply = api.ok(method, path, **({"json": body} if body or method != "DELETE" else {}))
    assert reply["task"], "a running VM gets its NICs changed by a task"
    assert api.task_end(reply["task"])["state"] == "succeeded"
    return api.vm(reply["vm"]["id"])


def test_nics_plug_into_a_running_guest_and_out_again(netcluster: tuple[DevCluster, Api]) -> None:
    cluster, api = netcluster
    peer = start_guest(cluster, api, "hp-peer", "node2", "overlay")
    vm = start_guest(cluster, api, "hp", "node1", "user")
    peer_ip = str(leased(cluster, peer).address.ip)
    vm = nic_task(api, "POST", f"/vms/{vm['id']}/nics", network="overlay")
    added = vm["spec"]["nics"][1]
    assert added["slot"] == 1 and added["address"] and vm["pending"] == []
    with shell(cluster, vm) as channel:
        # The guest's DHCP client runs for the NICs it booted with; a new one is started.
        assert channel.run("heron-net-up eth1").rc == 0
        state = leased(cluster, vm, "eth1")
        assert (str(state.address.ip), state.mac) == (added["address"], added["mac"])
        # The first ping may go before the guest has finished bringing eth1 up.
        wait_for(lambda: ping(channel, peer_ip, count=1), 30, "the new NIC to reach the peer")
        nic_task(api, "PATCH", f"/vms/{vm['id']}/nics/1", link_up=False)
        assert not ping(channel, peer_ip, count=2)  # the cable is out
        nic_task(api, "PATCH", f"/vms/{vm['id']}/nics/1", link_up=True)
        wait_for(lambda: ping(channel, peer_ip, count=1), 30, "the link to come back")
        vm = nic_task(api, "DELETE", f"/vms/{vm['id']}/nics/1")
        assert len(vm["spec"]["nics"]) == 1
        assert channel.run("ip link show eth1").rc != 0  # the guest let it go
    delete(api, vm, peer)


def test_a_guest_keeps_its_address_and_peers_through_live_migration(
    netcluster: tuple[DevCluster, Api],
) -> None:
    cluster, api = netcluster
    moving = start_guest(cluster, api, "mig", "node1", "overlay")
    watcher = start_guest(cluster, api, "mig-watch", "node2", "overlay")
    address = str(leased(cluster, moving).address.ip)
    leased(cluster, watcher)
    with shell(cluster, watcher) as channel:
        assert ping(channel, address)
        # 10 ms pings all through the move (bench/ counts what is lost; here: it goes on).
        pinging = channel.start(f"ping -i 0.01 -W 1 {address}")
        reply = api.ok("POST", f"/vms/{moving['id']}/actions/migrate", json={"target": "node3"})
        assert api.task_end(reply["task"], timeout=300)["state"] == "succeeded"
        channel.run("killall -INT ping")  # it prints what it sent and got back
        summary = channel.wait(pinging, timeout=30).output
        moved = api.vm(moving["id"])
        assert moved["node"] == "node3"
        assert ping(channel, address)  # reachable where it is now
    received = int(re.search(r"(\d+) packets received", summary).group(1))
    assert received > 0, summary
    # Its lease renews with its new node's DHCP server: the same address.
    mac = moved["spec"]["nics"][0]["mac"]
    acked = rf"DHCPACK\(\S+\) {re.escape(address)} {mac}"
    with shell(cluster, moved) as channel:
        assert channel.run("killall -USR1 udhcpc").rc == 0
        wait_for(
            lambda: re.search(acked, dhcp_logs(cluster, "overlay")["node3"]),
            60,
            "node3's DHCP server to renew the lease",
        )
        assert f"inet {address}/" in channel.run("ip -4 addr show eth0").output
    delete(api, moved, watcher)


def test_traffic_goes_on_without_the_agent_and_drift_is_repaired(
    netcluster: tuple[DevCluster, Api],
) -> None:
    cluster, api = netcluster
    a = start_guest(cluster, api, "dp-a", "node1", "overlay")
    b = start_guest(cluster, api, "dp-b", "node2", "overlay")
    b_ip = str(leased(cluster, b).address.ip)
    leased(cluster, a)
    node2 = cluster.node("node2")
    with shell(cluster, a) as channel:
        # The agent of b's node dies: its bridges, taps and DHCP server stay, so does traffic.
        os.kill(cluster.herond_pid(node2), signal.SIGKILL)
        assert ping(channel, b_ip)
        cluster.start_node("node2")
        cluster.wait_api(node2, 60)
        assert ping(channel, b_ip)
        # So does etcd, all of it: the data plane needs none of the ConfigDB.
        members = cluster.members()
        for member in members:
            member.stop()
        try:
            assert ping(channel, b_ip)
        finally:
            for member in members:
                member.start()
            for member in members:
                member.wait_healthy(60)
        wait_for(lambda: api.get("/switches/status").status_code == 200, 60, "the API")
        # Someone deletes a's segment bridge by hand: the agent builds it again, taps too.
        place = next(p for p in cluster.fabric_nodes() if p.name == "node1")
        segment = "hx" + format(4242, "x")
        assert in_netns(place.netns, "ip", "link", "del", segment).returncode == 0
        assert not ping(channel, b_ip, count=1)
        wait_for(lambda: ping(channel, b_ip, count=1), 60, "the agent to repair the segment")

        # And it says what it put back, in the switch's status on that node.
        def repaired() -> dict[str, Any] | None:
            status = {s["node"]: s for s in api.ok("GET", "/switches/status")}
            state = status["node1"]["switches"]["dvs"]
            return state if state["repaired_at"] else None

        state = wait_for(repaired, 60, "node1 to report the repair")
        assert f"{segment} was missing: made again" in state["repaired"], state
        assert any(line.endswith(f"attached to {segment}") for line in state["repaired"]), state
        env = {
            "HERON_URL": api.url,
            "HERON_TOKEN": api.token or "",
            "HERON_CONFIG": str(Path(cluster.dir) / "cli.json"),
            "HERON_CA_FILE": str(cluster.ca_file),
        }
        rows = json.loads(cli(env, "switch", "status", "--json").stdout)
        node1 = next(r for r in rows if r["node"] == "node1" and r["switch"] == "dvs")
        assert node1["repaired"] == state["repaired"]
        table = cli(env, "switch", "status").stdout
        assert "drift put back" in table and segment in table, table
    delete(api, a, b)


def test_an_ha_restart_elsewhere_keeps_the_address(netcluster: tuple[DevCluster, Api]) -> None:
    cluster, api = netcluster
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": "ha-net",
            "memory_mib": 128,
            "node": "node3",
            "start": True,
            "ha": {"enabled": True},
            "disks": [{"pool": "shared", "source": "shared/testguest"}],
            "nics": [{"network": "overlay"}],
        },
    )
    api.wait_task(reply["task"])
    vm = api.vm(reply["vm"])
    watcher = start_guest(cluster, api, "ha-watch", "node1", "overlay")

    def peers(node: str) -> str:
        return segment_peers(cluster, node, 4242)

    address = str(leased(cluster, vm).address.ip)
    leased(cluster, watcher)
    cluster.kill_node("node3")
    try:
        # The other nodes stop sending the segment's floods to the dead node, and take it
        # back as a peer when it returns.
        dead = next(p for p in cluster.fabric_nodes() if p.name == "node3").underlay
        wait_for(lambda: dead not in peers("node1"), 60, "node1 to drop node3 as a peer")
        restarted = wait_for(
            lambda: (v := api.vm(vm["id"]))["node"] != "node3" and v["state"] == "running" and v,
            180,
            "HA to restart the VM on another node",
        )
        # A fresh boot asks DHCP anew: the cluster's IPAM gives it the same address.
        state = leased(cluster, restarted)
        assert str(state.address.ip) == address
        with shell(cluster, watcher) as channel:
            assert ping(channel, address)
    finally:
        cluster.start_node("node3")
        cluster.wait_api(cluster.node("node3"), 60)
    wait_for(lambda: dead in peers("node1"), 60, "node1 to take node3 back as a peer")
