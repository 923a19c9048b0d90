"""heron cluster drs: the state shown says what is weighed, and a bad basis is refused."""

import pytest
from typer.testing import CliRunner

from heron.cli.cluster import show_drs
from heron.cli.main import app

STATUS = {
    "settings": {"mode": "advise", "threshold": 0.2, "interval": 30, "hysteresis": 3,
                 "max_concurrent": 1, "basis": "demand"},
    "basis": "demand",
    "basis_note": None,
    "loads": [
        {"node": "n1", "memory_mib": 4096, "memory_used_mib": 2048, "load": 0.5,
         "maintenance": False, "cpus": 2, "cpu_demand": 1.95, "memory_demand_mib": 700.0},
        {"node": "n2", "memory_mib": 4096, "memory_used_mib": 0, "load": 0.0,
         "maintenance": False, "cpus": 2, "cpu_demand": 0.0, "memory_demand_mib": 0.0},
    ],
    "spread": 0.975,
    "exceeded": True,
    "proposal": {"explanation": "CPU demand spread 98% exceeds the threshold; moving hog1"},
    "why_none": None,
    "decisions": [],
}  # fmt: skip


def test_demand_shows_cores_wanted_and_memory_held(capsys: pytest.CaptureFixture[str]) -> None:
    show_drs(STATUS, as_json=False)
    out = capsys.readouterr().out
    assert "weighed: measured demand" in out
    assert "1.95 of 2 cores" in out and "700" in out
    assert "imbalance 97.5%: exceeds the threshold" in out and "moving hog1" in out


def test_allocated_says_why_when_it_stands_in(capsys: pytest.CaptureFixture[str]) -> None:
    note = "no recent measurement from n1: allocated memory is balanced meanwhile"
    loads = [{**n, "cpu_demand": None, "memory_demand_mib": None} for n in STATUS["loads"]]
    show_drs({**STATUS, "basis": "allocated", "basis_note": note, "loads": loads}, False)
    out = capsys.readouterr().out
    assert f"weighed: allocated memory ({note})" in out and "50.0%" in out and "cores" not in out


def test_an_unknown_basis_is_refused_before_any_request() -> None:
    result = CliRunner().invoke(app, ["cluster", "drs", "--basis", "guess"])
    assert result.exit_code != 0 and "demand" in result.output
