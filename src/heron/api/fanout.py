"""Asking the other nodes: for what only the node holding it knows (its files, its log)."""

import asyncio
from typing import Any

from fastapi import Request

from heron.api.context import ApiContext
from heron.services.lookup import live_nodes


async def ask_others(
    request: Request, path: str, params: dict[str, Any], only: set[str] | None = None
) -> dict[str, Any]:
    """GET `path` (with local=true) on every other live node, as the caller; node -> reply.

    A node that does not answer is left out: the caller shows what it has rather than fail.
    """
    ctx: ApiContext = request.app.state.ctx
    nodes = [n for n in (await live_nodes(ctx.db)).values()
             if n.name != ctx.node and (only is None or n.name in only)]  # fmt: skip
    headers = {"authorization": request.headers.get("authorization", "")}

    async def fetch(url: str) -> Any:
        try:
            reply = await ctx.http.get(f"{url}/api/v1{path}", headers=headers,
                                       params={**params, "local": True})  # fmt: skip
        except Exception:
            return None
        return reply.json() if reply.status_code == 200 else None

    replies = await asyncio.gather(*(fetch(n.api_url) for n in nodes))
    return {n.name: r for n, r in zip(nodes, replies, strict=True) if r is not None}
