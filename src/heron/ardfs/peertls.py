"""TLS on peer connections: the node certificates of the cluster, on both ends.

A peer connection opens with the pool-key handshake (peerauth.py), in the clear as before.
In it each side says whether it can speak TLS (a bit in the spare word of its HELLO or
ANSWER); when both can, the connection turns to TLS right after the verdict, before the first
request, the client of the peer protocol being the TLS client. Both ends then show their
node certificate and check the other's against the cluster CA (mutual TLS); the client also
checks that the server's certificate names the node it meant to reach. So a request travels
only between nodes that hold the pool's key *and* a certificate of the cluster, encrypted and
protected against changes on the way.

Why both: the pool key says "a member of this pool", the certificate "a node of this
cluster" and its name which one; the key is kept, so a node of the cluster that is not a
member of the pool is still refused, and a heron-io of an older release, which knows only the
key, can still be talked to while a cluster is being upgraded.

`mode` says what happens with such a peer: "prefer" (a cluster being upgraded) talks to it in
the clear; "require" (every member runs a release with TLS: the agent switches by SIGHUP)
refuses it, and refuses a client that does not turn to TLS. Only "require" shuts out an
attacker on the path who strips the bits from the handshake.

The files are read for each new connection once they changed (their modification times), so
a renewed certificate is used from the next connection on; open connections go on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Mode = Literal["prefer", "require"]


class TlsHandshakeError(ConnectionError):
    """The TLS handshake failed: a certificate not of the cluster, the wrong node, ..."""


@dataclass
class PeerTls:
    """This node's key, certificate chain and the cluster CA (PEM files), and the mode."""

    key_file: Path
    cert_file: Path
    ca_file: Path
    mode: Mode = "prefer"
    _loaded: tuple[tuple[int, ...], ssl.SSLContext, ssl.SSLContext] | None = field(
        default=None, repr=False
    )

    @property
    def required(self) -> bool:
        return self.mode == "require"

    def _stamp(self) -> tuple[int, ...]:
        stamp: list[int] = []
        for path in (self.key_file, self.cert_file, self.ca_file):
            info = os.stat(path)
            stamp += [info.st_mtime_ns, info.st_ino, info.st_size]
        return tuple(stamp)

    def contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """(server, client) contexts from the files as they are now; made again only when a
        file changed. OSError or ssl.SSLError when they cannot be read."""
        stamp = self._stamp()
        if self._loaded is not None and self._loaded[0] == stamp:
            return self._loaded[1], self._loaded[2]
        try:
            server, client = self._make()
        except (OSError, ssl.SSLError) as exc:
            if self._loaded is None:
                raise
            # Caught between the renewal's files (a new key, the old certificate): the
            # certificate loaded before serves until the files agree again.
            log.warning("peer TLS: keeping the loaded certificate: %s", exc)
            return self._loaded[1], self._loaded[2]
        if self._loaded is not None:
            log.info("peer TLS: loaded the renewed certificate")
        self._loaded = (stamp, server, client)
        return server, client

    def _make(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname, CERT_REQUIRED
        for context in (server, client):
            # Both ends are heron-io of this release: TLS 1.3, no renegotiation to handle on
            # the non-blocking sockets (sender.py, receiver.py).
            context.minimum_version = ssl.TLSVersion.TLSv1_3
            context.load_cert_chain(self.cert_file, self.key_file)
            context.load_verify_locations(cafile=str(self.ca_file))
        server.verify_mode = ssl.CERT_REQUIRED  # a client shows a certificate of the CA too
        return server, client

    def available(self) -> bool:
        """Whether the files can be read now (a node whose certificate is not written yet
        offers no TLS rather than failing)."""
        try:
            self.contexts()
        except (OSError, ssl.SSLError) as exc:
            log.warning("peer TLS unavailable: %s", exc)
            return False
        return True


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, write: bool) -> None:
    future: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await future
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def wrap(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    tls: PeerTls,
    *,
    server_hostname: str | None,
    timeout: float,
) -> ssl.SSLSocket:
    """Turn the connected, non-blocking `sock` into a TLS socket (a server when
    `server_hostname` is None, else a client checking the server is that node) and complete
    the handshake. `sock` must not be used afterwards (the TLS socket took its descriptor).
    Raises TlsHandshakeError; OSError."""
    server, client = tls.contexts()
    if server_hostname is None:
        wrapped = server.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    else:
        wrapped = client.wrap_socket(
            sock, server_hostname=server_hostname, do_handshake_on_connect=False
        )
    wrapped.setblocking(False)
    fd = wrapped.fileno()
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    wrapped.do_handshake()
                    return wrapped
                except ssl.SSLWantReadError:
                    await _ready(loop, fd, write=False)
                except ssl.SSLWantWriteError:
                    await _ready(loop, fd, write=True)
    except TimeoutError:
        wrapped.close()
        raise TlsHandshakeError(f"no TLS handshake within {timeout:g}s") from None
    except ssl.SSLError as exc:
        wrapped.close()
        why = getattr(exc, "verify_message", None) or exc.reason or exc
        raise TlsHandshakeError(f"TLS handshake failed: {why}") from exc
    except BaseException:
        wrapped.close()
        raise
