"""The Alerts page of the web UI (issue 17), in a real browser against a real 3-node
devcluster.

The tests run in order on one page: a rule made with the rule editor (a duration out of
bounds refused next to its input) and found in GET /alerts/rules; a rule, a silence and a
channel that another client makes, changes and deletes through the API shown in the open page
as the live stream tells of them, with no reload; the rule's alert firing for
real on every node (the ConfigDB is up everywhere), counted in the top bar and the menu;
one alert acknowledged (the name shown, and in the API); one silenced from its row with its
rule and labels filled in (the leader marks it silenced), and the silence ended; a built-in
rule changed and reset to its default; a webhook channel made (its signing key kept out of
every answer) and its "send test" pressed against a receiver the test runs (the signed notice
received; a refusal's reason shown); the SNMP engine ID and HERON-MIB for managers; SNMP v3
and mail channels with their own fields (a stored key kept, or cleared); a viewer offered no
control; both languages on every tab; phone width.
"""

import hashlib
import hmac
import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import test_ui
from browsing import assert_translated, log_in, settle, shot
from playwright.sync_api import BrowserContext, Page, Request, expect
from support import Api, wait_for
from test_ui_groups_storage import confirm, in_russian
from test_ui_network import fits_375

pytestmark = pytest.mark.integration

# One browser page for the module, as test_ui has it: logged in by the first test.
page = test_ui.page

RULE = "all-up"
FIRES = 120_000  # ms: a rule with for_seconds 0 fires on a node's next round (10 s), under load
SECRET = "webhook-signing-key"


def sent_to(method: str, path: str) -> Callable[[Request], bool]:
    return lambda r: r.method == method and r.url.endswith(f"/api/v1{path}")


def firing(api: Api) -> list[dict[str, Any]]:
    return [a for a in api.ok("GET", "/alerts?state=firing") if a["rule"] == RULE]


