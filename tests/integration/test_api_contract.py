"""The API keeps the contract its OpenAPI schema states, checked by schemathesis.

Every operation of `/api/v1/openapi.json` is called by an admin with inputs generated from the
schema (valid ones, and invalid ones that must be refused with a declared 4xx) against a real
single-node devcluster of this module's own. Each answer must be no server error (a declared
502, an outside system refusing, aside), carry a status code the operation declares, and match
the declared body schema and content type.

What generated inputs may do is bounded (`_bounded`): they run as root on a shared test
machine, and the operations that would take the cluster itself away are left out (`EXCLUDED`).
"""

import json
import os
import re
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import checks
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from support import cli

from heron.api.docs import openapi
from heron.devcluster import DevCluster
from heron.tls import fingerprint
from heron.tls.certs import make_authority

# A bound per operation that keeps the whole module to about three minutes on a 2-core
# machine (about 130 operations, each example one HTTP call, both modes; 6 took 5.7 minutes).
# A longer search: HERON_CONTRACT_EXAMPLES=50 scripts/test tests/integration/test_api_contract.py
EXAMPLES = int(os.environ.get("HERON_CONTRACT_EXAMPLES") or 3)

# Operations left out, each with why:
EXCLUDED = {
    # Removes the node from the cluster (and its etcd member): every later call would answer
    # about a cluster that no longer is, and no client learns anything new about the schema.
    ("POST", "/api/v1/nodes/{name}/leave"),
    # Drains the only node: VMs stay where they are, but every create after it is refused, so
    # most of the operations below would only ever see the same 409.
    ("POST", "/api/v1/nodes/{name}/maintenance/enter"),
    # A server-sent event stream that never ends: a call cannot be validated as one answer.
    ("GET", "/api/v1/stream"),
}


def not_a_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's check, but for a 502 the operation declares: an outside system (a
    notification channel's receiver) refused, the server did not fail. status_code_conformance
    still refuses a 502 where it is not declared."""
    declared = case.operation.definition.raw.get("responses", {})
    if response.status_code == 502 and "502" in declared:
        return None
    return checks.not_a_server_error(ctx, response, case)


CHECKS = [
    not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


def _schema() -> Any:
    """The schema as the code states it (the test checks the node serves the same); loaded
    when the module is collected, so each operation is a test of its own."""
    config = SchemathesisConfig()
    project = config.projects.get_default()
    project.generation.update(
        max_examples=EXAMPLES,
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        no_shrink=True,
        database="none",
        # The admin's token is sent with every call; a generated one would only test 401s.
        with_security_parameters=False,
    )
    project.phases.update(phases=["examples", "fuzzing"])
    loaded = schemathesis.openapi.from_dict(openapi(), config=config)
    for method, path in EXCLUDED:
        loaded = loaded.exclude(method=method, path=path)
    return loaded


schema = _schema()


@pytest.fixture(scope="module")
def node(cluster1: tuple[DevCluster, str]) -> tuple[str, dict[str, str]]:
    """The node's URL and an admin's headers."""
    cluster, token = cluster1
    return cluster.nodes[0].url, {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def tls(cluster1: tuple[DevCluster, str]) -> ssl.SSLContext:
    """Trusts the node's cluster CA (and nothing else)."""
    return cluster1[0].tls()


def test_node_serves_this_schema(node: tuple[str, dict[str, str]], tls: ssl.SSLContext) -> None:
    url, _ = node
    assert httpx.get(f"{url}/api/v1/openapi.json", timeout=30, verify=tls).json() == openapi()


