"""The audit log, merged from every node's own file."""

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request

from heron.api import auth
from heron.api.auth import Principal
from heron.api.cluster import live_nodes

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
        others = [n for n in (await live_nodes(ctx.db)).values() if n.name != ctx.node]
        headers = {"authorization": request.headers.get("authorization", "")}

        async def fetch(url: str) -> list[dict[str, Any]]:
            try:
                reply = await ctx.http.get(
                    f"{url}/api/v1/events",
                    headers=headers,
                    params={"limit": limit, "since": since, "local": True},
                )
                return reply.json() if reply.status_code == 200 else []
            except Exception:
                return []  # a node that does not answer is left out, not fatal

        for part in await asyncio.gather(*(fetch(n.api_url) for n in others)):
            entries.extend(part)
    entries.sort(key=lambda e: e.get("time", 0), reverse=True)
    return entries[:limit]
