"""heron.monitor.notify's pure parts: the mail's text, the webhook's signature, the SNMP
engine ID, HERON-MIB's numbers and the OIDs sent, and deliver's dispatch and timeout."""

import asyncio
import email
import hashlib
import hmac
import json
import re
import typing
from email.message import EmailMessage

import pytest
from pydantic import ValidationError

from heron.models.alerts import (
    Alert,
    Channel,
    ChannelSettings,
    Severity,
    SmtpSettings,
    SnmpSettings,
    WebhookSettings,
)
from heron.monitor import notify
from heron.monitor.notify import Context, Notice, NotifyError, smtp, snmp, webhook
from heron.monitor.notify.notice import probe_notice

T0 = 1_796_000_000.0  # 2026-11-30 00:53:20 UTC


def notice(**changes: typing.Any) -> Notice:
    fields: dict[str, typing.Any] = {
        "alert_id": "a1",
        "rule": "node-down",
        "severity": Severity.critical,
        "state": "firing",
        "summary": "node node2 is down",
        "labels": {"node": "node2"},
        "started_at": T0,
        "resolved_at": None,
        "value": 1.0,
        "cluster": "prod",
        "url": "https://heron.example/#/alerts/a1",
    }
    fields.update(changes)
    return Notice(**fields)


CONTEXT = Context(cluster_id="6f1c0d2e-1111-4222-8333-944455556666", cluster_name="prod")
SMTP = SmtpSettings(host="mail.example", sender="heron@example.org", recipients=["ops@example"])


# -- notices ---------------------------------------------------------------------------------


def test_a_notice_is_made_of_an_alert_and_says_its_state() -> None:
    alert = Alert(
        id="a9",
        rule="vm-crashed",
        severity=Severity.warning,
        labels={"vm": "web1", "node": "node1"},
        summary="VM web1 crashed",
        state="resolved",
        value=None,
        started_at=T0,
        resolved_at=T0 + 60,
    )
    made = notify.notice_of(alert, "prod", None)
    assert made == Notice(
        "a9",
        "vm-crashed",
        Severity.warning,
        "resolved",
        "VM web1 crashed",
        {"vm": "web1", "node": "node1"},
        T0,
        T0 + 60,
        None,
        "prod",
        None,
    )
    # Without a summary the rule and the object stand in.
    bare = alert.model_copy(update={"summary": ""})
    assert notify.notice_of(bare, "prod").summary == "vm-crashed node=node1, vm=web1"


def test_a_channel_takes_notices_by_severity_and_resolved_ones_if_asked() -> None:
    channel = Channel(name="mail", settings=SMTP, min_severity=Severity.warning)
    assert notify.wants(channel, notice(severity=Severity.critical))
    assert notify.wants(channel, notice(severity=Severity.warning))
    assert not notify.wants(channel, notice(severity=Severity.info))
    assert notify.wants(channel, notice(state="resolved", resolved_at=T0 + 5))
    quiet = channel.model_copy(update={"send_resolved": False})
    assert not notify.wants(quiet, notice(state="resolved", resolved_at=T0 + 5))
    assert not notify.wants(channel.model_copy(update={"enabled": False}), notice())


# -- mail ------------------------------------------------------------------------------------


def test_the_subject_names_the_worst_severity_and_the_alert_or_the_count() -> None:
    assert smtp.subject([notice()]) == "[Heron critical] node node2 is down"
    resolved = notice(state="resolved", resolved_at=T0 + 90)
    assert smtp.subject([resolved]) == "[Heron resolved] node node2 is down"
    several = [
        notice(severity=Severity.warning, summary="pool fast is 91% full"),
        notice(alert_id="a2", summary="VM web1 crashed", severity=Severity.critical),
        resolved,
    ]
    assert smtp.subject(several) == (
        "[Heron critical] 3 alerts: pool fast is 91% full; VM web1 crashed; node node2 is down"
    )
    long = smtp.subject([notice(summary="x" * 400)])
    assert len(long) == smtp.SUBJECT_MAX and long.endswith("…")
    # A summary cannot break the header into two lines.
    assert "\n" not in smtp.subject([notice(summary="one\ntwo")])
    assert smtp.subject([probe_notice("ops", "prod", T0)]).startswith("[Heron test] TEST: ")


