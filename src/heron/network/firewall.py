"""Security groups and anti-spoofing for VM NICs on Linux bridges: one nftables ruleset per
node, Heron's own tables `bridge heron` and `inet heron`, replaced whole in one transaction
(never a moment without rules).

Bridged frames are seen in two places:
- the `bridge` family, by tap name: what a VM sends is checked at once (its MAC, its IPv4
  source address, ARP for its own address only, nothing but IPv4 and ARP; the egress rate
  limit), and each frame to or from a filtered port is marked with the port's number;
- the `inet` family's forward hook, which br_netfilter runs for bridged IPv4 with connection
  tracking (this kernel has no nf_conntrack_bridge, so `ct state` does not work in the bridge
  family): there the marks say which port's rules apply, and the rules are stateful.
The mark's high 16 bits are the sending port, the low 16 bits the receiving port.

Only Linux bridges pass frames through these hooks: an Open vSwitch port is not filtered here
(the controller reports it).
"""

import asyncio
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from heron.network import netns
from heron.network.dataplane import DataPlane
from heron.network.plan import ANYWHERE, FirewallRule, Port

TABLE = "heron"
# Without it bridged IPv4 never reaches the inet family's hooks: the rules would not apply.
CALL_IPTABLES = "/proc/sys/net/bridge/bridge-nf-call-iptables"
MAX_PORTS = 0xFFFF
DHCP_CLIENT, DHCP_SERVER = 68, 67
BRIDGE_PREFIXES = ("hb", "hx")  # a switch's bridge, a segment's (plan.switch_bridge...)


def _quoted(name: str) -> str:
    return f'"{name}"'


