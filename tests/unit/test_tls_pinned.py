"""HTTPS pinned to a certificate's fingerprint (heron.tls.pinned), against a TLS server of the
test's own on loopback: the fingerprint read, a request sent under the right pin, and under
a wrong one refused before a byte of the request leaves."""

import datetime as dt
import hashlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import wait_for

from heron.tls.pinned import PinMismatch, pinned_connection, server_fingerprint


def self_signed(folder: Path) -> tuple[ssl.SSLContext, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "esx.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (folder / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "c.pem", folder / "k.pem")
    return context, hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, str, list[bytes]]]:
    """A TLS server answering each connection with one HTTP reply; what it received."""
    context, pin = self_signed(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(raw, server_side=True) as tls:
                    tls.settimeout(5)
                    data = tls.recv(65536)
                    received.append(data)
                    if data:
                        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            except (OSError, ssl.SSLError):
                received.append(b"")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], pin, received
    stop.set()
    socket.create_connection(listener.getsockname(), timeout=5).close()  # wakes its accept
    thread.join(10)
    listener.close()


def test_the_fingerprint_read_is_the_certificate_s(server: tuple[int, str, list[bytes]]) -> None:
    port, pin, _ = server
    assert server_fingerprint("127.0.0.1", port) == pin


def test_the_right_pin_talks_a_wrong_one_sends_nothing(
    server: tuple[int, str, list[bytes]],
) -> None:
    port, pin, received = server
    right = pinned_connection(pin)("127.0.0.1", port, timeout=10)
    right.request("GET", "/folder/x")
    assert right.getresponse().read() == b"ok"
    right.close()
    assert received[-1].startswith(b"GET /folder/x")

    wrong = pinned_connection("00" * 32)("127.0.0.1", port, timeout=10)
    with pytest.raises(PinMismatch, match=pin):
        wrong.request("GET", "/folder/secret", headers={"Cookie": "session"})
    wait_for(lambda: len(received) >= 2, 10, "the server to see the refused connection")
    assert all(b"secret" not in data for data in received)


def test_a_pin_is_64_hex_digits() -> None:
    with pytest.raises(ValueError):
        pinned_connection("abc")
