"""A VM's consoles: the serial log, and the graphical (VNC) and serial consoles over websockets.

QEMU's VNC listens on loopback on the VM's node. The browser talks to whichever node served
the UI; that node relays the websocket to the VM's node when the VM runs elsewhere, and the
VM's node relays it to QEMU. Browsers cannot put a bearer token on a websocket, so the UI
first asks for a ticket (the console permission, which viewers lack: the console types into
the guest): a random string, good for one connection to one VM within TICKET_TTL seconds. It
lives in etcd under a lease, so any node can check it and only the node that opens the VNC
connection consumes it. The serial log needs the same permission: it holds what the guest
printed, which can be a secret.
The serial console (`heron vm console`) works the same way: the same ticket opens the websocket
`/api/v1/vms/{id}/console/serial/ws`, relayed to the unix socket of the VM's first serial port;
its bytes are the guest's terminal, as raw as a serial line.
"""

import asyncio
import contextlib
import hashlib
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable

import websockets
from fastapi import APIRouter, Depends, Request, WebSocket
from pydantic import BaseModel
from websockets.typing import Subprotocol

from heron.api import auth
from heron.api.auth import Principal
from heron.api.context import ApiContext
from heron.api.errors import Conflict
from heron.configdb import ConfigDB, keys
from heron.configdb.store import Conflict as StoreConflict
from heron.hypervisor.command import RuntimePaths
from heron.models.common import Name, Record
from heron.models.vm import RunState, VMStatus
from heron.services.lookup import find_vm, live_nodes

router = APIRouter(tags=["console"])

TICKET_TTL = 30
TICKETS = keys.ROOT + "console-tickets/"
SERIAL_MAX = 1024 * 1024
_CHUNK = 64 * 1024
_POLICY_VIOLATION = 1008


class ConsoleTicket(Record):
    vm: str
    user: str
    created_at: float


class TicketReply(BaseModel):
    ticket: str
    vm: str
    expires_in: int
    url: str


class SerialLog(BaseModel):
    vm: str
    node: str
    size: int
    text: str


def _ctx(request: Request | WebSocket) -> ApiContext:
    return request.app.state.ctx


def _ticket_key(ticket: str) -> str:
    return TICKETS + hashlib.sha256(ticket.encode()).hexdigest()


def _runtime(ctx: ApiContext, vm_id: str) -> RuntimePaths:
    # The node agent keeps each VM's QEMU files in <state>/vms/<id> (agent/vms.py).
    return RuntimePaths(ctx.state_dir / "vms" / vm_id)


@router.get("/vms/{ref}/console/serial", response_model=SerialLog)
async def serial_log(
    ref: Name,
    request: Request,
    limit: int = SERIAL_MAX // 4,
    local: bool = False,
    _: Principal = Depends(auth.vm_console),
) -> SerialLog:
    """The end of the VM's serial console log (at most `limit` bytes), read on its node.

    It needs the console permission (operators, admins): it holds what the guest printed."""
    ctx = _ctx(request)
    vm = (await find_vm(ctx.db, ref)).value
    limit = max(1, min(limit, SERIAL_MAX))
    if vm.node != ctx.node and not local:
        node = (await live_nodes(ctx.db)).get(vm.node)
        if node is None:
            raise Conflict(f"node {vm.node} of VM {vm.spec.name} is not reachable")
        reply = await ctx.http.get(
            f"{node.api_url}/api/v1/vms/{vm.id}/console/serial",
            params={"limit": limit, "local": True},
            headers={"authorization": request.headers.get("authorization", "")},
        )
        if reply.status_code != 200:
            raise Conflict(f"node {vm.node} could not read the serial log: {reply.status_code}")
        return SerialLog.model_validate(reply.json())
    path = _runtime(ctx, vm.id).console_log
    try:
        with open(path, "rb") as log:
            size = log.seek(0, 2)
            log.seek(max(0, size - limit))
            data = log.read(limit)
    except FileNotFoundError:
        size, data = 0, b""
    return SerialLog(vm=vm.id, node=ctx.node, size=size, text=data.decode(errors="replace"))


@router.post("/vms/{ref}/console/ticket", response_model=TicketReply, status_code=201)
async def console_ticket(
    ref: Name, request: Request, principal: Principal = Depends(auth.vm_console)
) -> TicketReply:
    """A one-time ticket for the websocket `/api/v1/vms/{id}/console/vnc?ticket=...`, which
    speaks the RFB protocol (noVNC) with the VM's graphical console."""
    ctx = _ctx(request)
    vm = (await find_vm(ctx.db, ref)).value
    ticket = secrets.token_urlsafe(24)
    lease = await ctx.db.grant(TICKET_TTL)
    record = ConsoleTicket(vm=vm.id, user=principal.user, created_at=time.time())
    await ctx.db.create(_ticket_key(ticket), record, lease=lease)
    request.state.audit_target = vm.id
    return TicketReply(
        ticket=ticket,
        vm=vm.id,
        expires_in=TICKET_TTL,
        url=f"/api/v1/vms/{vm.id}/console/vnc?ticket={ticket}",
    )


