"""etcd over TLS, the pure parts: signing requests, the first node's local CA, join tokens,
which endpoints speak TLS, and the flags an etcd member gets."""

import json
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from fakes.configdb import FakeConfigDB

from heron import herond
from heron.agent.certificates import (
    cluster_authority,
    forget_pending,
    join_cluster,
    local_authority,
    node_names,
    pending_authority,
)
from heron.configdb.client import EtcdTls, grpc_target, secure
from heron.configdb.etcd import EtcdMember
from heron.configdb.lease import ENDPOINTS_FILE, startup_endpoints
from heron.errors import ConfigDBError
from heron.services import cluster
from heron.tls import NodeCredentials, TlsError, due_for_renewal, make_authority
from heron.tls.certs import MAX_REQUEST_NAMES, make_request, request_names, sign_request

NOW = time.time()


def test_a_signing_request_keeps_its_key_and_gets_its_names() -> None:
    authority = make_authority("c", NOW)
    names = node_names("node7", "10.0.0.7")
    key, request = make_request(names)
    assert request_names(request) == names
    certificate = sign_request(authority, request, NOW)
    # The certificate is for the requester's own key, and renews as any other.
    cert = x509.load_pem_x509_certificate(certificate.encode())
    assert cert.public_key() == x509.load_pem_x509_csr(request.encode()).public_key()
    assert "PRIVATE KEY" in key and key not in certificate
    assert due_for_renewal(certificate, authority.certificate, names, NOW) is None


def test_a_bad_signing_request_is_refused() -> None:
    authority = make_authority("c", NOW)
    with pytest.raises(TlsError, match="not a PEM"):
        sign_request(authority, "nonsense", NOW)
    _, many = make_request([f"n{i}" for i in range(MAX_REQUEST_NAMES + 1)])
    with pytest.raises(TlsError, match="1 to"):
        request_names(many)


def test_the_first_node_makes_its_ca_and_certificate_before_etcd(tmp_path: Path) -> None:
    credentials = NodeCredentials(tmp_path / "tls")
    names = node_names("node1", "127.0.0.1")
    made = local_authority(credentials, names, None, NOW)
    assert credentials.authority() == made.certificate
    assert due_for_renewal(credentials.certificate(), made.certificate, names, NOW) is None
    pending = tmp_path / "tls" / "pending-ca.json"
    assert stat.S_IMODE(pending.stat().st_mode) == 0o600
    # Stopped before the CA reached the ConfigDB: the same CA again, the certificate kept.
    certificate = credentials.certificate()
    assert local_authority(credentials, names, None, NOW).fingerprint == made.fingerprint
    assert credentials.certificate() == certificate
    forget_pending(credentials)
    assert not pending_authority(credentials)


async def test_the_local_ca_is_the_one_stored(tmp_path: Path) -> None:
    db = FakeConfigDB()
    made = local_authority(NodeCredentials(tmp_path / "a"), ["a"], None, NOW)
    assert (await cluster_authority(db, None, made)).fingerprint == made.fingerprint
    other = local_authority(NodeCredentials(tmp_path / "b"), ["b"], None, NOW)
    with pytest.raises(TlsError, match="already has a CA"):
        await cluster_authority(db, None, other)


async def test_a_join_token_works_once_and_not_after_it_expires() -> None:
    clock = [1000.0]
    db = FakeConfigDB(clock=lambda: clock[0])
    token, _ = await cluster.new_join_token(db, "admin", 600)
    stored, _ = await db.list_raw_at("/heron/pki/join-tokens/")
    # Kept by its hash only: neither key nor value holds the token.
    assert len(stored) == 1 and token not in stored[0].key
    assert token.encode() not in stored[0].value
    assert await cluster.redeem_join_token(db, "wrong-" + token) is None
    assert await cluster.redeem_join_token(db, token) is not None
    assert await cluster.redeem_join_token(db, token) is None  # used up
    late, _ = await cluster.new_join_token(db, "admin", 60)
    clock[0] += 61  # its lease ran out
    assert await cluster.redeem_join_token(db, late) is None