def test_vm_list_pages_and_filters(node: tuple[str, dict[str, str]], tls: ssl.SSLContext) -> None:
    url, headers = node
    api = httpx.Client(base_url=f"{url}/api/v1", headers=headers, timeout=60, verify=tls)
    assert api.post("/groups", json={"name": "paged"}).status_code == 201
    names = [f"paged-{i}" for i in range(5)]
    for name in names:
        reply = api.post("/vms", json={"name": name, "memory_mib": 16, "group": "paged"})
        assert reply.status_code == 202, reply.text
    assert api.post("/vms", json={"name": "other", "memory_mib": 16}).status_code == 202

    seen, cursor, pages = [], None, 0
    while True:
        params = {"group": "paged", "limit": 2} | ({"continue": cursor} if cursor else {})
        reply = api.get("/vms", params=params)
        assert reply.status_code == 200, reply.text
        seen += [vm["name"] for vm in reply.json()]
        pages += 1
        cursor = reply.headers.get("x-continue")
        if cursor is None:
            break
    assert (seen, pages) == (names, 3)
    everything = api.get("/vms").json()
    assert [vm["name"] for vm in everything] == sorted([*names, "other"])
    # The list renders each VM itself: it must read as the VM does on its own (but for its
    # status, which its node may write in between).
    alone = api.get(f"/vms/{everything[0]['id']}").json()
    assert alone.keys() == everything[0].keys()
    unsettled = ("state", "status")
    assert {k: v for k, v in alone.items() if k not in unsettled} == {
        k: v for k, v in everything[0].items() if k not in unsettled
    }
    assert "x-continue" not in api.get("/vms").headers
    assert [vm["name"] for vm in api.get("/vms", params={"power": "running"}).json()] == []
    refused = api.get("/vms", params={"continue": "not-a-token"})
    assert refused.status_code == 422
    assert refused.json()["fields"][0]["field"] == "query.continue"


def test_a_group_s_rules_change_unless_its_members_break_them(
    node: tuple[str, dict[str, str]], tls: ssl.SSLContext
) -> None:
    url, headers = node
    api = httpx.Client(base_url=f"{url}/api/v1", headers=headers, timeout=60, verify=tls)
    made = api.post("/groups", json={"name": "rules", "placement": "spread", "strict": False})
    assert made.status_code == 201, made.text
    for name in ("rules-1", "rules-2"):  # one node: a soft spread lets both onto it
        reply = api.post("/vms", json={"name": name, "memory_mib": 16, "group": "rules"})
        assert reply.status_code == 202, reply.text

    refused = api.patch("/groups/rules", json={"strict": True})
    assert refused.status_code == 409, refused.text
    body = refused.json()
    assert "rules-1, rules-2 on node1" in body["message"]
    assert body["fields"][0]["field"] == "body.strict"
    stored = next(g for g in api.get("/groups").json() if g["name"] == "rules")
    assert stored["strict"] is False  # a refusal writes nothing

    changed = api.patch(
        "/groups/rules",
        json={"placement": "together", "strict": True, "ha": {"enabled": True, "priority": 80}},
    )
    assert changed.status_code == 200, changed.text
    assert {k: changed.json()[k] for k in ("placement", "strict", "ha")} == {
        "placement": "together",
        "strict": True,
        "ha": {"enabled": True, "priority": 80},
    }
    kept = api.patch("/groups/rules", json={"ha": None}).json()
    assert (kept["placement"], kept["ha"]) == ("together", None)
    wrong = api.patch("/groups/rules", json={"placement": "apart"})
    assert wrong.status_code == 422 and wrong.json()["fields"][0]["field"] == "body.placement"
    assert api.patch("/groups/nope", json={"strict": True}).status_code == 404


def test_heron_group_set(cluster1: tuple[DevCluster, str], tmp_path: Path) -> None:
    cluster, token = cluster1
    env = {
        "HERON_URL": cluster.nodes[0].url,
        "HERON_TOKEN": token,
        "HERON_CA_FILE": str(cluster.ca_file),
        "HERON_CONFIG": str(tmp_path / "cli.json"),
    }
    cli(env, "group", "create", "viacli", "--placement", "spread", "--soft")
    for name in ("viacli-1", "viacli-2"):
        cli(env, "vm", "create", name, "--memory", "16M", "--group", "viacli")

    refused = cli(env, "group", "set", "viacli", "--strict", check=False)
    assert refused.returncode == 1, refused
    assert "viacli-1, viacli-2 on node1" in refused.stderr
    changed = cli(env, "group", "set", "viacli", "--placement", "together", "--strict",
                  "--ha-priority", "90")  # fmt: skip
    assert re.search(r"viacli\s+together\s+True\s+priority 90", changed.stdout), changed.stdout
    cli(env, "group", "set", "viacli", "--no-strict", "--clear-ha")
    group = next(
        g for g in json.loads(cli(env, "group", "list", "--json").stdout) if g["name"] == "viacli"
    )
    assert (group["placement"], group["strict"], group["ha"]) == ("together", False, None)
    assert cli(env, "group", "set", "viacli", check=False).returncode == 2  # nothing to change


