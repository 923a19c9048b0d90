"""ConfigDB propagation: how long a write on one etcd member takes to reach watchers on others.

A 3-member etcd cluster (Debian's etcd-server, started with `heron.configdb.etcd.EtcdMember` as
Heron starts it). One `ConfigDB` client connected only to member 1 writes keys one after the
other; two `ConfigDB` clients connected only to members 2 and 3 watch the prefix. Measured per
write: from just before `put` to the watcher receiving the event (both on one monotonic clock:
everything runs on this machine). The next write starts only when both watchers have the
previous one, so no write queues behind another. The baseline is the `put` round trip itself:
it is answered once a majority of members has the write and member 1 has applied it.

Where the raft leader is matters, so it is placed with etcd's MoveLeader and both cases are
measured: member 1 (the writer's) leads, so both watchers sit on followers; or member 2 leads,
so member 1 forwards the write and one watcher sits on the leader.

The writer and both watchers share one process and one asyncio event loop (each has its own
gRPC channel): an event is timestamped when the watcher's coroutine runs, so loop scheduling
is part of both figures.

Run from the repository root: `.venv/bin/python -m bench.configdb_propagation [--writes 500]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import (
    BenchError,
    exit_on_sigterm,
    load_snapshot,
    ms,
    print_rows,
    ratio,
    stats,
    wait_for,
    write_result,
)
from heron.configdb import ConfigDB
from heron.configdb.etcd import EtcdMember
from heron.util.ports import free_ports

NAME = "configdb_propagation"
PREFIX = "/bench/propagation/"
VALUE_BYTES = 512  # about the size of a VM record
EVENT_TIMEOUT = 10.0  # a deadline for a lost event, not a judgement on the figures
# Where the raft leader is matters (a watcher on the leader sees a write as soon as it
# commits), so it is placed, and both cases are measured: scenario -> index of the leader.
SCENARIOS = {"writer_member_leads": 0, "watcher_member_leads": 1}


def start_members(root: Path) -> list[EtcdMember]:
    ports = free_ports(6)
    names = ["etcd1", "etcd2", "etcd3"]
    cluster = {n: f"http://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names)}
    members = [
        EtcdMember(
            name=name,
            data_dir=root / name,
            client_port=ports[2 * i],
            peer_port=ports[2 * i + 1],
            initial_cluster=cluster,
        )
        for i, name in enumerate(names)
    ]
    for member in members:
        member.start()
    for member in members:
        member.wait_healthy(60)
    return members


def member_status(member: EtcdMember) -> dict[str, Any]:
    """etcd's maintenance status through its JSON gateway: this member's id and the leader's."""
    request = urllib.request.Request(
        member.client_url + "/v3/maintenance/status", data=b"{}", method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return dict(json.load(reply))
    except (OSError, ValueError):
        return {}


def leader_name(members: list[EtcdMember]) -> str:
    statuses = {m.name: member_status(m) for m in members}
    for name, status in statuses.items():
        member_id = status.get("header", {}).get("member_id")
        if member_id is not None and member_id == status.get("leader"):
            return name
    return "unknown"


def move_leader(members: list[EtcdMember], target: EtcdMember) -> None:
    """Make `target` the raft leader (etcd's MoveLeader, sent to the current leader)."""
    current = leader_name(members)
    if current == target.name:
        return
    leader = next((m for m in members if m.name == current), None)
    target_id = member_status(target).get("header", {}).get("member_id")
    if leader is None or target_id is None:
        raise BenchError(f"cannot find the leader ({current}) or {target.name}'s member id")
    request = urllib.request.Request(
        leader.client_url + "/v3/maintenance/transfer-leadership",
        data=json.dumps({"targetID": target_id}).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        reply.read()
    wait_for(lambda: leader_name(members) == target.name, 30, f"{target.name} to lead")


async def measure(members: list[EtcdMember], writes: int, warmup: int) -> dict[str, Any]:
    writer = ConfigDB([members[0].endpoint])
    watchers = {m.name: ConfigDB([m.endpoint]) for m in members[1:]}
    arrivals: dict[tuple[str, str], asyncio.Future[float]] = {}
    tasks: list[asyncio.Task[None]] = []

    async def follow(name: str, db: ConfigDB, start_revision: int) -> None:
        async for event in db.watch(PREFIX, start_revision):
            now = time.perf_counter()
            future = arrivals.get((name, event.key))
            if future is not None and not future.done():
                future.set_result(now)

    try:
        await writer.connect()
        for db in watchers.values():
            await db.connect()
        start_revision = await writer.revision() + 1
        for name, db in watchers.items():
            tasks.append(asyncio.create_task(follow(name, db, start_revision)))

        value = "x" * VALUE_BYTES
        put_s: list[float] = []
        arrival_s: dict[str, list[float]] = {name: [] for name in watchers}
        both_s: list[float] = []
        before_reply = 0
        loop = asyncio.get_running_loop()
        for index in range(warmup + writes):
            key = f"{PREFIX}{index:06d}"
            pending = {name: loop.create_future() for name in watchers}
            for name, future in pending.items():
                arrivals[(name, key)] = future
            start = time.perf_counter()
            await writer.put(key, value)
            put_done = time.perf_counter()
            try:
                times = await asyncio.wait_for(asyncio.gather(*pending.values()), EVENT_TIMEOUT)
            except TimeoutError as exc:
                raise BenchError(f"a watcher did not see {key} in {EVENT_TIMEOUT}s") from exc
            for name in watchers:
                del arrivals[(name, key)]
            if index < warmup:
                continue
            put_s.append(put_done - start)
            for name, arrived in zip(pending, times, strict=True):
                arrival_s[name].append(arrived - start)
                before_reply += arrived < put_done
            both_s.append(max(times) - start)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for db in [writer, *watchers.values()]:
            await db.close()

    every = [t for series in arrival_s.values() for t in series]
    put_ms, prop_ms = stats(ms(put_s), 3), stats(ms(every), 3)
    return {
        "put_rtt_ms": put_ms,
        "propagation_ms": prop_ms,
        "propagation_per_watcher_ms": {
            f"{name} watcher": stats(ms(series), 3) for name, series in arrival_s.items()
        },
        "propagation_to_both_ms": stats(ms(both_s), 3),
        "events_before_put_reply": before_reply,
        "events": len(every),
        "ratios": {
            "propagation_vs_put_p50": ratio(prop_ms["p50"], put_ms["p50"]),
            "propagation_vs_put_p99": ratio(prop_ms["p99"], put_ms["p99"]),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=500, help="measured writes")
    parser.add_argument("--warmup", type=int, default=20, help="writes first, not counted")
    parser.add_argument("--keep", action="store_true", help="keep the etcd data directories")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    load = load_snapshot()
    root = Path(tempfile.mkdtemp(prefix="heron-bench-etcd-"))
    members: list[EtcdMember] = []
    try:
        members = start_members(root)
        results = {}
        for scenario, leader in SCENARIOS.items():
            move_leader(members, members[leader])
            result = asyncio.run(measure(members, args.writes, args.warmup))
            result["leader"] = {"wanted": members[leader].name, "after": leader_name(members)}
            results[scenario] = result
    finally:
        for member in members:
            member.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    params = {
        "writes": args.writes,
        "warmup": args.warmup,
        "value_bytes": VALUE_BYTES,
        "writer": "etcd1",
        "watchers": ["etcd2", "etcd3"],
        "same_process_and_event_loop": True,
        "scenarios": {name: f"etcd{index + 1} leads" for name, index in SCENARIOS.items()},
    }
    path = write_result(NAME, params, results, load)
    rows: list[tuple[str, str]] = []
    for scenario, result in results.items():
        put, prop = result["put_rtt_ms"], result["propagation_ms"]
        both = result["propagation_to_both_ms"]
        rows += [
            (f"[{scenario}, leader {result['leader']['wanted']}]", ""),
            ("  put round trip (baseline)", f"p50 {put['p50']:.2f} ms  p99 {put['p99']:.2f} ms"),
            ("  put -> watch event", f"p50 {prop['p50']:.2f} ms  p99 {prop['p99']:.2f} ms"),
            ("  put -> both watchers", f"p50 {both['p50']:.2f} ms  p99 {both['p99']:.2f} ms"),
            (
                "  ratio event / put",
                f"{result['ratios']['propagation_vs_put_p50']}x p50  "
                f"{result['ratios']['propagation_vs_put_p99']}x p99",
            ),
            (
                "  events before put reply",
                f"{result['events_before_put_reply']} of {result['events']}",
            ),
        ]
    rows.append(("results", str(path)))
    print_rows(
        f"configdb_propagation: {args.writes} writes on etcd1, watched on etcd2 and etcd3", rows
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
