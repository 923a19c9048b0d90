"""Auto-support bundles: no secret of the ConfigDB reaches a bundle, in any of its files; what
one holds, its bounds, its mail, and the leader's once-an-hour bundle for a critical alert."""

from __future__ import annotations

import email
import gzip
import io
import json
import socket
import tarfile
import time
from email import policy
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.configdb import FakeConfigDB

from heron.agent import support as agent_support
from heron.agent.support import SupportBundles, bundle_for_critical, bundle_mail, is_bundle_name
from heron.agent.tasks import TaskContext
from heron.configdb import keys
from heron.models.alerts import Alert, Severity
from heron.models.node import Node
from heron.models.settings import ClusterSettings, SupportSettings
from heron.models.task import SupportBundleParams, Task, TaskKind, new_task
from heron.monitor import support

# Every secret the ConfigDB can hold, each a string found nowhere else.
SECRETS = {
    "smtp": "smtp-pass-7f1c9a",
    "community": "snmp-community-2b8e",
    "auth_key": "snmp-authkey-93d1",
    "priv_key": "snmp-privkey-0c4f",
    "webhook": "webhook-signing-5a6b",
    "hash": "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$known-hash-value",
    "guest_hash": "$6$saltsalt$guestguestguestguesthash",
    "user_data": "#cloud-config\npassword: guest-clear-8d2e\n",
    "ca_key": (
        "-----BEGIN PRIVATE KEY-----\nMIIEca-private-key-material-e1\n-----END PRIVATE KEY-----\n"
    ),
    "peer_key": "aa11bb22cc33dd44ee55ff66aa77bb88",
    "chap": "chapSecret9x1q",
    "token_desc": "hrn_tokenvalue-doesnotleak-0123456789",
}


async def seed(db: FakeConfigDB) -> None:
    def put(key: str, value: dict[str, Any] | str) -> Any:
        return db.put(key, value if isinstance(value, str) else json.dumps(value))

    await put(
        keys.channel("mail"),
        {
            "name": "mail",
            "min_severity": "warning",
            "send_resolved": True,
            "enabled": True,
            "settings": {
                "kind": "smtp",
                "host": "mx",
                "port": 25,
                "security": "none",
                "username": "heron",
                "password": SECRETS["smtp"],
                "sender": "h@x.org",
                "recipients": ["ops@x.org"],
            },
        },
    )
    await put(
        keys.channel("trap"),
        {
            "name": "trap",
            "settings": {
                "kind": "snmp",
                "host": "nms",
                "version": "v3",
                "user": "heron",
                "community": SECRETS["community"],
                "auth_protocol": "SHA",
                "auth_key": SECRETS["auth_key"],
                "priv_protocol": "AES",
                "priv_key": SECRETS["priv_key"],
            },
        },
    )
    await put(
        keys.channel("hook"),
        {
            "name": "hook",
            "settings": {
                "kind": "webhook",
                "url": "https://h.example/x",
                "secret": SECRETS["webhook"],
            },
        },
    )
    await put(
        keys.user("admin"),
        {"name": "admin", "role": "admin", "password_hash": SECRETS["hash"], "created_at": 1.0},
    )
    await put(
        keys.token("0" * 64),
        {
            "id": "t1",
            "user": "admin",
            "role": "admin",
            "kind": "api",
            "description": SECRETS["token_desc"],
            "created_at": 1.0,
        },
    )
    await put(
        keys.CLUSTER_CA,
        {
            "certificate": "-----BEGIN CERTIFICATE-----\nx\n",
            "key": SECRETS["ca_key"],
            "created_at": 1.0,
            "provided": False,
        },
    )
    await put(keys.ARDFS_SECRETS + "fast", SECRETS["peer_key"])
    await put(keys.iscsi_secret("v-exported"), {"chap_secret": SECRETS["chap"]})
    await put(
        keys.vm("v1"),
        {
            "id": "v1",
            "node": "n1",
            "spec": {
                "name": "web",
                "cloud_init": {
                    "users": [{"name": "debian", "password_hash": SECRETS["guest_hash"]}],
                    "user_data": SECRETS["user_data"],
                },
            },
        },
    )
    await put(keys.pool("local"), {"name": "local", "type": "dir", "created_at": 1.0})
    await put(keys.SETTINGS, ClusterSettings().model_dump_json())


async def build(db: FakeConfigDB, state_dir: Path, **params: Any) -> tuple[dict[str, Any], Path]:
    task = new_task(TaskKind.support_bundle, "n1", "", "alice", SupportBundleParams(**params))
    await db.create(keys.task(task.id), task)
    async with httpx.AsyncClient() as http:
        bundles = SupportBundles(db, "n1", state_dir, http, node_versions={"qemu": "9.2"})
        result = await bundles.build(TaskContext(db, task))
    return result, state_dir / "support" / result["bundle"]


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


async def test_no_secret_of_the_configdb_is_anywhere_in_the_bundle(
    db: FakeConfigDB, state_dir: Path
) -> None:
    await seed(db)
    # The logs too: what a field name cannot protect is found by its value, or its look.
    (state_dir / "herond.log").write_text(
        f"login with {SECRETS['smtp']}\nkey {SECRETS['peer_key']}\n"
        f"curl -H 'authorization: Bearer {SECRETS['token_desc']}'\npassword=plain-in-log-44\n"
    )
    result, path = await build(db, state_dir)
    tar = gzip.decompress(path.read_bytes())
    leaked = [name for name, secret in SECRETS.items() if secret.strip().encode() in tar]
    for line in SECRETS["ca_key"].splitlines() + SECRETS["user_data"].splitlines():
        if line.strip() and line.encode() in tar and line != "#cloud-config":
            leaked.append(line)
    assert leaked == [] and b"plain-in-log-44" not in tar
    files = members(path)
    # ...while what is no secret is still there to read.
    channels = json.loads(files["config/channels.json"])
    mail = next(c for c in channels if c["name"] == "mail")
    assert mail["settings"]["host"] == "mx" and mail["settings"]["password"] == support.REDACTED
    users = json.loads(files["config/users.json"])
    assert users[0]["name"] == "admin" and users[0]["password_hash"] == support.REDACTED
    assert users[0]["etcd_key"] == keys.user("admin")
    assert "login with <redacted>" in files["nodes/n1/herond.log"].decode()
    assert result["node"] == "n1" and result["missing"] == []


async def test_the_bundle_holds_what_its_readme_lists(db: FakeConfigDB, state_dir: Path) -> None:
    await seed(db)
    failed = new_task(TaskKind.vm_start, "n1", "v1", "alice")
    failed.state, failed.error = "failed", "no room (password=hunter2x)"  # type: ignore[assignment]
    await db.create(keys.task(failed.id), failed)
    (state_dir / "fence.log").write_text("fence up\n")
    _, path = await build(db, state_dir)
    assert is_bundle_name(path.name)
    files = members(path)
    readme = files["README.txt"].decode()
    for name in files:
        if name != "README.txt":
            assert name in readme, name
    for expected in (
        "versions.json",
        "config/settings.json",
        "config/nodes.json",
        "etcd.json",
        "alerts-firing.json",
        "nodes/n1/fence.log",
        "nodes/n1/metrics.json",
    ):
        assert expected in files
    versions = json.loads(files["versions.json"])["n1"]
    assert versions["qemu"] == "9.2" and "heron" in versions and "kernel" in versions
    # A secret in free text goes too, and the JSON around it stays JSON.
    errors = [t["error"] for t in json.loads(files["tasks-failed.json"])]
    assert errors == ["no room (password=<redacted>)"]
    info = json.loads(files["bundle.json"])
    assert info["created_by"] == "alice" and info["node"] == "n1"


async def test_old_bundles_are_pruned(db: FakeConfigDB, state_dir: Path) -> None:
    async with httpx.AsyncClient() as http:
        bundles = SupportBundles(db, "n1", state_dir, http)
        for _ in range(7):
            task = new_task(TaskKind.support_bundle, "n1", "", "alice")
            await db.create(keys.task(task.id), task)
            await bundles.build(TaskContext(db, task))
        kept = bundles.bundles()
    assert len(kept) == 5 and len({b.name for b in kept}) == 5
    assert sorted(p.name for p in (state_dir / "support").glob("*.tar.gz")) == sorted(
        b.name for b in kept
    )