class Receiver:
    """A webhook receiver on this host: every POST's headers and body, kept in order."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.refuse = False  # answer 503, as a receiver that is down for maintenance
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(503 if outer.refuse else 204)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def open_tab(page: Page, tab: str) -> None:
    page.click("[data-testid=nav-alerts]")
    expect(page).to_have_url(re.compile(r"/alerts"))
    page.click(f"[data-testid=tab-{tab}]")
    expect(page).to_have_url(re.compile(rf"tab={tab}"))
    settle(page)


def test_log_in(page: Page, ui: str, admin_password: str) -> None:
    log_in(page, ui, admin_password)


def test_create_a_rule_with_the_editor(page: Page, api: Api, screenshots: Path) -> None:
    open_tab(page, "rules")
    # The built-in rules are listed, marked as such.
    expect(
        page.locator("tr[data-rule=pool-nearly-full] [data-testid=rule-built-in]")
    ).to_be_visible()
    page.click("[data-testid=rule-new]")
    form = page.locator("[data-testid=rule-form]")
    form.locator("[data-testid=rule-name]").fill(RULE)
    form.locator("[data-testid=rule-metric-search]").fill("configdb_up")
    metric = form.locator("[data-testid=rule-metric]")
    expect(metric.locator("option")).to_have_count(1)
    metric.select_option("heron_configdb_up")
    expect(form.locator("[data-testid=rule-metric-help]")).to_contain_text("ConfigDB")
    form.locator("select[name='rule.op']").select_option(">=")
    form.locator("input[name='rule.value']").fill("1")
    form.locator("select[name='rule.severity']").select_option("critical")
    form.locator("input[name='rule.summary']").fill("the ConfigDB answers {node}")
    # A day at most: the API's reason shows next to the input.
    form.locator("input[name='rule.for_seconds']").fill("100000")
    form.locator("[data-testid=rule-submit]").click()
    expect(
        form.locator("[data-field='rule.for_seconds'] [data-testid=field-error]")
    ).to_be_visible()
    shot(page, screenshots, "alerts-rule-refused")
    form.locator("input[name='rule.for_seconds']").fill("0")
    with page.expect_request(sent_to("PUT", f"/alerts/rules/{RULE}")) as sent:
        form.locator("[data-testid=rule-submit]").click()
    expect(form).to_have_count(0)
    assert sent.value.post_data_json == {
        "name": RULE,
        "kind": "threshold",
        "metric": "heron_configdb_up",
        "labels": {},
        "op": ">=",
        "value": 1,
        "for_seconds": 0,
        "severity": "critical",
        "summary": "the ConfigDB answers {node}",
        "enabled": True,
    }
    rules = {r["name"]: r for r in api.ok("GET", "/alerts/rules")}
    assert rules[RULE]["metric"] == "heron_configdb_up"
    assert (rules[RULE]["op"], rules[RULE]["value"], rules[RULE]["for_seconds"]) == (">=", 1, 0)
    assert rules[RULE]["severity"] == "critical" and not rules[RULE]["built_in"]
    expect(page.locator(f"tr[data-rule={RULE}]")).to_contain_text("heron_configdb_up")


def test_what_another_client_changes_shows_without_a_reload(page: Page, api: Api) -> None:
    # The page stays the same document throughout: a reload would lose this mark.
    page.evaluate("window.__heronSameDocument = true")
    # Another client (here the API, with a token of its own) makes a rule while the Rules tab
    # is open. Off, so that it fires nothing the later tests count.
    other = {"name": "elsewhere", "metric": "heron_configdb_up", "op": "<", "value": 1}
    api.ok("PUT", "/alerts/rules/elsewhere", json={**other, "enabled": False})
    row = page.locator("tr[data-rule=elsewhere]")
    expect(row).to_have_attribute("data-enabled", "false")
    api.ok(
        "PUT",
        "/alerts/rules/elsewhere",
        json={**other, "enabled": False, "summary": "made elsewhere"},
    )
    expect(row).to_contain_text("made elsewhere")
    api.ok("DELETE", "/alerts/rules/elsewhere")
    expect(row).to_have_count(0)

    page.click("[data-testid=tab-silences]")
    expect(page.locator("[data-testid=silences-empty]")).to_be_visible()
    made = api.ok(
        "POST", "/alerts/silences", json={"matchers": {"node": "nowhere"}, "duration": 3600}
    )
    silence = page.locator(f"tr[data-silence='{made['id']}']")
    expect(silence).to_contain_text("node=nowhere")
    api.ok("DELETE", f"/alerts/silences/{made['id']}")
    expect(silence).to_have_count(0)

    page.click("[data-testid=tab-channels]")
    expect(page.locator("[data-testid=channels-empty]")).to_be_visible()
    hook = {"kind": "webhook", "url": "http://127.0.0.1:9/elsewhere"}
    api.ok("PUT", "/alerts/channels/elsewhere", json={"name": "elsewhere", "settings": hook})
    item = page.locator("[data-channel=elsewhere]")
    expect(item).to_contain_text("http://127.0.0.1:9/elsewhere")
    api.ok("DELETE", "/alerts/channels/elsewhere")
    expect(item).to_have_count(0)
    expect(page.locator("[data-testid=channels-empty]")).to_be_visible()
    assert page.evaluate("window.__heronSameDocument") is True


def test_the_alert_fires_and_is_counted_on_every_page(
    page: Page, api: Api, screenshots: Path
) -> None:
    # Every node of the three reads the ConfigDB: each fires its own alert.
    def three() -> list[dict[str, Any]] | None:
        found = firing(api)
        return found if len(found) == 3 else None

    alerts = wait_for(three, FIRES / 1000, "an alert of the rule on every node", interval=1)
    assert {a["labels"]["node"] for a in alerts} == {"node1", "node2", "node3"}
    # The top bar and the menu count them, on any page, as the live stream tells of them.
    page.click("[data-testid=nav-nodes]")
    bell = page.locator("[data-testid=alerts-bell]")
    expect(bell).to_have_attribute("data-count", "3")
    expect(page.locator("[data-testid=nav-alerts-count]")).to_have_text("3")
    open_tab(page, "alerts")
    rows = page.locator(f"tr[data-rule={RULE}][data-state=firing]")
    expect(rows).to_have_count(3)
    row = page.locator(f"tr[data-alert='{alerts[0]['id']}']")
    expect(row.locator("[data-testid=alert-severity]")).to_have_attribute(
        "data-severity", "critical"
    )
    expect(row.locator("[data-testid=alert-summary]")).to_contain_text("the ConfigDB answers")
    expect(row.locator("[data-testid=alert-labels]")).to_contain_text(
        f"node={alerts[0]['labels']['node']}"
    )
    shot(page, screenshots, "alerts-firing")


def test_acknowledge_an_alert(page: Page, api: Api) -> None:
    alert = firing(api)[0]
    row = page.locator(f"tr[data-alert='{alert['id']}']")
    with page.expect_request(sent_to("POST", f"/alerts/{alert['id']}/acknowledge")):
        row.locator("[data-testid=alert-acknowledge]").click()
    expect(row.locator("[data-testid=alert-acknowledged]")).to_contain_text("admin")
    expect(row.locator("[data-testid=alert-acknowledge]")).to_have_count(0)
    found = next(a for a in api.ok("GET", "/alerts") if a["id"] == alert["id"])
    assert found["acknowledged_by"] == "admin" and found["acknowledged_at"]
    # Two left that nobody acknowledged.
    expect(page.locator("[data-testid=alerts-bell]")).to_have_attribute("data-count", "2")


def test_silence_an_alert_from_its_row_then_end_it(page: Page, api: Api, screenshots: Path) -> None:
    alert = next(a for a in firing(api) if not a["acknowledged_by"])
    node = alert["labels"]["node"]
    row = page.locator(f"tr[data-alert='{alert['id']}']")
    row.locator("[data-testid=alert-silence]").click()
    form = page.locator("[data-testid=silence-form]")
    # Filled in from the alert: its rule and its labels.
    expect(form.locator("[data-testid=silence-rule]")).to_have_value(RULE)
    expect(form.locator("[data-testid=silence-matchers]")).to_have_value(f"node={node}")
    form.locator("[data-testid=silence-duration]").select_option("14400")
    form.locator("[data-testid=silence-comment]").fill("replacing its disk")
    shot(page, screenshots, "alerts-silence-form")
    with page.expect_request(sent_to("POST", "/alerts/silences")) as sent:
        form.locator("[data-testid=silence-submit]").click()
    expect(form).to_have_count(0)
    assert sent.value.post_data_json == {
        "rule": RULE,
        "matchers": {"node": node},
        "duration": 14400,
        "comment": "replacing its disk",
    }
    (silence,) = api.ok("GET", "/alerts/silences")
    assert (silence["rule"], silence["matchers"], silence["created_by"]) == (
        RULE,
        {"node": node},
        "admin",
    )
    # The leader marks the alert silenced; the row says so.
    expect(row.locator("[data-testid=alert-silenced]")).to_be_visible(timeout=FIRES)
    assert next(a for a in firing(api) if a["id"] == alert["id"])["silenced_by"] == silence["id"]

    page.click("[data-testid=tab-silences]")
    silenced = page.locator(f"tr[data-silence='{silence['id']}']")
    expect(silenced).to_contain_text("replacing its disk")
    expect(silenced).to_contain_text(f"node={node}")
    with page.expect_request(sent_to("DELETE", f"/alerts/silences/{silence['id']}")):
        silenced.locator("[data-testid=silence-end]").click()
        confirm(page)
    expect(silenced).to_have_count(0)
    assert api.ok("GET", "/alerts/silences") == []


def test_change_a_built_in_rule_and_reset_it(page: Page, api: Api) -> None:
    open_tab(page, "rules")
    row = page.locator("tr[data-rule=pool-nearly-full]")
    expect(row.locator("[data-testid=rule-reset]")).to_have_count(0)  # unchanged
    row.locator("[data-testid=rule-edit]").click()
    form = page.locator("[data-testid=rule-form]")
    expect(form.locator("[data-testid=rule-name]")).to_have_value("pool-nearly-full")
    expect(form.locator("[data-testid=rule-metric]")).to_have_value("heron_pool_used_ratio")
    expect(form.locator("input[name='rule.value']")).to_have_value("0.9")
    form.locator("input[name='rule.value']").fill("0.8")
    form.locator("[data-testid=rule-submit]").click()
    expect(form).to_have_count(0)
    expect(row.locator("[data-testid=rule-changed]")).to_be_visible()
    changed = next(r for r in api.ok("GET", "/alerts/rules") if r["name"] == "pool-nearly-full")
    assert (changed["value"], changed["changed"]) == (0.8, True)

    with page.expect_request(sent_to("DELETE", "/alerts/rules/pool-nearly-full")):
        row.locator("[data-testid=rule-reset]").click()
        confirm(page, "pool-nearly-full")
    expect(row.locator("[data-testid=rule-changed]")).to_have_count(0)
    back = next(r for r in api.ok("GET", "/alerts/rules") if r["name"] == "pool-nearly-full")
    assert (back["value"], back["changed"]) == (0.9, False)


def test_webhook_channel_and_send_test(
    page: Page, api: Api, receiver: Receiver, screenshots: Path
) -> None:
    open_tab(page, "channels")
    expect(page.locator("[data-testid=channels-empty]")).to_be_visible()
    page.click("[data-testid=channel-new]")
    form = page.locator("[data-testid=channel-form]")
    form.locator("[data-testid=channel-name]").fill("hook")
    form.locator("[data-testid=channel-kind]").select_option("webhook")
    # Not a URL: the API's reason next to the input.
    form.locator("input[name='channel.settings.url']").fill("ftp://x")
    form.locator("[data-testid=channel-submit]").click()
    expect(
        form.locator("[data-field='channel.settings.url'] [data-testid=field-error]")
    ).to_be_visible()
    form.locator("input[name='channel.settings.url']").fill(receiver.url)
    form.locator("[data-testid=channel-secret-secret]").fill(SECRET)
    form.locator("select[name='channel.min_severity']").select_option("critical")
    with page.expect_request(sent_to("PUT", "/alerts/channels/hook")) as sent:
        form.locator("[data-testid=channel-submit]").click()
    expect(form).to_have_count(0)
    assert sent.value.post_data_json["settings"] == {
        "kind": "webhook",
        "url": receiver.url,
        "secret": SECRET,
    }
    (channel,) = api.ok("GET", "/alerts/channels")
    assert channel["settings"] == {"kind": "webhook", "url": receiver.url, "secret": "set"}
    assert channel["min_severity"] == "critical"

    # Edited again: the key shows as set, and saving without typing it keeps it (null).
    item = page.locator("[data-channel=hook]")
    item.locator("[data-testid=channel-edit]").click()
    secret = form.locator("[data-testid=channel-secret-secret]")
    expect(secret).to_have_attribute("type", "password")
    expect(secret).to_have_attribute("placeholder", re.compile("set"))
    expect(secret).to_have_value("")
    with page.expect_request(sent_to("PUT", "/alerts/channels/hook")) as sent:
        form.locator("[data-testid=channel-submit]").click()
    expect(form).to_have_count(0)
    assert sent.value.post_data_json["settings"]["secret"] is None
    assert api.ok("GET", "/alerts/channels")[0]["settings"]["secret"] == "set"

    tested_path = "/api/v1/alerts/channels/hook/test"
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith(tested_path)
    ) as answer:
        item.locator("[data-testid=channel-test]").click()
    result = item.locator("[data-testid=channel-test-result]")
    assert answer.value.status == 200, answer.value.status
    expect(result).to_have_attribute("data-ok", "true")
    expect(result).to_contain_text("Test notice sent")

    def tested() -> tuple[dict[str, str], bytes] | None:
        return next((r for r in receiver.received if json.loads(r[1]).get("test")), None)

    # The test notice arrived, signed with the key the form set (the webhook's contract:
    # HMAC-SHA256 of "<X-Heron-Timestamp>.<body>").
    headers, body = wait_for(tested, 30, "the test notice at the receiver")
    signed = headers["x-heron-timestamp"].encode() + b"." + body
    mac = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert headers.get("x-heron-signature") == f"sha256={mac}", headers

    # A channel that refuses: the server's reason is what the page shows.
    receiver.refuse = True
    try:
        with page.expect_response(
            lambda r: r.request.method == "POST" and r.url.endswith(tested_path)
        ) as answer:
            item.locator("[data-testid=channel-test]").click()
        assert answer.value.status == 502
        reason = answer.value.json()["message"]
        assert "503" in reason, reason
        expect(result).to_have_attribute("data-ok", "false")
        expect(result).to_contain_text(reason)
    finally:
        receiver.refuse = False
    shot(page, screenshots, "alerts-channel-tested")


def test_snmp_and_mail_channels_with_their_own_fields(page: Page, api: Api) -> None:
    # What an SNMP manager needs: the cluster's engine ID, and HERON-MIB to load.
    identity = api.ok("GET", "/alerts/snmp")
    expect(page.locator("[data-testid=snmp-engine-id]")).to_have_text(identity["engine_id"])
    with page.expect_download() as download:
        page.click("[data-testid=snmp-mib]")
    assert "HERON-MIB DEFINITIONS" in Path(download.value.path()).read_text()
    page.click("[data-testid=channel-new]")
    form = page.locator("[data-testid=channel-form]")
    form.locator("[data-testid=channel-name]").fill("traps")
    form.locator("[data-testid=channel-kind]").select_option("snmp")
    form.locator("input[name='channel.settings.host']").fill("127.0.0.1")
    # v2c has a community; v3 a user and keys instead.
    expect(form.locator("[data-testid=channel-secret-community]")).to_be_visible()
    expect(form.locator("input[name='channel.settings.user']")).to_have_count(0)
    form.locator("select[name='channel.settings.version']").select_option("v3")
    expect(form.locator("[data-testid=channel-secret-community]")).to_have_count(0)
    form.locator("input[name='channel.settings.user']").fill("heron")
    form.locator("select[name='channel.settings.auth_protocol']").select_option("SHA")
    form.locator("[data-testid=channel-secret-auth_key]").fill("short")
    form.locator("[data-testid=channel-submit]").click()
    refused = form.locator("[data-field='channel.settings.auth_key'] [data-testid=field-error]")
    expect(refused).to_contain_text("8 characters")
    form.locator("[data-testid=channel-secret-auth_key]").fill("auth-key-123")
    form.locator("select[name='channel.settings.priv_protocol']").select_option("AES")
    form.locator("[data-testid=channel-secret-priv_key]").fill("priv-key-123")
    form.locator("[data-testid=channel-submit]").click()
    expect(form).to_have_count(0)
    shown = {c["name"]: c for c in api.ok("GET", "/alerts/channels")}["traps"]["settings"]
    assert (shown["version"], shown["user"], shown["auth_protocol"]) == ("v3", "heron", "SHA")
    assert (shown["auth_key"], shown["priv_key"], shown["community"]) == ("set", "set", None)

    # No more privacy: the protocol unset and the stored key cleared ("" in the request).
    page.locator("[data-channel=traps] [data-testid=channel-edit]").click()
    form.locator("select[name='channel.settings.priv_protocol']").select_option("")
    form.locator("[data-testid=channel-clear-priv_key]").check()
    expect(form.locator("[data-testid=channel-secret-priv_key]")).to_be_disabled()
    with page.expect_request(sent_to("PUT", "/alerts/channels/traps")) as sent:
        form.locator("[data-testid=channel-submit]").click()
    expect(form).to_have_count(0)
    settings = sent.value.post_data_json["settings"]
    assert (settings["priv_key"], settings["auth_key"], settings["priv_protocol"]) == (
        "",
        None,
        None,
    )
    shown = {c["name"]: c for c in api.ok("GET", "/alerts/channels")}["traps"]["settings"]
    assert (shown["auth_key"], shown["priv_key"]) == ("set", None)

    page.click("[data-testid=channel-new]")
    form.locator("[data-testid=channel-name]").fill("mail")
    form.locator("[data-testid=channel-kind]").select_option("smtp")
    form.locator("input[name='channel.settings.host']").fill("mail.example.org")
    form.locator("select[name='channel.settings.security']").select_option("tls")
    form.locator("input[name='channel.settings.port']").fill("465")
    form.locator("input[name='channel.settings.sender']").fill("heron@example.org")
    form.locator("input[name='channel.settings.recipients']").fill(
        "ops@example.org, me@example.org"
    )
    form.locator("input[name='channel.settings.username']").fill("heron")
    form.locator("[data-testid=channel-secret-password]").fill("mail-password")
    form.locator("[data-testid=channel-submit]").click()
    expect(form).to_have_count(0)
    shown = {c["name"]: c for c in api.ok("GET", "/alerts/channels")}["mail"]["settings"]
    assert shown["recipients"] == ["ops@example.org", "me@example.org"]
    assert (shown["port"], shown["security"], shown["password"]) == (465, "tls", "set")
    expect(page.locator("[data-channel=mail]")).to_contain_text("ops@example.org")


def test_a_viewer_sees_alerts_but_changes_nothing(
    desktop: BrowserContext, ui: str, api: Api
) -> None:
    api.ok("POST", "/users", json={"name": "watcher", "role": "viewer", "password": "watch-123"})
    viewer = desktop.new_page()  # a tab of its own: a session of its own
    try:
        log_in(viewer, ui, "watch-123", user="watcher")
        expect(viewer.locator("[data-testid=alerts-bell]")).to_be_visible()
        viewer.click("[data-testid=nav-alerts]")
        expect(viewer.locator(f"tr[data-rule={RULE}]").first).to_be_visible()
        expect(viewer.locator("[data-testid=tab-channels]")).to_have_count(0)
        for tab in ("alerts", "silences", "rules"):
            viewer.goto(f"{ui}/alerts?tab={tab}")
            settle(viewer)
            expect(viewer.locator("[data-op]:not([data-testid=logout])")).to_have_count(0)
    finally:
        viewer.close()


def dismiss_notices(page: Page) -> None:
    """Notices said in English (they fade after a while) are not the page's Russian."""
    notices = page.locator(".notice button")
    while notices.count():
        notices.first.click()
    expect(page.locator(".notice")).to_have_count(0)


