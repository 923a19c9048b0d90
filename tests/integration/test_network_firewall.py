"""Security groups, anti-spoofing and rate limits of real test guests on a VXLAN segment of a
devcluster with networking: guest A (node1) is filtered by group `echo`, guest B (node2) is
not. Rules change through the API and apply to the running guests at once.

The throughput checks compare two measurements taken in the same test (limited against
unlimited, a ratio), never against a wall-clock figure: TCG guests on a shared machine are
slow by an amount nobody can promise.
"""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netguests import leased, network_cluster, ping, shell, start_guest
from support import Api, wait_for

from heron.devcluster import DevCluster
from heron.testguest.net import CommandChannel

pytestmark = pytest.mark.integration

APPLIED = 90  # a change reaches the node's ruleset: the agent follows the ConfigDB
SEGMENT = "10.43.0.0/24"


@pytest.fixture(scope="module")
def netcluster(
    tmp_path_factory: pytest.TempPathFactory, testguest: Path
) -> Iterator[tuple[DevCluster, Api]]:
    yield from network_cluster(tmp_path_factory, testguest, "fwcluster", nodes=2)


def echo(channel: CommandChannel, address: str) -> bool:
    """Whether TCP port 7 of `address` answers (nettool gives up after 10 s)."""
    return channel.run(f"nettool rtt {address} 7 3", timeout=60).rc == 0


def throughput(channel: CommandChannel, address: str) -> float:
    """Bits per second `nettool send` pushed to `address` for 4 s, as the receiver counted."""
    result = channel.run(f"nettool send {address} 7 4", timeout=90)
    assert result.rc == 0, result.output
    found = re.search(r"throughput_bps=([0-9.]+)", result.output)
    assert found, result.output
    return float(found.group(1))


def until(check: Any, what: str) -> None:
    wait_for(lambda: True if check() else None, APPLIED, what)


@pytest.fixture(scope="module")
def guests(netcluster: tuple[DevCluster, Api]) -> Iterator[tuple[Any, Any, str, str]]:
    """A (filtered by `echo`: tcp 7 from the segment) and B (unfiltered), and their
    addresses; A getting its address at all shows DHCP passes the firewall both ways."""
    cluster, api = netcluster
    api.ok("POST", "/switches", json={"name": "fwsw"})
    api.ok(
        "POST",
        "/networks",
        json={
            "name": "fw",
            "switch": "fwsw",
            "kind": "vxlan",
            "vni": 4343,
            "subnet": {"cidr": SEGMENT},
        },
    )
    rule = {"protocol": "tcp", "ports": "7", "remote": SEGMENT}
    api.ok("POST", "/security-groups", json={"name": "echo", "rules": [rule]})
    a = start_guest(cluster, api, "fw-a", "node1", {"network": "fw", "security_groups": ["echo"]})
    b = start_guest(cluster, api, "fw-b", "node2", {"network": "fw"})
    a_ip, b_ip = (str(leased(cluster, g).address.ip) for g in (a, b))
    yield a, b, a_ip, b_ip


def test_references_are_checked(netcluster: tuple[DevCluster, Api], guests: Any) -> None:
    _, api = netcluster
    a = guests[0]
    reply = api.http.request("PATCH", f"/vms/{a['id']}/nics/0", json={"security_groups": ["nope"]})
    assert reply.status_code == 422, reply.text
    assert "body.security_groups.0" in reply.text
    assert api.http.request("DELETE", "/security-groups/echo").status_code == 409


def test_rules_let_in_what_they_allow_and_replies(
    netcluster: tuple[DevCluster, Api], guests: Any
) -> None:
    cluster, api = netcluster
    a, b, a_ip, b_ip = guests
    with shell(cluster, b) as at_b, shell(cluster, a) as at_a:
        assert echo(at_b, a_ip)  # the rule
        assert not ping(at_b, a_ip, 2)  # icmp: denied inbound by default
        # A's own connections and pings: their replies come back, no rule needed.
        assert echo(at_a, b_ip)
        assert ping(at_a, b_ip, 2)

        api.ok("DELETE", "/security-groups/echo/rules/0")
        until(lambda: not echo(at_b, a_ip), "the rule's removal to block port 7")
        assert echo(at_a, b_ip)  # still: outbound and its replies
        api.ok(
            "POST",
            "/security-groups/echo/rules",
            json={"protocol": "tcp", "ports": "7", "remote": SEGMENT},
        )
        until(lambda: echo(at_b, a_ip), "the rule given back to let port 7 in")

        api.ok("POST", "/security-groups/echo/rules", json={"protocol": "icmp"})
        until(lambda: ping(at_b, a_ip, 2), "an icmp rule to let pings in")
    status = {s["node"]: s for s in api.ok("GET", "/switches/status")}
    assert status["node1"]["switches"]["fwsw"]["in_sync"], status


def test_a_guest_sends_only_from_its_own_address_and_mac(
    netcluster: tuple[DevCluster, Api], guests: Any
) -> None:
    cluster, _ = netcluster
    a, _, a_ip, b_ip = guests
    spoofed = "10.43.0.200"
    with shell(cluster, a) as at_a:
        assert ping(at_a, b_ip, 2, source=a_ip)
        assert at_a.run(f"ip addr add {spoofed}/24 dev eth0").rc == 0
        try:
            assert not ping(at_a, b_ip, 2, source=spoofed)
            assert ping(at_a, b_ip, 2, source=a_ip)
        finally:
            at_a.run(f"ip addr del {spoofed}/24 dev eth0")
        mac = a["spec"]["nics"][0]["mac"]
        assert at_a.run("ip link set eth0 address 02:00:00:43:00:99").rc == 0
        try:
            assert not ping(at_a, b_ip, 2)
        finally:
            at_a.run(f"ip link set eth0 address {mac}")
        until(lambda: ping(at_a, b_ip, 2), "A to talk again with its own MAC")


def test_rate_limits_apply_to_a_running_guest(
    netcluster: tuple[DevCluster, Api], guests: Any
) -> None:
    cluster, api = netcluster
    a, b, a_ip, b_ip = guests
    nic = f"/vms/{a['id']}/nics/0"
    with shell(cluster, a) as at_a, shell(cluster, b) as at_b:
        sent = throughput(at_a, b_ip)
        received = throughput(at_b, a_ip)
        # A tenth of what it does unlimited: far below, whatever speed TCG has today.
        egress = max(1, int(sent / 10 / 1e6))
        ingress = max(1, int(received / 10 / 1e6))
        reply = api.ok("PATCH", nic, json={"egress_mbps": egress, "ingress_mbps": ingress})
        if reply["task"]:
            api.wait_task(reply["task"])
        until(lambda: throughput(at_a, b_ip) < sent / 3, f"A's sending limited to {egress} Mbit/s")
        until(
            lambda: throughput(at_b, a_ip) < received / 3,
            f"A's receiving limited to {ingress} Mbit/s",
        )
        reply = api.ok("PATCH", nic, json={"egress_mbps": None, "ingress_mbps": None})
        if reply["task"]:
            api.wait_task(reply["task"])
        until(lambda: throughput(at_a, b_ip) > 3 * egress * 1e6, "A's sending unlimited again")
