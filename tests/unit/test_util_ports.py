"""heron.util.ports: the one place Heron picks a free TCP port."""

import socket
from pathlib import Path

import pytest

from heron.util.ports import DEVCLUSTER_PORTS, free_port, free_port_in, free_ports


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_free_port_on_a_given_address() -> None:
    port = free_port("127.0.0.1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_free_port_in_stays_inside_the_span() -> None:
    for _ in range(20):
        assert 20000 <= free_port_in((20000, 32000)) < 32000


def test_free_ports_in_a_span_are_distinct_and_inside_it() -> None:
    """A devcluster's listeners: below the ephemeral range, where no outgoing connection
    can take a port between its choice and its bind (CI saw etcd fail on one that did)."""
    ports = free_ports(30, span=DEVCLUSTER_PORTS)
    assert len(set(ports)) == 30
    assert all(DEVCLUSTER_PORTS[0] <= p < DEVCLUSTER_PORTS[1] for p in ports)
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    low = int(ephemeral[0])
    assert DEVCLUSTER_PORTS[1] <= low


def test_free_ports_in_a_span_too_small_say_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="no 1 free ports"):
            free_port_in((port, port + 1))
        with pytest.raises(OSError, match="no 2 free ports"):
            free_ports(2, span=(port + 1, port + 2), tries=3)
