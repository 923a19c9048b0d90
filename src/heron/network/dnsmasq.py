"""A network's dnsmasq on one node, written from its DhcpServer: pure, so what it serves is
unit-tested without a process.

It serves DHCP only (no DNS), and only the NICs the plan lists (this node's VMs), each its
address from the cluster's IPAM: every other client is ignored, so that when several nodes'
servers share a segment exactly one of them answers a guest.
"""

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from heron.network.plan import DhcpServer


@dataclass(frozen=True)
class ServerFiles:
    """The files of one network's server, in a directory of their own."""

    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "dnsmasq.conf"

    @property
    def hosts(self) -> Path:
        return self.directory / "hosts"

    @property
    def hosts_loaded(self) -> Path:
        """The hosts dnsmasq last read: a hosts file written but never signalled (the agent
        died in between) differs from it, and the next pass signals."""
        return self.directory / "hosts.loaded"

    @property
    def leases(self) -> Path:
        return self.directory / "leases"

    @property
    def pid(self) -> Path:
        return self.directory / "dnsmasq.pid"

    @property
    def log(self) -> Path:
        return self.directory / "dnsmasq.log"

    @property
    def output(self) -> Path:
        """What dnsmasq prints before it has its log: why it would not start."""
        return self.directory / "dnsmasq.out"


_NOT_IN_HOSTNAME = re.compile(r"[^a-z0-9-]+")


def hostname(name: str) -> str:
    """A VM's name as a DNS label: dnsmasq drops a host whose name is not one."""
    return _NOT_IN_HOSTNAME.sub("-", name.lower()).strip("-")[:63]


def hosts_file(server: DhcpServer) -> str:
    """The clients the server knows, one `mac,address,name` a line (dhcp-hostsfile)."""
    lines = []
    for host in sorted(server.hosts, key=lambda h: h.mac.lower()):
        fields = [host.mac.lower(), host.address]
        label = hostname(host.hostname)
        if label:
            fields.append(label)
        lines.append(",".join(fields) + "\n")
    return "".join(lines)


def config(server: DhcpServer, files: ServerFiles) -> str:
    """dnsmasq's configuration: everything but the hosts, so that a change here (address,
    MTU, options, lease time) restarts the server and a change of hosts only reloads it."""
    interface = ipaddress.IPv4Interface(server.address)
    net = interface.network
    router = f",{server.router}" if server.router else ""
    dns = "".join(f",{address}" for address in server.dns)
    lines = [
        f"# Heron: DHCP of network {server.network} at {interface} on {server.links[1]},"
        f" MTU {server.mtu}",
        # DHCP only: the guests' resolvers are the subnet's, never this namespace.
        "port=0",
        "no-resolv",
        "no-hosts",
        # The files live in the agent's state directory, which only root reads; dnsmasq
        # re-reads the hosts there on SIGHUP, after it would have dropped its privileges.
        "user=root",
        f"interface={server.links[1]}",
        f"pid-file={files.pid}",
        f"dhcp-range={net.network_address},static,{net.netmask},{server.lease_seconds}",
        f"dhcp-hostsfile={files.hosts}",
        # Only this node's NICs: another node's guest is its own server's to answer.
        "dhcp-ignore=tag:!known",
        "dhcp-authoritative",
        # Every address is the IPAM's and given to one NIC: no need to probe it first.
        "no-ping",
        f"dhcp-leasefile={files.leases}",
        # An option without a value is not sent: otherwise dnsmasq offers itself.
        f"dhcp-option=option:router{router}",
        f"dhcp-option=option:dns-server{dns}",
        # A guest on a VXLAN segment must send frames that fit once encapsulated: sent even
        # to a client that did not ask for it (busybox's udhcpc, for one, does not).
        f"dhcp-option-force=option:mtu,{server.mtu}",
        f"log-facility={files.log}",
        "log-dhcp",
    ]
    return "\n".join(lines) + "\n"


def command(dnsmasq: str, namespace: str, files: ServerFiles) -> list[str]:
    """dnsmasq started inside the DHCP namespace (nsenter execs it: the process is dnsmasq's,
    which daemonizes, so it outlives the agent). Its configuration's path is in its command
    line: that is how the process is recognised again."""
    return [
        "nsenter",
        f"--net=/run/netns/{namespace}",
        dnsmasq,
        f"--conf-file={files.config}",
    ]


def marker(files: ServerFiles) -> str:
    """What only this network's dnsmasq has in its command line."""
    return f"--conf-file={files.config}"
