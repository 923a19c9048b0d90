"""The cluster PKI: CA, node certificates, the renewal rule, and a context that serves a
renewed certificate without a restart (real TLS handshakes on loopback)."""

import asyncio
import datetime as dt
import ssl
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fakes.configdb import FakeConfigDB

from heron import herond
from heron.agent.certificates import CertificateKeeper, cluster_authority, node_names
from heron.configdb import keys
from heron.models.cluster import ClusterAuthority
from heron.tls import NodeCredentials, TlsError, due_for_renewal, issue, load_authority
from heron.tls.certs import DAY, fingerprint, first_certificate, make_authority

NOW = time.time()
NAMES = ["node1", "10.0.0.5", "localhost", "127.0.0.1"]


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(first_certificate(pem).encode())


def test_a_node_certificate_names_the_node_and_chains_to_the_cluster_ca() -> None:
    authority = make_authority("c1", NOW)
    issued = issue(authority, NAMES, NOW)
    cert = _cert(issued.certificate)
    cert.verify_directly_issued_by(_cert(authority.certificate))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node1", "localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5", "127.0.0.1"]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert due_for_renewal(issued.certificate, authority.certificate, NAMES, NOW) is None


def test_the_fingerprint_is_openssls_sha256_form() -> None:
    authority = make_authority("c1", NOW)
    der = _cert(authority.certificate).public_bytes(serialization.Encoding.DER)
    want = ":".join(f"{b:02X}" for b in _sha(der))
    assert fingerprint(authority.certificate) == want
    assert authority.fingerprint == want and len(want) == 95


def _sha(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def test_renewal_starts_when_less_than_a_third_of_the_life_is_left() -> None:
    authority = make_authority("c1", NOW)
    issued = issue(authority, NAMES, NOW, lifetime=300 * DAY)
    cert = _cert(issued.certificate)
    start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    third = start + (end - start) * 2 / 3
    assert due_for_renewal(issued.certificate, authority.certificate, NAMES, third - 60) is None
    reason = due_for_renewal(issued.certificate, authority.certificate, NAMES, third + 60)
    assert reason is not None and "expires in 100 days" in reason
    expired = due_for_renewal(issued.certificate, authority.certificate, NAMES, end + DAY)
    assert expired == "it expires in 0 days"


def test_renewal_when_missing_or_from_another_ca_or_for_other_names() -> None:
    authority, other = make_authority("c1", NOW), make_authority("c2", NOW)
    issued = issue(authority, NAMES, NOW)
    assert due_for_renewal(None, authority.certificate, NAMES, NOW) == "there is none"
    assert due_for_renewal("garbage", authority.certificate, NAMES, NOW) == "it cannot be read"
    assert due_for_renewal(issued.certificate, other.certificate, NAMES, NOW) == (
        "another CA signed it"
    )
    moved = [*NAMES[:1], "10.0.0.6", *NAMES[2:]]
    reason = due_for_renewal(issued.certificate, authority.certificate, moved, NOW)
    assert reason is not None and "10.0.0.6" in reason


def test_a_node_certificate_never_outlives_its_ca() -> None:
    authority = make_authority("c1", NOW, lifetime=30 * DAY)
    cert = _cert(issue(authority, NAMES, NOW, lifetime=365 * DAY).certificate)
    assert cert.not_valid_after_utc == _cert(authority.certificate).not_valid_after_utc


def _self_signed(ca: bool, not_after: float = NOW + DAY) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "own")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime.fromtimestamp(NOW - DAY, dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(not_after, dt.UTC))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def test_an_administrators_own_ca_is_checked_then_signs() -> None:
    cert, key = _self_signed(ca=True)
    own = load_authority(cert, key, NOW)
    issued = issue(own, NAMES, NOW)
    assert due_for_renewal(issued.certificate, own.certificate, NAMES, NOW) is None
    leaf, leaf_key = _self_signed(ca=False)
    with pytest.raises(TlsError, match="not a CA"):
        load_authority(leaf, leaf_key, NOW)
    with pytest.raises(TlsError, match="does not belong"):
        load_authority(cert, leaf_key, NOW)
    with pytest.raises(TlsError, match="not valid now"):
        load_authority(*_self_signed(ca=True, not_after=NOW - 60), NOW)
    with pytest.raises(TlsError, match="not a PEM certificate"):
        load_authority("nonsense", key, NOW)
    with pytest.raises(TlsError, match="not a PEM private key"):
        load_authority(cert, "nonsense", NOW)


