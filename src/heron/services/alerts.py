"""Alerts as the administrator handles them: acknowledge, silence, change the rules, set up
where notices go (with the secrets kept out of every answer)."""

from __future__ import annotations

import secrets
import time
from typing import Any

from pydantic import BaseModel, Field

from heron.configdb import ConfigDB, Entry, cas, keys
from heron.models.alerts import SECRET_FIELDS, Alert, AlertRule, Channel, Silence
from heron.models.common import Name
from heron.monitor.catalog import METRICS
from heron.monitor.rules import BUILT_IN, STATE_RULES, effective
from heron.services.errors import Conflict, Invalid, NotFound

BUILT_IN_NAMES = {r.name for r in [*BUILT_IN, *STATE_RULES]}
STATE_METRICS = {r.metric for r in STATE_RULES}


class SilenceCreate(BaseModel):
    rule: Name | None = Field(default=None, description="only this rule's alerts")
    matchers: dict[str, str] = Field(
        default_factory=dict, description="alerts whose labels include these (e.g. node=n2)"
    )
    duration: float = Field(gt=0, le=365 * 86400, description="seconds from now")
    comment: str = Field(default="", max_length=500)


class RuleView(AlertRule):
    built_in: bool = False
    changed: bool = Field(default=False, description="a built-in rule the administrator changed")


async def list_alerts(db: ConfigDB, state: str | None = None) -> list[Alert]:
    alerts = [e.value for e in await db.list(Alert, keys.ALERTS)]
    if state is not None:
        alerts = [a for a in alerts if a.state == state]
    return sorted(alerts, key=lambda a: (a.state != "firing", -a.severity.rank, -a.started_at))


async def find_alert(db: ConfigDB, alert_id: str) -> Entry[Alert]:
    entry = await db.get(Alert, keys.alert(alert_id)) if "/" not in alert_id else None
    if entry is None:
        raise NotFound(f"no alert {alert_id!r}")
    return entry


async def acknowledge(db: ConfigDB, alert_id: str, user: str) -> Alert:
    await find_alert(db, alert_id)

    def ack(alert: Alert) -> Alert:
        return alert.model_copy(update={"acknowledged_by": user, "acknowledged_at": time.time()})

    return (await db.update(Alert, keys.alert(alert_id), ack)).value


# -- silences ---------------------------------------------------------------------------------


async def list_silences(db: ConfigDB) -> list[Silence]:
    return sorted((e.value for e in await db.list(Silence, keys.SILENCES)), key=lambda s: -s.until)


async def silence(db: ConfigDB, body: SilenceCreate, user: str) -> Silence:
    if not body.matchers and body.rule is None:
        raise Invalid(
            "body.matchers", "name a rule or some labels: a silence of everything hides every alert"
        )
    now = time.time()
    made = Silence(
        id=secrets.token_hex(8),
        rule=body.rule,
        matchers=body.matchers,
        until=now + body.duration,
        comment=body.comment,
        created_by=user,
        created_at=now,
    )
    await db.create(keys.silence(made.id), made)
    return made


async def end_silence(db: ConfigDB, silence_id: str) -> None:
    if "/" in silence_id or await db.get(Silence, keys.silence(silence_id)) is None:
        raise NotFound(f"no silence {silence_id!r}")
    await db.delete(keys.silence(silence_id))


# -- rules ------------------------------------------------------------------------------------


async def list_rules(db: ConfigDB) -> list[RuleView]:
    mine = [e.value for e in await db.list(AlertRule, keys.ALERT_RULES)]
    stored = {r.name for r in mine}
    rules = effective(mine)
    return [
        RuleView(
            **r.model_dump(),
            built_in=r.name in BUILT_IN_NAMES,
            changed=r.name in stored & BUILT_IN_NAMES,
        )
        for r in rules
    ]


def check_rule(rule: AlertRule) -> None:
    builtin = next((r for r in [*BUILT_IN, *STATE_RULES] if r.name == rule.name), None)
    if builtin is not None and rule.metric != builtin.metric:
        raise Invalid("body.metric", f"the built-in rule {rule.name} looks at {builtin.metric}")
    if rule.metric not in METRICS and rule.metric not in STATE_METRICS:
        raise Invalid("body.metric", f"no metric {rule.metric!r} (GET /metrics/catalog lists them)")
    if rule.kind == "absence" and rule.for_seconds < 10:
        raise Invalid("body.for_seconds", "an absence is noticed after a round at least: 10 s")


