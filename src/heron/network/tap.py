"""A VM NIC's tap, opened for QEMU in the node's data plane.

The tap is not persistent: it lives as long as an fd of it is open, so it vanishes with the
QEMU that holds it, and a crashed agent leaves nothing behind. It is created inside the
plane's namespace (a tap's namespace is that of the /dev/net/tun opener), never in the host's
and moved: two devcluster nodes' taps of one name never meet.
"""

import fcntl
import os
import socket
import struct
from typing import TypeVar

from heron.errors import NetworkError
from heron.network import netns
from heron.network.dataplane import DataPlane

T = TypeVar("T")

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
SIOCSIFMTU = 0x8922
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


def _create(name: str, mtu: int, offload: bool) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
    try:
        request = struct.pack("16sH22x", name.encode(), flags)
        fcntl.ioctl(fd, TUNSETIFF, request)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock, SIOCSIFMTU, struct.pack("16si20x", name.encode(), mtu))
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_tap(plane: DataPlane, name: str, mtu: int, offload: bool = True) -> int:
    """Create the tap `name` in the plane (TAP, no packet info; with `offload`, virtio-net
    headers) with its MTU, and return its open fd (not inheritable: pass it with pass_fds).
    The caller hands it to QEMU and closes its own copy; the tap goes when the last copy
    closes.

    Without virtio-net headers QEMU offers the guest no checksum offload, so every frame
    leaves the guest with its checksums done: what a switch that reads frames in user space
    (Open vSwitch's netdev datapath) needs, since it would pass half-made checksums on.

    Raises NetworkError when the kernel refuses (the name is in use, the plane is gone)."""
    if not 0 < len(name.encode()) <= 15:
        raise NetworkError(f"{name!r} is not an interface name (1-15 bytes)")
    try:
        return netns.run_in(plane.netns, lambda: _create(name, mtu, offload))
    except OSError as exc:
        where = f"namespace {plane.netns}" if plane.netns else "the host namespace"
        raise NetworkError(f"cannot open tap {name} in {where}: {exc.strerror}") from exc


def vhost_net_available() -> bool:
    """Whether QEMU may ask for vhost-net (it aborts with vhost=on where it cannot)."""
    try:
        fd = os.open("/dev/vhost-net", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True
