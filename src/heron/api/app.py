"""The FastAPI application: routes, error mapping and the audit of every change."""

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

import heron
from heron.api import contract, errors, web
from heron.api.context import ApiContext
from heron.api.routes import (
    alerts,
    auth,
    console,
    dr,
    events,
    groups,
    guest,
    imports,
    iscsi,
    metrics,
    networks,
    nodes,
    pools,
    secgroups,
    snapshots,
    stream,
    support,
    tasks,
    templates,
    vms,
)

API = "/api/v1"
_CHANGES = {"POST", "PUT", "PATCH", "DELETE"}


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="Heron API",
        version=heron.__version__,
        description="Manage a Heron cluster from any of its nodes, over HTTPS. Every call "
        "except `POST /auth/login` and `GET /auth/ca` needs `Authorization: Bearer <token>`.",
        openapi_url=f"{API}/openapi.json",
        docs_url=f"{API}/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    errors.install(app)
    for module in (
        auth,
        nodes,
        vms,
        templates,
        snapshots,
        groups,
        networks,
        secgroups,
        pools,
        iscsi,
        tasks,
        events,
        stream,
        console,
        guest,
        metrics,
        alerts,
        support,
        imports,
        dr,
    ):
        app.include_router(module.router, prefix=API)

    @app.middleware("http")
    async def audit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.monotonic()
        response: Response = await call_next(request)
        if request.method in _CHANGES or response.status_code in (401, 403):
            principal = getattr(request.state, "principal", None)
            # What changed, where the path does not say (a disk's class: from and to).
            said = getattr(request.state, "audit_reason", None)
            ctx.audit.record(
                **({"reason": said} if said else {}),
                user=principal.user if principal else getattr(request.state, "login_user", None),
                method=request.method,
                path=request.url.path,
                status=response.status_code,
                result="ok" if response.status_code < 400 else "refused",
                client=request.client.host if request.client else None,
                target=getattr(request.state, "audit_target", None),
                ms=round((time.monotonic() - started) * 1000, 1),
            )
        return response

    web.install(app)  # last: its fallback must not shadow an API route
    contract.install(app)
    return app