def _set(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _match(rule: FirewallRule) -> str:
    """The nft expression matching `rule`'s traffic (no verdict)."""
    parts = []
    remotes = [r for r in rule.remotes if r != ANYWHERE]
    if remotes and ANYWHERE not in rule.remotes:
        side = "saddr" if rule.direction == "in" else "daddr"
        parts.append(f"ip {side} {_set(remotes)}")
    else:
        parts.append("meta nfproto ipv4")
    if rule.protocol == "icmp":
        parts.append("meta l4proto icmp")
    elif rule.protocol in ("tcp", "udp"):
        if rule.ports is None:
            parts.append(f"meta l4proto {rule.protocol}")
        else:
            low, high = rule.ports
            ports = str(low) if low == high else f"{low}-{high}"
            parts.append(f"{rule.protocol} dport {ports}")
    return " ".join(parts)


def _burst(mbps: int) -> int:
    """Bytes a policed sender may send at once: a tenth of a second's worth, at least 64 KiB
    (less makes TCP collapse far below the rate)."""
    return max(mbps * 125_000 // 10, 65536)


def conntrack_zone(bridge: str) -> int:
    """A bridge's own connection-tracking zone (1-65535), the same on every realise so that
    connections outlive a ruleset's replacement: two networks may use the same addresses, and
    a flow of one must never pass for a reply in the other. (Two bridges of one node sharing a
    zone by chance are no worse off than without zones.)"""
    digest = hashlib.blake2s(bridge.encode(), digest_size=2).digest()
    return int.from_bytes(digest, "big") % 0xFFFF + 1


def ruleset(ports: Sequence[Port], bridges: Sequence[str] = ()) -> str:
    """The nft script making Heron's tables those for `ports` (all of a node's Linux bridge
    ports, on `bridges`): both tables deleted and, when a port is filtered or rate limited,
    made anew, in one transaction."""
    lines = [f"add table bridge {TABLE}", f"delete table bridge {TABLE}"]
    lines += [f"add table inet {TABLE}", f"delete table inet {TABLE}"]
    wanted = [p for p in ports if p.firewall is not None or p.egress_mbps]  # in the ruleset
    if not wanted:
        return "\n".join(lines) + "\n"
    if len(wanted) > MAX_PORTS:
        raise ValueError(f"{len(wanted)} filtered ports: at most {MAX_PORTS} fit the marks")
    pre = [
        "\tchain prerouting {",
        "\t\ttype filter hook prerouting priority -200; policy accept;",
    ]
    fwd = [
        "\tchain forward {",
        "\t\ttype filter hook forward priority -200; policy accept;",
    ]
    chains: list[str] = []
    inet_out: list[str] = []
    inet_in: list[str] = []
    inet_chains: list[str] = []
    for number, port in enumerate(wanted, start=1):
        tap = _quoted(port.tap)
        sent = [f"\tchain from_{number} {{"]
        if port.egress_mbps:
            rate = port.egress_mbps * 125_000
            sent.append(f"\t\tlimit rate over {rate} bytes/second burst {_burst(port.egress_mbps)}")
            sent[-1] += " bytes drop"
        fw = port.firewall
        if fw is not None:
            sent += [
                f"\t\tether saddr != {fw.mac} drop",
                "\t\tether type != { ip, arp } drop",
                f"\t\tarp saddr ether != {fw.mac} drop",
            ]
            if fw.address is not None:
                sent += [
                    f"\t\tarp saddr ip != {fw.address} drop",
                    f"\t\tip saddr 0.0.0.0 udp sport {DHCP_CLIENT} udp dport {DHCP_SERVER} accept",
                    f"\t\tip saddr != {fw.address} drop",
                ]
        sent.append("\t}")
        chains += sent
        pre.append(f"\t\tiifname {tap} jump from_{number}")
        if fw is None:
            continue
        fwd.append(f"\t\tiifname {tap} meta mark set meta mark & 0xffff | {number << 16:#x}")
        fwd.append(f"\t\toifname {tap} jump to_{number}")
        chains += [
            f"\tchain to_{number} {{",
            "\t\tether type != { ip, arp } drop",
            f"\t\tmeta mark set meta mark & 0xffff0000 | {number:#x}",
            "\t}",
        ]
        inet_in.append(f"{number:#x} : jump to_{number}")
        received = [
            f"\tchain to_{number} {{",
            "\t\tct state established,related accept",
            "\t\tct state invalid drop",
            f"\t\tudp sport {DHCP_SERVER} udp dport {DHCP_CLIENT} accept",
        ]
        received += [f"\t\t{_match(r)} accept" for r in fw.rules if r.direction == "in"]
        received += ["\t\tdrop", "\t}"]
        inet_chains += received
        if fw.deny_out:
            # `return`, not accept: what the port may send must still be let in by the port
            # it goes to (checked after this, in the same base chain).
            inet_out.append(f"{number << 16:#x} : jump from_{number}")
            allowed = [
                f"\tchain from_{number} {{",
                "\t\tct state established,related return",
                f"\t\tudp sport {DHCP_CLIENT} udp dport {DHCP_SERVER} return",
            ]
            allowed += [f"\t\t{_match(r)} return" for r in fw.rules if r.direction == "out"]
            allowed += ["\t\tdrop", "\t}"]
            inet_chains += allowed
    lines += [f"table bridge {TABLE} {{", *pre, "\t}", *fwd, "\t}", *chains, "}"]
    if inet_in:
        # Only what Heron's bridges forward: br_netfilter gives the bridge as the input
        # device; marks of other software on routed packets never select a port's chain.
        ours = ", ".join(f'"{prefix}*"' for prefix in BRIDGE_PREFIXES)
        base = [
            "\tchain forward {",
            "\t\ttype filter hook forward priority 0; policy accept;",
            f"\t\tiifname != {{ {ours} }} accept",
        ]
        if inet_out:
            base.append(f"\t\tmeta mark & 0xffff0000 vmap {{ {', '.join(inet_out)} }}")
        base.append(f"\t\tmeta mark & 0xffff vmap {{ {', '.join(inet_in)} }}")
        zones = [
            # br_netfilter's IPv4 prerouting sees the bridge as the input device.
            "\tchain prerouting {",
            "\t\ttype filter hook prerouting priority -300; policy accept;",
        ]
        zones += [
            f"\t\tiifname {_quoted(b)} ct zone set {conntrack_zone(b)}" for b in sorted(bridges)
        ]
        zones.append("\t}")
        lines += [f"table inet {TABLE} {{", *zones, *base, "\t}", *inet_chains, "}"]
    return "\n".join(lines) + "\n"


async def _load_br_netfilter() -> None:
    """A real host may not have loaded it yet (a devcluster's namespaces share the host's)."""
    try:
        process = await asyncio.create_subprocess_exec(
            "modprobe",
            "br_netfilter",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return
    await process.wait()


class Firewall:
    """Heron's nftables tables in one data plane."""

    def __init__(self, plane: DataPlane):
        self.plane = plane
        self._applied: str | None = None

    def _command(self, *args: str) -> list[str]:
        if self.plane.netns is None:
            return ["nft", *args]
        where = os.path.join(netns.NETNS_DIR, self.plane.netns)
        return ["nsenter", f"--net={where}", "nft", *args]

    async def _nft(self, *args: str, script: str | None = None) -> tuple[int, str]:
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command(*args),
                stdin=asyncio.subprocess.PIPE if script is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except FileNotFoundError as exc:  # a host without nftables: said, not raised
            return 127, f"{exc.filename or 'nft'} is not installed"
        out, _ = await process.communicate(script.encode() if script is not None else None)
        return process.returncode or 0, out.decode(errors="replace").strip()

    async def _tables(self) -> set[str]:
        code, out = await self._nft("list", "tables")
        return {line.strip() for line in out.splitlines()} if code == 0 else set()

    def _bridged_ipv4_hooked(self) -> bool:
        """Turn on br_netfilter's call into the IPv4 hooks in this plane (per namespace);
        False where br_netfilter is missing."""

        def work() -> bool:
            path = Path(CALL_IPTABLES)
            if not path.exists():
                return False
            if path.read_text().strip() != "1":
                path.write_text("1\n")
            return True

        return netns.run_in(self.plane.netns, work)

    async def realise(self, ports: Sequence[Port], bridges: Sequence[str] = ()) -> list[str]:
        """Make Heron's tables those for `ports` (every Linux bridge port of the node, on
        `bridges`)."""
        script = ruleset(ports, bridges)
        problems: list[str] = []
        filtered = any(p.firewall is not None for p in ports)
        if filtered and not await asyncio.to_thread(self._bridged_ipv4_hooked):
            await _load_br_netfilter()
        if filtered and not await asyncio.to_thread(self._bridged_ipv4_hooked):
            problems.append(
                "br_netfilter is not loaded: security groups are not enforced on this node"
            )
        present = await self._tables()
        expected = {f"table inet {TABLE}"} if filtered else set()
        if filtered or any(p.egress_mbps for p in ports):
            expected.add(f"table bridge {TABLE}")
        if script == self._applied and expected <= present:
            return problems
        code, out = await self._nft("-f", "-", script=script)
        if code != 0:
            self._applied = None
            if not expected and code == 127:
                return problems  # nothing to filter, and no nft to filter with
            return [*problems, f"nftables refused the security groups: {out[:300]}"]
        self._applied = script
        return problems
