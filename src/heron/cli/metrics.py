"""heron metrics: what Monica measured, as a table with a sparkline per series."""

import json
import sys
import time
from typing import Annotated, Any

import typer

from heron.cli import parse
from heron.cli.client import Client, fail
from heron.cli.options import Json
from heron.cli.output import Column, emit, size

app = typer.Typer(no_args_is_help=True, help="Measurements and their history.")

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None], width: int = 40) -> str:
    if not values:
        return ""
    per = max(1, -(-len(values) // width))
    buckets = [values[i : i + per] for i in range(0, len(values), per)]
    means = [
        sum(known) / len(known) if (known := [v for v in b if v is not None]) else None
        for b in buckets
    ]
    known = [m for m in means if m is not None]
    low, high = (min(known), max(known)) if known else (0.0, 0.0)
    span = high - low or 1.0
    return "".join(
        " " if m is None else BARS[min(len(BARS) - 1, int((m - low) / span * len(BARS)))]
        for m in means
    )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def summary(series: dict[str, Any]) -> dict[str, Any]:
    points = series["points"]
    avgs = [p[2] for p in points]
    lows = [p[1] for p in points if p[1] is not None]
    highs = [p[3] for p in points if p[3] is not None]
    last = next((v for v in reversed(avgs) if v is not None), None)
    return {
        "series": series["key"],
        "last": _number(last),
        "min": _number(min(lows) if lows else None),
        "max": _number(max(highs) if highs else None),
        "history": sparkline(avgs),
    }


SHOW_COLUMNS: list[Column] = [
    ("series", lambda r: r["series"]),
    ("last", lambda r: r["last"]),
    ("min", lambda r: r["min"]),
    ("max", lambda r: r["max"]),
    ("history", lambda r: r["history"]),
]


@app.command("catalog")
def metrics_catalog(as_json: Json = False) -> None:
    """Every metric: a counter's history is its rate per second."""
    emit(
        Client().get("/metrics/catalog"),
        as_json,
        [
            ("metric", lambda m: m["name"]),
            ("kind", lambda m: m["kind"]),
            ("meaning", lambda m: m["help"]),
        ],
    )


@app.command("show")
def metrics_show(
    metric: str,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", parser=parse.label, help="NAME=VALUE, repeatable (vm=ID)"),
    ] = None,
    since: Annotated[
        float,
        typer.Option(parser=parse.duration, help="how far back: 15m, 6h, 7d, 1y [default: 1h]"),
    ] = 3600.0,
    step: Annotated[
        float | None,
        typer.Option(parser=parse.duration, help="what a point covers (default: what fits)"),
    ] = None,
    as_json: Json = False,
) -> None:
    """The history of every series of METRIC with the given labels, from every node."""
    end = time.time()
    params: dict[str, Any] = {
        "metric": metric,
        "label": label or [],
        "start": end - since,
        "end": end,
    }
    if step is not None:
        params["step"] = step
    answer = Client().get("/metrics/history", params=params)
    if as_json:
        emit(answer, True)
        return
    rows = [summary(s) for s in answer["series"]]
    if not rows:
        fail(f"no {metric} measured in that time", code=1)
    print(f"{metric}: {answer['resolution']} points, one every {answer['step']:g} s")
    emit(rows, False, SHOW_COLUMNS)


STATUS = {
    "not_growing": "not growing",
    "not_enough_history": "not enough history (a day at least)",
    "full": "full",
}


def amount(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "bytes":
        return ("-" if value < 0 else "") + size(round(abs(value)))
    return f"{value:.2f} cores"


def days(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def full_in(row: dict[str, Any]) -> str:
    """ "in about N days (M-K)", or what the status says instead."""
    if row["status"] != "growing":
        return STATUS.get(row["status"], row["status"])
    high = "later" if row["days_high"] is None else days(row["days_high"])
    if row["days"] is None:
        return f"not within five years ({days(row['days_low'])}-{high})"
    return f"in about {days(row['days'])} days ({days(row['days_low'])}-{high})"


def resource_name(row: dict[str, Any]) -> str:
    if row["kind"] != "pool":
        return row["name"]
    return f"pool {row['name']}" + (f" on {row['node']}" if row["node"] else "")


FORECAST_COLUMNS: list[Column] = [
    ("resource", resource_name),
    ("used", lambda r: amount(r["used"], r["unit"])),
    ("capacity", lambda r: amount(r["capacity"], r["unit"])),
    (
        "growth a day",
        lambda r: "-" if r["growth_per_day"] is None else amount(r["growth_per_day"], r["unit"]),
    ),
    ("full", full_in),
]


@app.command("forecast")
def metrics_forecast(
    since: Annotated[
        float,
        typer.Option(parser=parse.duration, help="history to fit: 7d, 90d [default: 30d]"),
    ] = 30 * 86400.0,
    as_json: Json = False,
) -> None:
    """Days until each pool, the cluster's memory and its CPU are full, with bounds (a trend
    through the hourly history; docs/operations.md, Monitoring)."""
    answer = Client().get("/metrics/forecast", params={"days": max(1, round(since / 86400))})
    if as_json:
        emit(answer, True)
        return
    print(f"trend of the last {answer['window_days']} days; bounds: 90 % prediction interval")
    emit(answer["resources"], False, FORECAST_COLUMNS)


# -- the live view --------------------------------------------------------------------------

IDLE_MODES = ("idle", "iowait")
pause = time.sleep


def _metric(key: str) -> str:
    return key.partition("{")[0]


def _sum(values: dict[str, float], *metrics: str) -> float | None:
    found = [v for k, v in values.items() if _metric(k) in metrics]
    return sum(found) if found else None


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{size(round(value))}/s"


def live_line(t: float, values: dict[str, float]) -> str:
    """One second of a node or a VM: the time, CPU (% of one CPU), memory in use, disk and
    network throughput (read/written, received/sent), from its series' values."""
    cpu = _sum(values, "libvirt_domain_info_cpu_time_seconds_total")
    if cpu is None:
        busy = {k: v for k, v in values.items() if _metric(k) == "node_cpu_seconds_total"}
        cpu = sum(v for k, v in busy.items() if not any(f'"{m}"' in k for m in IDLE_MODES))
        cpu = cpu if busy else None
    memory = _sum(values, "libvirt_domain_info_memory_usage_bytes")
    total = values.get("node_memory_MemTotal_bytes")
    available = values.get("node_memory_MemAvailable_bytes")
    if memory is None and total is not None and available is not None:
        memory = total - available
    read = _sum(values, "node_disk_read_bytes_total", "libvirt_domain_block_stats_read_bytes_total")
    written = _sum(
        values, "node_disk_written_bytes_total", "libvirt_domain_block_stats_write_bytes_total"
    )
    received = _sum(
        values,
        "node_network_receive_bytes_total",
        "libvirt_domain_interface_stats_receive_bytes_total",
    )
    sent = _sum(
        values,
        "node_network_transmit_bytes_total",
        "libvirt_domain_interface_stats_transmit_bytes_total",
    )
    return "  ".join(
        [
            time.strftime("%H:%M:%S", time.localtime(t)),
            f"cpu {'-' if cpu is None else f'{100 * cpu:.1f}%'}",
            f"mem {size(None if memory is None else round(memory))}",
            f"disk r {_rate(read)} w {_rate(written)}",
            f"net rx {_rate(received)} tx {_rate(sent)}",
        ]
    )


def by_time(series: list[dict[str, Any]]) -> list[tuple[float, dict[str, float]]]:
    """The live answer's series as points by time, oldest first."""
    points: dict[float, dict[str, float]] = {}
    for s in series:
        for t, value in s["points"]:
            points.setdefault(t, {})[s["key"]] = value
    return sorted(points.items())


@app.command("live")
def metrics_live(
    obj: Annotated[
        str,
        typer.Argument(
            metavar="OBJECT", parser=parse.watched, help="node:NAME or vm:ID (or vm:NAME)"
        ),
    ],
    count: Annotated[
        int | None, typer.Option(min=1, help="stop after this many seconds shown")
    ] = None,
    as_json: Json = False,
) -> None:
    """A line a second of OBJECT's CPU, memory, disk and network, until Ctrl-C: the node that
    runs it samples it each second while someone watches (the first seconds come after a
    moment: the watch starts with the first request)."""
    client = Client()
    since: float | None = None
    shown = 0
    try:
        while count is None or shown < count:
            params: dict[str, Any] = {"object": obj}
            if since is not None:
                params["since"] = since
            answer = client.get("/metrics/live", params=params)
            points = by_time(answer["series"])
            if since is None:
                points = points[-1:]  # what was measured before: the view starts now
            for t, values in points:
                if count is not None and shown >= count:
                    break
                print(json.dumps({"time": t, **values}) if as_json else live_line(t, values))
                shown += 1
                since = t
            sys.stdout.flush()
            if count is None or shown < count:
                pause(answer.get("step", 1.0))  # a poll's pace, not a synchronisation
    except KeyboardInterrupt:
        return
