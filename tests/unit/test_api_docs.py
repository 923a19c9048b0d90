"""docs/api.md is generated from the OpenAPI schema: it must match the code."""

from pathlib import Path

from heron.api import docs


def test_api_reference_is_current() -> None:
    written = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    assert written == docs.render(), "run: python -m heron.api.docs > docs/api.md"


def test_every_route_is_under_api_v1_and_documented() -> None:
    spec = docs.openapi()
    assert spec["paths"] and all(path.startswith("/api/v1/") for path in spec["paths"])
    for path in (
        "/api/v1/vms/{ref}/actions/{action}",
        "/api/v1/pools/{name}/volumes",
        "/api/v1/tasks/{task_id}",
        "/api/v1/events",
        "/api/v1/auth/login",
    ):
        assert path in spec["paths"]
