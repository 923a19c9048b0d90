"""Alerts: each node checks the metric rules against its own rounds; the leader checks the
rules on the cluster's state (a node down, a VM crashed, an etcd member down), then decides
for every alert whether it is silenced or inhibited, and sends the notices.

An alert is one record in the ConfigDB (keys.alert), written only when it fires or resolves,
so what the nodes find costs etcd a write per change, not per round. The leader marks which
notices went out (`notified`, "firing@mail"), so a new leader sends nothing twice and a
notice that failed is sent again on the next round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

import httpx

from heron.audit import AuditLog
from heron.configdb import ConfigDB, Conflict, keys
from heron.configdb.cache import Cache
from heron.configdb.client import EtcdTls
from heron.configdb.election import Election
from heron.configdb.membership import Membership
from heron.models.alerts import Alert, AlertRule, Channel, ResolvedReason, Silence
from heron.models.node import NodeSettings
from heron.models.vm import VM, RunState
from heron.monitor.rules import (
    NODE_DOWN,
    OBJECT_REMOVED,
    STATE_RULES,
    VM_CRASHED,
    Checker,
    Finding,
    alert_id,
    effective,
    object_removed,
    summary,
)
from heron.monitor.series import series_key
from heron.scheduler.inventory import Inventory

log = logging.getLogger(__name__)

ROUND = 10.0
KEEP_RESOLVED = 7 * 86400  # a resolved alert stays listed this long

Deliver = Callable[[Channel, list[Alert]], Awaitable[None]]
# Called after each round with the alerts as they stand (e.g. a support bundle on a critical one).
AfterRound = Callable[[dict[str, Alert], float], Awaitable[object]]


class Rules:
    """The effective rules (built-ins, replaced or added to by the administrator's)."""

    def __init__(self, db: ConfigDB):
        self.stored = Cache(db, AlertRule, keys.ALERT_RULES)
        self.started = False

    async def current(self) -> list[AlertRule]:
        if not self.started:
            await self.stored.start()
            self.started = True
        return effective(self.stored.values())


async def write(
    db: ConfigDB, finding: Finding, t: float, reason: ResolvedReason | None = None
) -> Alert | None:
    """The finding as its alert record; the record as written, or None if nothing changed
    (already firing, or already resolved or gone). `reason`: why a resolved one resolved,
    when not because its condition ended."""
    key = keys.alert(finding.id)
    for _ in range(5):
        entry = await db.get(Alert, key)
        current = entry.value if entry else None
        rule = finding.firing
        if rule is not None:
            if current is not None and current.state == "firing":
                return None
            alert = Alert(
                id=finding.id,
                rule=finding.rule,
                severity=rule.severity,
                labels=finding.labels,
                summary=summary(rule, finding.labels, finding.value),
                value=finding.value,
                started_at=t,
            )
        else:
            if current is None or current.state != "firing":
                return None
            alert = current.model_copy(
                update={
                    "state": "resolved",
                    "resolved_at": t,
                    "value": finding.value,
                    "resolved_reason": reason,
                }
            )
        try:
            await db.put(key, alert, revision=entry.revision if entry else 0)
        except Conflict:
            continue
        return alert
    return None


class NodeAlerts:
    """This node's part: the metric rules against its own rounds."""

    def __init__(self, db: ConfigDB, node: str, audit: AuditLog):
        self.db = db
        self.node = node
        self.audit = audit
        self.rules = Rules(db)
        self.checker = Checker(extra_labels={"node": node})
        self.adopted = False

    async def round(self, t: float, values: Mapping[str, float]) -> None:
        rules = [r for r in await self.rules.current() if r.name not in STATE_NAMES]
        if not self.adopted:
            self._adopt([e.value for e in await self.db.list(Alert, keys.ALERTS)], rules)
        for finding in self.checker.round(t, values, rules):
            if finding.firing is not None and await self._removed(finding.labels):
                continue  # the leader would resolve it at once (AlertController)
            alert = await write(self.db, finding, t)
            if alert is not None:
                record(self.audit, alert)

    async def _removed(self, labels: Mapping[str, str]) -> bool:
        """Whether an alert about to fire is about an object gone for good: a deleted VM
        (an absence rule sees its series stop), or this node after it left the cluster.
        One read per alert that fires, none per round."""
        vm = labels.get("vm")
        if vm is not None:
            return await self.db.get_raw(keys.vm(vm)) is None
        settings = await self.db.get(NodeSettings, keys.node_settings(self.node))
        return settings is not None and settings.value.left

    async def vm_crashed(self, vm: VM, why: str) -> None:
        """A VM's QEMU ended unexpectedly here: its alert fires now (HA may restart it within
        a second, before any round would see it crashed); the leader resolves it once the
        VM runs again."""
        rule = next((r for r in await self.rules.current() if r.name == VM_CRASHED), None)
        if rule is None or not rule.enabled:
            return
        t = time.time()
        labels = crash_labels(vm.id, vm.spec.name, self.node)
        finding = Finding(alert_id(VM_CRASHED, labels), VM_CRASHED, labels, 1.0, rule)
        alert = await write(self.db, finding, t)
        if alert is not None:
            record(self.audit, alert, reason=f"{alert.summary}: {why}")

    def _adopt(self, alerts: Iterable[Alert], rules: list[AlertRule]) -> None:
        """What this node fired before it restarted resolves when its condition is gone."""
        metrics = {r.name: r.metric for r in rules}
        for alert in alerts:
            mine = alert.labels.get("node") == self.node and "vm" not in alert.labels
            if alert.state == "firing" and mine and alert.rule in metrics:
                self.checker.adopt(alert.rule, metrics[alert.rule], alert.labels)
        self.adopted = True


def record(audit: AuditLog, alert: Alert, **more: object) -> None:
    audit.record(
        **{
            "user": "monica",
            "method": "ALERT",
            "path": f"/alerts/{alert.id}",
            "status": 0,
            "result": alert.state,
            "target": alert.id,
            "rule": alert.rule,
            "severity": alert.severity.value,
            "reason": alert.summary,
            **more,
        }
    )


def crash_labels(vm_id: str, name: str, node: str) -> dict[str, str]:
    return {"node": node, "vm": vm_id, "vm_name": name}


class AlertController:
    """The leader's part. `deliver` sends one channel its notices (raising on failure)."""

    def __init__(
        self,
        inventory: Inventory,
        audit: AuditLog,
        deliver: Deliver,
        tls: EtcdTls | None = None,
        interval: float = ROUND,
        after_round: AfterRound | None = None,
    ):
        self.inventory = inventory
        self.after_round = after_round
        self.db = inventory.db
        self.audit = audit
        self.deliver = deliver
        self.tls = tls
        self.interval = interval
        self.checker = Checker()
        self.rules = Rules(self.db)
        self.known: set[str] = set()  # nodes seen alive, or named by VMs and alerts
        self.failing: dict[str, str] = {}  # channel -> its last failure

    async def run(self, election: Election) -> None:
        while True:
            try:
                await self.step(time.time())
            except Exception:  # a bad round must not cost the cluster its leader
                log.exception("alert round failed")
            await asyncio.sleep(self.interval - time.time() % self.interval)

    async def step(self, t: float) -> None:
        inv = await self.inventory.ready()
        alerts = {e.value.id: e.value for e in await self.db.list(Alert, keys.ALERTS)}
        await self._resolve_removed(t, inv, alerts)
        self._adopt(alerts.values())
        values = await self.state_values(inv)
        rules = [r for r in await self.rules.current() if r.name in STATE_NAMES]
        for finding in self.checker.round(t, values, rules):
            alert = await write(self.db, finding, t)
            if alert is not None:
                alerts[alert.id] = alert
                record(self.audit, alert)
        await self.dispatch(t, alerts)
        if self.after_round is not None:
            try:
                await self.after_round(alerts, t)
            except Exception:  # not the alerts' business: they went out already
                log.exception("after the alert round")

    async def _resolve_removed(self, t: float, inv: Inventory, alerts: dict[str, Alert]) -> None:
        """Alerts about a node that left the cluster or a VM that was deleted resolve: no node
        measures them any more, so nothing else would ever resolve them."""
        left = {name for name, s in inv.node_settings.items() if s.value.left}
        vms = {e.value.id for e in inv.vms}
        for alert in list(alerts.values()):
            if alert.state != "firing" or not object_removed(alert.labels, vms, left):
                continue
            finding = Finding(alert.id, alert.rule, dict(alert.labels), alert.value, None)
            resolved = await write(self.db, finding, t, reason=OBJECT_REMOVED)
            if resolved is not None:
                alerts[alert.id] = resolved
                record(self.audit, resolved, reason=f"{resolved.summary} ({OBJECT_REMOVED})")

    def _adopt(self, alerts: Iterable[Alert]) -> None:
        """The state rules' alerts that fire (fired by an earlier leader, or by a node for a
        VM that crashed there) resolve here when their condition is gone."""
        for alert in alerts:
            if alert.state == "firing" and alert.rule in STATE_NAMES:
                metric = next(r.metric for r in STATE_RULES if r.name == alert.rule)
                self.checker.adopt(alert.rule, metric, alert.labels)
                if alert.rule == NODE_DOWN:
                    self.known.add(alert.labels.get("node", ""))
        self.known.discard("")

    async def state_values(self, inv: Inventory) -> dict[str, float]:
        live = inv.live_nodes()
        left = {name for name, s in inv.node_settings.items() if s.value.left}
        self.known |= set(live) | {e.value.node for e in inv.vms}
        self.known -= left
        values = {f'heron_node_up{{node="{n}"}}': float(n in live) for n in sorted(self.known)}
        for entry in inv.vm_status:
            status = entry.value
            if status.state == RunState.crashed:
                vm_id = entry.key.rsplit("/", 1)[1]
                vm = inv.vms.get(vm_id)
                if vm is None:
                    continue  # deleted: its crash is no one's concern any more
                labels = tuple(sorted(crash_labels(vm_id, vm.value.spec.name, status.node).items()))
                values[series_key("heron_vm_crashed", labels)] = 1.0
        for member, healthy in (await self.etcd_members()).items():
            values[f'heron_etcd_member_healthy{{member="{member}"}}'] = float(healthy)
        return values

    async def etcd_members(self) -> dict[str, bool]:
        return await etcd_health(self.db, self.tls)

    # -- silences, inhibition and notices ----------------------------------------------------

    async def dispatch(self, t: float, alerts: dict[str, Alert]) -> None:
        silences = [e.value for e in await self.db.list(Silence, keys.SILENCES)]
        channels = [e.value for e in await self.db.list(Channel, keys.CHANNELS)]
        # A node down inhibits every other alert of the node and of the VMs placed on it.
        down = {
            a.labels.get("node"): a.id
            for a in alerts.values()
            if a.rule == NODE_DOWN and a.state == "firing"
        }
        placed = {e.value.id: e.value.node for e in self.inventory.vms}
        for alert in list(alerts.values()):
            silenced = next((s.id for s in silences if s.until > t and _silences(s, alert)), None)
            node = alert.labels.get("node") or placed.get(alert.labels.get("vm", ""))
            inhibited = down.get(node) if alert.rule != NODE_DOWN else None
            if (silenced, inhibited) != (alert.silenced_by, alert.inhibited_by):
                alerts[alert.id] = await self._mark(
                    alert, {"silenced_by": silenced, "inhibited_by": inhibited}
                )
        for channel in channels:
            if channel.enabled:
                await self._notify(channel, [a for a in alerts.values() if _due(a, channel)])
        await self._prune(t, alerts, silences)

    async def _notify(self, channel: Channel, due: list[Alert]) -> None:
        if not due:
            return
        try:
            await self.deliver(channel, due)
        except Exception as exc:
            reason = str(exc) or repr(exc)
            if self.failing.get(channel.name) != reason:
                log.warning("notices to channel %s failed: %s", channel.name, reason)
                self.audit.record(
                    user="monica",
                    method="NOTIFY",
                    path=f"/alerts/channels/{channel.name}",
                    status=0,
                    result="failed",
                    reason=reason,
                )
            self.failing[channel.name] = reason
            return
        self.failing.pop(channel.name, None)
        for alert in due:
            sent = f"{alert.state}@{channel.name}"
            await self._mark(alert, {"notified": [*alert.notified, sent]})
            record(self.audit, alert, channel=channel.name, notice="sent")

    async def _mark(self, alert: Alert, changes: dict[str, object]) -> Alert:
        def change(current: Alert) -> Alert:
            if "notified" in changes:
                sent = [*current.notified, *changes["notified"]]  # type: ignore[misc]
                return current.model_copy(update={"notified": sorted(set(sent))})
            return current.model_copy(update=changes)

        try:
            return (await self.db.update(Alert, keys.alert(alert.id), change)).value
        except KeyError:
            return alert

    async def _prune(self, t: float, alerts: dict[str, Alert], silences: list[Silence]) -> None:
        for alert in alerts.values():
            if alert.state == "resolved" and (alert.resolved_at or t) < t - KEEP_RESOLVED:
                await self.db.delete(keys.alert(alert.id))
        for silence in silences:
            if silence.until < t - KEEP_RESOLVED:
                await self.db.delete(keys.silence(silence.id))


STATE_NAMES = {r.name for r in STATE_RULES}


async def etcd_health(db: ConfigDB, tls: EtcdTls | None) -> dict[str, bool]:
    """Each started voter's health, asked at its own /health (2 s at most)."""
    try:
        members = await Membership(db).list()
    except Exception:
        return {}
    verify = tls.ssl_context() if tls else True
    async with httpx.AsyncClient(timeout=2.0, verify=verify) as http:

        async def healthy(url: str) -> bool:
            try:
                reply = await http.get(f"{url}/health")
                return reply.status_code == 200 and reply.json().get("health") == "true"
            except (httpx.HTTPError, ValueError):
                return False

        started = [m for m in members if m.started and not m.learner and m.client_urls]
        answers = await asyncio.gather(*(healthy(m.client_urls[0]) for m in started))
    return {m.name: ok for m, ok in zip(started, answers, strict=True)}


def _silences(silence: Silence, alert: Alert) -> bool:
    if silence.rule is not None and silence.rule != alert.rule:
        return False
    return all(alert.labels.get(k) == v for k, v in silence.matchers.items())


def _due(alert: Alert, channel: Channel) -> bool:
    """Whether `channel` still owes this alert a notice."""
    if alert.severity.rank < channel.min_severity.rank:
        return False
    if f"{alert.state}@{channel.name}" in alert.notified:
        return False
    if alert.state == "firing":
        return alert.silenced_by is None and alert.inhibited_by is None
    # A resolved notice only follows a firing one that was sent.
    return channel.send_resolved and f"firing@{channel.name}" in alert.notified
