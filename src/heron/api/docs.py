"""Writes docs/api.md from the OpenAPI schema, so the reference cannot drift from the code.

Run `python -m heron.api.docs > docs/api.md`; a unit test fails when the file is stale.
"""

import json
from typing import Any

from heron.api.app import API, create_app


def openapi() -> dict[str, Any]:
    return create_app(None).openapi()  # type: ignore[arg-type]  # the schema needs no context


def _schema_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[1]
    if schema.get("type") == "array" and "items" in schema:
        return f"list[{_schema_name(schema['items'])}]"
    return schema.get("type", "object")


def _fields(schema: dict[str, Any], components: dict[str, Any]) -> list[str]:
    lines = []
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        kind = _schema_name(prop) if "$ref" in prop or "type" in prop else "any"
        if "anyOf" in prop:
            kind = " or ".join(_schema_name(p) for p in prop["anyOf"])
        limits = [f"{k} {prop[k]}" for k in ("minimum", "maximum", "exclusiveMinimum",
                                             "maxLength", "pattern") if k in prop]  # fmt: skip
        if "enum" in prop:
            limits.append("one of " + ", ".join(map(str, prop["enum"])))
        text = prop.get("description", "")
        default = f" (default `{json.dumps(prop['default'])}`)" if "default" in prop else ""
        need = "**required**" if name in required else "optional"
        extra = f"; {'; '.join(limits)}" if limits else ""
        lines.append(f"| `{name}` | {kind} | {need}{default}{extra} | {text} |")
    return lines


def render() -> str:
    spec = openapi()
    components = spec.get("components", {}).get("schemas", {})
    out = [
        "# Heron REST API",
        "",
        f"Generated from the OpenAPI schema (`{API}/openapi.json`, version "
        f"{spec['info']['version']}) by `python -m heron.api.docs`; do not edit by hand.",
        "",
        spec["info"].get("description", ""),
        "",
        'Errors: `{"error": code, "message": text, "fields": [{"field", "reason"}]}` '
        "with 400/422 (invalid input, naming the field), 401 (no or bad token), 403 (role too "
        "weak), 404 (unknown id), 409 (name clash, stale revision, conflicting state), 503 (the "
        "ConfigDB cannot be reached); each operation lists the ones it can answer. A method a "
        "path does not take is a 405 whose `Allow` header names those it does.",
        "",
    ]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            by_tag.setdefault(op.get("tags", ["other"])[0], []).append((method, path, op))
    for tag, ops in by_tag.items():
        out += [f"## {tag}", ""]
        for method, path, op in ops:
            out += [f"### `{method.upper()} {path}`", ""]
            doc = op.get("description") or op.get("summary", "")
            if doc:
                out += [doc.strip(), ""]
            params = [p for p in op.get("parameters", []) if p["in"] in ("query", "path")]
            if params:
                out += ["Parameters: " + ", ".join(
                    f"`{p['name']}` ({p['in']})" for p in params), ""]  # fmt: skip
            body = op.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                schema = content["schema"]
                name = _schema_name(schema)
                out += [f"Body ({media}): `{name}`", ""]
                resolved = components.get(name, schema)
                rows = _fields(resolved, components)
                if rows:
                    out += ["| field | type | | |", "|---|---|---|---|", *rows, ""]
            answers = ", ".join(
                f"{code} `{_schema_name(r['content']['application/json']['schema'])}`"
                if "content" in r and "application/json" in r["content"] else str(code)
                for code, r in op.get("responses", {}).items()
            )  # fmt: skip
            out += [f"Responses: {answers}", ""]
            for code, answer in op.get("responses", {}).items():
                for header, about in answer.get("headers", {}).items():
                    out += [f"Header `{header}` ({code}): {about.get('description', '')}", ""]
    out += ["## Schemas", ""]
    for name, schema in sorted(components.items()):
        rows = _fields(schema, components)
        if rows:
            out += [f"### {name}", "", "| field | type | | |", "|---|---|---|---|", *rows, ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