def test_the_api_is_https_only_and_checked_against_the_cluster_ca(
    cluster1: tuple[DevCluster, str], tls: ssl.SSLContext
) -> None:
    cluster, _ = cluster1
    url = cluster.nodes[0].url
    assert url.startswith("https://")
    # Plain HTTP to the port gets no HTTP answer (the server wants a TLS handshake).
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https://", "http://") + "/api/v1/openapi.json", timeout=10)
    # A client that trusts another CA, or only the system's, refuses the node.
    stranger = ssl.create_default_context(cadata=make_authority("x", time.time()).certificate)
    for verify in (stranger, True):
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/api/v1/openapi.json", timeout=10, verify=verify)
    # The CA a client is offered before it logs in is the one the node's certificate chains to.
    offered = httpx.get(f"{url}/api/v1/auth/ca", timeout=10, verify=tls).json()
    assert offered["certificate"] == cluster.ca_file.read_text()
    assert offered["fingerprint"] == fingerprint(offered["certificate"])


def test_the_cli_pins_the_cluster_ca_at_login(
    cluster1: tuple[DevCluster, str], tmp_path: Path
) -> None:
    cluster, _ = cluster1
    env = {"HERON_CONFIG": str(tmp_path / "cli.json"), "HERON_URL": "", "HERON_TOKEN": ""}
    login = [
        "login",
        "--url",
        cluster.nodes[0].url,
        "--password",
        cluster.password_file.read_text().strip(),
    ]
    # (The question asked at a first login, and a changed CA: tests/unit/test_cli_tls.py.)
    cli(env, *login, "--ca-fingerprint", fingerprint(cluster.ca_file.read_text()))
    # Later commands check the node against the pinned CA, with no HERON_CA_FILE.
    assert "node1" in cli(env, "node", "list").stdout


def test_a_wrong_method_is_answered_with_the_allowed_ones(
    node: tuple[str, dict[str, str]], tls: ssl.SSLContext
) -> None:
    url, headers = node
    reply = httpx.delete(f"{url}/api/v1/vms", headers=headers, timeout=30, verify=tls)
    assert reply.status_code == 405
    assert reply.headers["allow"] == "GET, POST"


def _bounded(case: Any, scratch: Path) -> None:
    """Keep a generated call within what the test machine can take (see the module's doc)."""
    body = case.body if isinstance(case.body, dict) else None
    path, method = case.operation.path, case.method.upper()
    if body is None or method != "POST":
        return
    if path in ("/api/v1/vms", "/api/v1/vms/batch"):
        # Booting guests under TCG would starve the machine; a thousand VMs would too.
        body["start"] = False
        # A float is a count too: the API takes 1000.0 as 1000 (JSON has one number type).
        count = body.get("count")
        if isinstance(count, int | float) and not isinstance(count, bool) and count > 3:
            body["count"] = 3
    elif path == "/api/v1/pools":
        # Only a directory pool under the test's own directory: other types reach out to
        # servers, and a generated path would be created anywhere on this root-run machine.
        body["type"] = "dir"
        body["path"] = str(scratch / "pools")
    elif path == "/api/v1/imports/sources" and "host" in body:
        # Adding a vsphere source reads the certificate its host shows: only this machine's
        # loopback, on a port where nothing listens, is ever asked.
        body["host"] = "127.0.0.1"
        body["port"] = 9
    elif path == "/api/v1/pools/{name}/volumes/import":
        # Admins import node files; a generated path could name any of this machine's.
        body["path"] = str(scratch / "no-such-image.qcow2")


@schema.parametrize()
def test_api_keeps_its_contract(
    case: Any,
    node: tuple[str, dict[str, str]],
    cluster1: tuple[DevCluster, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    url, headers = node
    _bounded(case, tmp_path_factory.getbasetemp() / "contract")
    case.call_and_validate(
        base_url=url, headers=headers, checks=CHECKS, timeout=60, verify=str(cluster1[0].ca_file)
    )
