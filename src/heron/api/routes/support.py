"""Auto-support: diagnostic bundles for the support team (administrators only).

A bundle is built by a `support.bundle` task on the node asked and kept there; its name
says which node that is, so any node serves it by asking that one.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from heron.agent.support import NoBundle, NotConfigured, SupportBundles, is_bundle_name
from heron.api import auth
from heron.api.auth import Principal
from heron.api.context import ApiContext
from heron.api.errors import BadGateway, Conflict, Invalid, NotFound
from heron.api.fanout import ask_others
from heron.configdb import keys
from heron.models.settings import ClusterSettings
from heron.models.support import BundleInfo, BundleRequest, BundleSent
from heron.models.task import SupportBundleParams, Task, TaskKind, new_task
from heron.monitor.notify import NotifyError
from heron.services.lookup import live_nodes

router = APIRouter(tags=["support"])

RELAY_TIMEOUT = 60.0
_NODE = re.compile(r"^heron-support-(?P<node>.+)-[0-9]{8}T[0-9]{6}Z(-[0-9]+)?\.tar\.gz$")


def _ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


def _bundles(request: Request) -> SupportBundles:
    found = _ctx(request).support
    if found is None:
        raise NotFound("this node keeps no diagnostic bundles")
    return found


def _node_of(name: str) -> str:
    found = _NODE.fullmatch(name) if is_bundle_name(name) else None
    if found is None:
        raise Invalid("path.name", "is not a bundle's name (heron-support-<node>-<time>.tar.gz)")
    return found["node"]


async def _relay(request: Request, name: str, local: bool) -> Response | None:
    """The answer of the node keeping bundle `name`; None when it is this one."""
    ctx = _ctx(request)
    node = _node_of(name)
    request.state.audit_target = name
    if node == ctx.node or local:
        return None
    found = (await live_nodes(ctx.db)).get(node)
    if found is None:
        raise Conflict(f"node {node}, which keeps {name}, is not reachable")
    try:
        reply = await ctx.http.request(
            request.method,
            f"{found.api_url}{request.url.path}",
            params={"local": True},
            headers={"authorization": request.headers.get("authorization", "")},
            timeout=RELAY_TIMEOUT,
        )
    except httpx.HTTPError as exc:
        raise Conflict(f"node {node} did not answer: {exc}") from exc
    if reply.status_code == 204:
        return Response(status_code=204)
    kind = reply.headers.get("content-type", "")
    if kind.startswith("application/json"):
        return JSONResponse(reply.json(), reply.status_code)
    headers = {k: v for k, v in reply.headers.items() if k.lower() == "content-disposition"}
    return Response(reply.content, reply.status_code, headers=headers, media_type=kind)


@router.get("/support/node")
async def node_part(request: Request, _: Principal = Depends(auth.admin)) -> dict[str, Any]:
    """This node's part of a bundle (its log tails, versions, last hour of its metrics),
    for the node that builds one. Secrets are removed by the builder."""
    return await _bundles(request).node_part()


@router.post("/support/bundles", status_code=202, response_model=Task)
async def build(
    request: Request,
    body: BundleRequest | None = None,
    principal: Principal = Depends(auth.admin),
) -> Task:
    """Build a bundle on this node (a `support.bundle` task; its result names the bundle):
    versions, the configuration without secrets, every live node's log tails and last hour
    of metrics, failed tasks, firing alerts and etcd's status. With `send`, it is mailed to
    the support address once built."""
    ctx = _ctx(request)
    _bundles(request)
    send = body is not None and body.send
    if send:
        await _may_send(ctx)
    # One at a time per node: a bundle reads every node's logs and metrics.
    for entry in await ctx.db.list(Task, keys.TASKS):
        busy = entry.value
        if (
            busy.kind == TaskKind.support_bundle
            and busy.node == ctx.node
            and not busy.state.finished
        ):
            raise Conflict(f"a bundle is being built on {ctx.node} (task {busy.id})")
    task = new_task(
        TaskKind.support_bundle, ctx.node, "", principal.user, SupportBundleParams(send=send)
    )
    await ctx.db.create(keys.task(task.id), task)
    request.state.audit_target = task.id
    return task


async def _may_send(ctx: ApiContext) -> None:
    found = await ctx.db.get(ClusterSettings, keys.SETTINGS)
    settings = (found.value if found else ClusterSettings()).support
    if not settings.address:
        raise Conflict("no support address is set: PUT /cluster/settings (support.address)")
    if not settings.channel:
        raise Conflict("no SMTP channel is set to send through (support.channel)")


@router.get("/support/bundles", response_model=list[BundleInfo])
async def list_bundles(
    request: Request, local: bool = False, _: Principal = Depends(auth.admin)
) -> list[BundleInfo]:
    """The bundles kept on every live node (`local=true`: on this one), newest first."""
    found = _bundles(request).bundles()
    if not local:
        others = await ask_others(request, "/support/bundles", {})
        found += [BundleInfo.model_validate(b) for part in others.values() for b in part]
    return sorted(found, key=lambda b: b.created_at, reverse=True)


@router.get(
    "/support/bundles/{name}",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/gzip": {}}, "description": "the .tar.gz"},
        409: {"description": "The node that keeps it cannot be reached"},
    },
)
async def download(
    name: str, request: Request, local: bool = False, _: Principal = Depends(auth.admin)
) -> Response:
    """The bundle's .tar.gz, from whichever node keeps it."""
    relayed = await _relay(request, name, local)
    if relayed is not None:
        return relayed
    try:
        path = _bundles(request).path(name)
    except NoBundle as exc:
        raise NotFound(str(exc)) from exc
    return FileResponse(path, media_type="application/gzip", filename=name)


@router.delete("/support/bundles/{name}", status_code=204)
async def delete(
    name: str, request: Request, local: bool = False, _: Principal = Depends(auth.admin)
) -> Response:
    relayed = await _relay(request, name, local)
    if relayed is not None:
        return relayed
    try:
        _bundles(request).delete(name)
    except NoBundle as exc:
        raise NotFound(str(exc)) from exc
    return Response(status_code=204)


@router.post(
    "/support/bundles/{name}/send",
    response_model=BundleSent,
    responses={502: {"description": "The mail server refused it: the message says why"}},
)
async def send(
    name: str, request: Request, local: bool = False, _: Principal = Depends(auth.admin)
) -> Any:
    """Mail the bundle to the support address through the configured SMTP channel; 409 if
    they are not set, 502 with the mail server's answer if it refused."""
    relayed = await _relay(request, name, local)
    if relayed is not None:
        return relayed
    try:
        return await _bundles(request).send(name)
    except NoBundle as exc:
        raise NotFound(str(exc)) from exc
    except NotConfigured as exc:
        raise Conflict(str(exc)) from exc
    except NotifyError as exc:
        raise BadGateway(str(exc)) from exc
