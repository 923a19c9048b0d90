"""A node's TLS credentials in its state directory, and the contexts made from them.

The one place that says where this node's key and certificate and the cluster CA are: the
API's server context and the node-to-node clients come from here, and so will etcd's,
migration's, heron-io's and the console relay's.
"""

import contextlib
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from heron.tls.certs import Issued, TlsError, first_certificate


class NodeCredentials:
    """`directory` holds node-key.pem (0600), node-cert.pem (the node's certificate followed
    by the CA's, the chain it serves) and ca-cert.pem (the cluster CA, what peers are
    checked against)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.key_file = directory / "node-key.pem"
        self.cert_file = directory / "node-cert.pem"
        self.ca_file = directory / "ca-cert.pem"

    def certificate(self) -> str | None:
        """The node's own certificate (PEM), or None before the first is issued."""
        try:
            return first_certificate(self.cert_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def authority(self) -> str | None:
        try:
            return self.ca_file.read_text()
        except FileNotFoundError:
            return None

    def write(self, issued: Issued, authority: str) -> None:
        """Replace the credentials, each file atomically (a reader sees the old or the new
        one). The key goes first; a server reloads only after write() has returned."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _replace(self.key_file, issued.key, 0o600)
        _replace(self.cert_file, issued.certificate + authority, 0o644)
        _replace(self.ca_file, authority, 0o644)

    def server_context(self) -> ssl.SSLContext:
        """What the node serves with; `reload` it after `write` and new connections get the
        new certificate while open ones go on."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.reload(context)
        return context

    def reload(self, context: ssl.SSLContext) -> None:
        context.load_cert_chain(self.cert_file, self.key_file)

    def snapshot(self) -> tuple[str, str, str]:
        """(key, certificate chain, CA) as they are now, all three of one issue: a renewal
        replaces the files one by one, so a key read just before it and a chain read just
        after would not match; such a read is made again."""
        for _ in range(5):
            key, chain = self.key_file.read_text(), self.cert_file.read_text()
            ca = self.ca_file.read_text()
            if _matches(key, chain) and chain.endswith(ca):
                return key, chain, ca
        raise TlsError(f"the node key and certificate in {self.directory} do not match")

    def export_for_qemu(self, directory: Path) -> None:
        """Copy the credentials into `directory` (made 0700) under the names QEMU's
        `tls-creds-x509` object reads: ca-cert.pem, server-cert.pem/server-key.pem and
        client-cert.pem/client-key.pem (a node certificate serves as both: it carries both
        purposes). QEMU reads them when the object is made, so the copy may go right after;
        a renewal meanwhile leaves it alone."""
        key, chain, ca = self.snapshot()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _replace(directory / "ca-cert.pem", ca, 0o644)
        for side in ("server", "client"):
            _replace(directory / f"{side}-key.pem", key, 0o600)
            _replace(directory / f"{side}-cert.pem", chain, 0o644)

    def client_context(self) -> ssl.SSLContext:
        """For calls to other nodes: their certificate must chain to the cluster CA and name
        the address called. (No other CA is trusted: a peer is a node of this cluster.)"""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def _matches(key: str, chain: str) -> bool:
    """Whether `key` is the private key of the first certificate of `chain`."""
    try:
        private = serialization.load_pem_private_key(key.encode(), password=None)
        cert = x509.load_pem_x509_certificate(first_certificate(chain).encode())
    except (ValueError, TypeError, TlsError):
        return False
    return bool(private.public_key() == cert.public_key())


def _replace(path: Path, text: str, mode: int) -> None:
    temporary = path.with_name(path.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