def test_both_languages_on_every_tab(page: Page) -> None:
    dismiss_notices(page)
    for tab in ("alerts", "silences", "rules", "channels"):
        open_tab(page, tab)
        in_russian(page, f"the alerts page's {tab} tab")
    open_tab(page, "rules")
    page.locator(f"tr[data-rule={RULE}] [data-testid=rule-edit]").click()
    in_russian(page, "the rule editor")
    page.click("[data-testid=rule-cancel]")
    open_tab(page, "channels")
    page.locator("[data-channel=hook] [data-testid=channel-edit]").click()
    page.locator("[data-testid=channel-kind]").select_option("snmp")
    page.locator("select[name='channel.settings.version']").select_option("v3")
    in_russian(page, "the channel editor (SNMP v3)")
    page.click("[data-testid=channel-cancel]")
    page.select_option("[data-testid=language]", "ru")
    try:
        open_tab(page, "alerts")
        expect(page.locator("[data-testid=nav-alerts]")).to_contain_text("Оповещения")
        expect(page.locator("[data-testid=tab-silences]")).to_have_text("Заглушки")
        expect(page.locator("[data-testid=tab-channels]")).to_have_text("Каналы уведомлений")
        expect(page.locator("[data-testid=alert-silence]").first).to_have_text("Заглушить")
        expect(page.locator("[data-testid=alert-acknowledge]").first).to_have_text("Подтвердить")
    finally:
        page.select_option("[data-testid=language]", "en")


