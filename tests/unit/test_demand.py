"""The node's measured demand: a minute of rounds averaged, only the VMs still measured."""

import asyncio

from fakes.configdb import FakeConfigDB

from heron.agent.demand import DemandPublisher
from heron.configdb import keys
from heron.models.demand import NodeDemand
from heron.monitor.series import labels_of, series_key
from heron.util.wait import until


def figures(vm: str, cpu: float | None, ready: float | None, rss: float) -> dict[str, float]:
    labels = labels_of(vm=vm)
    found = {series_key("libvirt_domain_info_memory_usage_bytes", labels): rss}
    if cpu is not None:  # a counter's first round has no rate yet
        found[series_key("libvirt_domain_info_cpu_time_seconds_total", labels)] = cpu
    if ready is not None:
        found[series_key("libvirt_domain_info_cpu_ready_seconds_total", labels)] = ready
    # Series of other VMs' disks and of the node are not demand.
    found[series_key("libvirt_domain_block_stats_read_bytes_total", labels)] = 1e9
    found[series_key("node_load1", ())] = 3.0
    return found


async def test_averages_over_the_window_each_vm_measured_in_it() -> None:
    publisher = DemandPublisher(FakeConfigDB(), "n1", window=30)  # three rounds
    await publisher.round(0, {**figures("a", None, None, 100 * 2**20), **figures("b", 1, 0, 0)})
    await publisher.round(10, figures("a", 0.5, 0.1, 200 * 2**20))
    # c ran here one round and left (migrated): its figures stay for the window.
    await publisher.round(20, {**figures("a", 1.0, 0.3, 300 * 2**20), **figures("c", 2, 0, 0)})
    await publisher.round(30, figures("a", 1.5, 0.5, 400 * 2**20))
    demand = publisher.demand(31)
    assert demand.node == "n1" and demand.at == 31
    assert list(demand.vms) == ["a", "c"]  # b was last measured before the window
    a = demand.vms["a"]
    assert (a.cpu, a.ready, a.memory_mib) == (1.0, 0.3, 300)  # the last three rounds
    assert a.cpu_demand == 1.3 and demand.vms["c"].cpu == 2


async def test_writes_its_record_every_interval() -> None:
    db = FakeConfigDB()
    publisher = DemandPublisher(db, "n1", interval=0.01)
    await publisher.round(0, figures("a", 0.25, 0.0, 2**30))
    runner = asyncio.create_task(publisher.run())
    try:
        found = await until(lambda: db.get(NodeDemand, keys.demand("n1")), 5.0, 0.01)
    finally:
        runner.cancel()
    assert found is not None and found.value.vms["a"].memory_mib == 1024
    assert found.value.vms["a"].cpu == 0.25
