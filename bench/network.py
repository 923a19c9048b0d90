"""VM networking: Heron's switch against QEMUs plugged by hand, pings lost in a migration,
and the cost of a switch with 1000 port groups.

1. Throughput and latency across nodes, both sides up together and measured in turn. A 2-node
   devcluster with networking (each node's data plane a namespace on a fabric of veths) and a
   VXLAN network; two test guests, one per node, with their addresses by DHCP. In the guest:
   `nettool send PEER 7 SECONDS` (TCP bulk, to the peer's echo/sink server) and `nettool rtt
   PEER 7 COUNT` (TCP round trips). The baseline, with none of Heron: two namespaces joined by
   a veth underlay, in each a bridge and a kernel VXLAN device made with `ip`, a QEMU started
   inside with the same guest image, NIC model and `vhost=off`, its tap opened by QEMU and
   plugged by hand, and the addresses set by hand. Goal: heron / bare ≥ 0.9 for throughput.
2. Pings lost during a live migration: the second guest pings the first every 10 ms while it
   moves between the nodes (`ping -i 0.01`); lost = sent - received over the whole move, with
   Heron's default downtime limit and with 20 ms. Captures on both nodes split the gap in the
   replies at the moved VM's first announcement (QEMU's RARP as the guest resumes): before it,
   the VM is between two QEMUs; then the network learns where it went (to the first request
   delivered to its new tap); then the guest answers (warming up under TCG). Goal: ≤ 1.
3. 1000 port groups: one Open vSwitch (userspace datapath, its own daemons in a namespace)
   realised by Heron's driver with 1000 access ports in 1000 VLANs (taps standing for NICs),
   from nothing and again (nothing to do), against the same ports added by hand in one
   `ovs-vsctl` transaction. Also the pure plan of a node for 1000 networks with one NIC each,
   and the kernel links Heron made beyond the taps (a bridge per VLAN would make 1000).

Run from the repository root: `.venv/bin/python -m bench.network [--runs 3]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    TESTGUEST,
    Api,
    BenchError,
    exit_on_sigterm,
    load_snapshot,
    print_rows,
    ratio,
    running_devcluster,
    shared_testguest,
    stats,
    wait_for,
    write_result,
)
from heron.models.network import Network, Switch
from heron.models.node import Node
from heron.models.vm import VM, NicSpec, VMSpec
from heron.network import netns
from heron.network.dataplane import DataPlane
from heron.network.ovs import OpenVSwitch
from heron.network.ovs_runtime import OvsRuntime
from heron.network.plan import Port, SwitchPlan, plan_node, tap_name
from heron.network.tap import open_tap
from heron.testguest.net import CommandChannel, guest_addresses

BOOT = 240
SUBNET = "10.50.0"
SEND_SECONDS = 8
RTT_COUNT = 200
PORT_GROUPS = 1000
# The downtime limits the migrations run with: Heron's default, and one an administrator asks
# for when a move must be nearly unnoticed.
LIMITS: tuple[int | None, ...] = (None, 20)


# -- guests ----------------------------------------------------------------------------------


def nettool(channel: CommandChannel, peer: str) -> dict[str, float]:
    """Throughput (bit/s) and median TCP round trip (µs) from the guest to `peer`."""
    sent = channel.run(f"nettool send {peer} 7 {SEND_SECONDS}", timeout=SEND_SECONDS + 60)
    rtt = channel.run(f"nettool rtt {peer} 7 {RTT_COUNT}", timeout=120)
    found_bps = re.search(r"throughput_bps=(\d+)", sent.output)
    found_rtt = re.search(r"rtt_us_median=(\d+)", rtt.output)
    if sent.rc or rtt.rc or not found_bps or not found_rtt:
        raise BenchError(f"nettool failed: {sent.output!r} {rtt.output!r}")
    return {"throughput_bps": float(found_bps.group(1)), "rtt_us": float(found_rtt.group(1))}


def lease(log: Path) -> str:
    def found() -> str | None:
        if not log.exists():
            return None
        state = guest_addresses(log.read_text(errors="replace")).get("eth0")
        return str(state.address.ip) if state and state.address else None

    return wait_for(found, BOOT, f"a lease in {log}", interval=0.2)


# -- Heron -----------------------------------------------------------------------------------


@contextlib.contextmanager
def heron_guests(work: Path) -> Iterator[HeronGuests]:
    """Two guests on a Heron VXLAN network, one on each node of a 2-node cluster."""
    with running_devcluster(work / "cluster", 2, network=True) as (cluster, token):
        api = Api(cluster.nodes[0].url, token, cluster.tls())
        shared_testguest(api, work)
        api.ok("POST", "/switches", json={"name": "dvs"})
        api.ok(
            "POST",
            "/networks",
            json={
                "name": "seg",
                "switch": "dvs",
                "kind": "vxlan",
                "vni": 100,
                "subnet": {"cidr": f"{SUBNET}.0/24"},
            },
        )
        vms = []
        for node in ("node1", "node2"):
            reply = api.ok(
                "POST",
                "/vms",
                json={
                    "name": f"net-{node}",
                    "memory_mib": 128,
                    "node": node,
                    "start": True,
                    "disks": [{"pool": "shared", "source": "shared/testguest"}],
                    "nics": [{"network": "seg"}],
                },
            )
            api.wait_task(reply["task"])
            vms.append(api.ok("GET", f"/vms/{reply['vm']}")["id"])
        guests = HeronGuests(api, cluster, vms)
        guests.addresses = [lease(guests.home(vm) / "console.log") for vm in vms]
        yield guests


class HeronGuests:
    def __init__(self, api: Api, cluster: Any, vms: list[str]) -> None:
        self.api, self.cluster, self.vms = api, cluster, vms
        self.addresses: list[str] = []

    def home(self, vm_id: str) -> Path:
        node = self.api.ok("GET", f"/vms/{vm_id}")["node"]
        return Path(self.cluster.node(node).state_dir) / "vms" / vm_id

    def transfer(self) -> dict[str, float]:
        with CommandChannel(self.home(self.vms[0]) / "serial.sock") as channel:
            return nettool(channel, self.addresses[1])

    def migrations(self, runs: int, limits: tuple[int | None, ...]) -> list[dict[str, Any]]:
        """Pings from the second guest to the first while the first moves, `runs` times for
        each downtime limit (None: Heron's default), each after the same stream without a
        move (what this machine loses anyway). Captures on both nodes split each gap in the
        replies (see split_gap)."""
        pinger = self.api.ok("GET", f"/vms/{self.vms[1]}")
        moved_mac = self.api.ok("GET", f"/vms/{self.vms[0]}")["spec"]["nics"][0]["mac"]
        netns_of = {n.name: n.netns for n in self.cluster.fabric_nodes()}
        tap = tap_name(pinger["spec"]["nics"][0]["mac"])
        moved_tap = tap_name(moved_mac)
        lost = []
        with CommandChannel(self.home(self.vms[1]) / "serial.sock") as channel:
            for move in range(runs * len(limits)):
                limit = limits[move % len(limits)]
                still = pings(channel, self.addresses[0], lambda: time.sleep(3))
                target = "node2" if move % 2 == 0 else "node1"
                moved: dict[str, Any] = {}

                def migrate(
                    target: str = target, limit: int | None = limit, moved: dict[str, Any] = moved
                ) -> None:
                    body: dict[str, Any] = {"target": target}
                    if limit is not None:
                        body["max_downtime_ms"] = limit
                    reply = self.api.ok("POST", f"/vms/{self.vms[0]}/actions/migrate", json=body)
                    moved.update(self.api.wait_task(reply["task"], timeout=600))

                with (
                    Capture(netns_of[pinger["node"]]) as at_pinger,
                    Capture(netns_of[target]) as at_target,
                ):
                    counted = pings(channel, self.addresses[0], migrate)
                at_target = at_pinger if target == pinger["node"] else at_target
                lost.append(
                    {
                        **counted,
                        "max_downtime_ms": limit,
                        "downtime_ms": moved.get("result", {}).get("downtime_ms"),
                        "lost_without_move": still["lost"],
                        **split_gap(at_pinger, tap, at_target, moved_tap, moved_mac),
                    }
                )
        return lost


GRATUITOUS = re.compile(r"who-has (\S+) tell \1,")


class Capture:
    """tcpdump on every interface of a node's data plane: the ICMP and (R)ARP frames each
    interface sends towards what it leads to, with their times (a tap: towards its guest)."""

    def __init__(self, namespace: str) -> None:
        self.args = [
            "ip", "netns", "exec", namespace,
            "tcpdump", "-i", "any", "-Q", "out", "-n", "-e", "-tt", "-l",
            "icmp or arp or rarp",
        ]  # fmt: skip
        self.frames: list[tuple[float, str, str, str]] = []  # time, interface, source MAC, line

    def __enter__(self) -> Capture:
        # Into a file: a pipe nobody reads while the move goes on fills, and tcpdump drops.
        self.out = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(self.args, stdout=self.out, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        while "listening on" not in self.proc.stderr.readline():  # it captures from here on
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.communicate(timeout=30)
        self.out.seek(0)
        # "TIME IFACE Out ifindex N SRC ethertype ..."
        for line in self.out.read().splitlines():
            words = line.split()
            if len(words) > 5 and words[2] == "Out":
                self.frames.append((float(words[0]), words[1], words[5], line))

    def times(self, interface: str, kind: str, source: str | None = None) -> list[float]:
        return [
            at
            for at, where, mac, line in self.frames
            if where == interface
            and (source is None or mac == source)
            and (
                kind in line
                if kind != "announce"
                else "Reverse ARP" in line or GRATUITOUS.search(line)
            )
        ]


def split_gap(
    pinger: Capture, pinger_tap: str, target: Capture, moved_tap: str, moved_mac: str
) -> dict[str, float | None]:
    """The gap in the pinger's replies, cut at the moved VM's first announcement (QEMU's RARP
    as the guest resumes on the target), in ms: `before_announce_ms` since the last reply
    (the VM between two QEMUs); `network_ms` from the announcement to the first echo request
    delivered to the VM's new tap (the switches learning where it went); `guest_ms` from
    there to the first reply back at the pinger (the guest, warming up under TCG)."""
    announced = pinger.times(pinger_tap, "announce", moved_mac)
    replies = pinger.times(pinger_tap, "ICMP echo reply")
    if not announced or not replies:
        return {"before_announce_ms": None, "network_ms": None, "guest_ms": None}
    first = announced[0]
    before = [t for t in replies if t <= first]
    delivered = [t for t in target.times(moved_tap, "ICMP echo request") if t > first]
    answered = [t for t in replies if delivered and t > delivered[0]]

    def ms(start: float | None, end: float | None) -> float | None:
        return round((end - start) * 1000, 1) if start is not None and end is not None else None

    return {
        "before_announce_ms": ms(before[-1] if before else None, first),
        "network_ms": ms(first, delivered[0] if delivered else None),
        "guest_ms": ms(delivered[0] if delivered else None, answered[0] if answered else None),
    }


def pings(channel: CommandChannel, address: str, during: Any) -> dict[str, int]:
    """Pings every 10 ms from the guest of `channel` while `during()` runs, with a second of
    steady stream before and after (late losses count too)."""
    pinging = channel.start(f"ping -i 0.01 -W 1 {address}")
    time.sleep(1)
    during()
    time.sleep(1)
    channel.run("killall -INT ping")
    summary = channel.wait(pinging, 30).output
    found = [re.search(rf"(\d+) packets {word}", summary) for word in ("transmitted", "received")]
    if not all(found):
        raise BenchError(f"no ping summary: {summary!r}")
    sent, got = (int(f.group(1)) for f in found if f)
    return {"sent": sent, "received": got, "lost": sent - got}


# -- by hand ---------------------------------------------------------------------------------


def sh(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode:
        raise BenchError(f"{' '.join(args)}: {done.stderr.strip()}")


@contextlib.contextmanager
def bare_guests(work: Path) -> Iterator[Callable[[], dict[str, float]]]:
    """The same two guests in QEMUs plugged by hand into a bridge and a VXLAN device in two
    namespaces; yields what measures one transfer between them."""
    prefix = f"hbn{os.getpid() % 10000}"
    spaces = [f"{prefix}-a", f"{prefix}-b"]
    qemus: list[subprocess.Popen[bytes]] = []
    try:
        for name in spaces:
            netns.create(name)
        sh(
            "ip",
            "-n",
            spaces[0],
            "link",
            "add",
            "u0",
            "type",
            "veth",
            "peer",
            "u0",
            "netns",
            spaces[1],
        )
        for i, name in enumerate(spaces, 1):
            peer = 3 - i
            sh("ip", "-n", name, "addr", "add", f"10.98.0.{i}/24", "dev", "u0")
            sh("ip", "-n", name, "link", "set", "u0", "up")
            sh("ip", "-n", name, "link", "add", "br0", "type", "bridge")
            sh(
                "ip",
                "-n",
                name,
                "link",
                "add",
                "vx0",
                "type",
                "vxlan",
                "id",
                "100",
                "local",
                f"10.98.0.{i}",
                "dstport",
                "4789",
                "df",
                "set",
            )
            sh(
                "bridge",
                "-n",
                name,
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                "vx0",
                "dst",
                f"10.98.0.{peer}",
            )
            for link in ("br0", "vx0"):
                sh("ip", "-n", name, "link", "set", link, "mtu", "1450")
            sh("ip", "-n", name, "link", "set", "vx0", "master", "br0", "up")
            sh("ip", "-n", name, "link", "set", "br0", "up")
        for i, name in enumerate(spaces, 1):
            disk = work / f"bare{i}.qcow2"
            sh(
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                str(TESTGUEST),
                str(disk),
            )
            serial = work / f"bare{i}.sock"
            log = work / f"bare{i}.log"
            qemus.append(
                subprocess.Popen(
                    [
                        "nsenter",
                        f"--net=/run/netns/{name}",
                        "qemu-system-x86_64",
                        "-machine",
                        "q35,accel=tcg",
                        "-cpu",
                        "max",
                        "-m",
                        "128",
                        "-nodefaults",
                        "-display",
                        "none",
                        "-drive",
                        f"file={disk},format=qcow2,if=virtio",
                        "-chardev",
                        f"socket,id=s0,path={serial},server=on,wait=off,logfile={log}",
                        "-serial",
                        "chardev:s0",
                        "-netdev",
                        "tap,id=n0,ifname=tapb0,script=no,downscript=no,vhost=off",
                        "-device",
                        f"virtio-net-pci,netdev=n0,mac=52:54:00:98:00:0{i}",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_for(
                lambda name=name: (
                    subprocess.run(
                        ["ip", "-n", name, "link", "show", "tapb0"], capture_output=True
                    ).returncode
                    == 0
                ),
                60,
                "QEMU's tap",
            )
            sh("ip", "-n", name, "link", "set", "tapb0", "mtu", "1450")
            sh("ip", "-n", name, "link", "set", "tapb0", "master", "br0", "up")
        for i in (1, 2):
            wait_for(
                lambda i=i: (
                    "heron-net eth0" in (work / f"bare{i}.log").read_text(errors="replace")
                    if (work / f"bare{i}.log").exists()
                    else False
                ),
                BOOT,
                "the bare guest to boot",
                interval=0.2,
            )
            with CommandChannel(work / f"bare{i}.sock") as channel:
                for command in (
                    "killall udhcpc",
                    "ip link set eth0 mtu 1450",
                    f"ip addr add {SUBNET}.{i}/24 dev eth0",
                ):
                    channel.run(command)
        with CommandChannel(work / "bare1.sock") as channel:
            wait_for(lambda: channel.run(f"ping -c 1 -W 1 {SUBNET}.2").rc == 0, 60, "a ping")

        def transfer() -> dict[str, float]:
            with CommandChannel(work / "bare1.sock") as channel:
                return nettool(channel, f"{SUBNET}.2")

        yield transfer
    finally:
        for qemu in qemus:
            qemu.terminate()
            qemu.wait(timeout=30)
        for name in spaces:
            netns.remove(name)


# -- 1000 port groups ------------------------------------------------------------------------


def port_groups(work: Path) -> dict[str, Any]:
    name = f"hbp{os.getpid() % 10000}"
    netns.create(name)
    plane = DataPlane(name)
    fds = []
    try:
        runtime = asyncio.run(OvsRuntime.start(name, work / "ovs"))
        try:
            links_before = _links(name)
            ports = []
            for vlan in range(1, PORT_GROUPS + 1):
                tap = f"htb{vlan}"
                fds.append(open_tap(plane, tap, 1500, offload=False))
                ports.append(
                    Port(tap=tap, vm=f"vm{vlan}", nic=0, mac=_mac(vlan), mode="access", vlan=vlan)
                )
            switch = SwitchPlan("big", "ovs", "hbbig", None, 1500, tuple(ports))
            driver = OpenVSwitch(plane, runtime)
            started = time.monotonic()
            problems = asyncio.run(driver.realise(switch))
            first = time.monotonic() - started
            started = time.monotonic()
            again_problems = asyncio.run(driver.realise(switch))
            again = time.monotonic() - started
            made = len(_links(name)) - len(links_before) - PORT_GROUPS
            asyncio.run(driver.remove("hbbig"))
            # By hand: the same ports and tags in one transaction on a bridge of its own.
            command = [
                "ovs-vsctl",
                *runtime.ctl_args(),
                "--",
                "add-br",
                "byhand",
                "--",
                "set",
                "bridge",
                "byhand",
                f"datapath_type={runtime.datapath_type}",
            ]
            for vlan in range(1, PORT_GROUPS + 1):
                command += ["--", "add-port", "byhand", f"htb{vlan}", f"tag={vlan}"]
            started = time.monotonic()
            sh(*command)
            by_hand = time.monotonic() - started
        finally:
            asyncio.run(runtime.stop())
    finally:
        for fd in fds:
            os.close(fd)
        netns.remove(name)
    return {
        "realise_s": round(first, 3),
        "realise_again_s": round(again, 3),
        "by_hand_s": round(by_hand, 3),
        "problems": problems + again_problems,
        "links_made_beyond_taps": made,
        "plan_s": round(_plan_time(), 4),
    }


def _links(namespace: str) -> list[str]:
    with netns.netlink(namespace) as ipr:
        return [link.get("ifname") for link in ipr.get_links()]


def _mac(n: int) -> str:
    return f"52:54:00:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}"


def _plan_time() -> float:
    switches = {"big": Switch(name="big", backend="ovs", mtu=1500, uplinks={}, created_at=0)}
    networks = {
        f"v{i}": Network(name=f"v{i}", switch="big", kind="vlan", vlan=i, created_at=0)
        for i in range(1, PORT_GROUPS + 1)
    }
    node = Node(
        name="n1",
        address="127.0.0.1",
        api_url="http://x",
        cpus=1,
        memory_mib=1,
        accelerator="tcg",
        started_at=0,
    )
    vms = [
        VM(
            id=f"vm{i}",
            node="n1",
            created_at=0,
            spec=VMSpec(name=f"vm{i}", nics=[NicSpec(network=f"v{i}", mac=_mac(i))]),
        )
        for i in range(1, PORT_GROUPS + 1)
    ]
    started = time.monotonic()
    plan_node("n1", switches, networks, {"n1": node}, vms)
    return time.monotonic() - started


# -- the run ---------------------------------------------------------------------------------


def summarize(
    heron: dict[str, Any], bare: dict[str, Any], groups: dict[str, Any]
) -> dict[str, Any]:
    def column(side: dict[str, Any], key: str) -> list[float]:
        return [f[key] for f in side["transfer"]]

    heron_bps, bare_bps = column(heron, "throughput_bps"), column(bare, "throughput_bps")
    heron_rtt, bare_rtt = column(heron, "rtt_us"), column(bare, "rtt_us")
    lost = [m["lost"] for m in heron["migration_pings"]]
    return {
        "heron_throughput_mbps": stats([b / 1e6 for b in heron_bps], 1),
        "bare_throughput_mbps": stats([b / 1e6 for b in bare_bps], 1),
        "throughput_ratio": ratio(stats(heron_bps)["p50"], stats(bare_bps)["p50"]),
        "heron_rtt_us": stats(heron_rtt, 0),
        "bare_rtt_us": stats(bare_rtt, 0),
        "rtt_ratio": ratio(stats(heron_rtt)["p50"], stats(bare_rtt)["p50"]),
        "migration_pings_lost": {"each": lost, "max": max(lost)},
        "migrations": {
            str(limit or "default"): {
                key: [m[key] for m in heron["migration_pings"] if m["max_downtime_ms"] == limit]
                for key in (
                    "lost",
                    "downtime_ms",
                    "before_announce_ms",
                    "network_ms",
                    "guest_ms",
                    "lost_without_move",
                )
            }
            for limit in LIMITS
        },
        "port_groups": groups,
        "port_groups_ratio": ratio(groups["realise_s"], groups["by_hand_s"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    exit_on_sigterm()
    if not TESTGUEST.exists():
        raise BenchError(f"no test guest at {TESTGUEST}: run scripts/install-deps")
    load = load_snapshot()
    work = Path(tempfile.mkdtemp(prefix="hbn-"))
    try:
        groups = port_groups(work)
        heron: dict[str, Any] = {"transfer": []}
        bare: dict[str, Any] = {"transfer": []}
        with heron_guests(work) as guests:
            # Both sides up together and measured in turn: each sees the same background
            # (the cluster's agents and etcd, four idle guests) and the same moment's load.
            with bare_guests(work) as bare_transfer:
                for _ in range(args.runs):
                    heron["transfer"].append(guests.transfer())
                    bare["transfer"].append(bare_transfer())
            heron["migration_pings"] = guests.migrations(args.runs, LIMITS)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarize(heron, bare, groups)
    path = write_result(
        "network",
        {
            "runs": args.runs,
            "send_seconds": SEND_SECONDS,
            "rtt_count": RTT_COUNT,
            "port_groups": PORT_GROUPS,
        },
        {"summary": summary, "heron": heron, "bare": bare},
        load,
    )
    print_rows(
        "network",
        [
            ("throughput heron/bare", f"{summary['throughput_ratio']}"),
            ("rtt heron/bare", f"{summary['rtt_ratio']}"),
            *(
                (f"pings lost per migration, limit {limit}", f"{moves['lost']}")
                for limit, moves in summary["migrations"].items()
            ),
            ("1000 port groups: realise / by hand", f"{summary['port_groups_ratio']}"),
            ("results", str(path)),
        ],
    )


if __name__ == "__main__":
    main()
