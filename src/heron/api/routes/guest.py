"""A running VM's guest, through its agent: the freeze hooks installed in it.

The agent's socket is on the VM's node: a request that lands elsewhere is relayed there (with
the caller's token, and `local` so it goes no further), as the serial log is.
"""

from typing import Any

import httpx
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from heron.api import auth
from heron.api.auth import Principal
from heron.api.context import ApiContext
from heron.api.errors import Conflict
from heron.hypervisor.command import RuntimePaths
from heron.hypervisor.qga import GuestAgent
from heron.models.common import Name
from heron.models.guest import GuestHookList, HookInstall, HookName
from heron.services import guest as guest_service
from heron.services.lookup import find_vm, live_nodes

router = APIRouter(tags=["guest"])

RELAY_TIMEOUT = 90.0  # an install's commands, each bounded in the guest


def _ctx(request: Request) -> ApiContext:
    return request.app.state.ctx


def _agent_for(ctx: ApiContext) -> guest_service.AgentFor:
    if ctx.guest_agent is not None:
        return ctx.guest_agent  # herond's: the one its VM controller probes with
    # The node agent keeps each VM's QEMU files in <state>/vms/<id> (agent/vms.py).
    return lambda vm_id: GuestAgent(RuntimePaths(ctx.state_dir / "vms" / vm_id).guest_agent)


async def _relayed(request: Request, ref: str, local: bool, body: Any = None) -> Response | None:
    """The answer of the VM's node when the VM runs elsewhere; None when it runs here."""
    ctx = _ctx(request)
    vm = (await find_vm(ctx.db, ref)).value
    if vm.node == ctx.node or local:
        return None
    node = (await live_nodes(ctx.db)).get(vm.node)
    if node is None:
        raise Conflict(f"node {vm.node} of VM {vm.spec.name} is not reachable")
    try:
        reply = await ctx.http.request(
            request.method,
            f"{node.api_url}{request.url.path}",
            params={"local": True},
            json=body,
            headers={"authorization": request.headers.get("authorization", "")},
            timeout=RELAY_TIMEOUT,
        )
    except httpx.HTTPError as exc:
        raise Conflict(f"node {vm.node} did not answer: {exc}") from exc
    if reply.status_code == 204:
        return Response(status_code=204)
    return JSONResponse(reply.json(), reply.status_code)


@router.get(
    "/vms/{ref}/guest/hooks",
    response_model=GuestHookList,
    responses={
        409: {"description": "The VM is not running, has no agent channel, or no agent answers"}
    },
)
async def list_hooks(
    ref: Name, request: Request, local: bool = False, _: Principal = Depends(auth.vm_viewer)
) -> Any:
    """The freeze hooks in the running guest (/etc/qemu/fsfreeze-hook.d), in the order they
    run. 409 when no guest agent answers."""
    relayed = await _relayed(request, ref, local)
    if relayed is not None:
        return relayed
    ctx = _ctx(request)
    return await guest_service.list_hooks(ctx.db, ref, _agent_for(ctx))


@router.put("/vms/{ref}/guest/hooks/{name}", response_model=GuestHookList)
async def install_hook(
    ref: Name,
    name: HookName,
    body: HookInstall,
    request: Request,
    local: bool = False,
    _: Principal = Depends(auth.vm_operator),
) -> Any:
    """Install or replace a freeze hook in the running guest: it runs with `freeze` before
    every snapshot's freeze (a non-zero exit aborts the snapshot) and `thaw` after. Returns
    the guest's hooks. 409 when no guest agent answers."""
    request.state.audit_target = ref
    relayed = await _relayed(request, ref, local, body.model_dump())
    if relayed is not None:
        return relayed
    ctx = _ctx(request)
    return await guest_service.install_hook(ctx.db, ref, name, body.script, _agent_for(ctx))


@router.delete("/vms/{ref}/guest/hooks/{name}", status_code=204)
async def remove_hook(
    ref: Name,
    name: HookName,
    request: Request,
    local: bool = False,
    _: Principal = Depends(auth.vm_operator),
) -> Response:
    """Remove a freeze hook from the running guest. 409 when no guest agent answers."""
    request.state.audit_target = ref
    relayed = await _relayed(request, ref, local)
    if relayed is not None:
        return relayed
    ctx = _ctx(request)
    await guest_service.remove_hook(ctx.db, ref, name, _agent_for(ctx))
    return Response(status_code=204)
