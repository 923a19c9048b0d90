"""Alert rules on metrics, checked each round where the samples are.

A node checks the rules against its own latest round (gauges as measured, counters as
rates), so no sample travels for it; what it finds is an alert record in the ConfigDB, and
the leader takes it from there (silences, inhibition, notices). A condition must hold for
the rule's `for_seconds` before the alert fires, and the alert resolves on the first round
the condition no longer holds.

The built-in rules are here too: the administrator may change their thresholds or turn them
off (a rule stored under the same name replaces the built-in).
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from heron.models.alerts import AlertRule, Comparison, ResolvedReason, Severity
from heron.monitor.query import parse_key
from heron.monitor.series import series_key

COMPARE: dict[Comparison, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}

OBJECT_REMOVED: ResolvedReason = "object removed"  # an alert's object is gone for good

FORGET = 86400.0  # seconds after which a series not seen is forgotten (absence rules too)

# Rules whose condition is the cluster's state, not a node's metric: the leader checks them.
NODE_DOWN = "node-down"
VM_CRASHED = "vm-crashed"
ETCD_MEMBER_DOWN = "etcd-member-down"

BUILT_IN: list[AlertRule] = [
    AlertRule(
        name="pool-nearly-full",
        metric="heron_pool_used_ratio",
        op=">",
        value=0.9,
        for_seconds=300,
        severity=Severity.warning,
        summary="pool {pool} is {value:.0%} full",
    ),
    AlertRule(
        name="volume-degraded",
        metric="heron_ardfs_volume_degraded",
        op=">=",
        value=1,
        for_seconds=30,
        severity=Severity.warning,
        summary="ARDFS volume {volume} of pool {pool} is missing copies",
    ),
    AlertRule(
        name="rebuild-stalled",
        metric="heron_ardfs_volume_rebuild_stalled",
        op=">=",
        value=1,
        for_seconds=600,
        severity=Severity.critical,
        summary="ARDFS volume {volume} of pool {pool} is degraded and not rebuilding",
    ),
    AlertRule(
        name="certificate-expiring",
        metric="heron_certificate_expiry_seconds",
        op="<",
        value=14 * 86400,
        for_seconds=0,
        severity=Severity.warning,
        summary="the {certificate} certificate of node {node} expires in {value_days} days",
    ),
]
STATE_RULES: list[AlertRule] = [
    AlertRule(
        name=NODE_DOWN,
        metric="heron_node_up",
        op="<",
        value=1,
        for_seconds=0,
        severity=Severity.critical,
        summary="node {node} is down",
    ),
    AlertRule(
        name=VM_CRASHED,
        metric="heron_vm_crashed",
        op=">=",
        value=1,
        for_seconds=0,
        severity=Severity.critical,
        summary="VM {vm_name} ({vm}) crashed on node {node}",
    ),
    AlertRule(
        name=ETCD_MEMBER_DOWN,
        metric="heron_etcd_member_healthy",
        op="<",
        value=1,
        for_seconds=30,
        severity=Severity.critical,
        summary="etcd member {member} is not healthy",
    ),
]


def effective(stored: Iterable[AlertRule]) -> list[AlertRule]:
    """The built-in rules, each replaced by a stored rule of its name, then the others."""
    mine = {rule.name: rule for rule in stored}
    built = [mine.pop(rule.name, rule) for rule in [*BUILT_IN, *STATE_RULES]]
    return [*built, *mine.values()]


def object_removed(labels: Mapping[str, str], vms: Container[str], left: Container[str]) -> bool:
    """Whether an alert's object is gone for good: a VM's alert (a `vm` label) when the VM
    is not among `vms` any more, another alert when its `node` left the cluster. Its node
    alone never measures it again (a VM's node may still run and resolve it itself)."""
    vm = labels.get("vm")
    if vm is not None:
        return vm not in vms
    node = labels.get("node")
    return node is not None and node in left


def alert_id(rule: str, labels: Mapping[str, str]) -> str:
    text = rule + "\0" + "\0".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def summary(rule: AlertRule, labels: Mapping[str, str], value: float | None) -> str:
    if not rule.summary:
        shown = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return f"{rule.metric}{{{shown}}} {rule.op} {rule.value:g} ({value})"
    fields: dict[str, object] = {**labels, "value": value, "value_days": None}
    if value is not None:
        fields["value_days"] = round(value / 86400, 1)
    try:
        return rule.summary.format_map(_Lenient(fields))
    except (ValueError, TypeError):
        return rule.summary


class _Lenient(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "?"


@dataclass
class Finding:
    """A rule's condition on one series: what to write as its alert."""

    id: str
    rule: str
    labels: dict[str, str]
    value: float | None
    firing: AlertRule | None  # the rule, while it fires; None: resolved


@dataclass
class Checker:
    """The pending and firing conditions of one node, between rounds."""

    extra_labels: dict[str, str] = field(default_factory=dict)  # e.g. node=<this node>
    since: dict[tuple[str, str], float] = field(default_factory=dict)  # condition held from
    firing: set[tuple[str, str]] = field(default_factory=set)
    seen: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (t, value)

    def round(
        self, t: float, values: Mapping[str, float], rules: Sequence[AlertRule]
    ) -> list[Finding]:
        """`values`: series key -> this round's value (rates for counters). The findings
        that changed: newly firing, or resolved."""
        changed = []
        held: set[tuple[str, str]] = set()
        labelled = {key: parse_key(key) for key in values}
        for rule in rules:
            if not rule.enabled:
                continue
            for key, value, labels in self._matching(rule, values, labelled, t):
                state = (rule.name, key)
                held.add(state)
                self.since.setdefault(state, t)
                if state not in self.firing and t - self.since[state] >= rule.for_seconds:
                    self.firing.add(state)
                    changed.append(self._finding(rule.name, labels, value, rule))
        for state in list(self.since):
            if state not in held:
                del self.since[state]
        # Resolved: the condition is gone, or its rule was turned off or deleted.
        for rule_name, key in sorted(self.firing - held):
            self.firing.discard((rule_name, key))
            changed.append(self._finding(rule_name, parse_key(key)[1], values.get(key), None))
        self.seen.update({key: (t, v) for key, v in values.items()})
        for key in [k for k, (last, _) in self.seen.items() if t - last > FORGET]:
            del self.seen[key]  # a series gone for good (a VM deleted or moved away)
        return changed

    def adopt(self, rule: str, metric: str, labels: Mapping[str, str]) -> None:
        """An alert this node fired before it restarted: it resolves when its condition no
        longer holds, as if this checker had fired it."""
        own = {k: v for k, v in labels.items() if k not in self.extra_labels or "vm" in labels}
        self.firing.add((rule, series_key(metric, tuple(sorted(own.items())))))

    def _matching(
        self,
        rule: AlertRule,
        values: Mapping[str, float],
        labelled: Mapping[str, tuple[str, dict[str, str]]],
        t: float,
    ) -> Iterable[tuple[str, float | None, dict[str, str]]]:
        compare = COMPARE[rule.op]

        def wanted(key: str) -> dict[str, str] | None:
            name, labels = labelled[key] if key in labelled else parse_key(key)
            if name != rule.metric or any(labels.get(k) != v for k, v in rule.labels.items()):
                return None
            return labels

        if rule.kind == "absence":
            for key, (last, _) in self.seen.items():
                labels = wanted(key)
                if labels is not None and key not in values and t - last > 0:
                    yield key, None, labels
            return
        for key, value in values.items():
            labels = wanted(key)
            if labels is None:
                continue
            if rule.kind == "rate":
                before = self.seen.get(key)
                if before is None or t <= before[0]:
                    continue
                value = (value - before[1]) / (t - before[0])
            if compare(value, rule.value):
                yield key, value, labels

    def _finding(
        self, rule: str, labels: dict[str, str], value: float | None, firing: AlertRule | None
    ) -> Finding:
        # A VM's alert is the VM's wherever it runs; anything else is this node's.
        if "vm" not in labels:
            labels = {**labels, **self.extra_labels}
        return Finding(alert_id(rule, labels), rule, labels, value, firing)
