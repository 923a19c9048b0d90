"""heron.util.ports: the one place Heron picks a free TCP port."""

import socket

import pytest

from heron.util.ports import free_port, free_port_in, free_ports


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


def test_free_port_in_a_span_with_no_free_port_says_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="no free port"):
            free_port_in((port, port + 1), tries=5)
