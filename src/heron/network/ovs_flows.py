"""Security groups, anti-spoofing and rate limits of the ports of an Open vSwitch bridge, as
OpenFlow flows and meters: pure, from a switch plan's ports and their OpenFlow port numbers.

The userspace (netdev) datapath reads a tap before the kernel's netfilter and tc hooks, so
the nftables driver (firewall.py) never sees these ports: the same semantics are built in
OVS itself. Every flow carries COOKIE, so that a realise replaces exactly Heron's flows and
leaves anyone else's alone. Heron's bridges are secure (ovs_sync: without flows they forward
nothing), so a bridge without a guarded port gets Heron's one flow, plain NORMAL forwarding.

The pipeline (tables):
- CLASSIFY (0): notes in REG6 the VLAN a frame is in (an access port's, a trunk's or the
  uplink's tag, 0 untagged) if its port carries that VLAN, as NORMAL decides it (needed only
  when a port is filtered). Then what a filtered port sends goes to SPOOF, through its egress
  meter if it has one; a port only rate limited goes through its meter to TO_PORT; everything
  else to TO_PORT.
- SPOOF (1): only from the port's MAC, untagged, IPv4 from its address (or the DHCP client's
  0.0.0.0 before it has one), ARP for its own address: IPv4 is sent through connection
  tracking to FROM_PORT, ARP straight to TO_PORT; anything else is dropped.
- FROM_PORT (2): a port with 'out' rules (deny_out) sends replies, DHCP requests and what
  its rules allow; the rest is dropped.
- TO_PORT (3): unicast for a filtered port (by destination MAC, in a VLAN it carries) passes
  to DELIVER if ARP, replies of tracked connections, DHCP server replies, or new connections
  its 'in' rules allow (committed); the rest is dropped. New connections a filtered port
  opens are committed here too.
- OUTPUT (4): NORMAL, through the receiving port's ingress meter if it has one. A broadcast
  or multicast frame is first copied (a clone each) to FLOOD once per filtered port.
- FLOOD (5): a flooded frame in a VLAN the filtered port carries passes to DELIVER if ARP, a
  DHCP server reply or IPv4 its 'in' rules allow; the rest is dropped.
- DELIVER (6): output to the filtered port (REG7), through its ingress meter, with the
  802.1Q tag NORMAL would give it.

Filtered ports are NO_FLOOD (ovs_filter sets it), so that NORMAL floods nothing to them:
neither broadcasts and multicasts (FLOOD delivers what they may get) nor unknown unicast,
another VM's frames for a MAC the switch has not learned. A filtered port's own unicast is
delivered by TO_PORT whether or not NORMAL knows its MAC.

Connection tracking uses a zone per bridge and VLAN, the same on every realise (connections
outlive a replacement of the flows), so that two networks with the same addresses never see
each other's flows as replies.

What is not the same as on a Linux bridge: the ingress limit is a meter, which drops above
the rate instead of queuing like tbf; and a broadcast or multicast datagram is let in by the
'in' rules alone, never as a reply of a tracked connection (nor is it tracked), which
conntrack would not find one to be anyway.
"""

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from heron.network.plan import ANYWHERE, FirewallRule, Port

COOKIE = 0x4865726F6E  # "Heron"
CLASSIFY, SPOOF, FROM_PORT, TO_PORT, OUTPUT, FLOOD, DELIVER = 0, 1, 2, 3, 4, 5, 6
DHCP_CLIENT, DHCP_SERVER = 68, 67
UNTAGGED = "vlan_tci=0x0000/0x1fff"
TAGGED = "vlan_tci=0x1000/0x1000"
MULTICAST = "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00"  # broadcast included
# REG6 holds the VLAN a frame is in (KNOWN | its VID) once CLASSIFY has checked that its
# port carries that VLAN (NORMAL's own rule); REG7 the filtered port a frame is delivered to.
VLAN_REG, PORT_REG = "reg6", "reg7"
KNOWN = 0x1000
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
    # OpenFlow port numbers that NORMAL must not flood to (filtered ports: their flows
    # deliver what they may receive), and those it floods to (the bridge's other ports).
    no_flood: tuple[int, ...] = ()
    flood: tuple[int, ...] = ()


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


