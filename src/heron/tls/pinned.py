"""HTTPS to a server known by its certificate's SHA-256 fingerprint, not by a CA: an ESXi
host or vCenter with its own self-signed certificate (V2V's vsphere source).

The fingerprint is read once, when the administrator adds the server (`server_fingerprint`),
and pinned; every later connection (`PinnedHTTPSConnection`) compares the certificate the
server shows in its handshake with the pin before a byte is sent, and refuses a changed one
(`PinMismatch`), as SSH does a changed host key. No CA is consulted, so neither a public
certificate for the name nor a lost CA can stand in for the pinned one.
"""

import hashlib
import http.client
import socket
import ssl

from heron.errors import HeronError


class PinMismatch(HeronError):
    """The server shows another certificate than the one pinned."""


def _context() -> ssl.SSLContext:
    # The pin is the check: the chain and the name are not (a self-signed certificate for
    # whatever name the host was installed with is the rule on ESXi).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def der_fingerprint(der: bytes) -> str:
    """64 lower-case hex digits: SHA-256 of a certificate's DER."""
    return hashlib.sha256(der).hexdigest()


def server_fingerprint(host: str, port: int, timeout: float = 10.0) -> str:
    """The fingerprint of the certificate `host:port` shows now (a TLS handshake, nothing
    sent). Raises OSError when it cannot be reached or speaks no TLS."""
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        _context().wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise OSError(f"{host}:{port} shows no certificate")
    return der_fingerprint(der)


def check(der: bytes | None, pin: str, where: str) -> None:
    found = der_fingerprint(der) if der else "none"
    if found != pin:
        raise PinMismatch(
            f"{where} shows a certificate with SHA-256 fingerprint {found}, not the pinned "
            f"{pin}: refused (if the server's certificate was replaced, add the source again "
            "with the new fingerprint)"
        )


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection that refuses a server whose certificate is not the pinned one.
    `pin` is set on the class by `pinned_connection` (pyVmomi makes its own instances)."""

    pin: str = ""

    def __init__(
        self, host: str, port: int | None = None, timeout: float = 60.0, **_: object
    ) -> None:
        # pyVmomi passes its own context, left out: the pin is the check
        super().__init__(host, port, timeout=timeout, context=_context())

    def connect(self) -> None:
        super().connect()
        try:
            check(self.sock.getpeercert(binary_form=True), self.pin, f"{self.host}:{self.port}")
        except PinMismatch:
            self.close()
            raise


def pinned_connection(pin: str) -> type[PinnedHTTPSConnection]:
    """A connection class bound to one pin."""
    if len(pin) != 64:
        raise ValueError("a pin is a SHA-256 fingerprint: 64 hex digits")
    return type("Pinned", (PinnedHTTPSConnection,), {"pin": pin})
