"""Monica over HTTP: the history of any series, gathered from the nodes that hold it; the
catalog of metrics; and `/metrics`, this node's samples for Prometheus (its scrape config
names `metrics_path: /api/v1/metrics` and a bearer token)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import httpx
from fastapi import APIRouter, Depends, Query, Request, Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from heron.api import auth
from heron.api.auth import Principal
from heron.api.context import ApiContext
from heron.api.errors import Conflict, Forbidden, Invalid, NotFound
from heron.api.fanout import ask_others
from heron.configdb import keys
from heron.models.auth import Role
from heron.models.node import Node
from heron.models.storage import ArdfsMember, Pool
from heron.monitor import forecast as fc
from heron.monitor import query
from heron.monitor.catalog import METRICS
from heron.monitor.export import exposition
from heron.monitor.live import POINTS, NotHere, TooMany, as_series, parse_object
from heron.monitor.recorder import Recorder
from heron.monitor.store import HOUR
from heron.services.lookup import find_vm, live_nodes

router = APIRouter(tags=["metrics"])


def _recorder(request: Request) -> Recorder:
    ctx: ApiContext = request.app.state.ctx
    if ctx.monitor is None:
        raise NotFound("this node keeps no metrics")
    return ctx.monitor


@router.get("/metrics/catalog")
async def catalog(_: Principal = Depends(auth.signed_in)) -> list[dict[str, str]]:
    """Every metric: its name, kind (counter: its history is a rate per second) and meaning."""
    return [{"name": m.name, "kind": m.kind, "help": m.help} for m in METRICS.values()]


def _labels(given: list[str]) -> tuple[tuple[str, str], ...]:
    labels = {}
    for item in given:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier() or '"' in value or "\n" in value:
            raise Invalid("query.label", f"{item!r} is not name=value")
        labels[name] = value
    return tuple(sorted(labels.items()))


@router.get("/metrics/history")
async def history(
    request: Request,
    metric: str = Query(description="a metric of the catalog"),
    label: list[str] = Query(
        default_factory=list,
        description="name=value, repeated: e.g. vm=<id>, mode=user, node=<name>",
    ),
    start: float | None = Query(None, description="seconds since the epoch; default: an hour ago"),
    end: float | None = Query(None, description="seconds since the epoch; default: now"),
    step: float | None = Query(None, gt=0, description="seconds a point covers at least"),
    now: float | None = Query(None, description="(between nodes) the asking node's clock"),
    local: bool = False,
    principal: Principal = Depends(auth.signed_in),
) -> dict[str, Any]:
    """Points (time, min, avg, max) of every series of `metric` whose labels include the
    given ones: 10 s samples for recent short ranges, 1 min and 1 h rollups beyond. Without
    a cluster-wide viewer role, only a VM's series (a `vm` label) the caller may see.
    A `node` label (merged answers carry it) reads that node's store alone."""
    ctx: ApiContext = request.app.state.ctx
    recorder = _recorder(request)
    if metric not in METRICS:
        raise Invalid("query.metric", f"no metric {metric!r} (GET /metrics/catalog lists them)")
    # `node` is the label merging adds (a node's own store has none): it picks whose store.
    labels, node = _without_node(_labels(label))
    now = time.time() if now is None else now
    end = now if end is None else end
    start = end - 3600 if start is None else start
    if end <= start:
        raise Invalid("query.end", "must be after start")
    if now - start > HOUR.keep:
        raise Invalid("query.start", f"history goes back {HOUR.keep // 86400} days at most")
    await _may_read(request, principal, dict(labels))
    answer = query.read(recorder.store, metric, labels, start, end, step, now)
    if local:
        return answer
    if node not in (None, ctx.node):
        answer = {**answer, "series": []}  # still the resolution and step of the others'
    params = {"metric": metric, "label": label, "start": start, "end": end, "now": now}
    if step is not None:
        params["step"] = step
    others = {}
    if node != ctx.node:
        asked = None if node is None else {node}
        others = await ask_others(request, "/metrics/history", params, only=asked)
    return query.merge({ctx.node: answer, **others})


class ResourceForecast(BaseModel):
    """When a resource is full, from the trend of its use (docs/operations.md, Monitoring)."""

    kind: Literal["pool", "memory", "cpu"]
    name: str = Field(description="the pool's name; memory, cpu")
    node: str | None = Field(default=None, description="a local pool: the node whose part")
    unit: Literal["bytes", "cores"]
    status: fc.Status = Field(
        description="growing (days given); not_growing (flat, shrinking, or growth the noise "
        "hides); full; not_enough_history (under a day, or under 12 hourly points)"
    )
    capacity: float | None = Field(description="the latest capacity")
    used: float | None = Field(description="in use now (the current hour's average)")
    growth_per_day: float | None = Field(description="the trend's slope, unit per day")
    days: float | None = Field(description="days until full: the estimate")
    days_low: float | None = Field(description="the earliest (90 % prediction interval)")
    days_high: float | None = Field(
        description="the latest; null while growing: not within five years"
    )
    history_hours: float = Field(description="the history the trend is fitted on")
    steps: int = Field(description="falls of a pool's use (data deleted) taken as new levels")


class Forecasts(BaseModel):
    window_days: int
    resources: list[ResourceForecast]


