"""What a network's dnsmasq is told, from its DhcpServer: no process needed."""

from dataclasses import replace
from pathlib import Path

import pytest

from heron.network import dnsmasq
from heron.network.plan import DhcpHost, DhcpServer, dhcp_link, dhcp_mac, dhcp_namespace

FILES = dnsmasq.ServerFiles(Path("/var/lib/heron/dhcp/lan"))


def make_server(**changes: object) -> DhcpServer:
    server = DhcpServer(
        network="lan",
        namespace=dhcp_namespace("lan"),
        bridge="hb0123456789",
        vlan=None,
        links=dhcp_link("lan"),
        address="10.1.0.254/24",
        mac=dhcp_mac("lan"),
        router="10.1.0.1",
        dns=("10.1.0.2", "10.1.0.3"),
        mtu=1450,
        lease_seconds=3600,
        hosts=(
            DhcpHost("52:54:00:00:00:0B", "10.1.0.11", "web_1"),
            DhcpHost("52:54:00:00:00:0a", "10.1.0.10", "db.primary"),
        ),
    )
    return replace(server, **changes)  # type: ignore[arg-type]


def lines(server: DhcpServer) -> list[str]:
    return [line for line in dnsmasq.config(server, FILES).splitlines() if line[:1] != "#"]


def test_the_config_serves_dhcp_only_static_and_to_known_macs_only() -> None:
    config = lines(make_server())
    assert "port=0" in config
    assert "dhcp-range=10.1.0.0,static,255.255.255.0,3600" in config
    assert "dhcp-ignore=tag:!known" in config
    assert "dhcp-authoritative" in config
    assert "no-ping" in config
    assert f"interface={dhcp_link('lan')[1]}" in config
    assert "dhcp-hostsfile=/var/lib/heron/dhcp/lan/hosts" in config
    assert "dhcp-leasefile=/var/lib/heron/dhcp/lan/leases" in config
    assert "pid-file=/var/lib/heron/dhcp/lan/dnsmasq.pid" in config
    assert "log-facility=/var/lib/heron/dhcp/lan/dnsmasq.log" in config
    assert "log-dhcp" in config


def test_the_config_gives_router_dns_and_mtu() -> None:
    config = lines(make_server())
    assert "dhcp-option=option:router,10.1.0.1" in config
    assert "dhcp-option=option:dns-server,10.1.0.2,10.1.0.3" in config
    assert "dhcp-option-force=option:mtu,1450" in config


def test_without_router_or_dns_the_options_are_sent_empty_not_as_the_server() -> None:
    config = lines(make_server(router=None, dns=()))
    assert "dhcp-option=option:router" in config
    assert "dhcp-option=option:dns-server" in config


def test_the_config_ignores_hosts_so_a_new_host_only_reloads() -> None:
    assert dnsmasq.config(make_server(), FILES) == dnsmasq.config(make_server(hosts=()), FILES)


@pytest.mark.parametrize(
    "change",
    [
        {"address": "10.1.0.253/24"},
        {"mtu": 1500},
        {"router": "10.1.0.9"},
        {"dns": ()},
        {"lease_seconds": 600},
    ],
)
def test_what_dnsmasq_reads_only_at_start_changes_the_config(change: dict[str, object]) -> None:
    assert dnsmasq.config(make_server(**change), FILES) != dnsmasq.config(make_server(), FILES)


def test_a_wider_subnet_has_its_own_mask() -> None:
    config = lines(make_server(address="172.16.255.254/16", lease_seconds=120))
    assert "dhcp-range=172.16.0.0,static,255.255.0.0,120" in config


def test_the_hosts_file_lists_mac_address_and_a_dns_label_sorted_by_mac() -> None:
    assert dnsmasq.hosts_file(make_server()) == (
        "52:54:00:00:00:0a,10.1.0.10,db-primary\n52:54:00:00:00:0b,10.1.0.11,web-1\n"
    )


def test_the_hosts_file_is_the_same_whatever_the_order() -> None:
    server = make_server()
    reordered = replace(server, hosts=tuple(reversed(server.hosts)))
    assert dnsmasq.hosts_file(reordered) == dnsmasq.hosts_file(server)


def test_no_hosts_no_lines() -> None:
    assert dnsmasq.hosts_file(make_server(hosts=())) == ""


@pytest.mark.parametrize(
    ("name", "label"),
    [("web-1", "web-1"), ("Web_1", "web-1"), ("a.b.c", "a-b-c"), ("-x-", "x"), ("__", "")],
)
def test_hostnames_are_dns_labels(name: str, label: str) -> None:
    assert dnsmasq.hostname(name) == label


def test_a_host_without_a_usable_name_is_served_by_mac_alone() -> None:
    server = make_server(hosts=(DhcpHost("52:54:00:00:00:01", "10.1.0.5", "__"),))
    assert dnsmasq.hosts_file(server) == "52:54:00:00:00:01,10.1.0.5\n"


def test_dnsmasq_runs_in_the_namespace_and_is_known_by_its_config() -> None:
    command = dnsmasq.command("/usr/sbin/dnsmasq", "node1-hd-lan", FILES)
    assert command == [
        "nsenter",
        "--net=/run/netns/node1-hd-lan",
        "/usr/sbin/dnsmasq",
        "--conf-file=/var/lib/heron/dhcp/lan/dnsmasq.conf",
    ]
    assert any(dnsmasq.marker(FILES) in part for part in command)
    other = dnsmasq.ServerFiles(Path("/var/lib/heron/dhcp/lan2"))
    assert not any(dnsmasq.marker(other) in part for part in command)
