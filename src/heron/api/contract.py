"""The error answers of every operation, declared in the OpenAPI schema from what it depends on.

Generated clients trust `/api/v1/openapi.json`: an answer whose status code is not declared
breaks them. Writing the codes by hand on each route drifts, so they follow from the route:

- 401 everywhere (no or bad token; the login's wrong password);
- 403 where a role above viewer or a permission viewers lack is required;
- 404 where a path names something (and where a route declares it itself);
- 409 on every change (name clash, stale revision, conflicting state);
- 422 wherever there is input to validate; 400 where a body that cannot be parsed is refused;
- 503 everywhere: the ConfigDB may be out of reach;
- 502 where a route declares it: an outside system it reaches refused or did not answer.

All of them carry `ErrorBody` (see `errors`), which replaces FastAPI's own 422 schema: the
app's handler reshapes validation errors, so FastAPI's would be a lie. Operations that need a
token say so (`security: bearer`), so generated clients send it.
"""

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute

from heron.api import auth
from heron.api.errors import ErrorBody

_REF = "#/components/schemas/"
_CHANGES = {"POST", "PUT", "PATCH", "DELETE"}
_WHY = {
    400: "The body cannot be parsed (not JSON, not UTF-8, broken multipart)",
    401: "No token, or an invalid or expired one",
    403: "The token's role is too weak",
    404: "It does not exist",
    409: "It conflicts with the current state (name taken, stale revision, busy)",
    422: "Invalid input: `fields` names each offending field and the reason",
    429: "Too many failed logins: the user name or client address is locked for a while",
    502: "An outside system (e.g. a notification channel's receiver) refused or did not answer",
    503: "The ConfigDB (etcd) cannot be reached",
}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def operations(routes: list[BaseRoute]) -> Iterator[tuple[str, str, APIRoute]]:
    """(path, method, route) of every operation in the schema, through included routers."""
    for context in iter_route_contexts(routes):
        route = context.original_route
        if not isinstance(route, APIRoute) or not getattr(context, "include_in_schema", False):
            continue
        for method in sorted(context.methods or ()):
            yield context.path_format or route.path_format, method, route


def error_codes(route: APIRoute, method: str) -> set[int]:
    """The error status codes `route` may answer `method` with."""
    dependant = route.dependant
    calls = set(_calls(dependant))
    codes = {401, 503}
    if calls & auth.REFUSING:
        codes.add(403)
    if dependant.path_params:
        codes.add(404)
    if method in _CHANGES:
        codes.add(409)
    if dependant.path_params or dependant.query_params or route.body_field is not None:
        codes.add(422)
    if route.body_field is not None:
        codes.add(400)  # a body that is not even JSON (or multipart) is refused before checks
    # What the route declares itself (e.g. a 404 with no path parameter) is kept as well.
    codes |= {int(code) for code in route.responses if str(code).isdigit()}
    return {code for code in codes if code >= 400}


def _error_schemas() -> dict[str, Any]:
    schema = ErrorBody.model_json_schema(ref_template=_REF + "{model}")
    defs = schema.pop("$defs", {})
    return {**defs, ErrorBody.__name__: schema}


def openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document with every operation's error answers; built once."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    spec = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
        separate_input_output_schemas=app.separate_input_output_schemas,
    )
    body = {"application/json": {"schema": {"$ref": _REF + ErrorBody.__name__}}}
    for path, method, route in operations(app.routes):
        operation = spec["paths"][path][method.lower()]
        if auth.authenticate in set(_calls(route.dependant)):
            operation["security"] = [{"bearer": []}]
        responses = operation["responses"]
        for code in error_codes(route, method):
            declared = responses.get(str(code), {})
            responses[str(code)] = {
                "description": declared.get("description") or _WHY.get(code, "Error"),
                "content": body,
            }
        operation["responses"] = dict(sorted(responses.items()))
    components = spec.setdefault("components", {})
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "A session token from POST /auth/login, or an API token",
        }
    }
    schemas = components.setdefault("schemas", {})
    schemas.update(_error_schemas())
    # FastAPI's validation-error shapes are never sent (the handler reshapes them).
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    app.openapi_schema = spec
    return spec


def install(app: FastAPI) -> None:
    app.openapi = lambda: openapi(app)  # type: ignore[method-assign]
