"""Certificates: the cluster's authority, node certificates, and when one is due for renewal.

Pure: every function takes the time it works at, so the rules are tested without waiting.
Keys are ECDSA P-256: small, fast to make on every node, and understood by OpenSSL (Python,
etcd's Go TLS), GnuTLS (QEMU) and browsers alike.
"""

import datetime as dt
import hashlib
import ipaddress
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from heron.errors import HeronError

DAY = 86400.0
AUTHORITY_LIFETIME = 10 * 365 * DAY
NODE_LIFETIME = 365 * DAY
# A node certificate is renewed once less than this share of its life is left: a node that
# was down for months still renews on start, a running one months before the end.
RENEW_WHEN_LEFT = 1 / 3
# Certificates start an hour in the past: nodes' clocks differ a little, and one made on a
# node slightly ahead must not be "not yet valid" on the others.
CLOCK_SKEW = 3600.0


class TlsError(HeronError, ValueError):
    """A certificate or key that cannot serve: not a CA, not matching its key, expired..."""


@dataclass(frozen=True)
class Authority:
    """The cluster's certificate authority: its certificate and private key, both PEM."""

    certificate: str
    key: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)


@dataclass(frozen=True)
class Issued:
    """A node's certificate and private key, PEM."""

    certificate: str
    key: str


SigningKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


def fingerprint(certificate: str) -> str:
    """SHA-256 of the certificate's DER, as `openssl x509 -fingerprint -sha256` prints it."""
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(first_certificate(certificate))).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper()


def authority_name(certificate: str) -> str:
    """The cluster name `make_authority` put in a CA's common name (an administrator's own
    CA: its whole common name)."""
    cert = x509.load_pem_x509_certificate(first_certificate(certificate).encode())
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common = str(names[0].value) if names else ""
    return common.removeprefix("Heron cluster CA ") or "heron"


def first_certificate(pem: str) -> str:
    """The first certificate of a PEM chain (a node's file holds its own, then the CA's)."""
    end = "-----END CERTIFICATE-----"
    head, found, _ = pem.partition(end)
    if not found:
        raise TlsError("no PEM certificate found")
    return head[head.index("-----BEGIN CERTIFICATE-----") :] + end + "\n"


def make_authority(cluster: str, now: float, lifetime: float = AUTHORITY_LIFETIME) -> Authority:
    """A new self-signed CA for the cluster named `cluster` (any short string that tells
    clusters apart in a browser's certificate view)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Heron"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Heron cluster CA {cluster}"),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - CLOCK_SKEW))
        .not_valid_after(_utc(now + lifetime))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(_cert_pem(certificate), _key_pem(key))


def load_authority(certificate: str, key: str, now: float) -> Authority:
    """An administrator's own CA, checked: a CA certificate, valid now, and its key."""
    try:
        cert = x509.load_pem_x509_certificate(certificate.encode())
    except ValueError as exc:
        raise TlsError(f"the CA certificate is not a PEM certificate: {exc}") from exc
    try:
        private = serialization.load_pem_private_key(key.encode(), password=None)
    except TypeError as exc:
        raise TlsError("the CA key is encrypted: give it without a passphrase") from exc
    except ValueError as exc:
        raise TlsError(f"the CA key is not a PEM private key: {exc}") from exc
    if not isinstance(private, SigningKey):
        raise TlsError(f"the CA key's type ({type(private).__name__}) cannot sign certificates")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise TlsError("the CA certificate is not a CA (its basicConstraints lack CA:TRUE)")
    if private.public_key() != cert.public_key():
        raise TlsError("the CA key does not belong to the CA certificate")
    if not cert.not_valid_before_utc <= _utc(now) < cert.not_valid_after_utc:
        raise TlsError(
            f"the CA certificate is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} "
            f"to {cert.not_valid_after_utc:%Y-%m-%d})"
        )
    return Authority(_cert_pem(cert), _key_pem(private))


