"""heron alert: alerts, silences, rules and the channels notices go to."""

import datetime
from typing import Annotated, Any, get_args

import typer

from heron.cli import parse
from heron.cli.client import Client, fail
from heron.cli.options import Json
from heron.cli.output import emit
from heron.models.alerts import Alert, AlertRule, Severity, SmtpSettings, SnmpSettings

app = typer.Typer(no_args_is_help=True, help="Alerts, silences, rules and notification channels.")
silence_app = typer.Typer(no_args_is_help=True, help="Silences: alerts that send no notices.")
rule_app = typer.Typer(no_args_is_help=True, help="Alert rules (built-in ones too).")
channel_app = typer.Typer(no_args_is_help=True, help="Where notices go: mail, SNMP, webhooks.")
app.add_typer(silence_app, name="silence")
app.add_typer(rule_app, name="rule")
app.add_typer(channel_app, name="channel")

Labels = Annotated[
    list[str] | None,
    typer.Option("--match", "-m", parser=parse.label, help="NAME=VALUE, repeatable"),
]
Length = Annotated[float, typer.Option("--for", parser=parse.duration, help="30m, 2h, 1d")]
SEVERITY = parse.Choice(s.value for s in Severity)
MinSeverity = Annotated[
    str,
    typer.Option(
        parser=SEVERITY, metavar="SEVERITY", help="send alerts of this severity and worse"
    ),
]
Resolved = Annotated[bool, typer.Option("--resolved/--no-resolved", help="also say when resolved")]


def _choice(model: Any, field: str) -> parse.Choice:
    """The words a model's Literal field takes (Optional or not)."""
    annotation = model.model_fields[field].annotation
    literal = next((a for a in get_args(annotation) if get_args(a)), annotation)
    return parse.Choice(get_args(literal))


def _when(t: float | None) -> str:
    return "-" if t is None else datetime.datetime.fromtimestamp(t).isoformat(timespec="seconds")


def _labels(items: list[str] | None) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in items or [])


def _shown_labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _state(alert: dict[str, Any]) -> str:
    """`firing`, `resolved`, or with the reason when not its condition ended it:
    `resolved (object removed)`."""
    reason = alert.get("resolved_reason")
    return f"{alert['state']} ({reason})" if reason else str(alert["state"])


ALERT_COLUMNS = [
    ("id", lambda a: a["id"]),
    ("state", _state),
    ("severity", lambda a: a["severity"]),
    ("rule", lambda a: a["rule"]),
    ("summary", lambda a: a["summary"]),
    ("since", lambda a: _when(a["started_at"])),
    ("ack", lambda a: a.get("acknowledged_by") or ""),
    (
        "quiet",
        lambda a: (
            "silenced" if a.get("silenced_by") else "inhibited" if a.get("inhibited_by") else ""
        ),
    ),
]


@app.command("list")
def alert_list(
    state: Annotated[
        str | None,
        typer.Option(parser=_choice(Alert, "state"), metavar="STATE", help="firing or resolved"),
    ] = None,
    as_json: Json = False,
) -> None:
    params = {"state": state} if state else {}
    emit(Client().get("/alerts", params=params), as_json, ALERT_COLUMNS)


@app.command("ack")
def alert_ack(alert_id: str) -> None:
    """Say you are on it (the alert keeps firing until its condition ends)."""
    Client().post(f"/alerts/{alert_id}/acknowledge")


# -- silences ---------------------------------------------------------------------------------


@silence_app.command("list")
def silence_list(as_json: Json = False) -> None:
    emit(
        Client().get("/alerts/silences"),
        as_json,
        [
            ("id", lambda s: s["id"]),
            ("rule", lambda s: s.get("rule") or "*"),
            ("matchers", lambda s: _shown_labels(s["matchers"])),
            ("until", lambda s: _when(s["until"])),
            ("by", lambda s: s["created_by"]),
            ("comment", lambda s: s["comment"]),
        ],
    )


@silence_app.command("add")
def silence_add(
    length: Length,
    rule: Annotated[str | None, typer.Option(help="only this rule's alerts")] = None,
    match: Labels = None,
    comment: str = "",
) -> None:
    body = {"rule": rule, "matchers": _labels(match), "duration": length}
    made = Client().post("/alerts/silences", json={**body, "comment": comment})
    print(made["id"])


@silence_app.command("delete")
def silence_delete(silence_id: str) -> None:
    Client().request("DELETE", f"/alerts/silences/{silence_id}")


# -- rules ------------------------------------------------------------------------------------


@rule_app.command("list")
def rule_list(as_json: Json = False) -> None:
    emit(
        Client().get("/alerts/rules"),
        as_json,
        [
            ("name", lambda r: r["name"] + (" *" if r["changed"] else "")),
            ("kind", lambda r: r["kind"]),
            ("condition", lambda r: f"{r['metric']}{_selector(r)} {r['op']} {r['value']:g}"),
            ("for", lambda r: f"{r['for_seconds']:g}s"),
            ("severity", lambda r: r["severity"]),
            ("on", lambda r: "yes" if r["enabled"] else "no"),
            ("built-in", lambda r: "yes" if r["built_in"] else ""),
        ],
    )


def _selector(rule: dict[str, Any]) -> str:
    return f"{{{_shown_labels(rule['labels'])}}}" if rule["labels"] else ""