def test_the_mail_lists_each_alert_in_english_then_in_russian() -> None:
    resolved = notice(alert_id="a2", state="resolved", resolved_at=T0 + 90, value=None)
    text = smtp.body([notice(), resolved], "prod")
    english, russian = text.split("\n-- \n")
    assert english.startswith("Heron cluster prod: 2 alerts (1 firing, 1 resolved).")
    assert "FIRING critical: node node2 is down" in english
    assert "RESOLVED critical: node node2 is down" in english
    assert "  Rule:     node-down" in english
    assert "  Object:   node=node2" in english
    assert "  Value:    1\n" in english
    assert "  Started:  2026-11-30 00:53:20 UTC" in english and " UTC" in english
    assert "  Link:     https://heron.example/#/alerts/a1" in english
    # What a notice lacks is left out, not shown empty.
    assert english.count("Value:") == 1 and english.count("Resolved:") == 1
    assert russian.startswith("Кластер Heron prod: оповещений: 2 (активных: 1, разрешённых: 1).")
    assert "АКТИВНО критическое: node node2 is down" in russian
    assert "РАЗРЕШЕНО критическое: node node2 is down" in russian
    assert "  Правило:       node-down" in russian


def test_the_mail_is_utf8_plain_text_for_its_recipients_and_marked_automatic() -> None:
    settings = SMTP.model_copy(update={"recipients": ["a@example", "b@example"]})
    mail = smtp.message(settings, [notice()], "prod")
    parsed = email.message_from_bytes(mail.as_bytes())
    assert parsed["To"] == "a@example, b@example"
    assert parsed["From"] == "heron@example.org"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["X-Heron-Cluster"] == "prod"
    assert parsed.get_content_type() == "text/plain"
    assert isinstance(parsed, email.message.Message)
    content = EmailMessage()
    content.set_content(smtp.body([notice()], "prod"))
    payload = parsed.get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert "Кластер Heron prod" in payload.decode(parsed.get_content_charset() or "ascii")


def test_a_test_notice_says_so_in_both_languages() -> None:
    text = smtp.body([probe_notice("ops", "prod", T0)], "prod")
    assert "This is a test sent from the channel's settings; no alert fired." in text
    assert "Это проверка из настроек канала" in text


# -- webhook ---------------------------------------------------------------------------------


def test_the_webhook_body_lists_the_notices_and_its_signature_covers_the_timestamp() -> None:
    body = webhook.payload([notice(), notice(alert_id="a2")], CONTEXT)
    document = json.loads(body)
    assert document["cluster"] == "prod"
    assert document["cluster_id"] == CONTEXT.cluster_id
    assert document["test"] is False
    assert [n["alert_id"] for n in document["notices"]] == ["a1", "a2"]
    assert document["notices"][0] == {
        "alert_id": "a1",
        "rule": "node-down",
        "severity": "critical",
        "state": "firing",
        "summary": "node node2 is down",
        "labels": {"node": "node2"},
        "started_at": T0,
        "resolved_at": None,
        "value": 1.0,
        "url": "https://heron.example/#/alerts/a1",
        "reason": None,
    }
    settings = WebhookSettings(url="https://hooks.example/x", secret="s3cret")
    sent = webhook.headers(settings, body, T0 + 0.7)
    assert sent[webhook.TIMESTAMP] == str(int(T0))
    # What a receiver computes, written out with nothing from the module under test.
    expected = hmac.new(b"s3cret", f"{int(T0)}.".encode() + body, hashlib.sha256).hexdigest()
    assert sent[webhook.SIGNATURE] == f"sha256={expected}"
    assert webhook.verify("s3cret", str(int(T0)), body, sent[webhook.SIGNATURE])
    assert not webhook.verify("s3cret", str(int(T0) + 1), body, sent[webhook.SIGNATURE])
    assert not webhook.verify("other", str(int(T0)), body, sent[webhook.SIGNATURE])
    assert not webhook.verify("s3cret", str(int(T0)), body + b" ", sent[webhook.SIGNATURE])
    unsigned = webhook.headers(WebhookSettings(url="https://hooks.example/x"), body, T0)
    assert webhook.SIGNATURE not in unsigned