def _blocks(low: int, high: int) -> list[tuple[int, int]]:
    """The aligned blocks (first value, size) covering low..high exactly, largest first."""
    found: list[tuple[int, int]] = []
    while low <= high:
        size = 1
        # The largest aligned block starting at `low` that stays within the range.
        while low % (size * 2) == 0 and low + size * 2 - 1 <= high and size < 0x10000:
            size *= 2
        found.append((low, size))
        low += size
    return found


def port_masks(low: int, high: int) -> list[str]:
    """The `value/mask` matches (or plain values) covering the ports low..high exactly."""
    return [
        str(first) if size == 1 else f"{first:#x}/{0xFFFF & ~(size - 1):#x}"
        for first, size in _blocks(low, high)
    ]


def _ranges(vlans: Iterable[int]) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    for vlan in sorted(set(vlans)):
        if found and found[-1][1] == vlan - 1:
            found[-1] = (found[-1][0], vlan)
        else:
            found.append((vlan, vlan))
    return found


def vlans(port: Port) -> list[tuple[int, int]]:
    """The VLANs (ranges; 0: untagged) that NORMAL lets `port` carry (ovs_sync.port_config)."""
    if port.mode == "trunk":
        return _ranges(v for first, last in port.trunk for v in range(first, last + 1))
    return [(_vlan(port), _vlan(port))]


def uplink_vlans(ports: Iterable[Port]) -> list[tuple[int, int]]:
    """The uplink's: every VLAN of the ports (ovs_sync.uplink_config)."""
    return _ranges(v for p in ports for first, last in vlans(p) for v in range(first, last + 1))


def in_vlans(ranges: Iterable[tuple[int, int]]) -> list[str]:
    """The REG6 matches of frames that CLASSIFY found in one of the VLANs `ranges`."""
    return [
        f"{VLAN_REG}={first:#x}" + ("" if size == 1 else f"/{0x1FFF & ~(size - 1):#x}")
        for low, high in ranges
        for first, size in _blocks(KNOWN + low, KNOWN + high)
    ]


def _tagged_in(ranges: Iterable[tuple[int, int]]) -> list[str]:
    """The matches of frames arriving in the VLANs `ranges` on a trunk (0: untagged)."""
    found = []
    for low, high in ranges:
        if low == 0:
            found.append(UNTAGGED)
            low = 1
        if low <= high:
            found += [
                f"vlan_tci={first:#06x}/{0x1FFF & ~(size - 1):#06x}"
                if size > 1
                else f"dl_vlan={first - KNOWN}"
                for first, size in _blocks(KNOWN + low, KNOWN + high)
            ]
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


def _received(port: Port, number: int, zone: int) -> list[str]:
    """TO_PORT flows of unicast frames for a filtered port: by its MAC, in a VLAN it carries
    (whatever port they came from). What may pass is delivered to it, not left to NORMAL:
    it never floods to a filtered port, which would lose frames for a MAC it has forgotten."""
    fw = port.firewall
    assert fw is not None
    flows = []
    allowed = f"load:{number}->NXM_NX_REG7[],{_goto(DELIVER)}"
    for vlan in in_vlans(vlans(port)):
        dest = f"dl_dst={fw.mac},{vlan}"
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


