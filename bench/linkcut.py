"""Link cuts between the nodes of a devcluster, whose control planes share the host's loopback.

A devcluster's agents, etcd members, heron-io processes and QEMUs all talk over 127.0.0.1, so
there is no wire between two nodes to pull. What stands for one here: every process of a node
is put in a net_cls cgroup of the node's own (its class id is on every socket the node has,
old ones included), and nftables, at the host's `output` hook, notes in each connection's
conntrack mark which nodes sent on it, one bit per node and direction. While a node is cut
off, a packet of a connection whose mark says it joins that node and another one is dropped:
existing connections stall and new ones are never answered, both ways, as with a pulled
cable; traffic of processes in no node's cgroup (the test itself, calling the API) passes. A
connection idle since the rules came can pass one packet before both its ends are known.

Needs the cgroup v1 net_cls controller (mounted here if it is not): cgroup v2 would do
(`socket cgroupv2`) only for sockets made after their process moved, and a running cluster's
sockets are older. A machine with cgroup v2 alone cannot cut links this way.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

from heron.util.proc import command_lines

NET_CLS = Path("/sys/fs/cgroup/net_cls")
CLASS_BASE = 0x4E520000  # "NR": class ids far from any that traffic control may use
MAX_NODES = 16  # conntrack marks are 32 bits: one per node for each direction


class LinkCutError(Exception):
    pass


def net_cls_root() -> Path:
    """Where the net_cls controller is mounted; mounted at /sys/fs/cgroup/net_cls if not."""
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] == "cgroup" and "net_cls" in fields[3].split(","):
            return Path(fields[1])
    try:
        NET_CLS.mkdir(exist_ok=True)
        subprocess.run(
            ["mount", "-t", "cgroup", "-o", "net_cls", "net_cls", str(NET_CLS)],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise LinkCutError(f"no net_cls cgroup controller to mount: {exc}") from exc
    return NET_CLS


def processes_of(markers: Iterable[str]) -> list[int]:
    """Pids whose command line names one of `markers` (a node's directories) or a path
    under one."""
    wanted = list(markers)
    return [
        pid
        for pid, args in command_lines()
        if any(a == m or a.startswith(m + "/") or f"={m}/" in a for a in args for m in wanted)
    ]


class LinkCuts:
    """`nodes`: node name -> the directories whose processes are the node's (its state
    directory, its etcd member's data directory). Use as a context manager: leaving puts
    every process back and removes the rules."""

    def __init__(self, nodes: dict[str, list[str]]):
        if len(nodes) > MAX_NODES:
            raise LinkCutError(f"link cuts handle {MAX_NODES} nodes at most")
        self.nodes = nodes
        self.root = net_cls_root()
        self.table = f"heron_cuts_{os.getpid()}"
        self.groups = {n: self.root / f"heron-cut-{os.getpid()}-{n}" for n in nodes}
        self.bits = {n: i for i, n in enumerate(nodes)}
        self.isolated: set[str] = set()
        self.origin: dict[int, Path] = {}  # pid -> the net_cls cgroup it was in

    def __enter__(self) -> LinkCuts:
        self.sweep()
        for node, group in self.groups.items():
            group.mkdir(exist_ok=True)
            (group / "net_cls.classid").write_text(str(self._class(node)))
            self.adopt(node)
        self._apply()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(
                ["nft", "delete", "table", "inet", self.table], check=True, capture_output=True
            )
        for group in self.groups.values():
            for pid in _members(group):
                home = self.origin.get(pid, self.root)
                with contextlib.suppress(OSError):
                    (home if home.is_dir() else self.root).joinpath("cgroup.procs").write_text(
                        str(pid)
                    )
            with contextlib.suppress(OSError):
                group.rmdir()

    def sweep(self) -> None:
        """Remove the tables and cgroups of runs that were killed before they could."""
        listing = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
        for line in listing.stdout.splitlines():
            name = line.split()[-1]
            pid = name.removeprefix("heron_cuts_")
            if pid != name and pid.isdigit() and not Path(f"/proc/{pid}").exists():
                subprocess.run(["nft", "delete", "table", "inet", name], capture_output=True)
        for group in self.root.glob("heron-cut-*"):
            pid = group.name.split("-")[2]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                for member in _members(group):
                    with contextlib.suppress(OSError):
                        (self.root / "cgroup.procs").write_text(str(member))
                with contextlib.suppress(OSError):
                    group.rmdir()

    def _class(self, node: str) -> int:
        return CLASS_BASE + self.bits[node] + 1

    def adopt(self, node: str) -> int:
        """Put the node's processes (new ones too: an agent or etcd member started again) in
        its cgroup; how many were moved."""
        moved = 0
        have = set(_members(self.groups[node]))
        for pid in processes_of(self.nodes[node]):
            if pid not in have:
                with contextlib.suppress(OSError):  # gone meanwhile
                    self.origin[pid] = self.root / _net_cls_of(pid).lstrip("/")
                    (self.groups[node] / "cgroup.procs").write_text(str(pid))
                    moved += 1
        return moved

    def isolate(self, node: str) -> None:
        """Cut every link between `node` and the other nodes."""
        self.isolated.add(node)
        self._apply()

    def heal(self, node: str) -> None:
        self.isolated.discard(node)
        self._apply()

    def _apply(self) -> None:
        """The whole table, replaced in one nftables transaction."""

        def sent(node: str, direction: str) -> int:
            return 1 << (self.bits[node] + (16 if direction == "reply" else 0))

        rules = [
            f"meta cgroup {self._class(n)} ct direction {d} ct mark set ct mark or {sent(n, d):#x}"
            for n in self.nodes
            for d in ("original", "reply")
        ]
        for cut in sorted(self.isolated):
            for other in self.nodes:
                if other != cut:
                    for a, b in ((cut, other), (other, cut)):
                        both = sent(a, "original") | sent(b, "reply")
                        rules.append(f"ct mark and {both:#x} == {both:#x} drop")
        script = (
            f"table inet {self.table}\n"
            f"delete table inet {self.table}\n"
            f"table inet {self.table} {{\n"
            "  chain links { type filter hook output priority 0;\n"
            + "".join(f"    {rule}\n" for rule in rules)
            + "  }\n}\n"
        )
        try:
            subprocess.run(
                ["nft", "-f", "-"], input=script, text=True, check=True, capture_output=True
            )
        except subprocess.CalledProcessError as exc:
            raise LinkCutError(f"nft refused the link cuts: {exc.stderr.strip()}") from exc


def _net_cls_of(pid: int) -> str:
    """The process's net_cls cgroup path, from /proc/PID/cgroup."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "net_cls" in controllers.split(","):
            return path
    return "/"


def _members(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except OSError:
        return []
