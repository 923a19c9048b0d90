"""heron.monitor: counters to rates, history answers merged across nodes, the exposition."""

from pathlib import Path

import pytest

from heron.monitor import query
from heron.monitor.export import exposition
from heron.monitor.recorder import Rates, Recorder
from heron.monitor.series import Metric, Sample, labels_of
from heron.monitor.store import Store

T0 = 1_800_000_000 - 1_800_000_000 % 86400
CATALOG = {
    "node_cpu_seconds_total": Metric("node_cpu_seconds_total", "counter", "CPU seconds."),
    "node_load1": Metric("node_load1", "gauge", "Load."),
}


def test_a_counter_becomes_its_rate_and_a_reset_counts_from_zero() -> None:
    rates = Rates()
    user = labels_of(mode="user")
    assert rates(T0, [Sample("node_cpu_seconds_total", user, 100.0)]) == []
    [(key, rate)] = rates(T0 + 10, [Sample("node_cpu_seconds_total", user, 150.0)])
    assert (key, rate) == ('node_cpu_seconds_total{mode="user"}', 5.0)
    [(_, rate)] = rates(T0 + 20, [Sample("node_cpu_seconds_total", user, 20.0)])
    assert rate == 2.0
    # A series gone for a round starts over: no rate from a value two rounds old.
    assert rates(T0 + 30, []) == []
    assert rates(T0 + 40, [Sample("node_cpu_seconds_total", user, 90.0)]) == []


def test_the_recorder_keeps_gauges_as_they_are_and_counters_as_rates(tmp_path: Path) -> None:
    store = Store(tmp_path, clock=lambda: T0)
    recorder = Recorder(store, {n: m.kind for n, m in CATALOG.items()})
    for i in range(3):
        recorder.record(
            T0 + 10 * i,
            [
                Sample("node_cpu_seconds_total", labels_of(mode="user"), 100.0 + 30 * i),
                Sample("node_load1", (), 0.5 + i),
            ],
        )
    answer = query.read(store, "node_cpu_seconds_total", (), T0, T0 + 30, now=T0 + 30)
    [series] = answer["series"]
    assert [p[2] for p in series["points"]] == [None, 3.0, 3.0]
    [load] = query.read(store, "node_load1", (), T0, T0 + 30, now=T0 + 30)["series"]
    assert [p[2] for p in load["points"]] == [0.5, 1.5, 2.5]
    assert recorder.current() == (T0 + 20, recorder.latest)


def test_a_coarser_step_puts_points_in_buckets(tmp_path: Path) -> None:
    store = Store(tmp_path, clock=lambda: T0)
    for i in range(12):
        store.append(T0 + 10 * i, [("node_load1", float(i))])
    answer = query.read(store, "node_load1", (), T0, T0 + 120, step=30, now=T0 + 120)
    assert (answer["resolution"], answer["step"]) == ("10s", 30)
    [series] = answer["series"]
    assert series["points"][:2] == [[T0, 0.0, 1.0, 2.0], [T0 + 30, 3.0, 4.0, 5.0]]
    # A step that a rollup has: the rollup's points (of the hour under way, from memory).
    answer = query.read(store, "node_load1", (), T0, T0 + 120, step=60, now=T0 + 120)
    assert (answer["resolution"], answer["step"]) == ("1m", 60)
    [series] = answer["series"]
    assert series["points"] == [[T0, 0.0, 2.5, 5.0], [T0 + 60, 6.0, 8.5, 11.0]]


def test_answers_of_nodes_merge_and_a_vm_keeps_one_series_across_them() -> None:
    def answer(*series: tuple[str, list[list[float | None]]]) -> dict:
        return {
            "resolution": "10s",
            "step": 10,
            "start": T0,
            "end": T0 + 30,
            "series": [{"key": k, "points": p} for k, p in series],
        }

    vm = 'libvirt_domain_info_cpu_time_seconds_total{vm="v1"}'
    merged = query.merge(
        {
            "node1": answer(
                ("node_load1", [[T0, 1.0, 1.0, 1.0]]),
                (vm, [[T0, 1, 1, 1], [T0 + 10, None, None, None]]),
            ),
            "node2": answer(
                ("node_load1", [[T0, 2.0, 2.0, 2.0]]),
                (vm, [[T0 + 10, 2, 2, 2], [T0 + 20, 3, 3, 3]]),
            ),
        }
    )
    assert [s["key"] for s in merged["series"]] == [
        vm,
        'node_load1{node="node1"}',
        'node_load1{node="node2"}',
    ]
    assert merged["series"][0]["points"] == [
        [T0, 1, 1, 1],
        [T0 + 10, 2, 2, 2],
        [T0 + 20, 3, 3, 3],
    ]


@pytest.mark.parametrize(
    "key",
    ["node_load1", 'node_cpu_seconds_total{mode="user"}', 'x{a="1",b="q\\"uote"}'],
)
def test_a_series_key_parses_back_to_its_name_and_labels(key: str) -> None:
    from heron.monitor.series import series_key

    name, labels = query.parse_key(key)
    assert series_key(name, tuple(sorted(labels.items()))) == key


def test_the_exposition_has_help_type_and_the_samples() -> None:
    text = exposition(
        [
            Sample("node_cpu_seconds_total", labels_of(mode="user"), 12.5),
            Sample("node_load1", (), 0.25),
            Sample("not_in_the_catalog", (), 1.0),
        ],
        CATALOG,
    ).decode()
    assert "# TYPE node_cpu_seconds_total counter" in text
    assert 'node_cpu_seconds_total{mode="user"} 12.5' in text
    assert "# HELP node_load1 Load." in text
    assert "node_load1 0.25" in text
    assert "not_in_the_catalog" not in text


def test_the_exposition_labels_every_sample_with_its_node() -> None:
    text = exposition(
        [
            Sample("node_cpu_seconds_total", labels_of(mode="user"), 12.5),
            Sample("node_load1", (), 0.25),
        ],
        CATALOG,
        node="node2",
    ).decode()
    assert 'node_cpu_seconds_total{mode="user",node="node2"} 12.5' in text
    assert 'node_load1{node="node2"} 0.25' in text
