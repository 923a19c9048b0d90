"""The chunk store on a real directory: thin chunks, per-sector checksums, trim, fencing."""

import os
from pathlib import Path

import pytest

from heron.ardfs.checksum import CHUNK_SIZE, SECTOR
from heron.ardfs.chunkstore import ChunkStore, Held
from heron.ardfs.volume import ChecksumError, FencedError

VOL = "0" * 31 + "1"


def read(store: ChunkStore, chunk: int, offset: int, length: int) -> bytes:
    buf = bytearray(length)
    store.read_into(VOL, chunk, offset, memoryview(buf))
    return bytes(buf)


def test_absent_chunks_read_as_zeroes_and_take_no_space(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    assert read(store, 7, 0, 8192) == bytes(8192)
    assert not store.exists(VOL, 7)
    assert store.chunks(VOL) == []


def test_writes_read_back_aligned_and_not(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    data = os.urandom(3 * SECTOR)
    store.write(VOL, 0, SECTOR, memoryview(data), durable=False)
    store.write(VOL, 0, 100, memoryview(b"abc"), durable=True)
    assert read(store, 0, SECTOR, 3 * SECTOR) == data
    assert read(store, 0, 98, 7) == b"\0\0abc\0\0"
    store.write(VOL, 0, SECTOR + 10, memoryview(b"xyz" * 2000), durable=False)
    expect = bytearray(data)
    expect[10 : 10 + 6000] = b"xyz" * 2000
    assert read(store, 0, SECTOR, 3 * SECTOR) == bytes(expect)
    assert store.chunks(VOL) == [0]
    assert (tmp_path / "volumes" / VOL / f"{0:016x}").stat().st_size == CHUNK_SIZE


def test_checksums_survive_reopening(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.write(VOL, 3, 0, memoryview(b"q" * CHUNK_SIZE), durable=True)
    store.close()
    again = ChunkStore(tmp_path)
    assert read(again, 3, CHUNK_SIZE - 5, 5) == b"qqqqq"
    assert again.verify(VOL, 3) == []


def test_flipped_bytes_are_detected_per_sector(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.write(VOL, 1, 0, memoryview(b"z" * (16 * SECTOR)), durable=True)
    store.close()
    path = tmp_path / "volumes" / VOL / f"{1:016x}"
    with open(path, "r+b") as handle:
        handle.seek(5 * SECTOR + 17)
        handle.write(b"Z")
    store = ChunkStore(tmp_path)
    with pytest.raises(ChecksumError, match=r"sectors \[5\]"):
        read(store, 1, 4 * SECTOR, 2 * SECTOR)
    with pytest.raises(ChecksumError):
        read(store, 1, 5 * SECTOR + 1, 1)  # a single byte is checked through its sector
    assert read(store, 1, 0, 5 * SECTOR) == b"z" * (5 * SECTOR)
    assert store.verify(VOL, 1) == [5]
    # rewriting the sector heals it
    store.write(VOL, 1, 5 * SECTOR, memoryview(b"z" * SECTOR), durable=False)
    assert store.verify(VOL, 1) == []


def test_trim_punches_holes_and_deletes_whole_chunks(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.write(VOL, 2, 0, memoryview(b"t" * CHUNK_SIZE), durable=False)
    store.trim(VOL, 2, 1000, 3 * SECTOR, durable=True)
    got = read(store, 2, 0, 5 * SECTOR)
    assert got[:1000] == b"t" * 1000
    assert got[1000 : 1000 + 3 * SECTOR] == bytes(3 * SECTOR)
    assert got[1000 + 3 * SECTOR :] == b"t" * (2 * SECTOR - 1000)
    assert store.verify(VOL, 2) == []
    store.trim(VOL, 2, 0, CHUNK_SIZE, durable=True)
    assert not store.exists(VOL, 2)
    assert read(store, 2, 0, SECTOR) == bytes(SECTOR)


def test_allocation_map(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    for chunk in (1, 4, 100):
        store.write(VOL, chunk, 0, memoryview(b"a"), durable=False)
    assert store.allocated(VOL, 0, 6) == [False, True, False, False, True, False]
    assert sum(store.allocated(VOL, 0, 200)) == 3


def test_writes_from_an_older_owner_epoch_are_refused(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.write(VOL, 0, 0, memoryview(b"old"), durable=False, epoch=1)
    store.write(VOL, 0, 0, memoryview(b"new"), durable=False, epoch=2)
    with pytest.raises(FencedError):
        store.write(VOL, 0, 0, memoryview(b"bad"), durable=False, epoch=1)
    with pytest.raises(FencedError):
        store.trim(VOL, 0, 0, CHUNK_SIZE, durable=False, epoch=1)
    assert read(store, 0, 0, 3) == b"new"
    store.close()
    # the epoch is durable: a restarted store still refuses the old owner
    with pytest.raises(FencedError):
        ChunkStore(tmp_path).write(VOL, 0, 0, memoryview(b"bad"), durable=False, epoch=1)


def test_only_so_many_chunks_stay_open_and_closed_ones_keep_their_data(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, open_chunks=4)
    for chunk in range(10):
        store.write(VOL, chunk, 0, memoryview(bytes([chunk + 1]) * SECTOR), durable=False)
    assert len(store._open) == 4
    for chunk in range(10):
        assert read(store, chunk, 0, SECTOR) == bytes([chunk + 1]) * SECTOR
    assert store.verify(VOL, 0) == []


def marks(store: ChunkStore, chunk: int) -> int | None:
    return store.marks(VOL, chunk, 1, 1)[0]


def test_a_parity_keeps_its_mark_of_the_data_shards_written(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.write(VOL, 2, 0, memoryview(b"p" * SECTOR), False, held=Held(add=0b01))
    store.write(VOL, 2, SECTOR, memoryview(b"q" * SECTOR), False, held=Held(add=0b10))
    store.write(VOL, 0, 0, memoryview(b"d" * SECTOR), False)  # a data shard: no mark
    assert marks(store, 2) == 0b11 and marks(store, 0) is None and marks(store, 5) is None
    store.close()
    again = ChunkStore(tmp_path)
    assert marks(again, 2) == 0b11  # from the file, the chunk not open
    assert read(again, 2, 0, 2 * SECTOR) == b"p" * SECTOR + b"q" * SECTOR
    assert again.verify(VOL, 2) == []
    # Many chunks at once (listed, not each looked for): parities 2, 5, 8, ... of 2+1 stripes.
    assert again.marks(VOL, 2, 100, 3) == [0b11] + [None] * 99
    # A whole data shard trimmed: its bit goes; the parity stays, zeroes or not, while the
    # mark holds another shard (an absent parity would say the stripe was never written).
    again.trim(VOL, 2, 0, CHUNK_SIZE, False, held=Held(remove=0b01))
    assert again.exists(VOL, 2) and marks(again, 2) == 0b10
    assert read(again, 2, 0, 2 * SECTOR) == bytes(2 * SECTOR)
    again.trim(VOL, 2, 0, CHUNK_SIZE, False, held=Held(remove=0b10))
    assert not again.exists(VOL, 2) and marks(again, 2) is None


def test_a_parity_written_without_a_word_on_its_mark_loses_it(tmp_path: Path) -> None:
    """A writer that does not say how the mark changes (a heron-io from before marks) leaves
    it unknown, not wrong; a whole parity written with its whole mark (a rebuild) has one
    again, and a parity from before marks gets one that way only."""
    store = ChunkStore(tmp_path)
    store.write(VOL, 2, 0, memoryview(b"p" * SECTOR), False, held=Held(add=0b01))
    store.write(VOL, 2, 0, memoryview(b"o" * SECTOR), False)
    assert marks(store, 2) is None
    store.write(VOL, 2, 0, memoryview(b"p" * SECTOR), False, held=Held(add=0b10))
    assert marks(store, 2) is None  # unknown stays unknown: bit 0 may be set or not
    store.write(VOL, 5, 0, memoryview(b"x" * SECTOR), False)  # written before marks
    store.write(VOL, 5, 0, memoryview(b"y" * SECTOR), False, held=Held(add=0b01))
    assert marks(store, 5) is None
    assert (tmp_path / "volumes" / VOL / f"{5:016x}.sum").stat().st_size == 4096
    for chunk in (2, 5):
        whole = memoryview(bytes([chunk]) * CHUNK_SIZE)
        store.write(VOL, chunk, 0, whole, True, held=Held(add=0b10, exact=True))
        assert marks(store, chunk) == 0b10
        assert read(store, chunk, CHUNK_SIZE - 3, 3) == bytes([chunk]) * 3
