"""heron metrics: durations, sparklines and the summary of a series."""

import pytest
import typer

from heron.cli.metrics import sparkline, summary
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
