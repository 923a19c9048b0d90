"""How a volume's byte ranges map onto blocks, stripes and chunks. Pure arithmetic.

Replication: block b of the volume is chunk b, copied on `copies` disks.
Erasure coding k+1: blocks are grouped in stripes of k; block b is data shard b % k of stripe
b // k, and the stripe's parity is its shard k. Every shard is a whole 4 MiB chunk, and the
parity of a byte range of a stripe is the XOR of the same range of its data shards, so a
partial write updates the same range of one data chunk and of the parity chunk only.
Chunk numbers of stripe s are s*(k+1) .. s*(k+1)+k.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from heron.ardfs.checksum import CHUNK_SIZE

BLOCK_SIZE = CHUNK_SIZE


@dataclass(frozen=True)
class Piece:
    """The part of a request that falls in one block."""

    block: int
    offset: int  # within the block
    length: int
    at: int  # within the request's buffer


def pieces(offset: int, length: int) -> Iterator[Piece]:
    at = 0
    while at < length:
        block, inside = divmod(offset + at, BLOCK_SIZE)
        n = min(length - at, BLOCK_SIZE - inside)
        yield Piece(block, inside, n, at)
        at += n


def blocks_of(size: int) -> int:
    return (size + BLOCK_SIZE - 1) // BLOCK_SIZE


def ec_shard(block: int, data: int) -> tuple[int, int]:
    """(stripe, data shard index) of a block under k=`data` erasure coding."""
    return divmod(block, data)


def ec_chunk(stripe: int, shard: int, data: int) -> int:
    """Chunk number of shard `shard` (0..k, k being parity) of `stripe`."""
    return stripe * (data + 1) + shard
