"""API list latency: `GET /api/v1/vms` with 1000 VMs defined on a 3-node devcluster.

Setup: 1000 VMs without disks and not started (`POST /api/v1/vms`), sent by a few concurrent
clients spread over the three nodes; the time this takes is reported as creates per second,
both until the last API reply and until every node has carried out its `vm.create` task (each
VM then has a status record, which the list call also reads).

Measured: sequential `GET /api/v1/vms` calls, round-robin over the three nodes, each timed from
sending the request to having read the whole body (not parsing it), and the same for one page
of it (`GET /api/v1/vms?limit=100`, the page a UI shows). The baseline, interleaved call by call
with the lists: `GET /api/v1/auth/whoami`, the cheapest authenticated call (the same HTTP stack,
token lookup in etcd and audit path, but no listing).

Run from the repository root: `.venv/bin/python -m bench.api_list [--vms 1000 --calls 200]`.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    Api,
    BenchError,
    exit_on_sigterm,
    load_snapshot,
    ms,
    print_rows,
    ratio,
    running_devcluster,
    stats,
    wait_for,
    write_result,
)
from heron.devcluster import DevCluster

NAME = "api_list"
CONCURRENCY = 12  # four clients per node
PAGE = 100  # VMs on one page of the paged list


async def define_vms(
    urls: list[str], token: str, count: int, tls: ssl.SSLContext | bool = True
) -> dict[str, Any]:
    """Create `count` VMs concurrently; returns the wall time and each create's latency."""
    headers = {"authorization": f"Bearer {token}"}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)
    latencies: list[tuple[int, float]] = []

    async def worker(url: str) -> None:
        async with httpx.AsyncClient(
            base_url=f"{url}/api/v1", headers=headers, timeout=60, verify=tls
        ) as c:
            while True:
                try:
                    index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = {"name": f"vm{index + 1:04d}", "memory_mib": 16}
                start = time.perf_counter()
                reply = await c.post("/vms", json=body)
                latencies.append((index, time.perf_counter() - start))
                if reply.status_code != 202:
                    raise BenchError(f"create {body['name']}: {reply.status_code} {reply.text}")

    start = time.perf_counter()
    await asyncio.gather(*(worker(urls[i % len(urls)]) for i in range(CONCURRENCY)))
    wall = time.perf_counter() - start
    ordered = [latency for _, latency in sorted(latencies)]
    return {"wall_s": wall, "latencies_s": ordered}


def all_defined(api: Api, count: int) -> bool:
    """Every VM is listed and has the status its node wrote after its vm.create task."""
    vms = api.ok("GET", "/vms")
    return len(vms) == count and all(vm["state"] == "shutoff" for vm in vms)


