"""The parts of heron.configdb.store that need no etcd: the gRPC target and the Txn builder."""

from __future__ import annotations

import json

import pytest

from heron.configdb.client import grpc_target
from heron.configdb.store import Txn
from heron.models import Pool


def joined(endpoints: list[str]) -> str:
    """The target string aetcd dials: it joins host and port with a colon."""
    host, port = grpc_target(endpoints)
    return f"{host}:{port}"


def test_one_endpoint() -> None:
    assert grpc_target(["127.0.0.1:2379"]) == ("127.0.0.1", 2379)


def test_one_endpoint_with_scheme() -> None:
    assert grpc_target(["http://10.0.0.5:12379"]) == ("10.0.0.5", 12379)


def test_one_hostname_endpoint() -> None:
    assert grpc_target(["etcd.example:2379"]) == ("etcd.example", 2379)


def test_three_endpoints_make_one_ipv4_target() -> None:
    endpoints = ["127.0.0.1:2379", "127.0.0.2:22379", "127.0.0.3:32379"]
    host, port = grpc_target(endpoints)
    assert port == 32379
    assert host == "ipv4:127.0.0.1:2379,127.0.0.2:22379,127.0.0.3"
    assert joined(endpoints) == "ipv4:127.0.0.1:2379,127.0.0.2:22379,127.0.0.3:32379"


def test_three_endpoints_with_scheme() -> None:
    endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"]
    assert joined(endpoints) == "ipv4:10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379"


def test_every_address_appears_once_in_order() -> None:
    endpoints = [f"127.0.0.{i}:{2000 + i}" for i in range(1, 6)]
    target = joined(endpoints)
    assert target.removeprefix("ipv4:").split(",") == endpoints


# -- Txn -------------------------------------------------------------------------------------


def test_empty_txn() -> None:
    txn = Txn()
    assert (txn.checks, txn.puts, txn.deletes) == ([], [], [])


def test_txn_builder_chains_and_records_in_order() -> None:
    pool = Pool(name="p1", created_at=1.0)
    txn = (
        Txn()
        .require_absent("/heron/names/pool/p1")
        .require_revision("/heron/pools/p0", 42)
        .require_revision("/heron/pools/p2", 0)
        .put("/heron/pools/p1", pool)
        .put("/heron/names/pool/p1", "p1", lease=7)
        .delete("/heron/pools/p0")
    )
    assert txn.checks == [
        ("version", "/heron/names/pool/p1", 0),
        ("mod", "/heron/pools/p0", 42),
        ("mod", "/heron/pools/p2", 0),
    ]
    assert [(k, lease) for k, _, lease in txn.puts] == [
        ("/heron/pools/p1", 0),
        ("/heron/names/pool/p1", 7),
    ]
    assert txn.deletes == ["/heron/pools/p0"]


def test_txn_put_encodes_models_as_json_and_strings_as_utf8() -> None:
    pool = Pool(name="p1", path="/srv/pool", shared=True, created_at=1.5)
    txn = Txn().put("/a", pool).put("/b", "héron")
    (_, model_bytes, _), (_, text_bytes, _) = txn.puts
    assert isinstance(model_bytes, bytes)
    assert json.loads(model_bytes) == pool.model_dump(mode="json")
    assert Pool.model_validate_json(model_bytes) == pool
    assert text_bytes == "héron".encode()


def test_txn_put_encodes_at_put_time() -> None:
    pool = Pool(name="p1", created_at=1.0)
    txn = Txn().put("/a", pool)
    pool.shared = True  # a later change to the model does not alter the queued write
    assert json.loads(txn.puts[0][1])["shared"] is False


def test_txns_do_not_share_state() -> None:
    first = Txn().put("/a", "1").require_absent("/a").delete("/b")
    second = Txn()
    assert (second.checks, second.puts, second.deletes) == ([], [], [])
    assert len(first.checks) == len(first.puts) == len(first.deletes) == 1


@pytest.mark.parametrize("revision", [0, 1, 10**12])
def test_require_revision_keeps_the_number(revision: int) -> None:
    assert Txn().require_revision("/k", revision).checks == [("mod", "/k", revision)]


def test_records_from_a_newer_version_are_read_without_their_new_fields() -> None:
    import json

    import pytest
    from pydantic import ValidationError

    from heron.configdb.store import parse
    from heron.models.vm import VM, VMSpec

    vm = VM(id="x", spec=VMSpec(name="web"), node="n1", created_at=1.0)
    newer = json.loads(vm.model_dump_json())
    newer["placement_hint"] = "rack-4"  # a field a later version added
    newer["spec"]["tpm"] = {"version": "2.0"}
    assert parse(VM, json.dumps(newer).encode()) == vm
    broken = json.loads(vm.model_dump_json())
    broken["spec"]["vcpus"] = "many"  # a real error still fails
    with pytest.raises(ValidationError):
        parse(VM, json.dumps(broken).encode())
    with pytest.raises(ValidationError):  # API input stays strict
        VMSpec.model_validate({"name": "web", "cpus": 2})
