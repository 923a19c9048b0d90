"""The live stream's filter: what each role hears about, and the leader's heartbeat."""

from heron.api.routes.stream import Filter
from heron.configdb import keys
from heron.configdb.store import WatchEvent
from heron.models.auth import Role


def put(key: str, value: bytes = b"{}") -> WatchEvent:
    return WatchEvent("put", key, value, 1)


def test_changes_name_the_kind_and_id() -> None:
    changes = Filter(Role.viewer)
    assert changes.change(put(keys.vm_status("abc"))) == {"kind": "vms", "id": "abc", "type": "put"}
    assert changes.change(WatchEvent("delete", keys.task("t1"), b"", 2)) == {
        "kind": "tasks",
        "id": "t1",
        "type": "delete",
    }
    assert changes.change(put(keys.node_settings("n1")))["kind"] == "nodes"  # type: ignore[index]


def test_users_only_for_admins_and_token_ids_never() -> None:
    assert Filter(Role.operator).change(put(keys.user("bob"))) is None
    assert Filter(Role.admin).change(put(keys.user("bob"))) == {
        "kind": "users",
        "id": "bob",
        "type": "put",
    }
    heard = Filter(Role.viewer).change(put(keys.token("secret-hash")))
    assert heard == {"kind": "tokens", "id": "", "type": "put"}


def test_the_leader_heartbeat_is_news_only_when_the_leader_changes() -> None:
    changes = Filter(Role.viewer, leader="node1")
    assert changes.change(put(keys.LEADER, b"node1 token-a")) is None
    assert changes.change(put(keys.LEADER, b"node2 token-b")) == {
        "kind": "nodes",
        "id": "node2",
        "type": "leader",
    }
    assert changes.change(put(keys.LEADER, b"node2 token-b")) is None


def test_unknown_keys_and_index_keys_are_not_sent() -> None:
    changes = Filter(Role.admin)
    assert changes.change(put(keys.vm_name("web"))) is None
    assert changes.change(put(keys.ROOT + "console-tickets/x")) is None
    assert changes.change(put(keys.ardfs_secret("hci"), b"00" * 32)) is None  # a peer key
    assert changes.change(WatchEvent("resync", keys.ROOT, b"", 5))["kind"] == "resync"  # type: ignore[index]


def test_switches_and_networks_are_one_kind_the_nodes_reports_another() -> None:
    changes = Filter(Role.viewer)
    for key in (keys.switch("sw0"), keys.network("lan")):
        assert changes.change(put(key))["kind"] == "networks"  # type: ignore[index]
    report = changes.change(put(keys.network_status("node1")))
    assert report == {"kind": "network-status", "id": "node1", "type": "put"}
    assert changes.change(put(keys.lease("lan", "10.1.0.5"))) is None  # an index key


def test_a_user_without_a_cluster_role_hears_only_that_vms_or_tasks_changed() -> None:
    changes = Filter(None)
    assert changes.change(put(keys.vm("secret-vm-id"))) == {"kind": "vms", "id": "", "type": "put"}
    assert changes.change(put(keys.task("t1"))) == {"kind": "tasks", "id": "", "type": "put"}
    assert changes.change(put(keys.pool("p"))) is None
    assert changes.change(put(keys.user("bob"))) is None


def test_alert_rules_for_viewers_channels_for_admins_alerts_apart() -> None:
    viewer, admin = Filter(Role.viewer), Filter(Role.admin)
    rule = {"kind": "alert-rules", "id": "disk-full", "type": "put"}
    assert viewer.change(put(keys.alert_rule("disk-full"))) == rule
    # Where notices go is the administrators' to know, as GET /alerts/channels.
    assert Filter(Role.operator).change(put(keys.channel("pager"))) is None
    assert admin.change(put(keys.channel("pager"))) == {
        "kind": "channels",
        "id": "pager",
        "type": "put",
    }
    # "alert-rules/" is not under "alerts/": a rule's change is not an alert's, nor the reverse.
    assert viewer.change(put(keys.alert("a1")))["kind"] == "alerts"  # type: ignore[index]
    assert viewer.change(put(keys.silence("s1")))["kind"] == "alerts"  # type: ignore[index]
    # Without a cluster-wide role: rules and channels are not theirs to read.
    assert Filter(None).change(put(keys.alert_rule("disk-full"))) is None
    assert Filter(None).change(put(keys.channel("pager"))) is None


def test_import_sources_and_their_scans_are_one_kind_scans_for_admins() -> None:
    assert Filter(Role.viewer).change(put(keys.import_source("ds1"))) == {
        "kind": "imports",
        "id": "ds1",
        "type": "put",
    }
    assert Filter(Role.operator).change(put(keys.import_scan("ds1"))) is None
    assert Filter(Role.admin).change(put(keys.import_scan("ds1")))["kind"] == "imports"  # type: ignore[index]
    assert Filter(None).change(put(keys.import_source("ds1"))) is None  # grants only: not theirs