def test_credentials_keep_the_key_private(tmp_path: Path) -> None:
    authority = make_authority("c1", NOW)
    credentials = NodeCredentials(tmp_path / "tls")
    credentials.write(issue(authority, NAMES, NOW), authority.certificate)
    assert stat.S_IMODE(credentials.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(credentials.directory.stat().st_mode) == 0o700
    assert credentials.authority() == authority.certificate
    # the chain served: the node's certificate, then the CA's
    assert credentials.cert_file.read_text().endswith(authority.certificate)


def test_credentials_exported_for_qemu_under_its_names(tmp_path: Path) -> None:
    """What a migration gives QEMU's tls-creds-x509: the key private, one certificate for
    both ends, the CA; and never a key of one issue with the certificate of the next."""
    authority = make_authority("c1", NOW)
    credentials = NodeCredentials(tmp_path / "tls")
    issued = issue(authority, NAMES, NOW)
    credentials.write(issued, authority.certificate)
    copy = tmp_path / "qemu"
    credentials.export_for_qemu(copy)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o700
    assert (copy / "ca-cert.pem").read_text() == authority.certificate
    for side in ("server", "client"):
        assert (copy / f"{side}-key.pem").read_text() == issued.key
        assert stat.S_IMODE((copy / f"{side}-key.pem").stat().st_mode) == 0o600
        assert (copy / f"{side}-cert.pem").read_text() == credentials.cert_file.read_text()
    # Caught between a renewal's files: a new key beside the old certificate is no snapshot.
    credentials.key_file.write_text(issue(authority, NAMES, NOW).key)
    with pytest.raises(TlsError, match="do not match"):
        credentials.snapshot()


async def _served_serial(port: int, client: ssl.SSLContext) -> int:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_renewed_certificate_is_served_to_new_connections_without_a_restart(
    tmp_path: Path,
) -> None:
    db = FakeConfigDB()
    authority = await cluster_authority(db)
    assert (await cluster_authority(db)).fingerprint == authority.fingerprint  # kept, not remade
    credentials = NodeCredentials(tmp_path / "tls")
    keeper = CertificateKeeper(db, credentials, node_names("node1", "127.0.0.1"), lifetime=90 * DAY)
    # Issued 61 days ago for 90: still good, and due within two days (under a third left).
    assert await keeper.ensure(NOW - 61 * DAY)
    server_context = credentials.server_context()
    keeper.serving.append(server_context)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # hold the connection open until the client goes
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client = credentials.client_context()
    async with server:
        first = await _served_serial(port, client)
        assert first == _cert(credentials.cert_file.read_text()).serial_number
        assert not await keeper.ensure(NOW - 2 * DAY)
        assert await keeper.ensure(NOW)
        renewed = _cert(credentials.cert_file.read_text()).serial_number
        assert renewed != first
        assert await _served_serial(port, client) == renewed

        # A client that trusts another CA is refused: the peer is checked, not just encrypted.
        stranger = NodeCredentials(tmp_path / "other")
        other = make_authority("c2", NOW)
        stranger.write(issue(other, ["x"], NOW), other.certificate)
        with pytest.raises(ssl.SSLCertVerificationError):
            await _served_serial(port, stranger.client_context())
        server.close()


async def test_a_different_own_ca_is_refused_once_the_cluster_has_one(tmp_path: Path) -> None:
    db = FakeConfigDB()
    made = await cluster_authority(db)
    cert, key = _self_signed(ca=True)
    (tmp_path / "ca.pem").write_text(cert)
    (tmp_path / "ca.key").write_text(key)
    with pytest.raises(TlsError, match="already has a CA"):
        await cluster_authority(db, (tmp_path / "ca.pem", tmp_path / "ca.key"))
    stored = await db.get(ClusterAuthority, keys.CLUSTER_CA)
    assert stored is not None and stored.value.certificate == made.certificate


def test_node_names_add_loopback_and_drop_a_wildcard_address() -> None:
    assert node_names("n1", "10.0.0.5", ["n1.example"]) == [
        "n1", "10.0.0.5", "n1.example", "localhost", "127.0.0.1", "::1",
    ]  # fmt: skip
    assert node_names("n1", "0.0.0.0") == ["n1", "localhost", "127.0.0.1", "::1"]


def test_herond_serves_https_unless_plain_http_is_asked_for() -> None:
    base = ["--name", "n1", "--state-dir", "/tmp/none"]
    assert not herond.parse(base).insecure_http
    config = herond.parse([*base, "--insecure-http", "--cert-name", "n1.example"])
    assert config.insecure_http and config.cert_names == ("n1.example",)
    own = herond.parse([*base, "--ca-cert", "ca.pem", "--ca-key", "ca.key"]).own_ca
    assert own == (Path("ca.pem"), Path("ca.key"))
    with pytest.raises(SystemExit):
        herond.parse([*base, "--ca-cert", "ca.pem"])  # the key is missing
