"""Auto-support: how long a diagnostic bundle takes to build, and how big it is.

A 3-node devcluster. Each round asks node1 for a bundle (POST /support/bundles) and follows
its task to the end; measured from the POST to the task's end as the API reports it (the
client polls every 50 ms), then the bundle's size and the time to download it through
another node (which relays it from node1). The issue's budget: 60 s per bundle. The first
round waits for a minute of samples on every node, so each has metrics to read and a log
worth its tail.

Run from the repository root: `.venv/bin/python -m bench.support_bundle [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import (
    Api,
    exit_on_sigterm,
    load_snapshot,
    print_rows,
    ratio,
    running_devcluster,
    stats,
    wait_for,
    write_result,
)

BUDGET_S = 60.0
WARM_UP_POINTS = 6  # 10 s points of node_load1 on every node before the first round


def sampled(api: Api) -> bool:
    answer = api.ok("GET", "/metrics/history", params={"metric": "node_load1"})
    series = answer["series"]
    return len(series) == 3 and all(len(s["points"]) >= WARM_UP_POINTS for s in series)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    exit_on_sigterm()
    load_before = load_snapshot()
    builds: list[float] = []
    downloads: list[float] = []
    sizes: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="heron-bench-support-") as tmp,
        running_devcluster(Path(tmp) / "cluster", 3) as (cluster, token),
    ):
        api = Api(cluster.nodes[0].url, token, cluster.tls())
        other = Api(cluster.nodes[1].url, token, cluster.tls())
        # Samples from every node first: the bundle reads the last hour of them.
        wait_for(lambda: sampled(api), 300, "a minute of samples from every node", interval=1.0)
        for _ in range(args.rounds):
            started = time.monotonic()
            task = api.ok("POST", "/support/bundles", json={})
            done = api.wait_task(task["id"], timeout=300)
            builds.append(time.monotonic() - started)
            name = done["result"]["bundle"]
            if done["result"]["missing"]:
                raise SystemExit(f"nodes did not answer: {done['result']['missing']}")
            started = time.monotonic()
            reply = other.http.get(f"/support/bundles/{name}")
            downloads.append(time.monotonic() - started)
            if reply.status_code != 200:
                raise SystemExit(f"download of {name}: {reply.status_code} {reply.text[:200]}")
            sizes.append(float(len(reply.content)))
        api.close()
        other.close()
    results = {
        "build_s": stats(builds, 2),
        "download_through_another_node_s": stats(downloads, 3),
        "size_bytes": stats(sizes, 0),
        "budget_s": BUDGET_S,
        "build_max_ratio_to_budget": ratio(max(builds), BUDGET_S),
    }
    path = write_result("support_bundle", vars(args), results, load_before)
    print_rows(
        f"Support bundle, {args.rounds} rounds on a 3-node devcluster",
        [
            (
                "build p50 / max",
                f"{results['build_s']['p50']} / {results['build_s']['max']} s "
                f"(budget {BUDGET_S:.0f} s)",
            ),
            ("download via node2 p50", f"{results['download_through_another_node_s']['p50']} s"),
            ("size p50", f"{results['size_bytes']['p50']:.0f} bytes"),
            ("results", str(path)),
        ],
    )


if __name__ == "__main__":
    main()