def test_a_webhook_is_named_in_errors_without_its_path_or_query() -> None:
    assert webhook.where("https://hooks.example:8443/T0/B1/secret?token=x") == (
        "https://hooks.example:8443"
    )
    assert webhook.where("http://10.0.0.5/hook") == "http://10.0.0.5"


# -- SNMP ------------------------------------------------------------------------------------


def test_the_engine_id_is_the_enterprises_and_stable_per_cluster() -> None:
    one = notify.engine_id("cluster-a")
    assert one == notify.engine_id("cluster-a")
    assert one != notify.engine_id("cluster-b")
    # RFC 3411: the enterprise number with the top bit set, format 5, then at most 27 octets.
    assert one[:4] == (0x80000000 | notify.HERON_PEN).to_bytes(4, "big")
    assert one[4] == 5
    assert 5 <= len(one) <= 32
    assert notify.engine_id_hex("cluster-a") == "0x" + one.hex().upper()
    assert CONTEXT.engine_id == notify.engine_id(CONTEXT.cluster_id)


MIB = snmp.mib_text()


def _mib_number(name: str) -> tuple[str, int]:
    match = re.search(
        rf"^{name}\s+(?:NOTIFICATION-TYPE|OBJECT-TYPE).*?::= \{{ (\w+) (\d+) \}}", MIB, re.S | re.M
    )
    assert match, name
    return match.group(1), int(match.group(2))


def test_the_mib_has_the_enterprise_number_of_the_code() -> None:
    assert f"::= {{ enterprises {notify.HERON_PEN} 1 }}" in MIB
    assert snmp.HERON_MIB == (1, 3, 6, 1, 4, 1, notify.HERON_PEN, 1)


def test_each_builtin_rule_has_its_notification_type_in_the_mib() -> None:
    rules = {
        "node-down",
        "vm-crashed",
        "pool-nearly-full",
        "volume-degraded",
        "rebuild-stalled",
        "certificate-expiring",
        "etcd-member-down",
    }
    assert set(snmp.KINDS) == rules
    for rule in rules:
        name, oid = snmp.notification_type(notice(rule=rule))
        assert _mib_number(name) == ("heronNotifications", oid[-1])
        assert oid[:-1] == snmp.NOTIFICATIONS
        # Resolved ones keep their kind's type; the state object tells them apart.
        assert snmp.notification_type(notice(rule=rule, state="resolved")) == (name, oid)
    firing = snmp.notification_type(notice(rule="cpu-high"))
    resolved = snmp.notification_type(notice(rule="cpu-high", state="resolved"))
    assert firing == ("heronAlertFiring", (*snmp.NOTIFICATIONS, 1))
    assert resolved == ("heronAlertResolved", (*snmp.NOTIFICATIONS, 2))
    assert _mib_number("heronAlertFiring") == ("heronNotifications", 1)
    assert _mib_number("heronAlertResolved") == ("heronNotifications", 2)