def test_tls_is_told_by_the_endpoints_scheme() -> None:
    assert not secure(["127.0.0.1:2379", "http://h:2379"])
    assert secure(["https://h1:2379", "https://h2:2379"])
    with pytest.raises(ConfigDBError, match="mix"):
        secure(["https://h1:2379", "h2:2379"])
    assert grpc_target(["https://10.0.0.1:2379"]) == ("10.0.0.1", 2379)


def test_a_tls_member_asks_clients_and_peers_for_certificates(tmp_path: Path) -> None:
    tls = EtcdTls.in_state_dir(tmp_path)
    member = EtcdMember("n1", tmp_path / "etcd", 2379, 2380, host="10.0.0.1", tls=tls)
    command = member.command()
    assert member.endpoint == member.client_url == "https://10.0.0.1:2379"
    for flag in ("--client-cert-auth", "--peer-client-cert-auth"):
        assert flag in command
    assert command[command.index("--trusted-ca-file") + 1] == str(tls.ca_file)
    assert command[command.index("--peer-trusted-ca-file") + 1] == str(tls.ca_file)
    assert "https://10.0.0.1:2380" in command
    plain = EtcdMember("n1", tmp_path / "etcd", 2379, 2380)
    assert plain.endpoint == "127.0.0.1:2379" and "--client-cert-auth" not in plain.command()


def test_join_commands_of_a_tls_cluster_carry_the_token_and_fingerprint() -> None:
    record = cluster.JoinToken(created_by="admin", created_at=1.0, expires_at=2.0)
    found = cluster.instructions(["https://h1:2379"], ("tok", record, "https://h1:8443", "AA:BB"))
    assert found.etcd_tls and found.token == "tok" and found.expires_at == 2.0
    for command in found.commands:
        assert "tok" in command.command and "AA:BB" in command.command
    assert "--etcd-tls" in found.commands[1].command
    # Without a token (GET): placeholders, never a token.
    bare = cluster.instructions(["https://h1:2379"])
    assert bare.token is None and "<token>" in bare.commands[1].command


def test_herond_takes_tls_from_the_flag_or_the_scheme(tmp_path: Path) -> None:
    config = herond.parse(["--state-dir", str(tmp_path), "--embedded-etcd", "--etcd-tls"])
    assert config.etcd_tls and config.etcd == ["https://127.0.0.1:2379"]
    assert config.embedded_etcd is not None and config.embedded_etcd.tls is not None
    joined = herond.parse(
        ["--state-dir", str(tmp_path), "--etcd", "https://h1:2379", "--join", "https://h1:8443",
         "--join-token", "t" * 20, "--ca-fingerprint", "AA"]
    )  # fmt: skip
    assert joined.etcd_tls and joined.join == ("https://h1:8443", "t" * 20, "AA")
    plain = herond.parse(["--state-dir", str(tmp_path), "--etcd", "h1:2379"])
    assert not plain.etcd_tls and plain.etcd == ["h1:2379"]
    with pytest.raises(SystemExit):
        herond.parse(["--state-dir", str(tmp_path), "--join", "https://h1:8443"])


async def test_a_join_goes_over_https_only(tmp_path: Path) -> None:
    with pytest.raises(TlsError, match="https://"):
        await join_cluster("http://h1:8080", "t", "AA", NodeCredentials(tmp_path), ["n"])


def test_endpoints_saved_before_a_conversion_are_left_out(tmp_path: Path) -> None:
    (tmp_path / ENDPOINTS_FILE).write_text(json.dumps(["h1:2379", "h2:2379"]))
    assert startup_endpoints(["https://h1:2379"], tmp_path) == ["https://h1:2379"]
    assert startup_endpoints(["h1:2379"], tmp_path) == ["h1:2379", "h2:2379"]
