"""Authentication of peer connections: a mutual challenge-response over a shared secret key.

Every heron-io of a cluster (an ardfs pool) holds the same key (`IoConfig.peer_key_file`).
When a peer connection opens, before any request:

    server -> client  HELLO    magic "ARDH" u32 | version u16 | pad u16 | server nonce (32)
    client -> server  ANSWER   magic "ARDC" u32 | version u16 | pad u16 | client nonce (32) |
                               HMAC-SHA256(key, "heron-ardfs-peer-auth client" v ns nc) (32)
    server -> client  VERDICT  magic "ARDV" u32 | status u32 (0, or EACCES) |
                               HMAC-SHA256(key, "heron-ardfs-peer-auth server" v ns nc) (32)

The server serves nothing before the client's MAC checks out, and the client sends no request
before the server's does: neither side talks to someone without the key. Both nonces are
fresh and random, so a recorded handshake cannot be replayed; the labels keep one side's MAC
from being reflected back as the other's. This authenticates the opening of a connection; it
neither encrypts nor protects the bytes after it (someone able to rewrite traffic on the path
could still take over an open connection: that is what TLS after it is for, peertls.py).

The spare words of HELLO and ANSWER carry flags; bit 0 (TLS) says "this end can turn the
connection to TLS" (peertls.py). A release before them sends zero there and ignores them, so
old and new ends still agree: the connection turns to TLS after the verdict only when both
set the bit. A server that requires TLS answers a client that did not set it with the status
EPROTO (a client of an older release reads any non-zero status as a refusal). The flags are
not covered by the MACs (an older end could not check them): an attacker on the path can
clear them, which only the "require" mode resists.

The key file holds the key in hex (at least 32 bytes, 64 hex digits; surrounding whitespace
is ignored) and must not be readable by group or others (mode 0600 or stricter).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import os
import secrets
import socket
import stat
import struct
from pathlib import Path

from heron.ardfs.errors import ArdfsError

VERSION = 1
NONCE = 32
MIN_KEY = 32  # bytes
HANDSHAKE_TIMEOUT = 5.0  # a silent connection holds a server task no longer than this

HELLO = struct.Struct("<IHH32s")
ANSWER = struct.Struct("<IHH32s32s")
VERDICT = struct.Struct("<II32s")
HELLO_MAGIC = 0x48445241  # "ARDH" little-endian on the wire
ANSWER_MAGIC = 0x43445241  # "ARDC"
VERDICT_MAGIC = 0x56445241  # "ARDV"
TLS = 1  # flag: this end can turn the connection to TLS (peertls.py)
CLIENT = b"heron-ardfs-peer-auth client"
SERVER = b"heron-ardfs-peer-auth server"


class AuthError(ArdfsError):
    """The other end did not authenticate (or the handshake broke off)."""


class PeerKeyError(ArdfsError, ValueError):
    """The peer key file is missing, malformed, too short or readable by others."""


def _mac(key: bytes, label: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    message = label + struct.pack("<H", VERSION) + server_nonce + client_nonce
    return hmac.new(key, message, hashlib.sha256).digest()


async def _recv(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    """Exactly `size` bytes, and not one more (what follows stays in the socket)."""
    data = b""
    while len(data) < size:
        part = await loop.sock_recv(sock, size - len(data))
        if not part:
            raise AuthError("connection closed during authentication")
        data += part
    return data


async def accept(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    key: bytes,
    timeout: float = HANDSHAKE_TIMEOUT,
    *,
    offer: bool = False,
    require: bool = False,
) -> bool:
    """Server side: returns once the client proved it holds `key` (and was told we do too);
    raises AuthError otherwise. Nothing of the peer protocol is read before it returns.
    `offer`: say we can turn to TLS; `require`: refuse a client that does not. Whether the
    connection turns to TLS now (both said they can)."""
    try:
        async with asyncio.timeout(timeout):
            server_nonce = secrets.token_bytes(NONCE)
            flags = TLS if offer else 0
            await loop.sock_sendall(sock, HELLO.pack(HELLO_MAGIC, VERSION, flags, server_nonce))
            magic, version, answered, client_nonce, mac = ANSWER.unpack(
                await _recv(loop, sock, ANSWER.size)
            )
            if magic != ANSWER_MAGIC:
                raise AuthError(f"no authentication answer (magic {magic:#x})")
            if version != VERSION:
                raise AuthError(f"authentication version {version}, {VERSION} expected")
            if not hmac.compare_digest(mac, _mac(key, CLIENT, server_nonce, client_nonce)):
                # Say so before closing: the other node's log then names the cause.
                refusal = VERDICT.pack(VERDICT_MAGIC, errno.EACCES, bytes(32))
                with contextlib.suppress(OSError):
                    await loop.sock_sendall(sock, refusal)
                raise AuthError("wrong peer key")
            tls = offer and bool(answered & TLS)
            if require and not tls:
                refusal = VERDICT.pack(VERDICT_MAGIC, errno.EPROTO, bytes(32))
                with contextlib.suppress(OSError):
                    await loop.sock_sendall(sock, refusal)
                raise AuthError("the client does not speak TLS (an older release?): required")
            proof = _mac(key, SERVER, server_nonce, client_nonce)
            await loop.sock_sendall(sock, VERDICT.pack(VERDICT_MAGIC, 0, proof))
            return tls
    except TimeoutError:
        raise AuthError(f"no authentication within {timeout:g}s") from None
    except OSError as exc:
        raise AuthError(str(exc) or type(exc).__name__) from exc


async def connect(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    key: bytes,
    timeout: float = HANDSHAKE_TIMEOUT,
    *,
    want: bool = False,
    require: bool = False,
) -> bool:
    """Client side: returns once both ends proved they hold `key`; raises AuthError otherwise.
    `want`: say we can turn to TLS; `require`: give up on a server that cannot. Whether the
    connection turns to TLS now (both said they can)."""
    try:
        async with asyncio.timeout(timeout):
            magic, version, offered, server_nonce = HELLO.unpack(
                await _recv(loop, sock, HELLO.size)
            )
            if magic != HELLO_MAGIC:
                raise AuthError(f"the peer does not authenticate (magic {magic:#x})")
            if version != VERSION:
                raise AuthError(f"the peer authenticates with version {version}, not {VERSION}")
            tls = want and bool(offered & TLS)
            if require and not tls:
                raise AuthError("the peer does not offer TLS (an older release?): required")
            client_nonce = secrets.token_bytes(NONCE)
            mac = _mac(key, CLIENT, server_nonce, client_nonce)
            flags = TLS if tls else 0
            await loop.sock_sendall(
                sock, ANSWER.pack(ANSWER_MAGIC, VERSION, flags, client_nonce, mac)
            )
            magic, status, proof = VERDICT.unpack(await _recv(loop, sock, VERDICT.size))
            if magic != VERDICT_MAGIC:
                raise AuthError(f"bad authentication verdict (magic {magic:#x})")
            if status == errno.EPROTO:
                raise AuthError("the peer requires TLS, and this node cannot offer it")
            if status:
                raise AuthError("the peer refused our key (the nodes hold different peer keys)")
            if not hmac.compare_digest(proof, _mac(key, SERVER, server_nonce, client_nonce)):
                raise AuthError("the peer did not prove it holds the peer key")
            return tls
    except TimeoutError:
        raise AuthError(f"no authentication within {timeout:g}s") from None
    except OSError as exc:
        raise AuthError(str(exc) or type(exc).__name__) from exc


# -- the key file ------------------------------------------------------------------------------


def new_key() -> str:
    """A fresh key, in hex as the key file holds it."""
    return secrets.token_hex(MIN_KEY)


def read_key(path: Path) -> bytes:
    """The key in `path`; PeerKeyError with the reason if heron-io must not start with it."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise PeerKeyError(f"peer key file {path} does not exist") from None
    except OSError as exc:
        raise PeerKeyError(f"peer key file {path}: {exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise PeerKeyError(f"peer key file {path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise PeerKeyError(
            f"peer key file {path} is readable by others (mode {mode:04o}): it must be 0600"
        )
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise PeerKeyError(f"peer key file {path}: {exc}") from exc
    if not text:
        raise PeerKeyError(f"peer key file {path} is empty")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise PeerKeyError(f"peer key file {path} does not hold a key in hex") from None
    if len(key) < MIN_KEY:
        raise PeerKeyError(f"peer key in {path} has {len(key)} bytes, at least {MIN_KEY} needed")
    return key


def write_key(path: Path, key_hex: str) -> bool:
    """Write the key file (mode 0600 from its creation, replaced atomically); False if it
    already held exactly that."""
    content = key_hex.strip() + "\n"
    try:
        if path.read_text(encoding="ascii") == content and not path.stat().st_mode & 0o077:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    return True
