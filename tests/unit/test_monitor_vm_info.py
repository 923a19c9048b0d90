"""`heron_vm_info{vm,name}`: which VM a uuid is, given by the node that runs it, in the
exposition with the node's label (so a dashboard picks a VM by name, joined on `vm`); the
name is the cluster's, also for a VM renamed while it runs."""

from __future__ import annotations

from fakes.configdb import FakeConfigDB
from prometheus_client.parser import text_string_to_metric_families

from heron.agent.monitor import vm_info_source
from heron.configdb import keys
from heron.models.vm import VM, VMSpec
from heron.monitor.catalog import METRICS
from heron.monitor.collect.vm import info_samples
from heron.monitor.export import exposition
from heron.scheduler.inventory import Inventory

WEB = "0f0e0d0c-0b0a-4908-8706-050403020100"
DB = "1f0e0d0c-0b0a-4908-8706-050403020100"


def test_the_exposition_has_one_info_sample_per_vm_with_its_name_and_node() -> None:
    text = exposition(info_samples({WEB: "web", DB: "db"}), METRICS, node="node1").decode()
    assert "# TYPE heron_vm_info gauge" in text
    assert f'heron_vm_info{{name="web",node="node1",vm="{WEB}"}} 1.0' in text
    [family] = text_string_to_metric_families(text)
    assert {(s.labels["vm"], s.labels["name"], s.value) for s in family.samples} == {
        (WEB, "web", 1.0),
        (DB, "db", 1.0),
    }


class RunningHere:
    """What the source asks of the VM controller: the VMs running here and their specs."""

    def __init__(self, specs: dict[str, str]):
        self.specs = specs

    def running_here(self) -> list[str]:
        return list(self.specs)

    def running_spec(self, vm_id: str) -> VMSpec | None:
        return VMSpec(name=self.specs[vm_id])


async def test_the_name_is_the_clusters_and_the_running_spec_stands_in() -> None:
    db = FakeConfigDB()
    # "web" was renamed "shop" while it runs; "db" has no record the inventory has read yet.
    record = VM(id=WEB, spec=VMSpec(name="shop"), node="node1", created_at=0)
    await db.put(keys.vm(WEB), record)
    inventory = Inventory(db)
    vms = RunningHere({WEB: "web", DB: "db"})
    try:
        samples = await vm_info_source(vms, inventory)()  # type: ignore[arg-type]
    finally:
        await inventory.stop()
    assert {(dict(s.labels)["vm"], dict(s.labels)["name"]) for s in samples} == {
        (WEB, "shop"),
        (DB, "db"),
    }
    assert all(s.name == "heron_vm_info" and s.value == 1.0 for s in samples)
    assert await vm_info_source(RunningHere({}), inventory)() == []  # type: ignore[arg-type]
