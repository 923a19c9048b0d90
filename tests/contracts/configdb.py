"""What heron.configdb.store.ConfigDB promises, as tests: run against real etcd
(tests/integration/test_configdb_contract.py) and against the in-memory fake
(tests/unit/test_fake_configdb.py), so the fake cannot drift from what etcd does.

A subclass provides the `db` fixture (a connected store), `other_client` (a second client of
the same store) and `compact`; `pause` is how polling lets time pass (the fake's clock may be
advanced instead of waited for).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from support import eventually

from heron.configdb import Conflict, Txn, WatchEvent
from heron.models import Pool
from heron.models.common import Record


class Counter(Record):
    name: str
    count: int = 0
    touched_by: list[str] = []


class Collector:
    """Runs a watch in a task and keeps every event it yields."""

    def __init__(self, db: Any, prefix: str, start_revision: int):
        self.events: list[WatchEvent] = []
        self._watch = db.watch(prefix, start_revision)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self._watch:
            self.events.append(event)

    async def wait_count(self, count: int, timeout: float = 15.0) -> list[WatchEvent]:
        async def enough() -> bool:
            if self._task.done():
                self._task.result()  # raise what ended the watch
                raise AssertionError("the watch ended")
            return len(self.events) >= count

        await eventually(enough, timeout, f"{count} watch events (have {len(self.events)})", 0.02)
        return self.events

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._watch.aclose()


def summary(events: list[WatchEvent]) -> list[tuple[str, str, bytes]]:
    return [(e.type, e.key, e.value) for e in events]


class ConfigDBContract:
    @pytest.fixture
    def prefix(self) -> str:
        return f"/heron/test/{uuid.uuid4().hex[:8]}/"

    def other_client(self, db: Any) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def compact(self, db: Any, revision: int) -> None:
        raise NotImplementedError

    async def pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # lets time pass for a poll

    async def eventually(
        self, predicate: Callable[[], Awaitable[object]], timeout: float, what: str
    ) -> object:
        deadline = time.monotonic() + timeout
        while not (value := await predicate()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await self.pause(0.3)
        return value

    # -- records -------------------------------------------------------------------------

    async def test_put_get_list_with_models(self, db: Any, prefix: str) -> None:
        pools = {name: Pool(name=name, path=f"/srv/{name}", created_at=1.0) for name in "abc"}
        revisions = {name: await db.put(f"{prefix}pools/{name}", p) for name, p in pools.items()}
        # A key that shares the prefix's text but not its directory stays out of the listing.
        await db.put(f"{prefix}pools-other", Pool(name="z", created_at=1.0))

        entry = await db.get(Pool, f"{prefix}pools/b")
        assert entry is not None
        assert (entry.key, entry.value, entry.revision, entry.lease) == (
            f"{prefix}pools/b",
            pools["b"],
            revisions["b"],
            0,
        )
        listed = await db.list(Pool, f"{prefix}pools/")
        assert [e.key for e in listed] == [f"{prefix}pools/{n}" for n in "abc"]
        assert [e.value for e in listed] == list(pools.values())
        assert [e.revision for e in listed] == [revisions[n] for n in "abc"]

        entries, at = await db.list_at(Pool, f"{prefix}pools/")
        assert len(entries) == 3
        assert at == revisions["c"] + 1 == await db.revision()
        assert await db.dump(f"{prefix}pools/") == {
            f"{prefix}pools/{n}": p.model_dump_json().encode() for n, p in pools.items()
        }
        raw, raw_at = await db.list_raw_at(f"{prefix}pools/")
        assert raw_at == at
        assert [(r.key, r.value, r.revision, r.lease) for r in raw] == [
            (f"{prefix}pools/{n}", p.model_dump_json().encode(), revisions[n], 0)
            for n, p in pools.items()
        ]
        assert await db.get(Pool, f"{prefix}pools/missing") is None
        assert await db.get_raw(f"{prefix}pools/missing") is None
        assert await db.get_raw(f"{prefix}pools/a") == (
            pools["a"].model_dump_json().encode(),
            revisions["a"],
        )
        assert await db.delete(f"{prefix}pools/a") == at + 1
        assert await db.get(Pool, f"{prefix}pools/a") is None
        assert len(await db.list(Pool, f"{prefix}pools/")) == 2

    async def test_one_revision_counter_for_the_whole_store(self, db: Any, prefix: str) -> None:
        a = await db.put(f"{prefix}a", "1")
        b = await db.put(f"{prefix}b", "1")
        assert b == a + 1
        again = await db.put(f"{prefix}a", "1")  # the same value is still a change
        assert again == b + 1
        assert (await db.get_raw(f"{prefix}a"))[1] == again
        assert (await db.get_raw(f"{prefix}b"))[1] == b  # each key keeps its own
        # Deleting what is not there changes nothing, so the revision stays.
        assert await db.delete(f"{prefix}never") == again
        assert await db.revision() == again

    async def test_cas_with_stale_revision_conflicts(self, db: Any, prefix: str) -> None:
        key = f"{prefix}cas"
        r1 = await db.put(key, Counter(name="cas", count=1))
        r2 = await db.put(key, Counter(name="cas", count=2), revision=r1)
        with pytest.raises(Conflict):
            await db.put(key, Counter(name="cas", count=99), revision=r1)
        with pytest.raises(Conflict):
            await db.put(key, Counter(name="cas", count=98), revision=0)  # 0: must be absent
        with pytest.raises(Conflict):
            await db.delete(key, revision=r1)
        entry = await db.get(Counter, key)
        assert (entry.value.count, entry.revision) == (2, r2)
        assert await db.revision() == r2  # the refused writes wrote nothing

        r3 = await db.put(key, Counter(name="cas", count=3), revision=r2)
        await db.delete(key, revision=r3)
        assert await db.get(Counter, key) is None
        with pytest.raises(Conflict):
            await db.delete(key, revision=r3)  # gone: its revision is 0 now
        await db.put(key, Counter(name="cas", count=4), revision=0)
        assert (await db.get(Counter, key)).value.count == 4

    async def test_create_twice_conflicts(self, db: Any, prefix: str) -> None:
        key = f"{prefix}names/vm/web"
        revision = await db.create(key, "id-1")
        with pytest.raises(Conflict):
            await db.create(key, "id-2")
        assert await db.get_raw(key) == (b"id-1", revision)
        await db.delete(key)
        assert await db.create(key, "id-3") > revision  # absent again: may be created

    async def test_concurrent_creates_one_wins(self, db: Any, prefix: str) -> None:
        key = f"{prefix}names/vm/race"
        async with self.other_client(db) as one, self.other_client(db) as two:
            clients = [db, one, two]
            results = await asyncio.gather(
                *(c.create(key, f"id-{i}") for i, c in enumerate(clients)),
                return_exceptions=True,
            )
        winners = [i for i, r in enumerate(results) if isinstance(r, int)]
        assert len(winners) == 1, results
        assert all(isinstance(r, Conflict) for i, r in enumerate(results) if i not in winners)
        assert (await db.get_raw(key))[0] == f"id-{winners[0]}".encode()

    # -- transactions --------------------------------------------------------------------

    async def test_failed_txn_applies_none_of_its_writes(self, db: Any, prefix: str) -> None:
        await db.put(f"{prefix}names/vm/taken", "someone")
        await db.put(f"{prefix}doomed", "still here")
        before = await db.revision()
        txn = (
            Txn()
            .require_absent(f"{prefix}names/vm/free")  # holds
            .require_absent(f"{prefix}names/vm/taken")  # fails
            .put(f"{prefix}vms/1", Counter(name="one"))
            .put(f"{prefix}names/vm/taken", "me")
            .delete(f"{prefix}doomed")
        )
        with pytest.raises(Conflict):
            await db.commit(txn)
        assert await db.get_raw(f"{prefix}vms/1") is None
        assert (await db.get_raw(f"{prefix}names/vm/taken"))[0] == b"someone"
        assert (await db.get_raw(f"{prefix}doomed"))[0] == b"still here"
        assert await db.revision() == before

    async def test_successful_txn_applies_all_at_one_revision(self, db: Any, prefix: str) -> None:
        await db.put(f"{prefix}old", "x")
        txn = (
            Txn()
            .require_absent(f"{prefix}names/vm/new")
            .put(f"{prefix}vms/2", Counter(name="two"))
            .put(f"{prefix}names/vm/new", "2")
            .delete(f"{prefix}old")
        )
        revision = await db.commit(txn)
        assert (await db.get(Counter, f"{prefix}vms/2")).revision == revision
        assert await db.get_raw(f"{prefix}names/vm/new") == (b"2", revision)
        assert await db.get_raw(f"{prefix}old") is None
        assert await db.revision() == revision

    async def test_require_value(self, db: Any, prefix: str) -> None:
        key = f"{prefix}leader"
        await db.put(key, "token-1")
        ok = await db.commit(Txn().require_value(key, "token-1").put(f"{prefix}x", "1"))
        assert await db.get_raw(f"{prefix}x") == (b"1", ok)
        with pytest.raises(Conflict):
            await db.commit(Txn().require_value(key, "token-2").put(f"{prefix}x", "2"))
        with pytest.raises(Conflict):  # no value at all is not an empty one
            await db.commit(Txn().require_value(f"{prefix}absent", "").put(f"{prefix}x", "3"))
        assert (await db.get_raw(f"{prefix}x"))[0] == b"1"

    async def test_commit_of_delete_only_txn_returns_its_revision(
        self, db: Any, prefix: str
    ) -> None:
        written = await db.put(f"{prefix}gone", "x")
        revision = await db.commit(Txn().delete(f"{prefix}gone"))
        assert revision == written + 1 == await db.revision()

    async def test_txn_writing_one_key_twice_is_refused(self, db: Any, prefix: str) -> None:
        before = await db.revision()
        with pytest.raises(Exception) as raised:
            await db.commit(Txn().put(f"{prefix}k", "1").put(f"{prefix}k", "2"))
        assert not isinstance(raised.value, Conflict)  # a bug of the caller, not a race
        assert await db.revision() == before

    # -- update --------------------------------------------------------------------------

    async def test_update_retries_under_contention(self, db: Any, prefix: str) -> None:
        key = f"{prefix}counter"
        await db.create(key, Counter(name="c"))
        writers, rounds, calls = 3, 6, 0
        async with self.other_client(db) as one, self.other_client(db) as two:
            clients = [db, one, two]

            async def writer(index: int) -> None:
                def change(value: Counter) -> Counter:
                    nonlocal calls
                    calls += 1
                    value.count += 1
                    value.touched_by.append(f"w{index}")
                    return value

                for _ in range(rounds):
                    entry = await clients[index].update(Counter, key, change)
                    assert entry.value.touched_by[-1] == f"w{index}"

            await asyncio.gather(*(writer(i) for i in range(writers)))
        final = await db.get(Counter, key)
        assert final.value.count == writers * rounds
        assert sorted(final.value.touched_by) == sorted(
            f"w{i}" for i in range(writers) for _ in range(rounds)
        )
        assert calls > writers * rounds, "no update had to retry: the test had no contention"

    async def test_update_of_missing_key(self, db: Any, prefix: str) -> None:
        with pytest.raises(KeyError):
            await db.update(Counter, f"{prefix}nothing", lambda c: c)

    async def test_update_gives_up_when_always_beaten(
        self, db: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        key = f"{prefix}hot"
        await db.put(key, Counter(name="hot"))
        attempts = 0

        def change(value: Counter) -> Counter:
            nonlocal attempts
            attempts += 1
            value.count = attempts
            return value

        original_get = db.get

        async def get_then_interfere(model: type[Counter], k: str) -> object:
            entry = await original_get(model, k)
            await db.put(key, Counter(name="hot", count=-1))  # another writer, every time
            return entry

        monkeypatch.setattr(db, "get", get_then_interfere)
        with pytest.raises(Conflict):
            await db.update(Counter, key, change, attempts=3)
        monkeypatch.undo()
        assert attempts == 3
        assert (await db.get(Counter, key)).value.count == -1

    # -- leases --------------------------------------------------------------------------

    async def test_lease_expires_unless_refreshed(self, db: Any, prefix: str) -> None:
        kept_lease = await db.grant(2)  # granted first: unrefreshed, it would expire first
        lost_lease = await db.grant(2)
        await db.put(f"{prefix}kept", "alive", lease=kept_lease)
        await db.create(f"{prefix}lost", "alive", lease=lost_lease)

        async def lost_gone_while_refreshing_kept() -> bool:
            assert await db.refresh(kept_lease) > 0, "the refreshed lease expired"
            assert await db.get_raw(f"{prefix}kept") is not None, "the refreshed key vanished"
            return await db.get_raw(f"{prefix}lost") is None

        await self.eventually(lost_gone_while_refreshing_kept, 15, "the unrefreshed key to go")
        assert await db.refresh(lost_lease) <= 0

        async def kept_gone() -> bool:
            return await db.get_raw(f"{prefix}kept") is None

        await self.eventually(kept_gone, 15, "the no longer refreshed key to expire")

    async def test_revoke_deletes_the_keys_at_one_revision(self, db: Any, prefix: str) -> None:
        lease = await db.grant(30)
        await db.put(f"{prefix}l/a", "1", lease=lease)
        written = await db.put(f"{prefix}l/b", "2", lease=lease)
        await db.put(f"{prefix}l/c", "3")  # not leased: stays
        watcher = Collector(db, f"{prefix}l/", written + 2)  # after the put of l/c
        try:
            await db.revoke(lease)
            events = await watcher.wait_count(2)
            assert summary(events) == [
                ("delete", f"{prefix}l/a", b""),
                ("delete", f"{prefix}l/b", b""),
            ]
            assert events[0].revision == events[1].revision == written + 2
        finally:
            await watcher.close()
        assert await db.dump(f"{prefix}l/") == {f"{prefix}l/c": b"3"}
        assert await db.refresh(lease) <= 0

    async def test_update_keeps_the_lease(self, db: Any, prefix: str) -> None:
        lease = await db.grant(30)
        try:
            await db.put(f"{prefix}leased", Counter(name="l"), lease=lease)
            entry = await db.update(
                Counter, f"{prefix}leased", lambda c: c.model_copy(update={"count": 1})
            )
            assert entry.lease == lease
            stored = await db.get(Counter, f"{prefix}leased")
            assert (stored.value.count, stored.lease) == (1, lease)
        finally:
            await db.revoke(lease)
        assert await db.get_raw(f"{prefix}leased") is None

    async def test_a_put_without_the_lease_detaches_the_key(self, db: Any, prefix: str) -> None:
        lease = await db.grant(30)
        await db.put(f"{prefix}k", "leased", lease=lease)
        await db.put(f"{prefix}k", "mine now")
        await db.revoke(lease)
        assert (await db.get_raw(f"{prefix}k"))[0] == b"mine now"

    async def test_put_with_an_unknown_lease_is_refused(self, db: Any, prefix: str) -> None:
        lease = await db.grant(30)
        await db.revoke(lease)
        with pytest.raises(Exception) as raised:
            await db.put(f"{prefix}k", "v", lease=lease)
        assert not isinstance(raised.value, Conflict)
        assert await db.get_raw(f"{prefix}k") is None

    # -- watches -------------------------------------------------------------------------

    async def test_watch_delivers_puts_and_deletes_in_order(self, db: Any, prefix: str) -> None:
        start = await db.revision() + 1
        await db.put(f"{prefix}w/a", "1")
        await db.put(f"{prefix}elsewhere", "not watched")
        await db.put(f"{prefix}w/b", "2")
        await db.delete(f"{prefix}w/a")
        middle = await db.put(f"{prefix}w/a", "3")
        await db.put(f"{prefix}w/b", "4")

        watcher = Collector(db, f"{prefix}w/", start)
        try:
            events = await watcher.wait_count(5)
            assert summary(events) == [
                ("put", f"{prefix}w/a", b"1"),
                ("put", f"{prefix}w/b", b"2"),
                ("delete", f"{prefix}w/a", b""),
                ("put", f"{prefix}w/a", b"3"),
                ("put", f"{prefix}w/b", b"4"),
            ]
            assert [e.revision for e in events] == [start, start + 2, start + 3, middle, middle + 1]
            live = await db.put(f"{prefix}w/c", "5")
            events = await watcher.wait_count(6)
            assert summary(events[5:]) == [("put", f"{prefix}w/c", b"5")]
            assert events[5].revision == live
        finally:
            await watcher.close()

        late = Collector(db, f"{prefix}w/", middle)
        try:
            assert [e.value for e in await late.wait_count(3)] == [b"3", b"4", b"5"]
            # ...and nothing else arrives: a marker written after is the very next event.
            await db.put(f"{prefix}w/marker", "m")
            assert summary((await late.wait_count(4))[3:]) == [("put", f"{prefix}w/marker", b"m")]
            assert len(late.events) == 4
        finally:
            await late.close()

    async def test_watch_sees_a_txn_at_one_revision_with_leases(self, db: Any, prefix: str) -> None:
        lease = await db.grant(30)
        try:
            await db.put(f"{prefix}t/old", "x")
            start = await db.revision() + 1
            watcher = Collector(db, f"{prefix}t/", start)
            try:
                revision = await db.commit(
                    Txn()
                    .put(f"{prefix}t/a", "1", lease=lease)
                    .put(f"{prefix}t/b", "2")
                    .delete(f"{prefix}t/old")
                )
                events = await watcher.wait_count(3)
                assert summary(events) == [
                    ("put", f"{prefix}t/a", b"1"),
                    ("put", f"{prefix}t/b", b"2"),
                    ("delete", f"{prefix}t/old", b""),
                ]
                assert {e.revision for e in events} == {revision}
                assert [e.lease for e in events] == [lease, 0, 0]
                live = await db.put(f"{prefix}t/c", "3")
                assert (await watcher.wait_count(4))[3].revision == live
                assert len(watcher.events) == 4
            finally:
                await watcher.close()
        finally:
            await db.revoke(lease)

    async def test_watch_from_compacted_revision_asks_for_resync(
        self, db: Any, prefix: str
    ) -> None:
        first = await db.put(f"{prefix}c/1", "1")
        await db.put(f"{prefix}c/2", "2")
        kept = await db.put(f"{prefix}c/3", "3")
        await self.compact(db, kept)
        watcher = Collector(db, f"{prefix}c/", first)
        try:
            events = await watcher.wait_count(2)
            assert (events[0].type, events[0].revision) == ("resync", kept)
            assert summary(events[1:]) == [("put", f"{prefix}c/3", b"3")]
            live = await db.put(f"{prefix}c/4", "4")
            events = await watcher.wait_count(3)
            assert (events[2].key, events[2].revision) == (f"{prefix}c/4", live)
            assert len(watcher.events) == 3
        finally:
            await watcher.close()
