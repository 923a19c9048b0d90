"""heron.monitor.rules: conditions held for a while fire, and resolve when they end."""

from heron.models.alerts import AlertRule, Severity
from heron.monitor.rules import BUILT_IN, Checker, alert_id, effective, object_removed, summary

HOT = AlertRule(name="hot", metric="node_load1", op=">", value=4, for_seconds=20)


def test_a_condition_fires_after_its_duration_and_resolves_when_it_ends() -> None:
    checker = Checker(extra_labels={"node": "n1"})
    assert checker.round(0, {"node_load1": 5.0}, [HOT]) == []
    assert checker.round(10, {"node_load1": 6.0}, [HOT]) == []
    [fired] = checker.round(20, {"node_load1": 7.0}, [HOT])
    assert (fired.rule, fired.labels, fired.value, fired.firing) == (
        "hot",
        {"node": "n1"},
        7.0,
        HOT,
    )
    assert checker.round(30, {"node_load1": 8.0}, [HOT]) == []  # fired once
    [resolved] = checker.round(40, {"node_load1": 1.0}, [HOT])
    assert resolved.id == fired.id and resolved.firing is None


def test_a_condition_that_breaks_off_starts_its_duration_again() -> None:
    checker = Checker()
    checker.round(0, {"node_load1": 5.0}, [HOT])
    checker.round(10, {"node_load1": 1.0}, [HOT])
    assert checker.round(20, {"node_load1": 5.0}, [HOT]) == []
    assert checker.round(30, {"node_load1": 5.0}, [HOT]) == []
    assert len(checker.round(40, {"node_load1": 5.0}, [HOT])) == 1


def test_labels_select_series_and_each_series_is_its_own_alert() -> None:
    rule = AlertRule(name="full", metric="fs", labels={"mount": "/"}, value=0.9, for_seconds=0)
    checker = Checker()
    found = checker.round(
        0, {'fs{mount="/"}': 0.95, 'fs{mount="/var"}': 0.99, 'other{mount="/"}': 1.0}, [rule]
    )
    assert [f.labels for f in found] == [{"mount": "/"}]


def test_a_rate_rule_compares_the_change_per_second() -> None:
    rule = AlertRule(name="filling", kind="rate", metric="used", value=1.0, for_seconds=0)
    checker = Checker()
    assert checker.round(0, {"used": 100.0}, [rule]) == []
    assert checker.round(10, {"used": 105.0}, [rule]) == []  # 0.5 a second
    [fired] = checker.round(20, {"used": 125.0}, [rule])
    assert fired.value == 2.0


def test_an_absence_rule_fires_when_a_series_stops() -> None:
    rule = AlertRule(name="quiet", kind="absence", metric="beat", for_seconds=15)
    checker = Checker()
    assert checker.round(0, {"beat": 1.0}, [rule]) == []
    assert checker.round(10, {}, [rule]) == []
    [fired] = checker.round(30, {}, [rule])
    assert fired.firing is rule
    [resolved] = checker.round(40, {"beat": 1.0}, [rule])
    assert resolved.firing is None


def test_a_vm_alert_is_the_same_alert_whichever_node_finds_it() -> None:
    rule = AlertRule(name="busy", metric="cpu", op=">", value=0.5, for_seconds=0)
    [on_one] = Checker(extra_labels={"node": "n1"}).round(0, {'cpu{vm="v"}': 0.9}, [rule])
    [on_two] = Checker(extra_labels={"node": "n2"}).round(0, {'cpu{vm="v"}': 0.9}, [rule])
    assert on_one.id == on_two.id == alert_id("busy", {"vm": "v"})


def test_a_restarted_checker_resolves_what_it_fired_before() -> None:
    checker = Checker(extra_labels={"node": "n1"})
    checker.adopt("hot", "node_load1", {"node": "n1"})
    [resolved] = checker.round(0, {"node_load1": 0.1}, [HOT])
    assert resolved.id == alert_id("hot", {"node": "n1"}) and resolved.firing is None


def test_a_rule_turned_off_resolves_its_alerts() -> None:
    checker = Checker()
    checker.round(0, {"node_load1": 9.0}, [HOT.model_copy(update={"for_seconds": 0})])
    [resolved] = checker.round(10, {"node_load1": 9.0}, [HOT.model_copy(update={"enabled": False})])
    assert resolved.firing is None


def test_a_stored_rule_replaces_the_built_in_of_its_name() -> None:
    mine = BUILT_IN[0].model_copy(update={"value": 0.8, "severity": Severity.critical})
    rules = effective([mine, HOT])
    assert rules[0] is mine and rules[-1] is HOT
    assert len(rules) == len(effective([])) + 1


def test_a_summary_names_the_object_and_survives_a_bad_template() -> None:
    pool = BUILT_IN[0]
    assert summary(pool, {"pool": "fast"}, 0.93) == "pool fast is 93% full"
    odd = pool.model_copy(update={"summary": "{nothing} at {value:.1f}"})
    assert summary(odd, {}, 2.0) == "? at 2.0"
    assert summary(odd.model_copy(update={"summary": "{value:d}"}), {}, 2.5) == "{value:d}"


def test_an_alert_s_object_is_removed_when_its_vm_is_deleted_or_its_node_left() -> None:
    vms, left = {"web"}, {"node3"}
    assert object_removed({"vm": "gone", "node": "node1"}, vms, left)
    assert not object_removed({"vm": "web", "node": "node3"}, vms, left)  # the VM's, not node's
    assert object_removed({"node": "node3", "pool": "p"}, vms, left)
    assert not object_removed({"node": "node1", "pool": "p"}, vms, left)
    assert not object_removed({"member": "node3"}, vms, left)  # an etcd member: its own rule
