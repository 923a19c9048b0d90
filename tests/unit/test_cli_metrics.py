"""heron metrics: durations, sparklines and the summary of a series."""

import json

import pytest
import typer
from typer.testing import CliRunner

from heron.cli import main, metrics
from heron.cli.metrics import full_in, resource_name, sparkline, summary
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
