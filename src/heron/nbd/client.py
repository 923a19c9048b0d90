"""A small NBD client: enough to read a QEMU (or qemu-nbd, or heron-io) export.

It speaks fixed newstyle negotiation with structured replies, chooses meta contexts
(`base:allocation`, QEMU's `qemu:dirty-bitmap:NAME`) with OPT_SET_META_CONTEXT, opens the
export with OPT_GO, and then sends READ and BLOCK_STATUS, one request at a time, on a
blocking socket: the callers are threads (the DR replication reads a view of a VM's disk in
a worker thread and hands chunks to the store), and one 4 MiB read at a time keeps a Unix
socket busy.

Why not a library: libnbd's Python bindings (Debian's python3-libnbd, built against the
system Python and libnbd; not on PyPI) would tie the virtual environment to a system
package, and the PyPI name `nbd` is an unrelated notebook tool. The protocol's part we need
is small, and its numbers are already here for heron-io's server (`heron.nbd.proto`).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from heron.nbd import proto as p

# The longest BLOCK_STATUS asked at once: the server answers with at most this much (often
# less); the caller's loop asks again from where the answer ended.
STATUS_SPAN = 1 << 31
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class NBDError(Exception):
    """The server refused or broke the protocol; `errno` is the NBD error number when the
    server sent one (p.EIO, p.EINVAL...), else 0."""

    def __init__(self, message: str, errno: int = 0):
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True)
class Extent:
    """A run of bytes with the same status: for base:allocation p.STATE_HOLE / p.STATE_ZERO,
    for a dirty bitmap p.STATE_DIRTY."""

    offset: int
    length: int
    flags: int

    @property
    def end(self) -> int:
        return self.offset + self.length


class NBDClient:
    """One connection to one export, negotiated. `size` is the export's, `contexts` maps each
    meta context the server accepted to its id. Use it as a context manager, or `close()`."""

    def __init__(self, sock: socket.socket, export: str, contexts: Iterable[str] = ()):
        self._sock = sock
        self._cookie = 0
        self.export = export
        self.size = 0
        self.flags = 0
        self.contexts: dict[str, int] = {}
        try:
            self._negotiate(export, list(contexts))
        except BaseException:
            sock.close()
            raise

    @classmethod
    def unix(
        cls, path: str, export: str, contexts: Iterable[str] = (), timeout: float = 60.0
    ) -> NBDClient:
        """Connect to the server listening on the Unix socket `path` and open `export`,
        asking for the meta contexts `contexts` (those the server does not know are left
        out of `contexts`). Raises NBDError, OSError."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return cls(sock, export, contexts)

    def __enter__(self) -> NBDClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Say goodbye (NBD_CMD_DISC) and close the socket."""
        if self._sock.fileno() < 0:
            return
        try:
            self._send(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_DISC, self._next(), 0, 0))
        except OSError:
            pass
        finally:
            self._sock.close()

    # -- negotiation -----------------------------------------------------------------------

    def _negotiate(self, export: str, contexts: list[str]) -> None:
        magic, ihaveopt, flags = p.HANDSHAKE.unpack(self._recv(p.HANDSHAKE.size))
        if magic != p.NBDMAGIC or ihaveopt != p.IHAVEOPT:
            raise NBDError("not an NBD server speaking newstyle negotiation")
        if not flags & p.FLAG_FIXED_NEWSTYLE:
            raise NBDError("the server does not speak fixed newstyle negotiation")
        client_flags = p.CLIENT_FLAG_FIXED_NEWSTYLE
        if flags & p.FLAG_NO_ZEROES:
            client_flags |= p.CLIENT_FLAG_NO_ZEROES
        self._send(_U32.pack(client_flags))

        self._option(p.OPT_STRUCTURED_REPLY, b"")
        kind, data = self._reply(p.OPT_STRUCTURED_REPLY)
        if kind != p.REP_ACK:
            raise NBDError(f"the server refuses structured replies: {_said(kind, data)}")

        name = export.encode()
        if contexts:
            queries = b"".join(_U32.pack(len(q.encode())) + q.encode() for q in contexts)
            body = _U32.pack(len(name)) + name + _U32.pack(len(contexts)) + queries
            self._option(p.OPT_SET_META_CONTEXT, body)
            while True:
                kind, data = self._reply(p.OPT_SET_META_CONTEXT)
                if kind == p.REP_ACK:
                    break
                if kind != p.REP_META_CONTEXT:
                    raise NBDError(f"meta contexts {contexts}: {_said(kind, data)}")
                (ident,) = _U32.unpack_from(data)
                self.contexts[data[4:].decode()] = ident

        self._option(p.OPT_GO, _U32.pack(len(name)) + name + _U16.pack(0))
        while True:
            kind, data = self._reply(p.OPT_GO)
            if kind == p.REP_ACK:
                break
            if kind == p.REP_INFO:
                (info,) = _U16.unpack_from(data)
                if info == p.INFO_EXPORT:
                    _, self.size, self.flags = p.EXPORT_INFO.unpack(data[: p.EXPORT_INFO.size])
                continue
            raise NBDError(f"export {export!r}: {_said(kind, data)}")

    def _option(self, option: int, data: bytes) -> None:
        self._send(p.OPTION.pack(p.IHAVEOPT, option, len(data)) + data)

    def _reply(self, option: int) -> tuple[int, bytes]:
        magic, answered, kind, length = p.OPTION_REPLY.unpack(self._recv(p.OPTION_REPLY.size))
        if magic != p.OPTION_REPLY_MAGIC or answered != option:
            raise NBDError(f"a reply to option {answered}, expected {option}")
        if length > p.MAX_OPTION:
            raise NBDError(f"an option reply of {length} bytes")
        return kind, self._recv(length)

    # -- transmission ----------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (holes read as zeros). Raises NBDError."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise NBDError(f"read of {length} bytes at {offset}: the export has {self.size}")
        buffer = bytearray(length)
        if not length:
            return bytes(buffer)
        cookie = self._request(p.CMD_READ, 0, offset, length)
        view = memoryview(buffer)
        for kind, data in self._replies(cookie, length):
            if kind == p.REPLY_TYPE_OFFSET_DATA:
                (where,) = p.OFFSET.unpack_from(data)
                start = where - offset
                piece = data[p.OFFSET.size :]
                if start < 0 or start + len(piece) > length:
                    raise NBDError(f"read data at {where} outside the request")
                view[start : start + len(piece)] = piece
            elif kind == p.REPLY_TYPE_OFFSET_HOLE:
                (where,) = p.OFFSET.unpack_from(data)
                (size,) = _U32.unpack_from(data, p.OFFSET.size)
                view[where - offset : where - offset + size] = bytes(size)
            elif kind == _SIMPLE_DATA:
                view[:] = data
        return bytes(buffer)

    def block_status(self, context: str, offset: int, length: int) -> list[Extent]:
        """The extents of `context` from `offset`, covering at most `length` bytes (the server
        may describe less: ask again from the last one's end). Raises NBDError."""
        ident = self._context(context)
        length = min(length, self.size - offset, STATUS_SPAN)
        if length <= 0:
            return []
        cookie = self._request(p.CMD_BLOCK_STATUS, 0, offset, length)
        found: list[Extent] = []
        for kind, data in self._replies(cookie, 0):
            if kind != p.REPLY_TYPE_BLOCK_STATUS:
                continue
            (which,) = _U32.unpack_from(data)
            if which != ident:
                continue
            position = offset
            for at in range(4, len(data) - p.EXTENT.size + 1, p.EXTENT.size):
                size, flags = p.EXTENT.unpack_from(data, at)
                found.append(Extent(position, size, flags))
                position += size
        if not found:
            raise NBDError(f"no extents of {context} at {offset}")
        return found

    def extents(self, context: str, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        """Every extent of `context` over [offset, offset + length) (the whole export from
        `offset` by default), in order, the last one cut at the end."""
        end = self.size if length is None else min(self.size, offset + length)
        position = offset
        while position < end:
            for extent in self.block_status(context, position, end - position):
                if extent.offset >= end:
                    break
                cut = min(extent.end, end) - extent.offset
                if cut <= 0:
                    raise NBDError(f"an empty extent at {extent.offset}")
                yield Extent(extent.offset, cut, extent.flags)
                position = extent.offset + cut

    def _context(self, context: str) -> int:
        try:
            return self.contexts[context]
        except KeyError:
            raise NBDError(
                f"meta context {context!r} was not negotiated (the server gave "
                f"{', '.join(self.contexts) or 'none'})"
            ) from None

    def _next(self) -> int:
        self._cookie += 1
        return self._cookie

    def _request(self, command: int, flags: int, offset: int, length: int) -> int:
        cookie = self._next()
        self._send(p.REQUEST.pack(p.REQUEST_MAGIC, flags, command, cookie, offset, length))
        return cookie

    def _replies(self, cookie: int, simple_length: int) -> Iterator[tuple[int, bytes]]:
        """The chunks answering request `cookie` until the last one; an error chunk raises
        NBDError (after the rest of the reply is read, so the connection stays usable). A
        simple reply (a server without structured replies for this command) is one chunk of
        kind _SIMPLE_DATA holding `simple_length` bytes."""
        error: NBDError | None = None
        while True:
            head = self._recv(4)
            (magic,) = _U32.unpack(head)
            if magic == p.SIMPLE_REPLY_MAGIC:
                rest = self._recv(p.SIMPLE_REPLY.size - 4)
                _, errno, answered = p.SIMPLE_REPLY.unpack(head + rest)
                if answered != cookie:
                    raise NBDError(f"a reply to request {answered}, expected {cookie}")
                if errno:
                    raise NBDError(f"the server failed the request: error {errno}", errno)
                if simple_length:
                    yield _SIMPLE_DATA, self._recv(simple_length)
                return
            if magic != p.STRUCTURED_REPLY_MAGIC:
                raise NBDError(f"a reply with magic {magic:#x}")
            rest = self._recv(p.STRUCTURED_REPLY.size - 4)
            _, flags, kind, answered, length = p.STRUCTURED_REPLY.unpack(head + rest)
            if answered != cookie:
                raise NBDError(f"a reply to request {answered}, expected {cookie}")
            if length > p.MAX_PAYLOAD + 64:
                raise NBDError(f"a reply chunk of {length} bytes")
            data = self._recv(length)
            if kind & (1 << 15):
                errno, size = p.ERROR_REPLY.unpack_from(data) if len(data) >= 6 else (p.EIO, 0)
                message = data[6 : 6 + size].decode(errors="replace")
                error = error or NBDError(
                    f"the server failed the request: {message or errno}", errno
                )
            elif kind != p.REPLY_TYPE_NONE:
                yield kind, data
            if flags & p.REPLY_FLAG_DONE:
                break
        if error is not None:
            raise error

    def _send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def _recv(self, length: int) -> bytes:
        if not length:
            return b""
        buffer = bytearray(length)
        view = memoryview(buffer)
        got = 0
        while got < length:
            count = self._sock.recv_into(view[got:], length - got)
            if not count:
                raise NBDError("the server closed the connection")
            got += count
        return bytes(buffer)


_SIMPLE_DATA = -1  # a simple reply's payload, in _replies' stream of chunks


def _said(kind: int, data: bytes) -> str:
    names = {
        p.REP_ERR_UNSUP: "unsupported",
        p.REP_ERR_POLICY: "refused by policy",
        p.REP_ERR_INVALID: "invalid",
        p.REP_ERR_UNKNOWN: "unknown export",
        p.REP_ERR_TOO_BIG: "too big",
    }
    text = data.decode(errors="replace")
    return f"{names.get(kind, f'reply {kind:#x}')}" + (f" ({text})" if text else "")
