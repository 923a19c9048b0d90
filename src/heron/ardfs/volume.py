"""What the NBD server serves: a Volume, and the errors a volume may raise.

The server knows nothing about blocks, copies or shards; a Volume turns byte ranges into
chunk operations. Every method may raise VolumeError, whose errno goes back to the client.
"""

import errno
from dataclasses import dataclass
from typing import Protocol

from heron.ardfs.errors import ArdfsError


class VolumeError(ArdfsError):
    """An I/O request failed; `errno` is what the NBD client is told."""

    errno: int = errno.EIO

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.errno = code


class ChecksumError(VolumeError):
    """Stored bytes do not match their checksum: silent corruption, never returned as data."""


class FencedError(VolumeError):
    """A write carried an ownership epoch older than the one the chunk store has seen."""

    errno = errno.EPERM


class UnavailableError(VolumeError):
    """No copy (or too few shards) of a block could be reached."""


@dataclass(frozen=True)
class Extent:
    """A run of bytes with the same allocation: `hole` reads as zeroes and holds no data."""

    length: int
    hole: bool


class Volume(Protocol):
    """A virtual disk. Offsets and lengths are checked against `size` by the caller."""

    @property
    def size(self) -> int: ...

    async def read_into(self, offset: int, view: memoryview) -> None:
        """Fill `view` with the bytes at `offset`."""

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        """Store `data`; with `fua` it is durable on every copy before this returns."""

    async def flush(self) -> None:
        """Make every write that completed before this call durable on every copy."""

    async def trim(self, offset: int, length: int, fua: bool) -> None:
        """Let go of the range: it may read back as anything, here as zeroes."""

    async def write_zeroes(self, offset: int, length: int, fua: bool, may_trim: bool) -> None:
        """Make the range read as zeroes; `may_trim` lets it become a hole."""

    async def extents(self, offset: int, length: int) -> list[Extent]:
        """Allocation of the range, covering it exactly, in order."""