def test_the_varbinds_are_the_mibs_objects_in_its_order() -> None:
    names = {
        snmp.ALERT_ID: "heronAlertId",
        snmp.RULE: "heronAlertRule",
        snmp.SEVERITY: "heronAlertSeverity",
        snmp.STATE: "heronAlertState",
        snmp.SUMMARY: "heronAlertSummary",
        snmp.LABELS: "heronAlertLabels",
        snmp.STARTED_AT: "heronAlertStartedAt",
        snmp.RESOLVED_AT: "heronAlertResolvedAt",
        snmp.VALUE: "heronAlertValue",
        snmp.CLUSTER_NAME: "heronClusterName",
        snmp.URL: "heronAlertUrl",
    }
    for number, name in names.items():
        assert _mib_number(name) == ("heronAlertObjects", number)
    binds = snmp.varbinds(notice(labels={"vm": "web1", "node": "node1"}))
    assert binds[0][0] == snmp.SNMP_TRAP_OID
    assert tuple(binds[0][1]) == (*snmp.NOTIFICATIONS, 10)
    objects = [oid for oid, _ in binds[1:]]
    assert all(oid[:-2] == snmp.OBJECTS and oid[-1] == 0 for oid in objects)
    sent = [names[oid[-2]] for oid in objects]
    listed = re.search(r"heronNodeDown NOTIFICATION-TYPE\s+OBJECTS \{([^}]*)\}", MIB)
    assert listed
    assert sent == [word.strip() for word in listed.group(1).split(",")]
    values = {names[oid[-2]]: value for oid, value in binds[1:]}
    assert bytes(values["heronAlertLabels"]) == b"node=node1, vm=web1"
    assert int(values["heronAlertSeverity"]) == 3
    assert int(values["heronAlertState"]) == 1
    assert bytes(values["heronAlertValue"]) == b"1"
    resolved = snmp.varbinds(notice(state="resolved", resolved_at=T0 + 61))
    assert resolved[-1][0] == (*snmp.OBJECTS, snmp.RESOLVED_AT, 0)


def test_date_and_time_is_utc_in_eleven_octets() -> None:
    # 2026-12-05 04:30:12.3 UTC
    stamp = 1_796_445_012.35
    assert snmp.date_and_time(stamp) == bytes([0x07, 0xEA, 12, 5, 4, 30, 12, 3]) + b"+\0\0"


def test_snmp_settings_that_cannot_work_say_why() -> None:
    with pytest.raises(NotifyError, match="community"):
        snmp.credentials(SnmpSettings(host="nms"))
    with pytest.raises(NotifyError, match="user"):
        snmp.credentials(SnmpSettings(host="nms", version="v3"))
    with pytest.raises(NotifyError, match="needs authentication"):
        snmp.credentials(SnmpSettings(host="nms", version="v3", user="u", priv_key="12345678"))
    with pytest.raises(NotifyError, match="at least 8"):
        snmp.credentials(SnmpSettings(host="nms", version="v3", user="u", auth_key="short"))
    v3 = snmp.credentials(
        SnmpSettings(
            host="nms",
            version="v3",
            user="u",
            auth_protocol="SHA256",
            auth_key="authpass1",
            priv_key="privpass1",
        )
    )
    assert v3.security_level == "authPriv"
    assert v3.authentication_protocol == snmp.AUTH["SHA256"]
    assert v3.privacy_protocol == snmp.PRIV["AES"]


# -- dispatch --------------------------------------------------------------------------------


def test_every_kind_of_channel_has_a_driver() -> None:
    (union, *_) = typing.get_args(ChannelSettings)
    kinds = {
        typing.get_args(model.model_fields["kind"].annotation)[0]
        for model in typing.get_args(union)
    }
    assert kinds == set(notify.DRIVERS) == {"smtp", "snmp", "webhook"}