@rule_app.command("set")
def rule_set(
    name: str,
    metric: Annotated[str | None, typer.Option(help="a metric (heron metrics catalog)")] = None,
    kind: Annotated[
        str | None, typer.Option(parser=_choice(AlertRule, "kind"), metavar="KIND")
    ] = None,
    op: Annotated[str | None, typer.Option(parser=_choice(AlertRule, "op"), metavar="OP")] = None,
    value: float | None = None,
    length: Annotated[
        float | None, typer.Option("--for", parser=parse.duration, help="how long it must hold")
    ] = None,
    severity: Annotated[str | None, typer.Option(parser=SEVERITY, metavar="SEVERITY")] = None,
    summary: str | None = None,
    match: Labels = None,
    enabled: Annotated[bool | None, typer.Option("--enable/--disable")] = None,
) -> None:
    """Create a rule, or change one (a built-in one too): what is not given stays."""
    client = Client()
    current = next((r for r in client.get("/alerts/rules") if r["name"] == name), None)
    rule: dict[str, Any] = {"name": name}
    if current is not None:
        rule |= {k: v for k, v in current.items() if k not in ("built_in", "changed")}
    given = {
        "metric": metric,
        "kind": kind,
        "op": op,
        "value": value,
        "for_seconds": length,
        "severity": severity,
        "summary": summary,
        "labels": _labels(match) if match else None,
        "enabled": enabled,
    }
    rule |= {k: v for k, v in given.items() if v is not None}
    if "metric" not in rule:
        fail(f"{name} is a new rule: give --metric")
    client.request("PUT", f"/alerts/rules/{name}", json=rule)


@rule_app.command("delete")
def rule_delete(name: str) -> None:
    """Delete a rule of yours, or put a changed built-in rule back as it was."""
    Client().request("DELETE", f"/alerts/rules/{name}")


# -- channels ---------------------------------------------------------------------------------


@channel_app.command("list")
def channel_list(as_json: Json = False) -> None:
    emit(
        Client().get("/alerts/channels"),
        as_json,
        [
            ("name", lambda c: c["name"]),
            ("kind", lambda c: c["settings"]["kind"]),
            ("to", lambda c: _target(c["settings"])),
            ("from severity", lambda c: c["min_severity"]),
            ("on", lambda c: "yes" if c["enabled"] else "no"),
        ],
    )


def _target(settings: dict[str, Any]) -> str:
    if settings["kind"] == "smtp":
        return ", ".join(settings["recipients"])
    if settings["kind"] == "snmp":
        return f"{settings['host']}:{settings['port']} ({settings['version']})"
    return str(settings["url"])


def _put(name: str, settings: dict[str, Any], min_severity: str, resolved: bool) -> None:
    body = {
        "name": name,
        "settings": {k: v for k, v in settings.items() if v is not None},
        "min_severity": min_severity,
        "send_resolved": resolved,
    }
    Client().request("PUT", f"/alerts/channels/{name}", json=body)


@channel_app.command("smtp")
def channel_smtp(
    name: str,
    host: Annotated[str, typer.Option()],
    sender: Annotated[str, typer.Option("--from")],
    to: Annotated[list[str], typer.Option(help="a recipient, repeatable")],
    port: int = 587,
    security: Annotated[
        str, typer.Option(parser=_choice(SmtpSettings, "security"), metavar="SECURITY")
    ] = "starttls",
    user: str | None = None,
    password: Annotated[
        str | None, typer.Option(prompt=False, hide_input=True, help="kept if not given")
    ] = None,
    min_severity: MinSeverity = "warning",
    resolved: Resolved = True,
) -> None:
    """Mail notices through an SMTP server."""
    settings = {"kind": "smtp", "host": host, "port": port, "security": security,
                "username": user, "password": password, "sender": sender,
                "recipients": to}  # fmt: skip
    _put(name, settings, min_severity, resolved)


@channel_app.command("snmp")
def channel_snmp(
    name: str,
    host: Annotated[str, typer.Option()],
    port: int = 162,
    version: Annotated[
        str, typer.Option(parser=_choice(SnmpSettings, "version"), metavar="VERSION")
    ] = "v2c",
    inform: Annotated[bool, typer.Option(help="informs (acknowledged) instead of traps")] = False,
    community: str | None = None,
    user: str | None = None,
    auth_protocol: Annotated[
        str | None,
        typer.Option(parser=_choice(SnmpSettings, "auth_protocol"), metavar="PROTOCOL"),
    ] = None,
    auth_key: str | None = None,
    priv_protocol: Annotated[
        str | None,
        typer.Option(parser=_choice(SnmpSettings, "priv_protocol"), metavar="PROTOCOL"),
    ] = None,
    priv_key: str | None = None,
    min_severity: MinSeverity = "warning",
    resolved: Resolved = True,
) -> None:
    """Send SNMP traps or informs (the MIB: heron alert mib)."""
    settings = {"kind": "snmp", "host": host, "port": port, "version": version,
                "inform": inform, "community": community, "user": user,
                "auth_protocol": auth_protocol, "auth_key": auth_key,
                "priv_protocol": priv_protocol, "priv_key": priv_key}  # fmt: skip
    _put(name, settings, min_severity, resolved)


@channel_app.command("webhook")
def channel_webhook(
    name: str,
    url: Annotated[str, typer.Option()],
    secret: Annotated[str | None, typer.Option(help="signs each body (kept if not given)")] = None,
    min_severity: MinSeverity = "warning",
    resolved: Resolved = True,
) -> None:
    """POST notices as JSON to a URL."""
    _put(name, {"kind": "webhook", "url": url, "secret": secret}, min_severity, resolved)


@channel_app.command("delete")
def channel_delete(name: str) -> None:
    Client().request("DELETE", f"/alerts/channels/{name}")


@channel_app.command("test")
def channel_test(name: str) -> None:
    """Send a test notice now; fails with the channel's answer if it refused."""
    Client().post(f"/alerts/channels/{name}/test")
    print(f"test notice sent to {name}")
