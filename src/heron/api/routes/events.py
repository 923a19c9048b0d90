"""The audit log, merged from every node's own file."""

from typing import Any

from fastapi import APIRouter, Depends, Request

from heron.api import auth
from heron.api.auth import Principal
from heron.api.fanout import ask_others

router = APIRouter(tags=["events"])


@router.get("/events")
async def list_events(
    request: Request,
    limit: int = 100,
    since: float = 0.0,
    local: bool = False,
    _: Principal = Depends(auth.viewer),
) -> list[dict[str, Any]]:
    """Newest first. `local=true` reads only the node that answers."""
    ctx = request.app.state.ctx
    limit = max(1, min(limit, 10000))
    entries = ctx.audit.read(limit, since)
    if not local:
        for part in (
            await ask_others(request, "/events", {"limit": limit, "since": since})
        ).values():
            entries.extend(part)
    entries.sort(key=lambda e: e.get("time", 0), reverse=True)
    return entries[:limit]
