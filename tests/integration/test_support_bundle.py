"""Auto-support on a 3-node devcluster: a bundle built through the API holds every node's
logs and metrics, etcd's status and the configuration without its secrets; any node lists,
serves, mails (to a real aiosmtpd server) and deletes it, by asking the node that keeps it."""

from __future__ import annotations

import email
import email.policy
import gzip
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from support import Api

from heron.devcluster import DevCluster
from heron.util.ports import free_port

pytestmark = pytest.mark.integration

SMTP_PASSWORD = "smtp-secret-in-etcd-4e1d"
WEBHOOK_SECRET = "webhook-signing-key-77c2"


@dataclass
class Mailbox:
    mails: list[tuple[list[str], EmailMessage]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.mails.append((list(envelope.rcpt_tos), message))
        return "250 OK"


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box, port = Mailbox(), free_port()

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"heron",
            SMTP_PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False)

    # Plain, with a login: the channel's password is used to send, and is in no bundle.
    controller = Controller(
        box, hostname="127.0.0.1", port=port, authenticator=authenticate, auth_require_tls=False
    )
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def apis(cluster3: tuple[DevCluster, str], api: Api) -> list[Api]:
    cluster, token = cluster3
    return [api, *(Api(n.url, token, cluster.tls()) for n in cluster.nodes[1:])]


@pytest.fixture(scope="module")
def built(apis: list[Api], mailbox: tuple[Mailbox, int]) -> dict[str, Any]:
    """A bundle built on node1, with channels holding secrets in the ConfigDB."""
    api = apis[0]
    _, port = mailbox
    api.ok(
        "PUT",
        "/alerts/channels/support-mail",
        json={
            "name": "support-mail",
            "settings": {
                "kind": "smtp",
                "host": "127.0.0.1",
                "port": port,
                "security": "none",
                "username": "heron",
                "password": SMTP_PASSWORD,
                "sender": "heron@cluster.example",
                "recipients": ["ops@cluster.example"],
            },
        },
    )
    api.ok(
        "PUT",
        "/alerts/channels/hook",
        json={
            "name": "hook",
            "settings": {
                "kind": "webhook",
                "url": "http://127.0.0.1:9/x",
                "secret": WEBHOOK_SECRET,
            },
        },
    )
    task = api.ok("POST", "/support/bundles", json={})
    assert task["kind"] == "support.bundle" and task["node"] == "node1"
    done = api.wait_task(task["id"], timeout=120)
    return done["result"]


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        found = {}
        for member in tar.getmembers():
            extracted = tar.extractfile(member)
            assert extracted is not None
            found[member.name.split("/", 1)[1]] = extracted.read()
        return found


def test_a_bundle_holds_every_nodes_part_and_no_secret(
    apis: list[Api], built: dict[str, Any]
) -> None:
    name = built["bundle"]
    assert built["missing"] == [] and name.startswith("heron-support-node1-")
    # Served by a node that does not keep it: it asks node1.
    reply = apis[1].get(f"/support/bundles/{name}")
    assert reply.status_code == 200, reply.text
    assert (
        reply.headers["content-type"] == "application/gzip" and len(reply.content) == built["size"]
    )
    assert SMTP_PASSWORD.encode() not in gzip.decompress(reply.content)
    assert WEBHOOK_SECRET.encode() not in gzip.decompress(reply.content)
    files = members(reply.content)
    readme = files["README.txt"].decode()
    assert "nodes in it: node1, node2, node3" in readme
    for node in ("node1", "node2", "node3"):
        assert f"nodes/{node}/herond.log" in files, sorted(files)
        assert f"nodes/{node}/metrics.json" in files
        assert f"nodes/{node}/herond.log" in readme
    versions = json.loads(files["versions.json"])
    assert set(versions) == {"node1", "node2", "node3"}
    assert all({"heron", "kernel", "qemu", "etcd"} <= set(v) for v in versions.values())
    etcd = json.loads(files["etcd.json"])
    assert len(etcd["members"]) == 3 and etcd["status"]["db_size"] > 0
    assert len(etcd["health"]) == 3 and all(etcd["health"].values())
    channels = {c["name"]: c for c in json.loads(files["config/channels.json"])}
    assert channels["support-mail"]["settings"]["password"] == "<redacted>"
    assert channels["support-mail"]["settings"]["host"] == "127.0.0.1"
    users = json.loads(files["config/users.json"])
    assert users and all(u["password_hash"] == "<redacted>" for u in users)
    nodes = {n["name"] for n in json.loads(files["config/nodes.json"])}
    assert nodes == {"node1", "node2", "node3"}


