"""The SMTP channel against a real mail server (aiosmtpd) on loopback: STARTTLS and implicit
TLS with a certificate of a CA made by heron.tls, login, the mail as it arrives; a wrong
password, an untrusted certificate, a server that is not there and one that never answers
each give a NotifyError saying so."""

import email
import email.policy
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from heron.models.alerts import Channel, Severity, SmtpSettings
from heron.monitor import notify
from heron.monitor.notify import Context, Notice, NotifyError
from heron.tls import issue, make_authority
from heron.util.ports import free_port

pytestmark = pytest.mark.integration

USER, PASSWORD = "heron", "mail-pass-1"


@dataclass
class Mailbox:
    """What the server received: (envelope sender, recipients, message) per mail."""

    mails: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"


def content(mail: EmailMessage) -> str:
    text = mail.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    # handled=False: aiosmtpd answers a failure with its 535 itself.
    return AuthResult(success=ok, handled=False)


@dataclass
class Pki:
    ca_file: Path
    server: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    authority = make_authority("notify-test", time.time())
    served = issue(authority, ["127.0.0.1", "localhost"], time.time())
    (directory / "ca.pem").write_text(authority.certificate)
    (directory / "cert.pem").write_text(served.certificate)
    (directory / "key.pem").write_text(served.key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return Pki(directory / "ca.pem", server)


def serve(mailbox: Mailbox, pki: Pki, implicit: bool) -> Iterator[int]:
    port = free_port()
    tls: dict[str, Any] = (
        {"ssl_context": pki.server}
        if implicit
        else {"tls_context": pki.server, "require_starttls": True}
    )
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticate,
        # aiosmtpd knows TLS only when it came by STARTTLS: behind implicit TLS it would
        # not offer AUTH at all, though the session is encrypted.
        auth_require_tls=not implicit,
        **tls,
    )
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


@pytest.fixture
def starttls_port(mailbox: Mailbox, pki: Pki) -> Iterator[int]:
    yield from serve(mailbox, pki, implicit=False)


@pytest.fixture
def tls_port(mailbox: Mailbox, pki: Pki) -> Iterator[int]:
    yield from serve(mailbox, pki, implicit=True)


def context(pki: Pki, timeout: float = 10.0, trusted: bool = True) -> Context:
    return Context(
        cluster_id="c0ffee00-0000-4000-8000-000000000001",
        cluster_name="prod",
        tls=notify.tls_context(str(pki.ca_file) if trusted else None),
        timeout=timeout,
    )


def channel(port: int, **changes: Any) -> Channel:
    settings = SmtpSettings(
        host="127.0.0.1",
        port=port,
        security="starttls",
        username=USER,
        password=PASSWORD,
        sender="heron@prod.example",
        recipients=["ops@example.org", "oncall@example.org"],
    )
    return Channel(name="ops-mail", settings=settings.model_copy(update=changes))


def node_down(**changes: Any) -> Notice:
    fields: dict[str, Any] = {
        "alert_id": "a-node2",
        "rule": "node-down",
        "severity": Severity.critical,
        "state": "firing",
        "summary": "node node2 is down",
        "labels": {"node": "node2"},
        "started_at": time.time() - 40,
        "resolved_at": None,
        "value": None,
        "cluster": "prod",
        "url": "https://prod.example:8006/#/alerts/a-node2",
    }
    fields.update(changes)
    return Notice(**fields)


async def test_a_mail_over_starttls_with_login_arrives_with_subject_and_details(
    mailbox: Mailbox, starttls_port: int, pki: Pki
) -> None:
    await notify.deliver(channel(starttls_port), [node_down()], context(pki))
    [(sender, recipients, mail)] = mailbox.mails
    assert sender == "heron@prod.example"
    assert recipients == ["ops@example.org", "oncall@example.org"]
    assert mail["Subject"] == "[Heron critical] node node2 is down"
    assert mail["Auto-Submitted"] == "auto-generated"
    text = content(mail)
    english, russian = text.split("\n-- \n")
    assert "FIRING critical: node node2 is down" in english
    assert "Object:   node=node2" in english
    assert "Link:     https://prod.example:8006/#/alerts/a-node2" in english
    assert "АКТИВНО критическое: node node2 is down" in russian


async def test_several_notices_are_one_mail_and_implicit_tls_works(
    mailbox: Mailbox, tls_port: int, pki: Pki
) -> None:
    notices = [
        node_down(),
        node_down(
            alert_id="a-web1",
            rule="vm-crashed",
            severity=Severity.warning,
            summary="VM web1 crashed",
            labels={"vm": "web1"},
            state="resolved",
            resolved_at=time.time(),
        ),
    ]
    await notify.deliver(channel(tls_port, security="tls"), notices, context(pki))
    [(_, _, mail)] = mailbox.mails
    assert mail["Subject"] == "[Heron critical] 2 alerts: node node2 is down; VM web1 crashed"
    text = content(mail)
    assert "2 alerts (1 firing, 1 resolved)" in text
    assert "RESOLVED warning: VM web1 crashed" in text


async def test_the_test_notice_is_marked_as_one(
    mailbox: Mailbox, starttls_port: int, pki: Pki
) -> None:
    await notify.send_test(channel(starttls_port), context(pki))
    [(_, _, mail)] = mailbox.mails
    assert mail["Subject"].startswith("[Heron test] TEST: a test notice from Heron")
    assert "no alert fired" in content(mail)


async def test_a_wrong_password_is_named_as_the_reason(
    mailbox: Mailbox, starttls_port: int, pki: Pki
) -> None:
    with pytest.raises(NotifyError) as failed:
        await notify.deliver(channel(starttls_port, password="wrong"), [node_down()], context(pki))
    message = str(failed.value)
    assert message.startswith("channel ops-mail (smtp): ")
    assert f"127.0.0.1:{starttls_port} refused the login: 535" in message
    assert "\n" not in message
    assert mailbox.mails == []


async def test_a_certificate_of_an_unknown_ca_is_refused(
    mailbox: Mailbox, starttls_port: int, pki: Pki
) -> None:
    with pytest.raises(NotifyError, match="certificate is not trusted"):
        await notify.deliver(channel(starttls_port), [node_down()], context(pki, trusted=False))
    assert mailbox.mails == []


async def test_a_server_that_is_not_there_or_never_answers_fails_within_the_timeout(
    pki: Pki,
) -> None:
    absent = free_port()
    with pytest.raises(NotifyError, match=f"127.0.0.1:{absent}"):
        await notify.deliver(channel(absent), [node_down()], context(pki, timeout=2))
    # A listener that accepts connections (the kernel does) but never greets.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(NotifyError, match=r"no answer from the mail server .* within 2 s"):
            await notify.deliver(channel(port), [node_down()], context(pki, timeout=2))


async def test_starttls_is_required_when_asked_and_none_sends_plain(
    mailbox: Mailbox, pki: Pki
) -> None:
    port = free_port()
    plain = Controller(mailbox, hostname="127.0.0.1", port=port)  # no TLS, no AUTH
    plain.start()
    try:
        with pytest.raises(NotifyError, match=f"127.0.0.1:{port} does not offer STARTTLS"):
            await notify.deliver(channel(port, username=None), [node_down()], context(pki))
        assert mailbox.mails == []
        # A relay on a trusted network, by the administrator's choice.
        await notify.deliver(
            channel(port, security="none", username=None, password=None),
            [node_down()],
            context(pki),
        )
        [(_, _, mail)] = mailbox.mails
        assert mail["Subject"] == "[Heron critical] node node2 is down"
    finally:
        plain.stop()