@router.get("/metrics/forecast", response_model=Forecasts)
async def forecast(
    request: Request,
    days: int = Query(fc.WINDOW_DAYS, ge=2, le=365, description="history to fit, in days"),
    _: Principal = Depends(auth.viewer),
) -> Forecasts:
    """Days until each storage pool (a local pool per node), the cluster's memory (what the
    VMs' QEMUs hold against the nodes' RAM) and its CPU (busy cores against cores) are full,
    with bounds: a least-squares trend through the hourly history of every node."""
    ctx: ApiContext = request.app.state.ctx
    recorder = _recorder(request)
    now = time.time()
    start = now - days * 86400

    async def gathered(metric: str) -> dict[str, Any]:
        answer = await asyncio.to_thread(
            query.read, recorder.store, metric, (), start, now, fc.STEP, now
        )
        params = {"metric": metric, "start": start, "end": now, "now": now, "step": fc.STEP}
        others = await ask_others(request, "/metrics/history", params)
        return query.merge({ctx.node: answer, **others})

    answers = dict(zip(fc.READ, await asyncio.gather(*map(gathered, fc.READ)), strict=True))
    nodes = {e.value.name for e in await ctx.db.list(Node, keys.NODES)}
    members = await ctx.db.list(ArdfsMember, keys.ARDFS_MEMBERS)
    pools = []
    for entry in await ctx.db.list(Pool, keys.POOLS):
        pool = entry.value
        disks = frozenset(d.id for m in members if m.value.pool == pool.name for d in m.value.disks)
        ardfs = pool.type == "ardfs"
        share = pool.redundancy.share if ardfs else 1.0  # what volumes can fill of the disks
        pools.append(fc.PoolInfo(pool.name, pool.shared, ardfs, share, disks))
    found = await asyncio.to_thread(fc.resources, answers, pools, nodes, start, now, now)
    return Forecasts(
        window_days=days,
        resources=[
            ResourceForecast(kind=r.kind, name=r.name, node=r.node, unit=r.unit, **vars(r.forecast))
            for r in found
        ],
    )


def _without_node(
    labels: tuple[tuple[str, str], ...],
) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """The labels a store matches, and the node named by a `node` label (None: every node)."""
    node = dict(labels).get("node")
    return tuple(item for item in labels if item[0] != "node"), node


async def _may_read(request: Request, principal: Principal, labels: dict[str, str]) -> None:
    if auth.suffices(principal.role, Role.viewer):
        return
    if "vm" not in labels:
        raise Forbidden("series of nodes and of every VM need the viewer role cluster-wide")
    db = request.app.state.ctx.db
    vm = (await find_vm(db, labels["vm"])).value
    await auth.check_on(db, principal, auth.vm_scopes(vm), Role.viewer, f"VM {labels['vm']!r}")


@router.get(
    "/metrics/live",
    responses={
        404: {"description": "No such VM"},
        409: {
            "description": "The object's node is not reachable, the VM not running, or the "
            "node watches as many objects as it may (32)"
        },
    },
)
async def live(
    request: Request,
    object: str = Query(description="node:NAME or vm:ID (or vm:NAME)"),
    since: float | None = Query(None, description="only the points after this time (epoch s)"),
    local: bool = False,
    principal: Principal = Depends(auth.signed_in),
) -> dict[str, Any]:
    """One object's key metrics every second, kept in memory on the node that runs it for the
    last 15 minutes, while someone watches: the first call starts watching (and returns what
    there is: nothing yet), each call keeps it going; a few minutes after the last call it
    stops. Counters are rates per second, as in the history. Poll with `since` set to the
    last point's time to get only the new ones. Asked elsewhere, the object's node answers."""
    ctx: ApiContext = request.app.state.ctx
    try:
        kind, name = parse_object(object)
    except ValueError as exc:
        raise Invalid("query.object", str(exc)) from exc
    if kind == "node":
        await _may_read(request, principal, {})
        node = name
    else:
        vm = (await find_vm(ctx.db, name)).value
        await _may_read(request, principal, {"vm": vm.id})
        node, object = vm.node, f"vm:{vm.id}"
    if node != ctx.node and not local:
        return await _relay_live(request, node, {"object": object, "since": since})
    if ctx.live is None:
        raise NotFound("this node offers no live view")
    try:
        points = ctx.live.ask(object, since)
    except (NotHere, TooMany) as exc:
        raise Conflict(str(exc)) from exc
    return {
        "object": object,
        "node": ctx.node,
        "step": ctx.live.step,
        "keep": POINTS,
        "now": time.time(),
        "series": as_series(points),
    }


async def _relay_live(request: Request, node: str, params: dict[str, Any]) -> dict[str, Any]:
    ctx: ApiContext = request.app.state.ctx
    found = (await live_nodes(ctx.db)).get(node)
    if found is None:  # a node's record lives as long as its lease
        raise Conflict(f"node {node!r} is not up")
    asked = {k: v for k, v in params.items() if v is not None}
    try:
        reply = await ctx.http.get(
            f"{found.api_url}/api/v1/metrics/live",
            params={**asked, "local": True},
            headers={"authorization": request.headers.get("authorization", "")},
        )
    except httpx.HTTPError as exc:
        raise Conflict(f"node {node} did not answer: {exc}") from exc
    try:
        answer: dict[str, Any] = reply.json()
    except ValueError:
        answer = {}
    if reply.status_code != 200:
        raise Conflict(f"node {node}: {answer.get('message', reply.status_code)}")
    return answer


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, _: Principal = Depends(auth.viewer)) -> Response:
    """This node's latest samples in Prometheus's text exposition (for a scraper with a token),
    each labelled with `node` (this node's name)."""
    ctx: ApiContext = request.app.state.ctx
    samples = _recorder(request).current()[1]
    return Response(exposition(samples, METRICS, ctx.node), media_type=CONTENT_TYPE_LATEST)
