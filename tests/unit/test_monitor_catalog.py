"""Every sample a collector gives is a metric of the catalog (heron.monitor.catalog), and the
catalog itself follows Prometheus's naming rules: promtool (Debian's prometheus package,
installed by scripts/install-deps) lints the exposition of every collector's samples."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from test_monitor_ipmi import SENSORS
from test_monitor_node import FakeStatvfs, captured_host
from test_monitor_storage import STATUS
from test_monitor_vm_parts import NET_DEV, VM, fake_proc

from heron.hypervisor.qmp_stats import BlockStats
from heron.monitor.catalog import METRICS
from heron.monitor.collect import vm
from heron.monitor.collect.ipmi import parse_sensors
from heron.monitor.collect.node import StatFs, collect_node, parse_net_dev
from heron.monitor.collect.services import (
    certificate_samples,
    cluster_samples,
    configdb_samples,
    task_samples,
)
from heron.monitor.collect.storage import ardfs_samples, pool_samples
from heron.monitor.collect.switch import port_samples
from heron.monitor.export import exposition
from heron.monitor.series import Sample, labels_of
from heron.tls import make_authority

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def uncatalogued(samples: list[Sample]) -> set[str]:
    return {s.name for s in samples} - set(METRICS)


def test_the_catalog_follows_prometheus_naming() -> None:
    for name, metric in METRICS.items():
        assert metric.name == name and NAME.fullmatch(name), name
        # Counters end in _total; gauges do not.
        assert (metric.kind == "counter") == name.endswith("_total"), name
        assert metric.help.strip() and "\n" not in metric.help, name


def test_the_node_collector_gives_catalogued_metrics(tmp_path: Path) -> None:
    root = captured_host(tmp_path)
    captured = collect_node(root / "proc", root / "sys", statfs=StatFs(statvfs=FakeStatvfs()))
    here = collect_node()
    assert captured and here
    assert uncatalogued(captured) == set() and uncatalogued(here) == set()
    # Everything the captured host has is measured: each family appears.
    families = {s.name for s in captured}
    node_metrics = {n for n in METRICS if n.startswith("node_")}
    assert node_metrics - families == set()


def test_the_vm_collector_gives_catalogued_metrics(tmp_path: Path) -> None:
    samples = vm.process_samples(VM, 4242, fake_proc(tmp_path))
    samples += vm.block_samples(VM, [BlockStats("disk0", 1, 2, 3, 4, 5, 6, 7, 8)])
    samples += vm.interface_samples(VM, ["ht525400123456"], parse_net_dev(NET_DEV))
    assert samples and uncatalogued(samples) == set()


def test_the_ipmi_parser_gives_catalogued_metrics() -> None:
    samples = parse_sensors(SENSORS)
    assert samples and uncatalogued(samples) == set()
    ipmi = {n for n in METRICS if n.startswith("ipmi_")}
    assert ipmi - {s.name for s in samples} == set()


def every_collectors_samples(tmp_path: Path) -> list[Sample]:
    root = captured_host(tmp_path / "host")
    samples = collect_node(root / "proc", root / "sys", statfs=StatFs(statvfs=FakeStatvfs()))
    samples += vm.process_samples(VM, 4242, fake_proc(tmp_path / "vm"))
    samples += vm.block_samples(VM, [BlockStats("disk0", 1, 2, 3, 4, 5, 6, 7, 8)])
    samples += vm.interface_samples(VM, ["ht525400123456"], parse_net_dev(NET_DEV))
    samples += vm.info_samples({VM: "web"})
    # What vm._qmp_part adds to the block stats, read from a running QEMU's QMP.
    samples += [
        Sample(name, labels_of(vm=VM), 2.0**30)
        for name in (
            "libvirt_domain_info_maximum_memory_bytes",
            "libvirt_domain_memory_stats_actual_balloon_bytes",
        )
    ]
    samples += parse_sensors(SENSORS)
    samples += pool_samples("local", (100, 40)) + ardfs_samples("fast", STATUS, 12.5)
    now = time.time()
    samples += certificate_samples({"ca": make_authority("c1", now).certificate}, now)
    samples += task_samples({("vm.migrate", "succeeded"): 3, ("vm.migrate", "failed"): 1})
    samples += cluster_samples(True, 3, {"running": 2, "stopped": 1})
    samples += port_samples([("dvs", "ht525400123456", "uplink")], parse_net_dev(NET_DEV))
    return samples + configdb_samples(0.25)


def test_every_collectors_samples_go_through_the_exposition(tmp_path: Path) -> None:
    samples = every_collectors_samples(tmp_path)
    text = exposition(samples, METRICS).decode()
    parsed = {
        s.name: family.type
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    # Every sample is there, under its name and kind (a counter's family is its name
    # without _total, its samples keep it).
    assert {s.name for s in samples} == set(parsed)
    assert all(parsed[s.name] == METRICS[s.name].kind for s in samples)
    # Every metric of the catalog is given by some collector here.
    assert set(METRICS) - set(parsed) == set()


def test_promtool_lints_every_metric_but_node_exporters_meminfo_names(tmp_path: Path) -> None:
    """promtool's lint wants snake_case, and node_exporter names /proc/meminfo's fields as the
    kernel spells them (node_memory_MemTotal_bytes): Heron keeps node_exporter's names, which
    draw the same complaint from promtool there (prometheus/prometheus#10644). Nothing else."""
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    text = exposition(every_collectors_samples(tmp_path), METRICS, node="node1").decode()
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    problems = set((checked.stdout + checked.stderr).splitlines())
    camel = {n for n in METRICS if re.search(r"[a-z][A-Z]", n)}
    assert camel == {f"node_memory_{f}_bytes" for f in
                     ("MemTotal", "MemAvailable", "MemFree", "SwapTotal", "SwapFree")}  # fmt: skip
    camel_case = "metric names should be written in 'snake_case' not 'camelCase'"
    assert problems == {f"{n} {camel_case}" for n in camel}
    assert checked.returncode == 3  # lint problems (1: an exposition it could not read)
