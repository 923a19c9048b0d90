"""Live updates for the web UI: a server-sent event stream fed by one ConfigDB watch.

The stream says *what* changed (kind, id, put or delete), never the records themselves: the
UI reads them again through the ordinary routes, so every role check stays where it is. Kinds
a role may not read (users, for anyone below admin) are not even mentioned.
"""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from heron.api import auth
from heron.api.auth import Principal
from heron.configdb import ConfigDB, keys
from heron.configdb.store import WatchEvent
from heron.models.auth import Role, TokenRecord, token_hash

router = APIRouter(tags=["stream"])

HEARTBEAT = 15.0  # seconds; keeps proxies from closing an idle stream

# Key prefix -> the kind the UI refreshes, and the role needed to hear about it.
KINDS: tuple[tuple[str, str, Role], ...] = (
    (keys.VM_STATUS, "vms", Role.viewer),
    (keys.VMS, "vms", Role.viewer),
    (keys.MIGRATIONS, "vms", Role.viewer),
    (keys.SNAPSHOTS, "snapshots", Role.viewer),
    (keys.SNAPSHOT_HEADS, "snapshots", Role.viewer),
    (keys.NODE_SETTINGS, "nodes", Role.viewer),
    (keys.NODES, "nodes", Role.viewer),
    (keys.TASKS, "tasks", Role.viewer),
    (keys.POOLS, "pools", Role.viewer),
    (keys.VOLUMES, "volumes", Role.viewer),
    # iSCSI exports are shown with their volumes (their CHAP secrets are kept elsewhere).
    (keys.ISCSI_EXPORTS, "volumes", Role.viewer),
    (keys.GROUPS, "groups", Role.viewer),
    (keys.SWITCHES, "networks", Role.viewer),
    (keys.NETWORKS, "networks", Role.viewer),
    # Security groups are shown with the networks and the NICs that name them.
    (keys.SECURITY_GROUPS, "networks", Role.viewer),
    # Each node re-writes its report on every pass of its network controller: a kind of its
    # own, so that only the views showing it reload that often.
    (keys.NETWORK_STATUS, "network-status", Role.viewer),
    (keys.SETTINGS, "settings", Role.viewer),
    (keys.USERS, "users", Role.admin),
    # Failed logins and locks are shown with the users (their ids are hashes, no secret).
    (keys.LOGIN_FAILURES, "users", Role.admin),
    (keys.GRANTS, "users", Role.admin),
    (keys.TOKENS, "tokens", Role.viewer),
    (keys.ALERTS, "alerts", Role.viewer),
    (keys.SILENCES, "alerts", Role.viewer),
    # Rules and channels are kinds of their own: the alerts change far more often, and the
    # rules tab need not read every rule again for each of them. Channels hold addresses (and
    # their names say where notices go): administrators only, as GET /alerts/channels.
    (keys.ALERT_RULES, "alert-rules", Role.viewer),
    (keys.CHANNELS, "channels", Role.admin),
    # V2V sources anyone may list; their scans (the VMs found, with paths) admins only read.
    (keys.IMPORT_SOURCES, "imports", Role.viewer),
    (keys.IMPORT_SCANS, "imports", Role.admin),
    # DR protection (the API's) and the rounds' status (each round's end).
    (keys.DR_PROTECTIONS, "dr", Role.viewer),
    (keys.DR_STATUS, "dr", Role.viewer),
)
# Ids of these kinds are never sent: a token's key is its hash.
_SECRET_IDS = {"tokens"}
# What a user without a cluster-wide role (reaching only what grants give) hears of: that
# something of the kind changed, never which (the ids could be of VMs out of its sight).
_SCOPED_KINDS = {"vms", "snapshots", "tasks", "tokens", "alerts", "dr"}


@dataclass
class Filter:
    """Turns watch events into what one principal may hear; pure, so it is tested alone."""

    role: Role | None
    leader: str | None = None

    def change(self, event: WatchEvent) -> dict[str, str] | None:
        if event.type == "resync":
            return {"kind": "resync", "id": "", "type": "resync"}
        if event.key == keys.LEADER:
            # The leader re-writes its key several times a second: only a new leader is news.
            leader = event.value.decode().split(" ", 1)[0] if event.type == "put" else None
            if leader == self.leader:
                return None
            self.leader = leader
            return {"kind": "nodes", "id": leader or "", "type": "leader"}
        for prefix, kind, needed in KINDS:
            if event.key.startswith(prefix):
                if self.role is None:
                    if kind not in _SCOPED_KINDS:
                        return None
                    return {"kind": kind, "id": "", "type": event.type}
                if not self.role.allows(needed):
                    return None
                ident = "" if kind in _SECRET_IDS else event.key[len(prefix) :]
                return {"kind": kind, "id": ident, "type": event.type}
        return None


def _message(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _pump(db: ConfigDB, start: int, queue: asyncio.Queue[WatchEvent]) -> None:
    async for event in db.watch(keys.ROOT, start):
        await queue.put(event)


async def _events(request: Request, principal: Principal, token: str) -> AsyncIterator[str]:
    db: ConfigDB = request.app.state.ctx.db
    found = await db.get_raw(keys.LEADER)
    changes = Filter(principal.role, found[0].decode().split(" ", 1)[0] if found else None)
    queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
    pump = asyncio.create_task(_pump(db, await db.revision() + 1, queue))
    try:
        yield "retry: 2000\n\n"
        role = principal.role.value if principal.role else None
        yield _message("hello", {"user": principal.user, "role": role})
        while True:
            try:
                first = await asyncio.wait_for(queue.get(), HEARTBEAT)
            except TimeoutError:
                if pump.done():
                    return  # the watch ended: the client reconnects
                yield ": heartbeat\n\n"
                continue
            batch = [first]
            while not queue.empty():
                batch.append(queue.get_nowait())
            found_changes = [c for c in map(changes.change, batch) if c is not None]
            # Logged out or expired: the stream ends with the session it was opened on.
            revoked = any(c["kind"] == "tokens" and c["type"] == "delete" for c in found_changes)
            if revoked and await db.get(TokenRecord, keys.token(token_hash(token))) is None:
                yield _message("expired", {})
                return
            unique = list({json.dumps(c, sort_keys=True): c for c in found_changes}.values())
            if unique:
                yield _message("change", {"changes": unique})
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump


@router.get("/stream", response_class=StreamingResponse)
async def stream(
    request: Request, principal: Principal = Depends(auth.authenticate)
) -> StreamingResponse:
    """Server-sent events: `change` with `{"changes": [{"kind", "id", "type"}]}` whenever the
    ConfigDB changes (kinds: vms, nodes, tasks, pools, volumes, groups, networks (switches,
    networks and security groups), network-status, settings, tokens, snapshots, alerts
    (alerts and silences), alert-rules, dr (protection and replication status), users and
    channels for admins, resync); `expired`
    when the session ends. Read the records through the other routes."""
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    return StreamingResponse(
        _events(request, principal, token),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )
