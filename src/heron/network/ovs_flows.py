"""Security groups, anti-spoofing and rate limits of the ports of an Open vSwitch bridge, as
OpenFlow flows and meters: pure, from a switch plan's ports and their OpenFlow port numbers.

The userspace (netdev) datapath reads a tap before the kernel's netfilter and tc hooks, so
the nftables driver (firewall.py) never sees these ports: the same semantics are built in
OVS itself. Every flow carries COOKIE, so that a realise replaces exactly Heron's flows and
leaves anyone else's alone. Heron's bridges are secure (ovs_sync: without flows they forward
nothing), so a bridge without a guarded port gets Heron's one flow, plain NORMAL forwarding.

The pipeline (tables):
- CLASSIFY (0): what a filtered port sends goes to SPOOF, through its egress meter if it has
  one; a port only rate limited goes through its meter to TO_PORT; everything else to TO_PORT.
- SPOOF (1): only from the port's MAC, untagged, IPv4 from its address (or the DHCP client's
  0.0.0.0 before it has one), ARP for its own address: IPv4 is sent through connection
  tracking to FROM_PORT, ARP straight to TO_PORT; anything else is dropped.
- FROM_PORT (2): a port with 'out' rules (deny_out) sends replies, DHCP requests and what
  its rules allow; the rest is dropped.
- TO_PORT (3): frames for a filtered port (by destination MAC, untagged or tagged with the
  port's VLAN: what NORMAL would output to it) pass if ARP, replies of tracked connections,
  DHCP server replies, or new connections its 'in' rules allow (committed); the rest is
  dropped. New connections a filtered port opens are committed here too.
- OUTPUT (4): NORMAL, through the receiving port's ingress meter if it has one.

Connection tracking uses a zone per bridge and VLAN, the same on every realise (connections
outlive a replacement of the flows), so that two networks with the same addresses never see
each other's flows as replies.

What is not the same as on a Linux bridge: broadcast and multicast frames reach a filtered
port unfiltered (NORMAL floods them to every port of the VLAN; taking filtered ports out of
floods, `no-flood`, would need flows outputting ARP and DHCP floods to them explicitly, VLAN
by VLAN), and the ingress limit is a meter, which drops above the rate instead of queuing
like tbf.
"""

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from heron.network.plan import ANYWHERE, FirewallRule, Port

COOKIE = 0x4865726F6E  # "Heron"
CLASSIFY, SPOOF, FROM_PORT, TO_PORT, OUTPUT = 0, 1, 2, 3, 4
DHCP_CLIENT, DHCP_SERVER = 68, 67
UNTAGGED = "vlan_tci=0x0000/0x1fff"
ESTABLISHED = ("+est+trk", "+rel+trk")


@dataclass(frozen=True)
class Meter:
    """An OpenFlow meter dropping what exceeds `kbps`, allowing bursts of `burst_kbits`."""

    id: int
    kbps: int
    burst_kbits: int

    def spec(self) -> str:
        """As ovs-ofctl add-meter / mod-meter take it."""
        return (
            f"meter={self.id},kbps,burst,band=type=drop,rate={self.kbps},"
            f"burst_size={self.burst_kbits}"
        )


@dataclass(frozen=True)
class BridgeFlows:
    """Heron's flows (ovs-ofctl syntax, each with COOKIE) and meters of one bridge."""

    flows: tuple[str, ...] = ()
    meters: tuple[Meter, ...] = ()


def conntrack_zone(bridge: str, vlan: int) -> int:
    """The connection-tracking zone (1-65535) of `vlan` (0: untagged) on `bridge`."""
    digest = hashlib.blake2s(f"{bridge}/{vlan}".encode(), digest_size=2).digest()
    return int.from_bytes(digest, "big") % 0xFFFF + 1


def egress_meter(ofport: int) -> int:
    """The meter of what the VM on OpenFlow port `ofport` sends (ids follow the port)."""
    return 2 * ofport + 1


def ingress_meter(ofport: int) -> int:
    return 2 * ofport


