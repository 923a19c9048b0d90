"""The OpenAPI document states the contract the app keeps (no cluster needed to read it)."""

from typing import Any

import pytest

from heron.api.docs import openapi
from heron.models.common import NAME_PATTERN

SPEC = openapi()
OPERATIONS = [
    (method.upper(), path, op) for path, ops in SPEC["paths"].items() for method, op in ops.items()
]
ERROR = {"$ref": "#/components/schemas/ErrorBody"}


def _ids(value: Any) -> str:
    return f"{value[0]} {value[1]}" if isinstance(value, tuple) else ""


@pytest.mark.parametrize("operation", OPERATIONS, ids=_ids)
def test_every_error_answer_is_declared_with_the_error_body(operation: tuple) -> None:
    method, path, op = operation
    responses = op["responses"]
    assert {"401", "503"} <= responses.keys()
    if "{" in path:
        assert "404" in responses
    if method != "GET":
        assert "409" in responses
    for code, answer in responses.items():
        if int(code) >= 400:
            assert answer["content"]["application/json"]["schema"] == ERROR, code


def test_role_checks_declare_403_and_viewer_reads_do_not() -> None:
    by_key = {(m, p): op for m, p, op in OPERATIONS}
    assert "403" in by_key[("POST", "/api/v1/vms")]["responses"]
    assert "403" in by_key[("POST", "/api/v1/pools")]["responses"]
    assert "403" not in by_key[("GET", "/api/v1/vms")]["responses"]
    assert "security" not in by_key[("POST", "/api/v1/auth/login")]
    assert by_key[("GET", "/api/v1/vms")]["security"] == [{"bearer": []}]


def test_fastapis_validation_error_shape_is_gone() -> None:
    schemas = SPEC["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ErrorBody" in schemas


def test_names_carry_their_pattern_in_bodies_and_paths() -> None:
    vm_create = SPEC["components"]["schemas"]["VMCreate"]["properties"]
    assert vm_create["name"]["pattern"] == NAME_PATTERN
    get_vm = SPEC["paths"]["/api/v1/vms/{ref}"]["get"]
    (ref,) = [p for p in get_vm["parameters"] if p["name"] == "ref"]
    assert ref["schema"]["pattern"] == NAME_PATTERN
    assert ref["schema"]["maxLength"] == 63


def test_the_paged_list_declares_its_parameters_and_cursor_header() -> None:
    list_vms = SPEC["paths"]["/api/v1/vms"]["get"]
    names = {p["name"] for p in list_vms["parameters"]}
    assert {"limit", "continue", "node", "state", "power", "group"} <= names
    assert "X-Continue" in list_vms["responses"]["200"]["headers"]
