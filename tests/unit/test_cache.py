"""The watch-fed Cache on the in-memory ConfigDB, down to the branch real etcd rarely shows:
a watch that comes back after its history was compacted, and lists again."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aetcd.exceptions
import pytest
from fakes.configdb import FakeConfigDB

from heron.configdb.cache import Cache
from heron.models.common import Record

PREFIX = "/heron/counters/"


class Counter(Record):
    name: str
    count: int = 0


@pytest.fixture
async def cache(db: FakeConfigDB) -> AsyncIterator[Cache[Counter]]:
    await db.put(PREFIX + "a", Counter(name="a", count=1))
    await db.put(PREFIX + "b", Counter(name="b"))
    await db.put(PREFIX + "junk", "not a record")
    copy = Cache(db, Counter, PREFIX)
    await copy.start()
    yield copy
    await copy.stop()


def held(cache: Cache[Counter]) -> list[tuple[str, int]]:
    return sorted((c.name, c.count) for c in cache.values())


async def test_lists_then_follows_and_skips_what_it_cannot_read(
    db: FakeConfigDB, cache: Cache[Counter]
) -> None:
    assert held(cache) == [("a", 1), ("b", 0)]
    changed = cache.listen()
    await db.put(PREFIX + "a", Counter(name="a", count=2))
    await db.delete(PREFIX + "b")
    created = await db.put(PREFIX + "c", Counter(name="c", count=3))
    assert await cache.wait_for(created)
    assert changed.is_set()
    assert held(cache) == [("a", 2), ("c", 3)]
    entry = cache.get("c")
    assert entry is not None and entry.revision == created


async def test_a_watch_back_from_compacted_history_lists_again(
    db: FakeConfigDB, cache: Cache[Counter]
) -> None:
    changed = cache.listen()
    async with db.watches_cut():
        await db.put(PREFIX + "a", Counter(name="a", count=5))
        await db.delete(PREFIX + "b")
        last = await db.put(PREFIX + "d", Counter(name="d"))
        db.compact(last)  # the delete of b is history no watch can replay
        assert held(cache) == [("a", 1), ("b", 0)]  # nothing arrived meanwhile
        assert not changed.is_set()
    assert await cache.wait_for(last)
    assert held(cache) == [("a", 5), ("d", 0)]
    assert changed.is_set()
    # ...and it follows on from there.
    after = await db.put(PREFIX + "e", Counter(name="e"))
    assert await cache.wait_for(after)
    assert held(cache) == [("a", 5), ("d", 0), ("e", 0)]


async def test_a_watch_back_from_a_short_break_misses_nothing(
    db: FakeConfigDB, cache: Cache[Counter]
) -> None:
    async with db.watches_cut():
        await db.delete(PREFIX + "a")
        last = await db.put(PREFIX + "b", Counter(name="b", count=9))
    assert await cache.wait_for(last)
    assert held(cache) == [("b", 9)]


async def test_the_first_list_waits_for_an_etcd_out_of_reach(
    db: FakeConfigDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node starting while etcd is slow or cut off (its first list times out) gets its
    copy once etcd answers: the start is not a failure that stops the agent."""
    await db.put(PREFIX + "a", Counter(name="a", count=1))
    listed = db.list_raw_at
    failures = [aetcd.exceptions.ConnectionTimeoutError("Deadline Exceeded")] * 2

    async def slow_start(prefix: str) -> Any:
        if failures:
            raise failures.pop()
        return await listed(prefix)

    monkeypatch.setattr(db, "list_raw_at", slow_start)
    monkeypatch.setattr(asyncio, "sleep", _no_wait)
    copy = Cache(db, Counter, PREFIX)
    await copy.start()
    try:
        assert held(copy) == [("a", 1)] and not failures
    finally:
        await copy.stop()


_sleep = asyncio.sleep


async def _no_wait(delay: float, result: Any = None) -> Any:
    return await _sleep(0, result)
