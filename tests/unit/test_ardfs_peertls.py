"""Peer connections turn to TLS with the nodes' certificates when both ends can: big and small
requests go through the TLS sockets whole; a plain end (an older release) is talked to in the
clear unless TLS is required; a certificate not of the cluster, or not of the node called, is
refused; a renewed certificate serves the next connection. In-process, on loopback."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from heron.ardfs.chunkstore import ChunkStore
from heron.ardfs.peer import PeerClient, PeerServer, RemoteTarget
from heron.ardfs.peertls import PeerTls
from heron.ardfs.target import LocalTarget
from heron.ardfs.volume import UnavailableError
from heron.tls import Authority, NodeCredentials, issue, make_authority

VOL = "0" * 31 + "7"
KEY = bytes(range(32))
CLUSTER = make_authority("c1", time.time())
STRANGER = make_authority("c2", time.time())


def credentials(
    directory: Path, name: str, issuer: Authority = CLUSTER, mode: str = "prefer"
) -> PeerTls:
    node = NodeCredentials(directory / name)
    node.write(issue(issuer, [name, "127.0.0.1"], time.time()), CLUSTER.certificate)
    return PeerTls(node.key_file, node.cert_file, node.ca_file, mode)  # type: ignore[arg-type]


@dataclass
class Served:
    store: ChunkStore
    server: PeerServer
    port: int

    def client(self, tls: PeerTls | None, name: str = "n2") -> PeerClient:
        return PeerClient(name, "127.0.0.1", self.port, 30, key=KEY, tls=tls)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    store = ChunkStore(tmp_path / "disk")
    target = LocalTarget("d1", "n2", store)
    server = PeerServer({"d1": target}.get, key=KEY, tls=credentials(tmp_path, "n2"))
    port = await server.listen("127.0.0.1", 0)
    try:
        yield Served(store, server, port)
    finally:
        await server.close()
        store.close()


async def round_trip(client: PeerClient) -> None:
    """Writes and reads of 4 KiB (many in flight) and of a whole 4 MiB chunk."""
    disk = RemoteTarget("d1", client)
    small = [bytes([i]) * 4096 for i in range(32)]
    await asyncio.gather(
        *(disk.write(VOL, 1, i * 4096, memoryview(b), False, 1) for i, b in enumerate(small))
    )
    whole = bytes(range(256)) * (4 * 1024 * 1024 // 256)
    await disk.write(VOL, 2, 0, memoryview(whole), durable=True, epoch=1)
    back = [bytearray(4096) for _ in small]
    await asyncio.gather(
        *(disk.read_into(VOL, 1, i * 4096, memoryview(b)) for i, b in enumerate(back))
    )
    assert [bytes(b) for b in back] == small
    chunk = bytearray(len(whole))
    await disk.read_into(VOL, 2, 0, memoryview(chunk))
    assert chunk == whole


async def test_both_ends_with_certificates_talk_tls(served: Served, tmp_path: Path) -> None:
    client = served.client(credentials(tmp_path, "n1"))
    try:
        await round_trip(client)
        assert client.sock is not None and client.sock.version() == "TLSv1.3"  # type: ignore[attr-defined]
    finally:
        await client.close()


async def test_an_older_client_is_served_plain_unless_tls_is_required(served: Served) -> None:
    client = served.client(None)  # no certificate: as a heron-io of an older release
    try:
        await round_trip(client)
        assert not hasattr(client.sock, "version")
    finally:
        await client.close()
    assert served.server.tls is not None
    served.server.tls.mode = "require"
    client = served.client(None)
    try:
        with pytest.raises(UnavailableError, match="requires TLS"):
            await round_trip(client)
    finally:
        await client.close()


async def test_a_client_requiring_tls_gives_up_on_a_plain_server(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "disk")
    server = PeerServer({"d1": LocalTarget("d1", "n2", store)}.get, key=KEY)
    port = await server.listen("127.0.0.1", 0)
    tls = credentials(tmp_path, "n1", mode="require")
    client = PeerClient("n2", "127.0.0.1", port, 30, key=KEY, tls=tls)
    try:
        with pytest.raises(UnavailableError, match="does not offer TLS"):
            await round_trip(client)
    finally:
        await client.close()
        await server.close()
        store.close()


async def test_a_certificate_of_another_ca_is_refused(
    served: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="heron.ardfs.peer")
    # It holds the pool key and trusts the cluster CA, but its certificate is another's.
    client = served.client(credentials(tmp_path, "n1", issuer=STRANGER))
    try:
        # In TLS 1.3 the client is done with its handshake before the server has checked its
        # certificate: it learns of the refusal from the connection's end.
        with pytest.raises(UnavailableError, match="node n2"):
            await round_trip(client)
    finally:
        await client.close()
    assert not any((served.store.root / "volumes").iterdir())
    deadline = time.monotonic() + 10
    while not any("TLS handshake failed" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the server's warning"
        await asyncio.sleep(0.01)


async def test_the_server_must_be_the_node_called(served: Served, tmp_path: Path) -> None:
    # The server's certificate names n2: a client meaning to reach n3 there refuses it.
    client = served.client(credentials(tmp_path, "n1"), name="n3")
    try:
        with pytest.raises(UnavailableError, match="certificate is not valid for 'n3'"):
            await round_trip(client)
    finally:
        await client.close()


async def test_a_renewed_certificate_serves_the_next_connection(
    served: Served, tmp_path: Path
) -> None:
    tls = served.server.tls
    assert tls is not None
    first = served.client(credentials(tmp_path, "n1"))
    try:
        await round_trip(first)
        old = first.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        renewed = NodeCredentials(tmp_path / "n2")
        renewed.write(issue(CLUSTER, ["n2", "127.0.0.1"], time.time()), CLUSTER.certificate)
        second = served.client(credentials(tmp_path, "n1b"))
        try:
            await round_trip(second)
            new = second.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
            assert new != old
            assert new == renewed_der(renewed)
        finally:
            await second.close()
        await round_trip(first)  # the open connection goes on
    finally:
        await first.close()


def renewed_der(node: NodeCredentials) -> bytes:
    import ssl

    certificate = node.certificate()
    assert certificate is not None
    return ssl.PEM_cert_to_DER_cert(certificate)


def test_files_caught_mid_renewal_keep_the_loaded_certificate(tmp_path: Path) -> None:
    """A renewal replaces the key first: a connection opened just then uses the certificate
    loaded before instead of failing (or, in "prefer", going plain)."""
    tls = credentials(tmp_path, "n1")
    loaded = tls.contexts()
    other = issue(CLUSTER, ["n1"], time.time())
    tls.key_file.write_text(other.key)  # the new key, the old certificate
    assert tls.contexts() == loaded and tls.available()
    NodeCredentials(tmp_path / "n1").write(other, CLUSTER.certificate)  # the renewal done
    assert tls.contexts() != loaded
