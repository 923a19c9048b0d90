"""Addresses and MACs of NICs (IPAM), pure: which addresses a subnet gives, which it keeps,
and the index keys that make a MAC and an address one NIC's."""

import ipaddress
import random
from collections.abc import Iterable

from heron.configdb import keys
from heron.configdb.store import Txn
from heron.models.network import BUILTIN_NETWORKS, Subnet
from heron.models.vm import NicSpec


def dhcp_server(subnet: Subnet) -> ipaddress.IPv4Address | None:
    """The address of a subnet's DHCP server (the same on every node): the highest host
    address that is not the gateway."""
    if not subnet.dhcp:
        return None
    candidate = ipaddress.IPv4Network(subnet.cidr).broadcast_address - 1
    return candidate - 1 if subnet.gateway == str(candidate) else candidate


def reserved(subnet: Subnet) -> set[ipaddress.IPv4Address]:
    """Addresses never given to a NIC: the gateway and the DHCP servers' own."""
    out = {ipaddress.IPv4Address(subnet.gateway)} if subnet.gateway else set()
    server = dhcp_server(subnet)
    return out | {server} if server else out


def fits(subnet: Subnet, address: str) -> bool:
    """Whether `address` may be a NIC's in `subnet` (a host address, not reserved)."""
    ip = ipaddress.IPv4Address(address)
    net = ipaddress.IPv4Network(subnet.cidr)
    if ip not in net or ip in (net.network_address, net.broadcast_address):
        return False
    return ip not in reserved(subnet)


def pool_of(subnet: Subnet) -> Iterable[ipaddress.IPv4Address]:
    """The addresses NICs get from, lowest first."""
    net = ipaddress.IPv4Network(subnet.cidr)
    skip = reserved(subnet)
    if subnet.ranges:
        for span in subnet.ranges:
            first, last = ipaddress.IPv4Address(span.first), ipaddress.IPv4Address(span.last)
            for value in range(int(first), int(last) + 1):
                if ipaddress.IPv4Address(value) not in skip:
                    yield ipaddress.IPv4Address(value)
        return
    for ip in net.hosts():
        if ip not in skip:
            yield ip


def random_mac(taken: set[str]) -> str:
    """A MAC in QEMU's locally administered 52:54:00 block that no NIC has."""
    while True:
        tail = random.getrandbits(24)
        mac = f"52:54:00:{tail >> 16:02x}:{(tail >> 8) & 0xFF:02x}:{tail & 0xFF:02x}"
        if mac not in taken:
            return mac


def release_nics(txn: Txn, nics: Iterable[NicSpec]) -> Txn:
    """Delete the index keys of `nics` (their MACs and addresses) in `txn`."""
    for nic in nics:
        if nic.mac:
            txn.delete(keys.mac(nic.mac))
        if nic.address and nic.network not in BUILTIN_NETWORKS:
            txn.delete(keys.lease(nic.network, nic.address))
    return txn
