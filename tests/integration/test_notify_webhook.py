"""The webhook channel against a real HTTPS receiver on loopback (the standard library's
server, a certificate of a CA made by heron.tls): the JSON arrives and its signature checks
out the way docs/operations.md tells receivers to check it; an error answer, an untrusted
certificate and a receiver that never answers give a NotifyError."""

import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from heron.models.alerts import Channel, Severity, WebhookSettings
from heron.monitor import notify
from heron.monitor.notify import Context, Notice, NotifyError
from heron.tls import issue, make_authority

pytestmark = pytest.mark.integration

SECRET = "hook-secret-1"


@dataclass
class Receiver:
    port: int
    ca_file: Path
    status: int = 204
    got: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    authority = make_authority("hook-test", time.time())
    served = issue(authority, ["127.0.0.1"], time.time())
    (tmp_path / "ca.pem").write_text(authority.certificate)
    (tmp_path / "cert.pem").write_text(served.certificate)
    (tmp_path / "key.pem").write_text(served.key)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            body = self.rfile.read(length)
            mine = state["receiver"]
            mine.got.append((self.path, dict(self.headers.items()), body))
            self.send_response(mine.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    state["receiver"] = Receiver(server.server_address[1], tmp_path / "ca.pem")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["receiver"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def context(ca_file: Path | None, timeout: float = 10.0) -> Context:
    return Context(
        cluster_id="c0ffee00-0000-4000-8000-000000000002",
        cluster_name="prod",
        tls=notify.tls_context(str(ca_file) if ca_file else None),
        timeout=timeout,
    )


def hook(port: int, secret: str | None = SECRET) -> Channel:
    url = f"https://127.0.0.1:{port}/hooks/heron?token=t0k3n"
    return Channel(name="ops-hook", settings=WebhookSettings(url=url, secret=secret))


def notice(alert_id: str, rule: str, summary: str) -> Notice:
    return Notice(
        alert_id=alert_id,
        rule=rule,
        severity=Severity.critical,
        state="firing",
        summary=summary,
        labels={"node": "node2"},
        started_at=time.time() - 30,
        resolved_at=None,
        value=0.97,
        cluster="prod",
        url=None,
    )


def receiver_checks(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """A receiver's check, as docs/operations.md describes it, with nothing from Heron."""
    timestamp = headers["X-Heron-Timestamp"]
    if abs(time.time() - int(timestamp)) > 300:
        return False
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest("sha256=" + mac.hexdigest(), headers["X-Heron-Signature"])


async def test_the_notices_arrive_as_one_signed_json_post(receiver: Receiver) -> None:
    notices = [
        notice("a1", "node-down", "node node2 is down"),
        notice("a2", "pool-nearly-full", "pool fast is 97% full"),
    ]
    await notify.deliver(hook(receiver.port), notices, context(receiver.ca_file))
    [(path, headers, body)] = receiver.got
    assert path == "/hooks/heron?token=t0k3n"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert receiver_checks(SECRET, headers, body)
    assert not receiver_checks("another secret", headers, body)
    document = json.loads(body)
    assert document["cluster"] == "prod"
    assert document["test"] is False
    assert [(n["alert_id"], n["rule"], n["value"]) for n in document["notices"]] == [
        ("a1", "node-down", 0.97),
        ("a2", "pool-nearly-full", 0.97),
    ]


async def test_the_test_notice_says_it_is_one(receiver: Receiver) -> None:
    await notify.send_test(hook(receiver.port, secret=None), context(receiver.ca_file))
    [(_, headers, body)] = receiver.got
    assert "X-Heron-Signature" not in headers
    document = json.loads(body)
    assert document["test"] is True
    assert document["notices"][0]["summary"].startswith("TEST: ")


async def test_an_error_answer_fails_and_names_the_host_not_the_token(
    receiver: Receiver,
) -> None:
    receiver.status = 500
    with pytest.raises(NotifyError) as failed:
        await notify.deliver(
            hook(receiver.port), [notice("a1", "node-down", "x")], context(receiver.ca_file)
        )
    assert str(failed.value) == (
        f"channel ops-hook (webhook): https://127.0.0.1:{receiver.port} answered 500 "
        "Internal Server Error"
    )
    assert "t0k3n" not in str(failed.value)


async def test_an_untrusted_certificate_is_refused(receiver: Receiver) -> None:
    with pytest.raises(NotifyError, match=r"cannot reach https://127\.0\.0\.1"):
        await notify.deliver(hook(receiver.port), [notice("a1", "node-down", "x")], context(None))
    assert receiver.got == []


async def test_a_receiver_that_never_answers_fails_within_the_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(
            NotifyError, match=r"no answer from https://127\.0\.0\.1:\d+ within 1 s"
        ):
            await notify.deliver(
                hook(port), [notice("a1", "node-down", "x")], context(None, timeout=1)
            )