async def test_deliver_names_the_channel_and_ends_a_driver_that_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    channel = Channel(name="ops-hook", settings=WebhookSettings(url="https://hooks.example/"))
    got: list[list[Notice]] = []

    async def failing(settings: object, notices: list[Notice], context: Context) -> None:
        got.append(notices)
        raise NotifyError("https://hooks.example answered 500 Internal Server Error")

    monkeypatch.setitem(notify.DRIVERS, "webhook", failing)
    with pytest.raises(NotifyError) as failed:
        await notify.deliver(channel, [notice()], CONTEXT)
    assert str(failed.value) == (
        "channel ops-hook (webhook): https://hooks.example answered 500 Internal Server Error"
    )
    # Nothing to send is not a call.
    await notify.deliver(channel, [], CONTEXT)
    assert len(got) == 1
    # The test notice is clearly marked, and goes whatever the channel's filters.
    quiet = channel.model_copy(update={"enabled": False, "min_severity": Severity.critical})
    with pytest.raises(NotifyError):
        await notify.send_test(quiet, CONTEXT)
    assert got[-1][0].test and got[-1][0].summary.startswith("TEST: ")

    hung = asyncio.Event()

    async def hanging(settings: object, notices: list[Notice], context: Context) -> None:
        await hung.wait()

    monkeypatch.setitem(notify.DRIVERS, "webhook", hanging)
    monkeypatch.setattr(notify, "GRACE", 0.0)
    fast = Context(cluster_id="c", cluster_name="prod", timeout=0.2)
    with pytest.raises(NotifyError, match=r"not delivered within 0.2 s"):
        await notify.deliver(channel, [notice()], fast)


async def test_the_notifier_turns_alerts_into_notices_with_their_links(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    got: list[list[Notice]] = []

    async def driver(settings: object, notices: list[Notice], context: Context) -> None:
        got.append(notices)

    monkeypatch.setitem(notify.DRIVERS, "smtp", driver)
    alert = Alert(id="a7", rule="test", severity=Severity.info, summary="hello", started_at=T0)
    send = notify.notifier(CONTEXT, lambda a: f"https://heron.example/#/alerts/{a.id}")
    await send(Channel(name="mail", settings=SMTP), [alert])
    [[sent]] = got
    assert (sent.alert_id, sent.cluster, sent.url) == (
        "a7",
        "prod",
        "https://heron.example/#/alerts/a7",
    )
    # The API's test alert (rule "test") reads as a test in every medium.
    assert sent.test


def test_snmp_text_is_cut_between_characters() -> None:
    binds = dict(snmp.varbinds(notice(summary="ж" * 1000)))
    summary = bytes(binds[(*snmp.OBJECTS, snmp.SUMMARY, 0)])
    assert len(summary) == snmp.TEXT_MAX
    assert summary.decode() == "ж" * (snmp.TEXT_MAX // 2)
    odd = bytes(
        dict(snmp.varbinds(notice(summary="x" + "ж" * 1000)))[(*snmp.OBJECTS, snmp.SUMMARY, 0)]
    )
    assert odd.decode() == "x" + "ж" * ((snmp.TEXT_MAX - 1) // 2)


async def test_settings_that_cannot_make_a_request_fail_as_notify_errors() -> None:
    bad_mail = Channel(name="mail", settings=SMTP.model_copy(update={"sender": "a@b\nBcc: x@y"}))
    with pytest.raises(NotifyError, match=r"channel mail \(smtp\): cannot make the mail"):
        await notify.deliver(bad_mail, [notice()], CONTEXT)
    bad_hook = Channel(name="hook", settings=WebhookSettings(url="https://exa mple:99999/x"))
    with pytest.raises(NotifyError, match=r"channel hook \(webhook\): cannot reach https://"):
        await notify.deliver(bad_hook, [notice()], CONTEXT)


@pytest.mark.parametrize("url", ["http://", "https:///x", "ftp://host/x", "http:// host/"])
def test_a_webhook_url_without_a_host_is_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        WebhookSettings(url=url)


@pytest.mark.parametrize(
    "change",
    [{"sender": "a@b\nBcc: x@y"}, {"recipients": ["ops@example.org\r\nX: y"]}, {"sender": "ops"}],
)
def test_a_mail_address_that_could_break_a_header_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SmtpSettings.model_validate({**SMTP.model_dump(), **change})