def test_every_node_lists_it_and_refuses_what_is_not_a_bundle(
    apis: list[Api], built: dict[str, Any]
) -> None:
    for api in apis:
        listed = api.ok("GET", "/support/bundles")
        [mine] = [b for b in listed if b["name"] == built["bundle"]]
        assert mine["node"] == "node1" and mine["created_by"] == "admin"
        assert mine["size"] == built["size"] and mine["task"]
    assert apis[2].get("/support/bundles/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    reply = apis[2].get("/support/bundles/heron-support-node1-20000101T000000Z.tar.gz")
    assert reply.status_code == 404, reply.text


def test_it_is_mailed_to_the_support_address(
    apis: list[Api], built: dict[str, Any], mailbox: tuple[Mailbox, int]
) -> None:
    api, name = apis[0], built["bundle"]
    box, _ = mailbox
    # Not yet configured: refused with the reason, nothing sent.
    refused = apis[2].post(f"/support/bundles/{name}/send")
    assert refused.status_code == 409 and "support address" in refused.json()["message"]
    settings = api.ok("GET", "/cluster/settings")
    wrong = {**settings, "support": {"address": "help@vendor.example", "channel": "hook"}}
    bad = api.put("/cluster/settings", json=wrong)
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "body.support.channel"
    right = {**settings, "support": {"address": "help@vendor.example", "channel": "support-mail"}}
    api.ok("PUT", "/cluster/settings", json=right)
    sent = apis[2].ok("POST", f"/support/bundles/{name}/send")
    assert sent == {"name": name, "to": "help@vendor.example", "channel": "support-mail"}
    [(recipients, mail)] = box.mails
    assert recipients == ["help@vendor.example"]
    assert mail["From"] == "heron@cluster.example" and name in mail["Subject"]
    [attachment] = list(mail.iter_attachments())
    assert attachment.get_filename() == name
    assert attachment.get_content() == api.get(f"/support/bundles/{name}").content


def test_a_bundle_built_with_send_is_mailed_and_deleted_from_any_node(
    apis: list[Api], mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    before = len(box.mails)
    task = apis[1].ok("POST", "/support/bundles", json={"send": True})
    assert task["node"] == "node2"
    result = apis[1].wait_task(task["id"], timeout=120)["result"]
    assert result["sent_to"] == "help@vendor.example" and len(box.mails) == before + 1
    name = result["bundle"]
    deleted = apis[0].delete(f"/support/bundles/{name}")
    assert deleted.status_code == 204, deleted.text
    assert name not in {b["name"] for b in apis[2].ok("GET", "/support/bundles")}
    assert apis[1].get(f"/support/bundles/{name}").status_code == 404


def test_bundles_are_for_administrators_only(apis: list[Api], built: dict[str, Any]) -> None:
    api = apis[0]
    api.ok(
        "POST", "/users", json={"name": "watcher", "role": "operator", "password": "w-pass-1234"}
    )
    reply = Api(api.url, None, api.tls).post(
        "/auth/login", json={"username": "watcher", "password": "w-pass-1234"}
    )
    operator = api.as_token(reply.json()["token"])
    name = built["bundle"]
    for method, path in (
        ("GET", "/support/bundles"),
        ("GET", f"/support/bundles/{name}"),
        ("GET", "/support/node"),
        ("POST", "/support/bundles"),
        ("POST", f"/support/bundles/{name}/send"),
        ("DELETE", f"/support/bundles/{name}"),
    ):
        assert operator.request(method, path).status_code == 403, (method, path)