def test_an_archive_over_its_bound_leaves_out_its_largest_members(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(support, "MAX_BYTES", 64 * 1024)
    archive = support.Archive(root="b")
    archive.add_text("small.log", "a few words\n", "small")
    noise = io.BytesIO()
    for i in range(40000):
        noise.write(f"{i * 7919 % 104729:x} {time.time_ns() % 997}\n".encode())
    archive.add_text("big.log", noise.getvalue().decode(), "big")
    data = archive.build("header", 0.0)
    assert len(data) <= 64 * 1024
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = [m.name for m in tar.getmembers()]
        readme = tar.extractfile("b/README.txt").read().decode()  # type: ignore[union-attr]
    assert names == ["b/README.txt", "b/small.log"] and "big.log: left out" in readme


def test_scrub_replaces_secret_fields_at_any_depth_and_keeps_empty_ones() -> None:
    data = {"a": [{"password": "x1234", "host": "h"}], "secret": None, "b": {"key": "k9999"}}
    assert support.scrub(data) == {
        "a": [{"password": support.REDACTED, "host": "h"}],
        "secret": None,
        "b": {"key": support.REDACTED},
    }
    assert support.secret_values(data) == {"x1234", "k9999"}


def test_the_mail_carries_the_bundle_as_its_attachment() -> None:
    data = gzip.compress(b"tar")
    name = "heron-support-n1-20261205T070000Z.tar.gz"
    mail = bundle_mail("heron@x.org", "support@vendor.example", name, data, "prod")
    parsed = email.message_from_bytes(mail.as_bytes(), policy=policy.default)
    assert parsed["To"] == "support@vendor.example"
    (attachment,) = list(parsed.iter_attachments())  # type: ignore[attr-defined]
    assert attachment.get_filename() == name and attachment.get_content() == data


async def test_a_critical_alert_has_the_leader_build_one_bundle_an_hour(db: FakeConfigDB) -> None:
    t = time.time()
    alert = Alert(id="a1", rule="node-down", severity=Severity.critical, started_at=t - 5)
    warning = Alert(id="a2", rule="x", severity=Severity.warning, started_at=t - 5)
    alerts = {"a1": alert, "a2": warning}
    assert await bundle_for_critical(db, "n1", alerts, t) is None  # not asked for
    settings = ClusterSettings(
        support=SupportSettings(address="s@v.example", channel="mail", on_critical=True)
    )
    await db.put(keys.SETTINGS, settings)
    assert await bundle_for_critical(db, "n1", {"a2": warning}, t) is None
    task = await bundle_for_critical(db, "n1", alerts, t)
    assert task is not None and task.node == "n1" and task.params == {"send": True, "alert": "a1"}
    later = Alert(id="a3", rule="y", severity=Severity.critical, started_at=t + 60)
    assert await bundle_for_critical(db, "n1", {**alerts, "a3": later}, t + 120) is None
    stored = [e.value for e in await db.list(Task, keys.TASKS)]
    assert len(stored) == 1
    silenced = later.model_copy(update={"started_at": t + 3700, "silenced_by": "s1"})
    assert await bundle_for_critical(db, "n1", {"a3": silenced}, t + 3800) is None
    again = later.model_copy(update={"started_at": t + 3700})
    assert await bundle_for_critical(db, "n1", {"a3": again}, t + 3800) is not None


async def test_a_node_that_does_not_answer_in_time_is_named_not_waited_for(
    db: FakeConfigDB, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A node whose API takes the connection and never answers (a hung agent).
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    monkeypatch.setattr(agent_support, "PEER_TIMEOUT", 0.5)
    for name, url in (("n1", "http://127.0.0.1:9"), ("n2", f"http://127.0.0.1:{port}")):
        node = Node(
            name=name,
            address="127.0.0.1",
            api_url=url,
            cpus=1,
            memory_mib=512,
            accelerator="tcg",
            started_at=time.time(),
        )
        await db.put(keys.node(name), node)
    try:
        result, path = await build(db, state_dir)
    finally:
        silent.close()
    assert result["missing"] == ["n2"]
    readme = members(path)["README.txt"].decode()
    assert "did not answer within 0.5 s: n2" in readme and "nodes in it: n1\n" in readme