async def _take_ticket(
    db: ConfigDB, ticket: str, vm_id: str, consume: bool
) -> ConsoleTicket | None:
    """The ticket if it is good for `vm_id`; `consume` uses it up (on the VM's node)."""
    entry = await db.get(ConsoleTicket, _ticket_key(ticket)) if ticket else None
    if entry is None or entry.value.vm != vm_id:
        return None
    if entry.value.created_at + TICKET_TTL < time.time():
        return None
    if consume:
        try:
            await db.delete(entry.key, revision=entry.revision)
        except StoreConflict:
            return None  # someone else used it first
    return entry.value


Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def _relay_stream(websocket: WebSocket, connect: Connect) -> None:
    reader, writer = await connect()

    async def upstream() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes") or (message.get("text") or "").encode()
            writer.write(data)
            await writer.drain()

    async def downstream() -> None:
        while data := await reader.read(_CHUNK):
            await websocket.send_bytes(data)

    try:
        await _first_done(upstream(), downstream())
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _relay_ws(
    websocket: WebSocket, url: str, subprotocols: list[str], tls: ssl.SSLContext | None
) -> None:
    async with websockets.connect(
        url,
        subprotocols=[Subprotocol(p) for p in subprotocols] or None,
        max_size=None,
        compression=None,
        # wss to the node that runs the VM, checked against the cluster CA.
        ssl=tls if url.startswith("wss://") else None,
    ) as remote:

        async def upstream() -> None:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                await remote.send(message.get("bytes") or (message.get("text") or "").encode())

        async def downstream() -> None:
            async for data in remote:
                await websocket.send_bytes(data if isinstance(data, bytes) else data.encode())

        await _first_done(upstream(), downstream())


async def _first_done(*jobs: Awaitable[None]) -> None:
    """Run both directions of a relay; when one ends (either side closed), end the other."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@router.websocket("/vms/{vm_id}/console/vnc")
async def vnc(websocket: WebSocket, vm_id: str, ticket: str = "") -> None:
    await _console(websocket, vm_id, ticket, "vnc", _vnc)


@router.websocket("/vms/{vm_id}/console/serial/ws")
async def serial(websocket: WebSocket, vm_id: str, ticket: str = "") -> None:
    await _console(websocket, vm_id, ticket, "serial/ws", _serial)


def _vnc(ctx: ApiContext, vm_id: str, status: VMStatus) -> Connect | None:
    if status.state != RunState.running or not status.vnc:
        return None
    host, _, port = status.vnc.rpartition(":")
    return lambda: asyncio.open_connection(host, int(port))


def _serial(ctx: ApiContext, vm_id: str, status: VMStatus) -> Connect | None:
    # A paused guest's console is still there: it answers once the guest resumes.
    if status.state not in (RunState.running, RunState.paused):
        return None
    path = str(_runtime(ctx, vm_id).serial)
    return lambda: asyncio.open_unix_connection(path)


async def _console(
    websocket: WebSocket,
    vm_id: str,
    ticket: str,
    kind: str,
    local: Callable[[ApiContext, str, VMStatus], Connect | None],
) -> None:
    """Check the ticket and relay the websocket: to the console on this node (`local` says
    how to reach it), or to the same websocket on the VM's node."""
    ctx = _ctx(websocket)
    try:
        vm = (await find_vm(ctx.db, vm_id)).value
    except Exception:
        await websocket.close(_POLICY_VIOLATION)
        return
    here = vm.node == ctx.node
    granted = await _take_ticket(ctx.db, ticket, vm.id, consume=here)
    if granted is None:
        await websocket.close(_POLICY_VIOLATION)
        return
    ctx.audit.record(
        user=granted.user,
        method="WEBSOCKET",
        path=websocket.url.path,
        status=101,
        result="ok",
        client=websocket.client.host if websocket.client else None,
        target=vm.id,
        relayed_to=None if here else vm.node,
    )
    offered = list(websocket.scope.get("subprotocols") or [])
    chosen = "binary" if "binary" in offered else None
    if here:
        found = await ctx.db.get(VMStatus, keys.vm_status(vm.id))
        connect = local(ctx, vm.id, found.value) if found else None
        if connect is None:
            await websocket.close(_POLICY_VIOLATION)
            return
        await websocket.accept(subprotocol=chosen)
        with contextlib.suppress(Exception):
            await _relay_stream(websocket, connect)
    else:
        node = (await live_nodes(ctx.db)).get(vm.node)
        if node is None:
            await websocket.close(_POLICY_VIOLATION)
            return
        base = node.api_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        await websocket.accept(subprotocol=chosen)
        with contextlib.suppress(Exception):
            await _relay_ws(websocket, f"{base}/api/v1/vms/{vm.id}/console/{kind}?ticket={ticket}",
                            offered, ctx.peer_tls)  # fmt: skip
    with contextlib.suppress(Exception):
        await websocket.close()
