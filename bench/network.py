"""VM networking: Heron's switch against QEMUs plugged by hand, pings lost in a migration,
and the cost of a switch with 1000 port groups.

1. Throughput and latency across nodes. A 2-node devcluster with networking (each node's data
   plane a namespace on a fabric of veths) and a VXLAN network; two test guests, one per node,
   with their addresses by DHCP. In the guest: `nettool send PEER 7 SECONDS` (TCP bulk, to the
   peer's echo/sink server) and `nettool rtt PEER 7 COUNT` (TCP round trips). The baseline is
   the same in the same run with none of Heron: two namespaces joined by a veth underlay, in
   each a bridge and a kernel VXLAN device made with `ip`, a QEMU started inside with the same
   guest image, NIC model and `vhost=off`, its tap opened by QEMU and plugged by hand, and the
   addresses set by hand. Goal: heron / bare ≥ 0.9 for throughput.
2. Pings lost during a live migration: the second guest pings the first every 10 ms while it
   moves between the nodes (`ping -i 0.01`); lost = sent - received over the whole move.
   Goal: ≤ 1 per migration.
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
import os
import re
import shutil
import subprocess
import tempfile
import time
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
from heron.network.plan import Port, SwitchPlan, plan_node
from heron.network.tap import open_tap
from heron.testguest.net import CommandChannel, guest_addresses

BOOT = 240
SUBNET = "10.50.0"
SEND_SECONDS = 8
RTT_COUNT = 200
PORT_GROUPS = 1000


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


def heron_side(work: Path, runs: int) -> dict[str, Any]:
    with running_devcluster(work / "cluster", 2, network=True) as (cluster, token):
        api = Api(cluster.nodes[0].url, token)
        shared = work / "shared"
        shared.mkdir()
        api.ok("POST", "/pools", json={"name": "shared", "path": str(shared), "shared": True})
        reply = api.ok(
            "POST",
            "/pools/shared/volumes/import",
            json={"name": "testguest", "path": str(TESTGUEST), "format": "qcow2"},
        )
        api.wait_task(reply["task"])
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
            vms.append(api.ok("GET", f"/vms/{reply['vm']}"))

        def home(vm: dict[str, Any]) -> Path:
            now = api.ok("GET", f"/vms/{vm['id']}")
            return Path(cluster.node(now["node"]).state_dir) / "vms" / vm["id"]

        addresses = [lease(home(vm) / "console.log") for vm in vms]
        figures = []
        with CommandChannel(home(vms[0]) / "serial.sock") as channel:
            for _ in range(runs):
                figures.append(nettool(channel, addresses[1]))
        lost = []
        with CommandChannel(home(vms[1]) / "serial.sock") as channel:
            for move in range(runs):
                # The same stream without a move first: what this machine's load loses anyway.
                still = pings(channel, addresses[0], lambda: time.sleep(3))
                target = "node2" if move % 2 == 0 else "node1"

                moved: dict[str, Any] = {}

                def migrate(target: str = target, moved: dict[str, Any] = moved) -> None:
                    reply = api.ok(
                        "POST", f"/vms/{vms[0]['id']}/actions/migrate", json={"target": target}
                    )
                    moved.update(api.wait_task(reply["task"], timeout=600))

                counted = pings(channel, addresses[0], migrate)
                downtime = moved.get("result", {}).get("downtime_ms")
                lost.append(
                    {**counted, "downtime_ms": downtime, "lost_without_move": still["lost"]}
                )
        return {"transfer": figures, "migration_pings": lost}


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


def bare_side(work: Path, runs: int) -> dict[str, Any]:
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
        figures = []
        with CommandChannel(work / "bare1.sock") as channel:
            wait_for(lambda: channel.run(f"ping -c 1 -W 1 {SUBNET}.2").rc == 0, 60, "a ping")
            for _ in range(runs):
                figures.append(nettool(channel, f"{SUBNET}.2"))
        return {"transfer": figures}
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
        "migration_downtime_ms": [m["downtime_ms"] for m in heron["migration_pings"]],
        "pings_lost_without_move": [m["lost_without_move"] for m in heron["migration_pings"]],
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
        bare = bare_side(work, args.runs)
        heron = heron_side(work, args.runs)
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
            ("pings lost per migration (max)", f"{summary['migration_pings_lost']['max']}"),
            ("1000 port groups: realise / by hand", f"{summary['port_groups_ratio']}"),
            ("results", str(path)),
        ],
    )


if __name__ == "__main__":
    main()
