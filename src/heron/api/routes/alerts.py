"""Alerts, silences, rules and notification channels."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from heron.api import auth
from heron.api.auth import Principal
from heron.api.context import ApiContext
from heron.api.errors import BadGateway, Invalid
from heron.configdb import keys
from heron.models.alerts import Alert, AlertRule, Channel, Silence
from heron.models.common import Name
from heron.models.vm import VM
from heron.monitor.notify.notice import HERON_PEN, engine_id_hex
from heron.monitor.notify.snmp import mib_text
from heron.services import alerts as service
from heron.services.alerts import RuleView, SilenceCreate

router = APIRouter(tags=["alerts"])


def _ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


@router.get("/alerts")
async def list_alerts(
    request: Request,
    state: Literal["firing", "resolved"] | None = None,
    principal: Principal = Depends(auth.signed_in),
) -> list[Alert]:
    """Firing first, the most severe first. Without a cluster-wide viewer role, only the
    alerts of VMs the caller may see."""
    db = _ctx(request).db
    alerts = await service.list_alerts(db, state)
    groups = await auth.reachable_groups(db, principal)
    if groups is None:
        return alerts
    vms = {e.value.id: e.value for e in await db.list(VM, keys.VMS)}
    return [
        a
        for a in alerts
        if (vm := vms.get(a.labels.get("vm", ""))) is not None and vm.spec.group in groups
    ]


@router.post("/alerts/{alert_id}/acknowledge")
async def acknowledge(
    alert_id: str, request: Request, principal: Principal = Depends(auth.operator)
) -> Alert:
    """Say someone is on it: the alert keeps firing (and resolves by itself), with your name."""
    request.state.audit_target = alert_id
    return await service.acknowledge(_ctx(request).db, alert_id, principal.user)


@router.get("/alerts/silences")
async def list_silences(request: Request, _: Principal = Depends(auth.viewer)) -> list[Silence]:
    return await service.list_silences(_ctx(request).db)


@router.post("/alerts/silences", status_code=201)
async def create_silence(
    body: SilenceCreate, request: Request, principal: Principal = Depends(auth.operator)
) -> Silence:
    """Matching alerts send no notices until the silence ends (they are still listed)."""
    return await service.silence(_ctx(request).db, body, principal.user)


@router.delete("/alerts/silences/{silence_id}", status_code=204)
async def delete_silence(
    silence_id: str, request: Request, _: Principal = Depends(auth.operator)
) -> None:
    await service.end_silence(_ctx(request).db, silence_id)


@router.get("/alerts/rules")
async def list_rules(request: Request, _: Principal = Depends(auth.viewer)) -> list[RuleView]:
    """The built-in rules (as the administrator changed them) and the administrator's own."""
    return await service.list_rules(_ctx(request).db)


@router.put("/alerts/rules/{name}")
async def put_rule(
    name: Name, body: AlertRule, request: Request, _: Principal = Depends(auth.admin)
) -> AlertRule:
    """Create or replace a rule; a built-in rule's name changes that rule."""
    if body.name != name:
        raise Invalid("body.name", f"must be the path's name {name!r}")
    return await service.put_rule(_ctx(request).db, body)


@router.delete("/alerts/rules/{name}", status_code=204)
async def delete_rule(name: Name, request: Request, _: Principal = Depends(auth.admin)) -> None:
    await service.delete_rule(_ctx(request).db, name)


@router.get("/alerts/channels")
async def list_channels(
    request: Request, _: Principal = Depends(auth.admin)
) -> list[dict[str, Any]]:
    """Where notices go. Secrets show only as "set"."""
    return [service.shown(c) for c in await service.list_channels(_ctx(request).db)]


@router.put("/alerts/channels/{name}")
async def put_channel(
    name: Name, body: Channel, request: Request, _: Principal = Depends(auth.admin)
) -> dict[str, Any]:
    """Create or replace a channel; a secret left null keeps the stored one, "" clears it."""
    if body.name != name:
        raise Invalid("body.name", f"must be the path's name {name!r}")
    return service.shown(await service.put_channel(_ctx(request).db, body))


@router.delete("/alerts/channels/{name}", status_code=204)
async def delete_channel(name: Name, request: Request, _: Principal = Depends(auth.admin)) -> None:
    await service.delete_channel(_ctx(request).db, name)


@router.post("/alerts/channels/{name}/test", responses={502: {}})
async def test_channel(
    name: Name, request: Request, principal: Principal = Depends(auth.admin)
) -> dict[str, str]:
    """Send a test notice now; 502 with the reason when the channel refused it."""
    ctx = _ctx(request)
    channel = await service.find_channel(ctx.db, name)
    if ctx.deliver is None:
        raise BadGateway("this node sends no notices")
    try:
        await ctx.deliver(channel, [service.test_alert(channel, principal.user)])
    except Exception as exc:
        raise BadGateway(f"{name}: {str(exc) or repr(exc)}") from exc
    return {"sent": name}


class SnmpIdentity(BaseModel):
    engine_id: str = Field(description="the SNMPv3 engine ID of every trap and inform, hex")
    enterprise: int = Field(description="the enterprise number of HERON-MIB's OIDs")


@router.get("/alerts/snmp")
async def snmp_identity(request: Request, _: Principal = Depends(auth.admin)) -> SnmpIdentity:
    """What an SNMP manager must be told of the cluster: the engine ID its v3 user is set
    up for (the same from every node and every leader), and the MIB's enterprise number."""
    context = _ctx(request).notify
    if context is None:
        raise BadGateway("this node sends no notices")
    return SnmpIdentity(engine_id=engine_id_hex(context.cluster_id), enterprise=HERON_PEN)


@router.get("/alerts/mib", response_class=PlainTextResponse)
async def mib(_: Principal = Depends(auth.viewer)) -> str:
    """HERON-MIB, the notifications Heron sends, for an SNMP manager to load."""
    return mib_text()