async def put_rule(db: ConfigDB, rule: AlertRule) -> AlertRule:
    check_rule(rule)
    await db.put(keys.alert_rule(rule.name), rule)
    return rule


async def delete_rule(db: ConfigDB, name: str) -> None:
    """A rule of the administrator's is deleted; a changed built-in one goes back to its
    defaults; an unchanged built-in one cannot go (turn it off instead)."""
    if "/" in name or await db.get(AlertRule, keys.alert_rule(name)) is None:
        if name in BUILT_IN_NAMES:
            raise Conflict(f"{name} is a built-in rule: turn it off (enabled: false) instead")
        raise NotFound(f"no rule {name!r}")
    await db.delete(keys.alert_rule(name))


# -- channels ---------------------------------------------------------------------------------


def shown(channel: Channel) -> dict[str, Any]:
    """The channel as the API shows it: each secret replaced by whether one is set."""
    data = channel.model_dump(mode="json")
    settings = data["settings"]
    for name in SECRET_FIELDS:
        if name in settings:
            settings[name] = "set" if settings[name] else None
    return data


async def list_channels(db: ConfigDB) -> list[Channel]:
    return [e.value for e in await db.list(Channel, keys.CHANNELS)]


async def find_channel(db: ConfigDB, name: str) -> Channel:
    entry = await db.get(Channel, keys.channel(name)) if "/" not in name else None
    if entry is None:
        raise NotFound(f"no channel {name!r}")
    return entry.value


async def put_channel(db: ConfigDB, channel: Channel) -> Channel:
    """Create or replace a channel. A secret left out (null) keeps the one stored, so the
    administrator need not type a password again to change a port; "" clears it."""

    async def attempt() -> Channel:
        entry = await db.get(Channel, keys.channel(channel.name))
        settings = channel.settings.model_copy()
        if entry is not None and entry.value.settings.kind == settings.kind:
            for name in SECRET_FIELDS:
                if hasattr(settings, name) and getattr(settings, name) is None:
                    setattr(settings, name, getattr(entry.value.settings, name))
        for name in SECRET_FIELDS:
            if getattr(settings, name, None) == "":
                setattr(settings, name, None)
        _check_channel(settings)
        stored = channel.model_copy(update={"settings": settings})
        await db.put(keys.channel(channel.name), stored, revision=entry.revision if entry else 0)
        return stored

    return await cas.retry(attempt, f"channel {channel.name}")


def _check_channel(settings: Any) -> None:
    if settings.kind == "snmp":
        if settings.version == "v2c" and not settings.community:
            raise Invalid("body.settings.community", "SNMP v2c needs a community")
        if settings.version == "v3" and not settings.user:
            raise Invalid("body.settings.user", "SNMP v3 needs a user")
        if settings.version == "v3":
            # A key turns its part on (SHA and AES when no protocol is named).
            for protocol, key in (("auth_protocol", "auth_key"), ("priv_protocol", "priv_key")):
                if getattr(settings, protocol) and not getattr(settings, key):
                    raise Invalid(f"body.settings.{key}", f"{protocol} needs {key}")
                if getattr(settings, key) and len(getattr(settings, key)) < 8:
                    raise Invalid(f"body.settings.{key}", "at least 8 characters (RFC 3414)")
            if settings.priv_key and not settings.auth_key:
                raise Invalid("body.settings.auth_key", "privacy needs authentication too")
    if settings.kind == "smtp" and settings.password and not settings.username:
        raise Invalid("body.settings.username", "a password needs a user name")


async def delete_channel(db: ConfigDB, name: str) -> None:
    await find_channel(db, name)
    await db.delete(keys.channel(name))


def test_alert(channel: Channel, user: str) -> Alert:
    """What a channel's "send test" sends: an alert that is plainly a test."""
    now = time.time()
    return Alert(
        id="test-" + secrets.token_hex(4),
        rule="test",
        severity=channel.min_severity,
        labels={"channel": channel.name, "by": user},
        summary=f"a test notice to {channel.name}, sent by {user}: nothing is wrong",
        started_at=now,
    )
