"""heron metrics: durations, sparklines and the summary of a series."""

import json
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from heron.cli import main, metrics
from heron.cli.metrics import by_time, full_in, live_line, resource_name, sparkline, summary
from heron.cli.parse import duration


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("15m", 900), ("6h", 21600), ("1y", 31536000)]
)
def test_a_duration_reads_its_unit(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-5m", "0", "soon"])
def test_a_duration_that_is_none_is_refused(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        duration(text)


def test_a_sparkline_spans_low_to_high_and_leaves_gaps_blank() -> None:
    assert sparkline([0.0, None, 5.0, 10.0]) == "▁ ▅█"
    assert len(sparkline([float(i) for i in range(400)], width=40)) == 40
    assert sparkline([3.0, 3.0]) == "▁▁"


def test_the_summary_names_last_min_and_max() -> None:
    row = summary(
        {"key": "node_load1", "points": [[0, 1, 2, 3], [10, 0.5, 1, 4], [20, None, None, None]]}
    )
    assert (row["last"], row["min"], row["max"]) == ("1", "0.5", "4")


def forecast_row(**given: object) -> dict[str, object]:
    row: dict[str, object] = {
        "kind": "pool", "name": "shared", "node": None, "unit": "bytes", "status": "growing",
        "capacity": 10 * 2**40, "used": 4 * 2**40, "growth_per_day": 0.1 * 2**40,
        "days": 60.2, "days_low": 48.0, "days_high": 75.5, "history_hours": 719, "steps": 0,
    }  # fmt: skip
    return {**row, **given}


def test_the_forecast_says_in_how_many_days_or_why_not() -> None:
    assert full_in(forecast_row()) == "in about 60 days (48-76)"
    assert full_in(forecast_row(days=3.25, days_low=2.5, days_high=None)) == (
        "in about 3.2 days (2.5-later)"
    )
    assert full_in(forecast_row(status="not_growing")) == "not growing"
    assert full_in(forecast_row(status="not_enough_history")).startswith("not enough history")
    assert resource_name(forecast_row(node="node2")) == "pool shared on node2"
    assert resource_name(forecast_row(kind="cpu", name="cpu")) == "cpu"


def test_heron_metrics_forecast_prints_a_table_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = {
        "window_days": 30,
        "resources": [
            forecast_row(),
            forecast_row(
                kind="cpu",
                name="cpu",
                unit="cores",
                capacity=8.0,
                used=3.2,
                growth_per_day=0.04,
                days=120.0,
                days_low=90.0,
                days_high=170.0,
            ),
        ],
    }
    asked: list[dict[str, object]] = []

    class Fake:
        def get(self, path: str, params: dict[str, object]) -> dict[str, object]:
            assert path == "/metrics/forecast"
            asked.append(params)
            return answer

    monkeypatch.setattr(metrics, "Client", Fake)
    runner = CliRunner()
    table = runner.invoke(main.app, ["metrics", "forecast", "--since", "7d"])
    assert table.exit_code == 0, table.output
    assert asked == [{"days": 7}]
    assert "trend of the last 30 days" in table.output
    lines = table.output.splitlines()
    assert any(
        "pool shared" in line and "4.0 TiB" in line and "in about 60 days (48-76)" in line
        for line in lines
    ), table.output
    assert any("cpu" in line and "3.20 cores" in line and "0.04 cores" in line for line in lines)
    json_out = runner.invoke(main.app, ["metrics", "forecast", "--json"])
    assert json_out.exit_code == 0 and json.loads(json_out.output) == answer
    assert asked[-1] == {"days": 30}


NODE_SECOND = {
    'node_cpu_seconds_total{mode="user"}': 0.5,
    'node_cpu_seconds_total{mode="system"}': 0.25,
    'node_cpu_seconds_total{mode="idle"}': 1.0,
    'node_cpu_seconds_total{mode="iowait"}': 0.25,
    "node_memory_MemTotal_bytes": 4 * 1024**3,
    "node_memory_MemAvailable_bytes": 3 * 1024**3,
    'node_disk_read_bytes_total{device="sda"}': 1024.0,
    'node_disk_read_bytes_total{device="sdb"}': 1024.0,
    'node_disk_written_bytes_total{device="sda"}': 0.0,
    'node_network_receive_bytes_total{device="eth0"}': 3 * 1024**2,
    'node_network_transmit_bytes_total{device="eth0"}': 10.0,
}


def test_a_live_line_of_a_node_sums_its_devices_and_leaves_idle_out() -> None:
    line = live_line(0, NODE_SECOND)
    assert line.split("  ")[1:] == [
        "cpu 75.0%",
        "mem 1.0 GiB",
        "disk r 2.0 KiB/s w 0 B/s",
        "net rx 3.0 MiB/s tx 10 B/s",
    ]


def test_a_live_line_of_a_vm_shows_what_was_measured_and_dashes_the_rest() -> None:
    second = {
        'libvirt_domain_info_cpu_time_seconds_total{vm="a"}': 1.5,
        'libvirt_domain_info_memory_usage_bytes{vm="a"}': 512 * 1024**2,
        'libvirt_domain_block_stats_write_bytes_total{target_device="vda",vm="a"}': 2048.0,
    }
    assert live_line(0, second).split("  ")[1:] == [
        "cpu 150.0%",
        "mem 512.0 MiB",
        "disk r - w 2.0 KiB/s",
        "net rx - tx -",
    ]


def test_live_series_become_points_by_time() -> None:
    series = [{"key": "a", "points": [[2, 1.0], [1, 0.5]]}, {"key": "b", "points": [[2, 3.0]]}]
    assert by_time(series) == [(1, {"a": 0.5}), (2, {"a": 1.0, "b": 3.0})]


class FakeClient:
    """The API's answers to a poll each second: the first has what the ring held, each next
    one the point after `since`."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    def get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        assert path == "/metrics/live"
        self.asked.append(params)
        since = params.get("since", 100)
        points = [[t, 0.5] for t in ([98, 99, 100] if "since" not in params else [since + 1])]
        return {"step": 1, "series": [{"key": "node_load1", "points": points}]}


def test_live_polls_with_since_and_stops_after_count(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeClient()
    monkeypatch.setattr(metrics, "Client", lambda: fake)
    monkeypatch.setattr(metrics, "pause", lambda seconds: None)
    result = CliRunner().invoke(metrics.app, ["live", "node:node1", "--count", "3", "--json"])
    assert result.exit_code == 0, result.output
    shown = [json.loads(line)["time"] for line in result.output.splitlines()]
    assert shown == [100, 101, 102]  # the ring's last point, then one a poll
    assert fake.asked == [
        {"object": "node:node1"},
        {"object": "node:node1", "since": 100},
        {"object": "node:node1", "since": 101},
    ]
