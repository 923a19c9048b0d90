"""The test guest's network, proven with QEMU's own network backends (no Heron networking).

Later tests judge Heron's virtual networks by what guests can do over them; this proves the
guest's side first: DHCP from a real server (QEMU's user-mode network, and later one guest's
udhcpd for another, with the MTU of option 26), ping, VLAN sub-interfaces, nettool's
throughput and round trips, and commands over the serial console that run side by side.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path

import pytest
from support import wait_for

from heron.testguest import build, console, net

pytestmark = pytest.mark.integration

BOOT = 120
# udhcpc's first try takes about 10 s, then it retries every few seconds.
LEASE = 60


@dataclass
class Guest:
    process: subprocess.Popen[bytes]
    log: Path
    serial: Path

    def text(self) -> str:
        return self.log.read_bytes().decode(errors="replace")

    def nic(
        self, what: str, check: Callable[[net.NicState], bool], nic: str = "eth0"
    ) -> net.NicState:
        """`nic` once the guest reports it in a state that passes `check`."""

        def found() -> net.NicState | None:
            state = net.guest_addresses(self.text()).get(nic)
            return state if state is not None and check(state) else None

        try:
            return wait_for(found, LEASE, f"{nic} {what} in {self.log}")
        except AssertionError as exc:
            lines = [line for line in self.text().splitlines() if net.NET_PREFIX in line]
            raise AssertionError(f"{exc}; it said: {lines}") from None


class Guests:
    """Test guests under QEMU (TCG), each with a serial socket, all killed at the end."""

    def __init__(self, testguest: Path, tmp_path: Path) -> None:
        self.testguest = testguest
        self.tmp_path = tmp_path
        self.running: list[Guest] = []

    def boot(self, name: str, netdev: str, mac: str) -> Guest:
        log = self.tmp_path / f"{name}.log"
        serial = self.tmp_path / f"{name}.sock"
        process = subprocess.Popen(
            ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "128",
             "-nodefaults", "-display", "none",
             "-chardev", f"socket,id=serial0,path={serial},server=on,wait=off,logfile={log}",
             "-serial", "chardev:serial0",
             "-drive", f"file={self.testguest},format=raw,if=virtio,snapshot=on",
             "-netdev", f"{netdev},id=net0", "-device", f"virtio-net-pci,netdev=net0,mac={mac}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        guest = Guest(process, log, serial)
        self.running.append(guest)
        wait_for(
            lambda: (
                process.poll() is not None or (log.exists() and build.READY_MARKER in guest.text())
            ),
            BOOT,
            f"{name} to boot",
        )
        assert process.poll() is None, process.stderr.read() if process.stderr else b""
        return guest

    def stop(self) -> None:
        for guest in self.running:
            guest.process.kill()
            guest.process.wait()
            if guest.process.stderr:
                guest.process.stderr.close()


@pytest.fixture
def guests(testguest: Path, tmp_path: Path) -> Iterator[Guests]:
    started = Guests(testguest, tmp_path)
    try:
        yield started
    finally:
        started.stop()


def ok(channel: net.CommandChannel, command: str, timeout: float = 60) -> net.CommandResult:
    result = channel.run(command, timeout)
    assert result.rc == 0, f"{command}: rc={result.rc}\n{result.output}"
    return result


def test_user_network_dhcp_ping_and_side_by_side_commands(guests: Guests) -> None:
    guest = guests.boot("slirp", "user", "52:54:00:4e:00:01")
    eth0 = guest.nic("with a lease", lambda state: state.address is not None)
    assert eth0.address == IPv4Interface("10.0.2.15/24")
    assert str(eth0.router) == "10.0.2.2"
    assert (eth0.mac, eth0.mtu) == ("52:54:00:4e:00:01", 1500)

    with net.CommandChannel(guest.serial) as channel:
        slow = channel.start("sleep 600")
        assert ok(channel, "ping -c 1 10.0.2.2").output.count("bytes from 10.0.2.2") == 1
        # The quick command answered while the slow one still runs.
        assert net.command_result(channel.received, slow) is None
        assert channel.run("exit 7").rc == 7
        routes = ok(channel, "ip route show default").output
        assert "default via 10.0.2.2 dev eth0" in routes
    # The guest goes on ticking, and nothing the commands printed reads as trouble.
    report = wait_for(
        lambda: (r := console.read(guest.text(), booted_here=True)).verifications >= 2 and r,
        60,
        "two memory checks",
    )
    assert report.intact, report.problems


def free_udp_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def udhcpd_conf(nic: str, subnet: str, mtu: int) -> str:
    """busybox udhcpd's configuration, as a printf format for the guest's shell."""
    return (
        f"interface {nic}\\nstart {subnet}.10\\nend {subnet}.20\\n"
        f"lease_file /tmp/udhcpd.{nic}.leases\\n"
        f"option subnet 255.255.255.0\\noption mtu {mtu}\\n"
    )


def serve_dhcp(channel: net.CommandChannel, nic: str, subnet: str, mtu: int) -> None:
    conf = f"/tmp/udhcpd.{nic}.conf"
    ok(channel, f"printf '{udhcpd_conf(nic, subnet, mtu)}' >{conf}")
    # In the background, its output away from the answer, or the answer would never end.
    ok(channel, f"udhcpd -f {conf} >/dev/null 2>&1 &")


def test_two_guests_on_one_wire(guests: Guests) -> None:
    """Two guests joined by a UDP tunnel: one serves DHCP to the other, late, and on VLAN 100
    too; they ping each other, and nettool measures between them."""
    a_port, b_port = free_udp_ports(2)
    a = guests.boot(
        "a", f"socket,udp=127.0.0.1:{b_port},localaddr=127.0.0.1:{a_port}", "52:54:00:4e:00:0a"
    )
    b = guests.boot(
        "b", f"socket,udp=127.0.0.1:{a_port},localaddr=127.0.0.1:{b_port}", "52:54:00:4e:00:0b"
    )
    # No DHCP server on the wire yet: after its first try, a says so.
    a.nic("without a lease", lambda state: state.address is None)

    with net.CommandChannel(a.serial) as at_a, net.CommandChannel(b.serial) as at_b:
        # b's own DHCP client must not take the address away once b serves the wire itself.
        ok(at_b, "killall udhcpc && ip addr add 10.9.0.1/24 dev eth0")
        serve_dhcp(at_b, "eth0", "10.9.0", 1400)
        # a's DHCP client is still trying, so the late server gives it an address and the MTU.
        eth0 = a.nic("with a lease from b", lambda state: state.address is not None)
        assert eth0.address is not None
        assert eth0.address.network == IPv4Interface("10.9.0.1/24").network
        assert eth0.mtu == 1400 and eth0.router is None
        assert "mtu 1400" in ok(at_a, "ip link show eth0").output
        a_ip = str(eth0.address.ip)

        ok(at_a, "ping -c 3 -i 0.2 -W 5 10.9.0.1")
        ok(at_b, f"ping -c 3 -i 0.01 -W 5 {a_ip}")

        for channel in (at_a, at_b):
            ok(channel, "ip link add link eth0 name eth0.100 type vlan id 100")
        ok(at_b, "ip addr add 10.100.0.1/24 dev eth0.100 && ip link set eth0.100 up")
        serve_dhcp(at_b, "eth0.100", "10.100.0", 1300)
        ok(at_a, "heron-net-up eth0.100")
        vlan = a.nic("with a lease on VLAN 100", lambda s: s.address is not None, "eth0.100")
        assert vlan.address is not None and vlan.mtu == 1300
        assert vlan.address.network == IPv4Interface("10.100.0.1/24").network
        ok(at_a, "ping -c 3 -i 0.2 -W 5 10.100.0.1")
        # Tagged frames on the wire, untagged ones apart: eth0's lease is untouched.
        assert net.guest_addresses(a.text())["eth0"] == eth0

        sent = ok(at_a, "nettool send 10.9.0.1 7 2").output
        throughput = re.search(r"throughput_bps=(\d+) bytes=(\d+)", sent)
        assert throughput and int(throughput.group(1)) > 0, sent
        rtt = ok(at_b, f"nettool rtt {a_ip} 7 20").output
        median = re.search(r"rtt_us_median=(\d+) .* count=20", rtt)
        assert median and int(median.group(1)) > 0, rtt
    for guest in (a, b):
        report = console.read(guest.text(), booted_here=True)
        assert report.intact, report.problems
