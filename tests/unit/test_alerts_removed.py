"""Alerts whose object is gone for good (a node that left the cluster, a VM that was deleted)
resolve on the leader's next round, saying why in the record, the audit log and the resolved
notice; a node does not fire an alert about a VM that no longer exists (agent/alerts.py)."""

from __future__ import annotations

import json
from pathlib import Path

from fakes.configdb import FakeConfigDB

from heron.agent.alerts import AlertController, NodeAlerts
from heron.audit import AuditLog
from heron.configdb import keys
from heron.models.alerts import Alert, AlertRule, Channel, Severity, WebhookSettings
from heron.models.node import NodeSettings
from heron.models.vm import VM, VMSpec
from heron.monitor.notify import notice_of
from heron.monitor.rules import alert_id
from heron.scheduler.inventory import Inventory

T0 = 1_796_000_000.0
WEB = "0f0e0d0c-0b0a-4908-8706-050403020100"
GONE = "1f0e0d0c-0b0a-4908-8706-050403020100"
HOOK = Channel(name="hook", settings=WebhookSettings(url="https://hooks.example/heron"))


def firing(rule: str, labels: dict[str, str], notified: bool = True) -> Alert:
    return Alert(
        id=alert_id(rule, labels),
        rule=rule,
        severity=Severity.critical,
        labels=labels,
        summary=f"{rule} of {labels}",
        value=0.95,
        started_at=T0,
        notified=["firing@hook"] if notified else [],
    )


async def test_alerts_of_a_node_that_left_or_a_deleted_vm_resolve_as_object_removed(
    tmp_path: Path,
) -> None:
    db = FakeConfigDB()
    await db.put(keys.node_settings("node3"), NodeSettings(left=True, changed_at=T0))
    await db.put(keys.vm(WEB), VM(id=WEB, spec=VMSpec(name="web"), node="node1", created_at=0))
    left_pool = firing("pool-nearly-full", {"node": "node3", "pool": "local"})
    left_down = firing("node-down", {"node": "node3"}, notified=False)
    deleted_vm = firing("vm-cpu", {"vm": GONE})
    live_pool = firing("pool-nearly-full", {"node": "node1", "pool": "local"})
    live_vm = firing("vm-cpu", {"vm": WEB, "node": "node3"})  # the VM's: it exists
    for alert in (left_pool, left_down, deleted_vm, live_pool, live_vm):
        await db.put(keys.alert(alert.id), alert)
    await db.put(keys.channel(HOOK.name), HOOK)
    sent: list[Alert] = []

    async def deliver(channel: Channel, alerts: list[Alert]) -> None:
        sent.extend(alerts)

    inventory = Inventory(db)
    audit = AuditLog(tmp_path / "audit.jsonl", "node1")
    controller = AlertController(inventory, audit, deliver)
    try:
        await controller.step(T0 + 60)
        await controller.step(T0 + 70)  # nothing more happens to them
    finally:
        await inventory.stop()
    now = {e.value.id: e.value for e in await db.list(Alert, keys.ALERTS)}
    for gone in (left_pool, left_down, deleted_vm):
        alert = now[gone.id]
        assert (alert.state, alert.resolved_at, alert.resolved_reason) == (
            "resolved",
            T0 + 60,
            "object removed",
        ), gone.labels
        assert alert.value == 0.95  # the last one measured
    for kept in (live_pool, live_vm):
        assert now[kept.id].state == "firing" and now[kept.id].resolved_reason is None
    # The resolved notices say why; one goes only where the firing one went.
    resolved = [a for a in sent if a.state == "resolved"]
    assert sorted(a.id for a in resolved) == sorted([left_pool.id, deleted_vm.id])
    for alert in resolved:
        notice = notice_of(alert, "prod")
        assert notice.summary.endswith("(resolved: object removed)")
        assert notice.as_json()["reason"] == "object removed"
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    removed = [e for e in events if e.get("result") == "resolved" and "notice" not in e]
    assert {e["target"] for e in removed} == {left_pool.id, left_down.id, deleted_vm.id}
    assert all(e["reason"].endswith("(object removed)") for e in removed)


async def test_a_node_does_not_fire_an_alert_about_a_vm_that_no_longer_exists(
    tmp_path: Path,
) -> None:
    db = FakeConfigDB()
    await db.put(keys.vm(WEB), VM(id=WEB, spec=VMSpec(name="web"), node="node1", created_at=0))
    rule = AlertRule(
        name="vm-gone-quiet",
        kind="absence",
        metric="libvirt_domain_info_cpu_time_seconds_total",
        for_seconds=0,
    )
    await db.put(keys.alert_rule(rule.name), rule)
    node = NodeAlerts(db, "node1", AuditLog(tmp_path / "audit.jsonl", "node1"))
    cpu = "libvirt_domain_info_cpu_time_seconds_total"
    await node.round(T0, {f'{cpu}{{vm="{WEB}"}}': 0.5, f'{cpu}{{vm="{GONE}"}}': 0.5})
    # Both VMs' series stop: the one deleted is no alert, the other one is.
    await node.round(T0 + 10, {})
    fired = {e.value.labels.get("vm") for e in await db.list(Alert, keys.ALERTS)}
    assert fired == {WEB}
    await node.rules.stored.stop()


async def test_a_node_that_left_fires_no_alert_of_its_own(tmp_path: Path) -> None:
    db = FakeConfigDB()
    await db.put(keys.node_settings("node3"), NodeSettings(left=True, changed_at=T0))
    rule = AlertRule(name="busy", metric="node_load1", op=">", value=4, for_seconds=0)
    await db.put(keys.alert_rule(rule.name), rule)
    left = NodeAlerts(db, "node3", AuditLog(tmp_path / "audit.jsonl", "node3"))
    here = NodeAlerts(db, "node1", AuditLog(tmp_path / "audit.jsonl", "node1"))
    for node in (left, here):
        await node.round(T0, {"node_load1": 9.0})
        await node.rules.stored.stop()
    fired = {e.value.labels["node"] for e in await db.list(Alert, keys.ALERTS)}
    assert fired == {"node1"}