def _flooded(port: Port, number: int) -> list[str]:
    """FLOOD flows: which broadcast and multicast frames of its VLANs a filtered port gets,
    as on a Linux bridge: ARP, DHCP server replies, and IPv4 its 'in' rules allow (no
    connection of its own is answered by a broadcast or multicast)."""
    fw = port.firewall
    assert fw is not None
    deliver = _goto(DELIVER)
    flows = []
    for vlan in in_vlans(vlans(port)):
        mine = f"reg7={number},{vlan}"
        flows.append(_flow(FLOOD, 100, f"{mine},arp", deliver))
        dhcp = f"{mine},udp,tp_src={DHCP_SERVER},tp_dst={DHCP_CLIENT}"
        flows.append(_flow(FLOOD, 100, dhcp, deliver))
        for rule in fw.rules:
            if rule.direction == "in":
                flows += [_flow(FLOOD, 100, f"{mine},{m}", deliver) for m in rule_matches(rule)]
    return flows


def _delivered(port: Port, number: int) -> list[str]:
    """DELIVER flows: output to a filtered port as NORMAL would, the 802.1Q tag taken off
    for an access port, put on (the VLAN CLASSIFY found) for a trunk."""
    limit = f"meter:{ingress_meter(number)}," if port.ingress_mbps else ""
    out = f"output:{number}"
    mine = f"reg7={number}"
    if port.mode != "trunk":
        return [
            _flow(DELIVER, 100, f"{mine},{TAGGED}", f"{limit}strip_vlan,{out}"),
            _flow(DELIVER, 90, mine, limit + out),
        ]
    tag = "push_vlan:0x8100,move:NXM_NX_REG6[0..11]->NXM_OF_VLAN_TCI[0..11],"
    return [
        _flow(DELIVER, 100, f"{mine},{TAGGED}", limit + out),
        _flow(DELIVER, 95, f"{mine},{VLAN_REG}={KNOWN:#x}", limit + out),
        _flow(DELIVER, 90, mine, limit + tag + out),
    ]


def _classified(
    port_vlans: list[tuple[int, int]], number: int, trunk: bool, then: str
) -> list[str]:
    """CLASSIFY flows of a port: the VLAN of what it sends, where NORMAL would take it."""
    mine = f"in_port={number}"
    flows = []
    if trunk:
        for match in _tagged_in(port_vlans):
            load = (
                f"load:{KNOWN:#x}->NXM_NX_REG6[]"
                if match == UNTAGGED
                else "move:NXM_OF_VLAN_TCI[0..12]->NXM_NX_REG6[0..12]"
            )
            flows.append(_flow(CLASSIFY, 100, f"{mine},{match}", _then(then, load)))
    else:
        load = f"load:{KNOWN + port_vlans[0][0]:#x}->NXM_NX_REG6[]"
        flows.append(_flow(CLASSIFY, 100, f"{mine},{UNTAGGED}", _then(then, load)))
    # Frames of a VLAN it does not carry: NORMAL drops them, no flow delivers them.
    flows.append(_flow(CLASSIFY, 90, mine, then))
    return flows


def _then(then: str, load: str) -> str:
    """`then` (a meter instruction first, if any, then a goto) with `load` before the goto."""
    if then.startswith("meter:"):
        limit, rest = then.split(",", 1)
        return f"{limit},{load},{rest}"
    return f"{load},{then}"


