"""Pure parts of ARDFS: request geometry, parity, the degraded log, per-block gates."""

import asyncio
import os
from pathlib import Path

from heron.ardfs.checksum import CHUNK_SIZE, sector_span
from heron.ardfs.degraded import DegradedLog
from heron.ardfs.erasure import RegionLocks, held_data_shards
from heron.ardfs.gates import BlockGates
from heron.ardfs.layout import Piece, ec_chunk, ec_shard, pieces
from heron.ardfs.maintenance import RateLimiter
from heron.ardfs.parity import xor_into, xor_of


def test_pieces_split_requests_at_block_boundaries() -> None:
    assert list(pieces(100, 50)) == [Piece(0, 100, 50, 0)]
    assert list(pieces(CHUNK_SIZE - 10, 30)) == [
        Piece(0, CHUNK_SIZE - 10, 10, 0),
        Piece(1, 0, 20, 10),
    ]
    assert sum(p.length for p in pieces(5, 3 * CHUNK_SIZE)) == 3 * CHUNK_SIZE


def test_sector_span() -> None:
    assert sector_span(0, 4096) == (0, 1)
    assert sector_span(4095, 2) == (0, 2)
    assert sector_span(8192, 1) == (2, 1)


def test_erasure_geometry() -> None:
    assert [ec_shard(b, 3) for b in range(5)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert ec_chunk(1, 3, 3) == 7  # parity of stripe 1 under 3+1
    chunks = {ec_chunk(s, i, 2) for s in range(10) for i in range(3)}
    assert len(chunks) == 30  # no two shards share a chunk number


def test_any_lost_shard_is_the_xor_of_the_others() -> None:
    shards = [os.urandom(4096) for _ in range(3)]
    parity = xor_of(shards)
    for lost in range(3):
        rest = [s for i, s in enumerate(shards) if i != lost] + [parity]
        assert bytes(xor_of(rest)) == shards[lost]
    odd = bytearray(b"abc")
    xor_into(memoryview(odd), b"abc")
    assert odd == bytearray(3)


def test_degraded_log_survives_reopening_and_compacts(tmp_path: Path) -> None:
    path = tmp_path / "v.log"
    log = DegradedLog(path)
    log.mark([(1, "d1"), (2, "d2")])
    log.append([(1, "d1"), (2, "d2")], added=True)
    log.append([(1, "d1")], added=False)
    with open(path, "a") as handle:
        handle.write("+ 9")  # a torn line, never acknowledged
    again = DegradedLog(path)
    assert again.stale(1) == set()
    assert again.stale(2) == {"d2"}
    assert again.count() == 1
    assert path.read_text() == "+ 2 d2\n"


def test_degraded_log_says_when_it_first_holds_a_stale_copy(tmp_path: Path) -> None:
    """heron-io publishes its status on that call, before the I/O that marked the copy is
    answered: once per step from healthy to degraded, not once per stale copy."""
    calls: list[int] = []
    log = DegradedLog(tmp_path / "v.log", lambda: calls.append(log.count()))
    log.mark([])
    assert calls == []
    log.mark([(1, "d1"), (2, "d2")])
    assert calls == [2]  # called with the marks made: the status it writes shows them
    log.mark([(3, "d1")])
    log.clear(1, "d1")
    assert calls == [2]
    log.clear(2, "d2")
    log.clear(3, "d1")
    log.mark([(4, "d2")])
    assert calls == [2, 1]


async def test_exclusive_waits_for_writers_and_holds_new_ones() -> None:
    gates = BlockGates()
    order: list[str] = []
    release = asyncio.Event()

    async def writer(name: str) -> None:
        async with gates.shared(1):
            order.append(f"{name} in")
            await release.wait()
            order.append(f"{name} out")

    async def rebuild() -> None:
        async with gates.exclusive(1):
            order.append("rebuild")

    first = asyncio.create_task(writer("w1"))
    await asyncio.sleep(0)
    job = asyncio.create_task(rebuild())
    await asyncio.sleep(0)
    late = asyncio.create_task(writer("w2"))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, job, late)
    assert order == ["w1 in", "w1 out", "rebuild", "w2 in", "w2 out"]


def test_rate_limiter_spaces_work_at_the_rate() -> None:
    now = [100.0]
    limiter = RateLimiter(1000.0, clock=lambda: now[0])
    assert limiter.delay(500) == 0.0
    assert limiter.delay(500) == 0.5  # the first 500 bytes take until 100.5
    now[0] = 103.0  # idle time is not saved up as a burst
    assert limiter.delay(1000) == 0.0
    assert limiter.delay(10) == 1.0


async def test_region_locks_conflict_only_on_the_same_range_of_a_stripe() -> None:
    locks = RegionLocks()
    assert locks.try_acquire(0, 0, 4096)
    assert locks.try_acquire(0, 512 * 1024, 4096)  # same stripe, another range: no conflict
    assert locks.try_acquire(1, 0, 4096)  # another stripe
    assert not locks.try_acquire(0, 4096, 4096)  # same 256 KiB region of stripe 0
    assert not locks.try_acquire(0, 0, CHUNK_SIZE)  # a whole-stripe user waits for all
    order: list[str] = []

    async def rebuild() -> None:
        await locks.acquire(0, 0, CHUNK_SIZE)
        order.append("rebuild")
        locks.release(0, 0, CHUNK_SIZE)

    job = asyncio.create_task(rebuild())
    await asyncio.sleep(0)
    assert order == []
    locks.release(0, 0, 4096)
    locks.release(0, 512 * 1024, 4096)
    await job
    assert order == ["rebuild"]
    assert locks.try_acquire(0, 0, CHUNK_SIZE)


def test_ec_blocks_whose_shard_is_unreachable_are_told_from_their_stripe() -> None:
    """EC 2+1, stripe 0 = blocks 0, 1 (chunks 0, 1, parity 2), stripe 1 = blocks 2, 3
    (chunks 3, 4, parity 5). A hole reported where data is would show a layer below; data
    reported where there is none reads zeroes over it: unknown (None) is neither."""
    answers: dict[int, bool | None] = {
        0: True, 1: None, 2: True,  # block 1 unknown, its stripe written
        3: None, 4: None, 5: False,  # no parity: nothing of stripe 1 was ever written
    }  # fmt: skip
    marks: dict[int, int] = {0: 0b01}  # stripe 0's parity: only data shard 0 written
    held = held_data_shards(2, range(4), answers.__getitem__, marks.get)
    assert held == [True, False, False, False]
    marks[0] = 0b11
    assert held_data_shards(2, [1], answers.__getitem__, marks.get) == [True]
    del marks[0]  # a parity written before marks: block 1 cannot be told
    assert held_data_shards(2, range(4), answers.__getitem__, marks.get) == [
        True,
        None,
        False,
        False,
    ]
    answers[5] = None  # the parity unknown too: two shards of the stripe gone
    assert held_data_shards(2, [2, 3], answers.__getitem__, marks.get) == [None, None]
    answers.update({3: False, 4: None, 5: True})
    marks[1] = 0b10  # the parity's mark has block 3's shard, not block 2's
    assert held_data_shards(2, [2, 3], answers.__getitem__, marks.get) == [False, True]