def measure(cluster: DevCluster, token: str, count: int, calls: int) -> dict[str, Any]:
    urls = [node.url for node in cluster.nodes]
    apis = [Api(url, token, cluster.tls()) for url in urls]
    try:
        start = time.perf_counter()
        created = asyncio.run(define_vms(urls, token, count, cluster.tls()))
        wait_for(lambda: all_defined(apis[0], count), 300, "every vm.create task", interval=0.5)
        settled = time.perf_counter() - start

        listing: list[float] = []
        listing_per_node: dict[str, list[float]] = {n.name: [] for n in cluster.nodes}
        whoami: list[float] = []
        paged: list[float] = []
        sizes: list[int] = []
        warmup = 3 * len(apis)
        for index in range(warmup + calls):
            node = cluster.nodes[index % len(apis)].name
            http = apis[index % len(apis)].http
            calls = (("/auth/whoami", whoami), ("/vms", listing), (f"/vms?limit={PAGE}", paged))
            for path, into in calls:
                begin = time.perf_counter()
                reply = http.get(path)  # the body is read in full before get() returns
                elapsed = time.perf_counter() - begin
                if reply.status_code != 200:
                    raise BenchError(f"GET {path}: {reply.status_code} {reply.text[:300]}")
                if index >= warmup:
                    into.append(elapsed)
                    if path == "/vms":
                        sizes.append(len(reply.content))
                        listing_per_node[node].append(elapsed)
        final = apis[0].ok("GET", "/vms")
        if len(final) != count:
            raise BenchError("the number of VMs changed during the measurement")
        per_node = dict(sorted(Counter(vm["node"] for vm in final).items()))
    finally:
        for api in apis:
            api.close()

    creates = created["latencies_s"]
    tenth = max(1, count // 10)
    list_ms, whoami_ms = stats(ms(listing), 2), stats(ms(whoami), 2)
    page_ms = stats(ms(paged), 2)
    return {
        "define": {
            "vms": count,
            "concurrency": CONCURRENCY,
            "until_last_reply_s": round(created["wall_s"], 2),
            "creates_per_s": round(count / created["wall_s"], 1),
            "until_all_tasks_done_s": round(settled, 2),
            "settled_creates_per_s": round(count / settled, 1),
            "create_latency_ms": stats(ms(creates), 1),
            "create_latency_first_tenth_ms": stats(ms(creates[:tenth]), 1),
            "create_latency_last_tenth_ms": stats(ms(creates[-tenth:]), 1),
            "vms_per_node": per_node,
        },
        "list_vms_ms": list_ms,
        "list_vms_per_node_ms": {n: stats(ms(v), 2) for n, v in listing_per_node.items()},
        "list_page_ms": page_ms,
        "whoami_ms": whoami_ms,
        "list_response_bytes": round(sum(sizes) / len(sizes)),
        "ratios": {
            "list_vs_whoami_p50": ratio(list_ms["p50"], whoami_ms["p50"]),
            "list_vs_whoami_p99": ratio(list_ms["p99"], whoami_ms["p99"]),
            "page_vs_whoami_p50": ratio(page_ms["p50"], whoami_ms["p50"]),
            "page_vs_whoami_p99": ratio(page_ms["p99"], whoami_ms["p99"]),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000, help="VMs to define")
    parser.add_argument("--calls", type=int, default=200, help="measured calls of each kind")
    parser.add_argument("--keep", action="store_true", help="keep the devcluster directory")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    load = load_snapshot()
    directory = Path(tempfile.mkdtemp(prefix="heron-bench-list-"))
    with running_devcluster(directory, 3, keep=args.keep) as (cluster, token):
        results = measure(cluster, token, args.vms, args.calls)
    path = write_result(NAME, {"vms": args.vms, "calls": args.calls, "nodes": 3}, results, load)
    d, lst, who = results["define"], results["list_vms_ms"], results["whoami_ms"]
    page = results["list_page_ms"]
    print_rows(
        f"api_list: {args.calls} sequential calls each, round-robin over 3 nodes",
        [
            (f"GET /vms ({args.vms} VMs)", f"p50 {lst['p50']:.1f} ms  p99 {lst['p99']:.1f} ms"),
            (
                f"GET /vms?limit={PAGE}",
                f"p50 {page['p50']:.1f} ms  p99 {page['p99']:.1f} ms",
            ),
            ("GET /auth/whoami (baseline)", f"p50 {who['p50']:.1f} ms  p99 {who['p99']:.1f} ms"),
            (
                "ratio list / whoami",
                f"{results['ratios']['list_vs_whoami_p50']}x p50  "
                f"{results['ratios']['list_vs_whoami_p99']}x p99",
            ),
            (
                "ratio page / whoami",
                f"{results['ratios']['page_vs_whoami_p50']}x p50  "
                f"{results['ratios']['page_vs_whoami_p99']}x p99",
            ),
            ("list response size", f"{results['list_response_bytes'] / 1024:.0f} KiB"),
            (
                f"defining {args.vms} VMs",
                f"{d['until_last_reply_s']:.1f}s ({d['creates_per_s']}/s) to the last reply, "
                f"{d['until_all_tasks_done_s']:.1f}s ({d['settled_creates_per_s']}/s) "
                "until every task was done",
            ),
            (
                "create latency",
                f"p50 {d['create_latency_ms']['p50']:.0f} ms (first tenth "
                f"{d['create_latency_first_tenth_ms']['p50']:.0f} ms, last tenth "
                f"{d['create_latency_last_tenth_ms']['p50']:.0f} ms)",
            ),
            ("results", str(path)),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