def bridge_flows(
    bridge: str, ports: Sequence[Port], ofports: Mapping[str, int], uplink: str | None = None
) -> BridgeFlows:
    """Heron's flows and meters making `bridge` filter and rate limit `ports` (a switch plan's;
    `uplink` its uplink's name); `ofports` are the OpenFlow port numbers by port name (ports
    not on the bridge yet, whose VM has not started, are left out until they are)."""
    on_bridge = [(p, ofports[p.tap]) for p in ports if ofports.get(p.tap, -1) > 0]
    present = [(p, n) for p, n in on_bridge if p.guarded]
    filtered = [(p, n) for p, n in present if p.firewall is not None]
    up = ofports.get(uplink, -1) if uplink else -1
    floods = tuple(
        sorted([n for p, n in on_bridge if p.firewall is None] + ([up] if up > 0 else []))
    )
    no_flood = tuple(sorted(n for _, n in filtered))
    if not present:
        return BridgeFlows((_flow(CLASSIFY, 0, "", "NORMAL"),), flood=floods)
    flows = [
        _flow(CLASSIFY, 10, "", _goto(TO_PORT)),
        _flow(SPOOF, 0, "", "drop"),
        _flow(FROM_PORT, 0, "", _goto(TO_PORT)),
        _flow(TO_PORT, 0, "", _goto(OUTPUT)),
        _flow(OUTPUT, 0, "", "NORMAL"),
    ]
    meters = []
    for port, number in on_bridge:
        limit = ""
        if port.egress_mbps:
            meters.append(meter(egress_meter(number), port.egress_mbps))
            limit = f"meter:{egress_meter(number)},"
        then = limit + _goto(SPOOF if port.firewall is not None else TO_PORT)
        if filtered:
            # Every port's VLAN is needed to deliver floods to the filtered ones.
            flows += _classified(vlans(port), number, port.mode == "trunk", then)
        elif limit:
            flows.append(_flow(CLASSIFY, 100, f"in_port={number}", then))
        if port.firewall is not None:
            zone = conntrack_zone(bridge, _vlan(port))
            flows += _sent(port, number, zone)
            flows += _received(port, number, zone)
            flows += _flooded(port, number)
            flows += _delivered(port, number)
        if port.ingress_mbps:
            meters.append(meter(ingress_meter(number), port.ingress_mbps))
            if port.firewall is None:
                flows.append(
                    _flow(
                        OUTPUT, 100, f"dl_dst={port.mac}", f"meter:{ingress_meter(number)},NORMAL"
                    )
                )
    if filtered:
        if up > 0:
            flows += _classified(uplink_vlans(ports), up, True, _goto(TO_PORT))
        # Each filtered port gets its copy of a flood if its flows let it (each in a clone:
        # one port's VLAN tag change is not the next one's), then NORMAL floods to the rest.
        copies = ",".join(f"clone(load:{n}->NXM_NX_REG7[],resubmit(,{FLOOD}))" for _, n in filtered)
        flows.append(_flow(OUTPUT, 50, MULTICAST, f"{copies},NORMAL"))
        flows.append(_flow(FLOOD, 0, "", "drop"))
        flows.append(_flow(DELIVER, 0, "", "drop"))
    return BridgeFlows(tuple(flows), tuple(sorted(meters, key=lambda m: m.id)), no_flood, floods)


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


def parse_no_flood(text: str) -> set[int]:
    """The OpenFlow port numbers that `ovs-ofctl dump-ports-desc` prints as NO_FLOOD."""
    found: set[int] = set()
    current: int | None = None
    for line in text.splitlines():
        head = line.strip().split("(", 1)[0]
        if "(" in line and head.isdigit():
            current = int(head)
        elif "(" in line and line.strip().startswith("LOCAL("):
            current = None
        elif current is not None and line.strip().startswith("config:"):
            found.update([current] if "NO_FLOOD" in line.split() else [])
    return found


def fingerprint(
    wanted: BridgeFlows,
    flows: Sequence[str],
    meters: Mapping[int, Meter],
    no_flood: Iterable[int] = (),
) -> str:
    """What a bridge records (in its external_ids) once `wanted` is in place, with the flows,
    meters and NO_FLOOD ports the switch then shows: the next realise, from whichever agent,
    compares it with what it wants and what the switch shows, and writes nothing when all
    agree. (A port's NO_FLOOD, like the flows, is lost when ovs-vswitchd restarts or the port
    is made anew.)"""
    digest = hashlib.blake2s(digest_size=16)
    for line in [*wanted.flows, *(m.spec() for m in wanted.meters), "", *flows]:
        digest.update(line.encode() + b"\n")
    for meter_id in sorted(meters):
        digest.update(meters[meter_id].spec().encode() + b"\n")
    digest.update(f"no-flood {wanted.no_flood} flood {wanted.flood}\n".encode())
    digest.update(f"no-flood now {sorted(no_flood)}\n".encode())
    return digest.hexdigest()
