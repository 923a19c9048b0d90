"""Domain errors and the one place that maps them to HTTP.

Every error body has the same shape: {"error": code, "message": text, "fields": [...]} where
each field entry names the offending input ("body.memory_mib") and the reason.
"""

from typing import Any

import aetcd.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from heron.configdb.store import Conflict as StoreConflict
from heron.errors import HeronError
from heron.services.errors import Conflict, Invalid, NotFound, ServiceError

__all__ = [
    "ApiError",
    "BadGateway",
    "Conflict",
    "Forbidden",
    "Invalid",
    "Locked",
    "NotFound",
    "Unauthorized",
    "install",
]


class FieldError(BaseModel):
    field: str
    reason: str


class ErrorBody(BaseModel):
    """What every error answer carries: the schema the OpenAPI document declares for them."""

    error: str
    message: str
    fields: list[FieldError]


class ApiError(HeronError):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, fields: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or []


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class Locked(ApiError):
    """Too many failed logins of a user name or from an address: refused until the lock ends."""

    status = 429
    code = "locked"


class BadGateway(ApiError):
    """Something outside the cluster that a request reached refused it (a mail server, an
    SNMP manager, a webhook): the message says what it answered."""

    status = 502
    code = "bad_gateway"


# The service layer's errors, as HTTP: status and the body's `error` code.
_SERVICE: dict[type[ServiceError], tuple[int, str]] = {
    Invalid: (422, "invalid"),
    NotFound: (404, "not_found"),
    Conflict: (409, "conflict"),
}


def _body(code: str, message: str, fields: list[dict[str, str]]) -> dict[str, Any]:
    return {"error": code, "message": message, "fields": fields}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(_body(exc.code, exc.message, exc.fields), exc.status, headers=headers)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        status, code = next(
            (found for kind, found in _SERVICE.items() if isinstance(exc, kind)), (400, "invalid")
        )
        return JSONResponse(_body(code, exc.message, exc.fields), status)

    @app.exception_handler(StoreConflict)
    async def _conflict(_: Request, exc: StoreConflict) -> JSONResponse:
        return JSONResponse(_body("conflict", str(exc), []), 409)

    @app.exception_handler(aetcd.exceptions.ClientError)
    async def _configdb(_: Request, exc: aetcd.exceptions.ClientError) -> JSONResponse:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        message = f"the ConfigDB (etcd) cannot be reached: {detail}"
        return JSONResponse(_body("unavailable", message, []), 503)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = []
        for error in exc.errors():
            location = ".".join(str(part) for part in error.get("loc", ()))
            fields.append({"field": location, "reason": str(error.get("msg", "invalid"))})
        message = "; ".join(f"{f['field']}: {f['reason']}" for f in fields) or "invalid input"
        return JSONResponse(_body("invalid", message, fields), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, "error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the methods of the first route that matched the path; a
            # path served by several routes (GET and POST /vms) allows all of theirs.
            headers["Allow"] = ", ".join(allowed_methods(request))
        return JSONResponse(_body(code, str(exc.detail), []), exc.status_code, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app answers for the request's path."""
    methods: set[str] = set()
    path = request.scope["path"]
    for route in iter_route_contexts(request.app.router.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)