def test_at_phone_width_in_russian(
    phone: Page, ui: str, admin_password: str, screenshots: Path
) -> None:
    log_in(phone, ui, admin_password)
    expect(phone.locator("[data-testid=alerts-bell]")).to_be_visible()
    for tab in ("alerts", "silences", "rules", "channels"):
        phone.goto(f"{ui}/alerts?tab={tab}")
        settle(phone)
        fits_375(phone, f"the alerts page's {tab} tab")
        assert_translated(phone, "ru", f"the alerts page's {tab} tab at 375 px")
        shot(phone, screenshots, f"phone-alerts-{tab}")
    phone.goto(f"{ui}/alerts?tab=rules")
    phone.locator(f"tr[data-rule={RULE}] [data-testid=rule-edit]").click()
    expect(phone.locator("[data-testid=rule-form]")).to_be_visible()
    fits_375(phone, "the rule editor")
    assert_translated(phone, "ru", "the rule editor at 375 px")


def test_delete_the_rule_and_the_channel(page: Page, api: Api) -> None:
    open_tab(page, "rules")
    with page.expect_request(sent_to("DELETE", f"/alerts/rules/{RULE}")):
        page.locator(f"tr[data-rule={RULE}] [data-testid=rule-delete]").click()
        confirm(page, RULE)
    expect(page.locator(f"tr[data-rule={RULE}]")).to_have_count(0)
    assert RULE not in {r["name"] for r in api.ok("GET", "/alerts/rules")}
    open_tab(page, "channels")
    for name in ("hook", "traps", "mail"):
        with page.expect_request(sent_to("DELETE", f"/alerts/channels/{name}")):
            page.locator(f"[data-channel={name}] [data-testid=channel-delete]").click()
            confirm(page, name)
        expect(page.locator(f"[data-channel={name}]")).to_have_count(0)
    expect(page.locator("[data-testid=channels-empty]")).to_be_visible()
    assert api.ok("GET", "/alerts/channels") == []