def _burst_bytes(mbps: int) -> int:
    """As the nftables driver polices: a tenth of a second's worth, at least 64 KiB (less
    makes TCP collapse far below the rate)."""
    return max(mbps * 125_000 // 10, 65536)


def meter(meter_id: int, mbps: int) -> Meter:
    return Meter(meter_id, mbps * 1000, _burst_bytes(mbps) * 8 // 1000)


def port_masks(low: int, high: int) -> list[str]:
    """The `value/mask` matches (or plain values) covering the ports low..high exactly."""
    found: list[str] = []
    while low <= high:
        size = 1
        # The largest aligned block starting at `low` that stays within the range.
        while low % (size * 2) == 0 and low + size * 2 - 1 <= high and size < 0x10000:
            size *= 2
        if size == 1:
            found.append(str(low))
        else:
            found.append(f"{low:#x}/{0xFFFF & ~(size - 1):#x}")
        low += size
    return found


def rule_matches(rule: FirewallRule) -> list[str]:
    """The OpenFlow matches (without port or MAC) of `rule`'s traffic."""
    side = "nw_src" if rule.direction == "in" else "nw_dst"
    remotes = [r for r in rule.remotes if r != ANYWHERE]
    addresses = (
        [f"{side}={r}" for r in remotes] if remotes and ANYWHERE not in rule.remotes else [""]
    )
    protocol = "ip" if rule.protocol == "any" else rule.protocol
    ports = [""]
    if rule.protocol in ("tcp", "udp") and rule.ports is not None:
        ports = [f"tp_dst={m}" for m in port_masks(*rule.ports)]
    return [
        ",".join(part for part in (protocol, address, port) if part)
        for address in addresses
        for port in ports
    ]


def _flow(table: int, priority: int, match: str, actions: str) -> str:
    where = f",{match}" if match else ""
    return f"cookie={COOKIE:#x},table={table},priority={priority}{where},actions={actions}"


def _goto(table: int) -> str:
    return f"goto_table:{table}"


def _vlan(port: Port) -> int:
    return (port.vlan or 0) if port.mode == "access" else 0


def _destinations(port: Port, mac: str) -> list[str]:
    """The matches of frames NORMAL would output to `port`: for its MAC, untagged (from a
    port of its VLAN) or tagged with its VLAN (from the uplink or a trunk)."""
    found = [f"dl_dst={mac},{UNTAGGED}"]
    if port.mode == "access" and port.vlan:
        found.append(f"dl_dst={mac},dl_vlan={port.vlan}")
    return found


def _sent(port: Port, number: int, zone: int) -> list[str]:
    """SPOOF and FROM_PORT flows of a filtered port."""
    fw = port.firewall
    assert fw is not None
    where = f"in_port={number},{UNTAGGED}"
    track = f"ct(zone={zone},table={FROM_PORT})"
    arp = f"{where},arp,dl_src={fw.mac},arp_sha={fw.mac}"
    flows = [
        _flow(SPOOF, 100, arp + (f",arp_spa={fw.address}" if fw.address else ""), _goto(TO_PORT))
    ]
    if fw.address is not None:
        flows.append(_flow(SPOOF, 100, f"{where},ip,dl_src={fw.mac},nw_src={fw.address}", track))
        dhcp = (
            f"{where},udp,dl_src={fw.mac},nw_src=0.0.0.0,tp_src={DHCP_CLIENT},tp_dst={DHCP_SERVER}"
        )
        flows.append(_flow(SPOOF, 100, dhcp, track))
    else:
        flows.append(_flow(SPOOF, 100, f"{where},ip,dl_src={fw.mac}", track))
    if fw.deny_out:
        mine = f"in_port={number}"
        flows += [
            _flow(FROM_PORT, 100, f"{mine},ct_state={s},ip", _goto(TO_PORT)) for s in ESTABLISHED
        ]
        dhcp = f"{mine},udp,tp_src={DHCP_CLIENT},tp_dst={DHCP_SERVER}"
        flows.append(_flow(FROM_PORT, 100, dhcp, _goto(TO_PORT)))
        for rule in fw.rules:
            if rule.direction == "out":
                flows += [
                    _flow(FROM_PORT, 100, f"{mine},{m}", _goto(TO_PORT)) for m in rule_matches(rule)
                ]
        flows.append(_flow(FROM_PORT, 50, mine, "drop"))
    # A connection the port opens (what it may send) is remembered for its replies.
    commit = f"ct(commit,zone={zone}),{_goto(OUTPUT)}"
    flows.append(_flow(TO_PORT, 5, f"in_port={number},ct_state=+new+trk,ip", commit))
    return flows


def _received(port: Port, zone: int) -> list[str]:
    """TO_PORT flows of frames for a filtered port."""
    fw = port.firewall
    assert fw is not None
    flows = []
    allowed = _goto(OUTPUT)
    for dest in _destinations(port, fw.mac):
        flows.append(_flow(TO_PORT, 100, f"{dest},arp", allowed))
        flows.append(
            _flow(TO_PORT, 100, f"{dest},ct_state=-trk,ip", f"ct(zone={zone},table={TO_PORT})")
        )
        flows += [_flow(TO_PORT, 90, f"{dest},ct_state={s},ip", allowed) for s in ESTABLISHED]
        flows.append(_flow(TO_PORT, 85, f"{dest},ct_state=+inv+trk,ip", "drop"))
        dhcp = f"{dest},udp,tp_src={DHCP_SERVER},tp_dst={DHCP_CLIENT}"
        flows.append(_flow(TO_PORT, 80, dhcp, allowed))
        commit = f"ct(commit,zone={zone}),{allowed}"
        for rule in fw.rules:
            if rule.direction == "in":
                flows += [_flow(TO_PORT, 80, f"{dest},{m}", commit) for m in rule_matches(rule)]
    # Anything else for it: other VLANs' frames (NORMAL would not output them to it anyway),
    # IPv6 and other protocols, what no rule allows.
    flows.append(_flow(TO_PORT, 10, f"dl_dst={fw.mac}", "drop"))
    return flows


def bridge_flows(bridge: str, ports: Sequence[Port], ofports: Mapping[str, int]) -> BridgeFlows:
    """Heron's flows and meters making `bridge` filter and rate limit `ports` (a switch plan's);
    `ofports` are the OpenFlow port numbers by port name (ports not on the bridge yet, whose
    VM has not started, are left out until they are)."""
    present = [(p, ofports[p.tap]) for p in ports if p.guarded and ofports.get(p.tap, -1) > 0]
    if not present:
        return BridgeFlows((_flow(CLASSIFY, 0, "", "NORMAL"),))
    flows = [
        _flow(CLASSIFY, 10, "", _goto(TO_PORT)),
        _flow(SPOOF, 0, "", "drop"),
        _flow(FROM_PORT, 0, "", _goto(TO_PORT)),
        _flow(TO_PORT, 0, "", _goto(OUTPUT)),
        _flow(OUTPUT, 0, "", "NORMAL"),
    ]
    meters = []
    for port, number in present:
        limit = ""
        if port.egress_mbps:
            meters.append(meter(egress_meter(number), port.egress_mbps))
            limit = f"meter:{egress_meter(number)},"
        if port.firewall is not None:
            zone = conntrack_zone(bridge, _vlan(port))
            flows.append(_flow(CLASSIFY, 100, f"in_port={number}", limit + _goto(SPOOF)))
            flows += _sent(port, number, zone)
            flows += _received(port, zone)
        elif limit:
            flows.append(_flow(CLASSIFY, 100, f"in_port={number}", limit + _goto(TO_PORT)))
        if port.ingress_mbps:
            meters.append(meter(ingress_meter(number), port.ingress_mbps))
            mac = port.firewall.mac if port.firewall else port.mac
            flows.append(
                _flow(OUTPUT, 100, f"dl_dst={mac}", f"meter:{ingress_meter(number)},NORMAL")
            )
    return BridgeFlows(tuple(flows), tuple(sorted(meters, key=lambda m: m.id)))


def replacement(wanted: BridgeFlows) -> str:
    """The `ovs-ofctl --bundle add-flows` input replacing Heron's flows with `wanted`'s in one
    transaction (never a moment without them)."""
    lines = [f"delete cookie={COOKIE:#x}/-1"] + [f"add {flow}" for flow in wanted.flows]
    return "\n".join(lines) + "\n"


def parse_meters(text: str) -> dict[int, Meter]:
    """The meters printed by `ovs-ofctl dump-meters` (their first drop band)."""
    found: dict[int, Meter] = {}
    current: int | None = None
    for word in text.split():
        key, _, value = word.partition("=")
        if key == "meter" and value.isdigit():
            current = int(value)
            found[current] = Meter(current, 0, 0)
        elif current is not None and key in ("rate", "burst_size") and value.isdigit():
            have = found[current]
            if key == "rate":
                found[current] = Meter(current, int(value), have.burst_kbits)
            else:
                found[current] = Meter(current, have.kbps, int(value))
    return found


def meter_changes(
    wanted: Iterable[Meter], present: Mapping[int, Meter]
) -> tuple[list[Meter], list[Meter], list[int]]:
    """The meters to add, to modify, and (after the flows stop using them) to delete."""
    wanted = list(wanted)
    add = [m for m in wanted if m.id not in present]
    modify = [m for m in wanted if m.id in present and present[m.id] != m]
    ids = {m.id for m in wanted}
    return add, modify, sorted(set(present) - ids)


def heron_flows(dump: str) -> list[str]:
    """Heron's flows in an `ovs-ofctl dump-flows --no-stats` output, sorted (the switch
    prints them in no particular order)."""
    return sorted(
        line.strip() for line in dump.splitlines() if line.strip().startswith(f"cookie={COOKIE:#x}")
    )


def fingerprint(wanted: BridgeFlows, flows: Sequence[str], meters: Mapping[int, Meter]) -> str:
    """What a bridge records (in its external_ids) once `wanted` is in place, with the flows
    and meters the switch then shows: the next realise, from whichever agent, compares it
    with what it wants and what the switch shows, and writes nothing when all agree."""
    digest = hashlib.blake2s(digest_size=16)
    for line in [*wanted.flows, *(m.spec() for m in wanted.meters), "", *flows]:
        digest.update(line.encode() + b"\n")
    for meter_id in sorted(meters):
        digest.update(meters[meter_id].spec().encode() + b"\n")
    return digest.hexdigest()