def issue(
    authority: Authority, names: Sequence[str], now: float, lifetime: float = NODE_LIFETIME
) -> Issued:
    """A certificate for a node, valid for `names` (host names and IP addresses; the first is
    its common name), for serving and for being a client (etcd and peers ask for both)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return Issued(
        _node_certificate(authority, names, key.public_key(), now, lifetime), _key_pem(key)
    )


def make_request(names: Sequence[str]) -> tuple[str, str]:
    """A new key and a certificate signing request for `names`, both PEM: what a joining
    node sends so that its key never leaves it."""
    if not names:
        raise TlsError("a certificate needs at least one name")
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), request.public_bytes(serialization.Encoding.PEM).decode()


MAX_REQUEST_NAMES = 32


def request_names(request: str) -> list[str]:
    """The names a signing request asks for (its subjectAltName), checked: a valid request
    signed by its own key, with 1 to MAX_REQUEST_NAMES names."""
    try:
        csr = x509.load_pem_x509_csr(request.encode())
        signed = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TlsError(f"not a PEM certificate signing request: {exc}") from exc
    if not signed:
        raise TlsError("the request's signature does not match its key")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise TlsError("the request names nothing (no subjectAltName)") from exc
    names = [str(n.value) for n in san if isinstance(n, x509.DNSName | x509.IPAddress)]
    if not 1 <= len(names) <= MAX_REQUEST_NAMES or len(names) != len(list(san)):
        raise TlsError(f"the request must name 1 to {MAX_REQUEST_NAMES} hosts or addresses")
    return names


def sign_request(
    authority: Authority, request: str, now: float, lifetime: float = NODE_LIFETIME
) -> str:
    """A node certificate (PEM) for the key and names of a signing request."""
    names = request_names(request)
    csr = x509.load_pem_x509_csr(request.encode())
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise TlsError(f"the request's key type ({type(public).__name__}) is not accepted")
    return _node_certificate(authority, names, public, now, lifetime)


def _node_certificate(
    authority: Authority,
    names: Sequence[str],
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    now: float,
    lifetime: float,
) -> str:
    if not names:
        raise TlsError("a certificate needs at least one name")
    ca_cert = x509.load_pem_x509_certificate(authority.certificate.encode())
    ca_key = serialization.load_pem_private_key(authority.key.encode(), password=None)
    assert isinstance(ca_key, SigningKey)
    # Never past the CA's own end: a chain is only as valid as its authority.
    until = min(_utc(now + lifetime), ca_cert.not_valid_after_utc)
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - CLOCK_SKEW))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(ca_key, _digest(ca_key))
    )
    return _cert_pem(certificate)


def expires_at(certificate: str) -> float:
    """When the (first) certificate in `certificate` ends, in seconds since the epoch."""
    try:
        cert = x509.load_pem_x509_certificate(first_certificate(certificate).encode())
    except ValueError as exc:
        raise TlsError(f"not a certificate: {exc}") from exc
    return cert.not_valid_after_utc.timestamp()


def due_for_renewal(
    certificate: str | None, authority: str, names: Iterable[str], now: float
) -> str | None:
    """Why the node's certificate must be (re)issued now, or None while it is good: missing,
    from another CA, for other names, or with less than RENEW_WHEN_LEFT of its life left."""
    if certificate is None:
        return "there is none"
    try:
        cert = x509.load_pem_x509_certificate(first_certificate(certificate).encode())
        ca_cert = x509.load_pem_x509_certificate(authority.encode())
    except (ValueError, TlsError):
        return "it cannot be read"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "another CA signed it"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        has = {str(n.value).lower() for n in san}
    except x509.ExtensionNotFound:
        has = set()
    want = {str(n.value).lower() for n in _general_names(list(names))}
    if has != want:
        return f"its names {sorted(has)} are not {sorted(want)}"
    start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    left = end - now
    if left < (end - start) * RENEW_WHEN_LEFT:
        return f"it expires in {max(left, 0) / DAY:.0f} days"
    return None


def _general_names(names: Sequence[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):  # unique, first order kept
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name.lower()))
    return result


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _digest(key: SigningKey) -> hashes.SHA256 | None:
    """Ed25519/Ed448 keys sign without a separate digest; the others with SHA-256."""
    return (
        None
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else hashes.SHA256()
    )


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)


def _cert_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: SigningKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
