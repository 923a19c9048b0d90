"""Taps for QEMU: made inside a node's namespace (never the host's), with their MTU, gone when
the last fd closes; one name cannot be opened twice."""

import fcntl
import os
import struct
from collections.abc import Iterator

import pytest
from planes import links, namespaces, rtnl
from support import wait_for

from heron.errors import NetworkError
from heron.network.dataplane import DataPlane
from heron.network.tap import IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, open_tap, vhost_net_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
]

TAP = f"htt{os.getpid() % 100000}"
TUNGETIFF = 0x800454D2


def tap_flags(fd: int) -> int:
    _name, flags = struct.unpack("16sH22x", fcntl.ioctl(fd, TUNGETIFF, bytes(40)))
    return int(flags)


@pytest.fixture
def node() -> Iterator[str]:
    with namespaces("tap") as (name,):
        yield name


def in_host(name: str) -> bool:
    with rtnl(None) as ipr:
        return bool(ipr.link_lookup(ifname=name))


def test_the_tap_lives_in_the_plane_with_its_mtu_until_its_fd_closes(node: str) -> None:
    fd = open_tap(DataPlane(node), TAP, 1400)
    try:
        tap = links(node).get(TAP)
        assert tap is not None
        assert tap.get_attr("IFLA_MTU") == 1400
        info = tap.get_attr("IFLA_LINKINFO")
        assert info.get_attr("IFLA_INFO_KIND") == "tun"
        assert not in_host(TAP)
        wanted = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
        assert tap_flags(fd) & wanted == wanted
        with pytest.raises(NetworkError, match=f"cannot open tap {TAP} in namespace {node}"):
            os.close(open_tap(DataPlane(node), TAP, 1400))
    finally:
        os.close(fd)
    wait_for(lambda: TAP not in links(node), 10, "the tap to vanish with its last fd")


def test_two_planes_have_taps_of_the_same_name() -> None:
    with namespaces("a", "b") as (a, b):
        first, second = open_tap(DataPlane(a), TAP, 1500), open_tap(DataPlane(b), TAP, 9000)
        try:
            assert links(a)[TAP].get_attr("IFLA_MTU") == 1500
            assert links(b)[TAP].get_attr("IFLA_MTU") == 9000
        finally:
            os.close(first)
            os.close(second)


def test_the_host_plane_and_a_plane_that_is_gone() -> None:
    fd = open_tap(DataPlane(), TAP, 1500)
    try:
        assert in_host(TAP)
    finally:
        os.close(fd)
    wait_for(lambda: not in_host(TAP), 10, "the host's tap to vanish")
    with pytest.raises(NetworkError, match="namespace"):
        open_tap(DataPlane(f"gone{os.getpid()}"), TAP, 1500)


def test_vhost_net_is_offered_only_where_it_opens() -> None:
    assert vhost_net_available() == os.path.exists("/dev/vhost-net")
