"""The DR store's errors, all under heron.errors.DRError; each keeps the builtin base callers
rely on (a bad name is a ValueError, a point that is not there a LookupError)."""

from __future__ import annotations

from heron.errors import DRError


class InvalidArgument(DRError, ValueError):
    """A name, size, index or chunk given to the store is not acceptable; the message says
    which and why. Nothing was changed."""


class StoreNotFound(DRError, FileNotFoundError):
    """No store at the path given (no store.json)."""


class PointNotFound(DRError, LookupError):
    """No such point (never written, or deleted)."""


class PointCorrupt(DRError):
    """A point's file does not match its checksum or cannot be parsed."""


class ChunkMissing(DRError):
    """A point needs a chunk that is not in the store."""

    def __init__(self, digest: bytes):
        super().__init__(f"chunk {digest.hex()} is missing")
        self.digest = digest


class ChunkCorrupt(DRError):
    """A chunk's content does not hash to its name, or its file cannot be decoded."""

    def __init__(self, digest: bytes, reason: str):
        super().__init__(f"chunk {digest.hex()} is corrupt: {reason}")
        self.digest = digest
        self.reason = reason


class Busy(DRError):
    """Someone else holds what this needs, now: try again later."""


class WriterBusy(Busy):
    """Another writer is writing a point of this VM (one writer per VM)."""


class PointBusy(Busy):
    """The point is being read, or is the parent of an increment being written: it cannot be
    deleted now."""


class GcBusy(Busy):
    """Another garbage collection of this store is running."""
