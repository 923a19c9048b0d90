"""The ConfigDB (heron.configdb.store.ConfigDB) against real etcd members.

One single-member etcd serves most tests (each test under a prefix of its own); the watch
resume test restarts a member of its own, and a 3-member cluster covers replication and
client fail-over.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aetcd.exceptions
import pytest
from support import eventually

from heron.configdb import ConfigDB, Conflict, Txn, WatchEvent
from heron.configdb.cache import Cache
from heron.configdb.etcd import EtcdMember
from heron.models import Pool
from heron.models.common import Record
from heron.util.ports import free_ports

pytestmark = pytest.mark.integration


class Counter(Record):
    name: str
    count: int = 0
    touched_by: list[str] = []


# -- helpers ---------------------------------------------------------------------------------


class Collector:
    """Runs ConfigDB.watch in a task and keeps every event it yields."""

    def __init__(self, db: ConfigDB, prefix: str, start_revision: int):
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

        await eventually(enough, timeout, f"{count} watch events (have {len(self.events)})")
        return self.events

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._watch.aclose()


async def reachable(write: Callable[[], Awaitable[object]]) -> bool:
    """One write attempt; False if the connection was refused, so nothing was sent.

    gRPC shares a subchannel between channels to one address, and after a member restart it
    may still be waiting out its reconnect back-off: requests fail at once until it redials.
    """
    try:
        await write()
    except aetcd.exceptions.ConnectionFailedError:
        return False
    return True


async def write_when_reachable(write: Callable[[], Awaitable[object]], what: str) -> None:
    await eventually(lambda: reachable(write), 20, what)


def summary(events: list[WatchEvent]) -> list[tuple[str, str, bytes]]:
    return [(e.type, e.key, e.value) for e in events]


def start_members(directory: Path, names: list[str]) -> list[EtcdMember]:
    ports = free_ports(2 * len(names))
    members = [
        EtcdMember(
            name=name,
            data_dir=directory / name,
            client_port=ports[2 * i],
            peer_port=ports[2 * i + 1],
        )
        for i, name in enumerate(names)
    ]
    cluster = {m.name: m.peer_url for m in members}
    for member in members:
        member.initial_cluster = dict(cluster)
    try:
        for member in members:
            member.start()
        for member in members:
            member.wait_healthy(30)
    except BaseException:
        for member in members:
            member.stop()
        raise
    return members


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    [member] = start_members(tmp_path_factory.mktemp("etcd1"), ["solo"])
    try:
        yield member
    finally:
        member.stop()
        assert member.pid() is None


@pytest.fixture
async def db(etcd: EtcdMember) -> AsyncIterator[ConfigDB]:
    async with ConfigDB([etcd.endpoint]) as client:
        yield client


@pytest.fixture
def prefix() -> str:
    return f"/heron/test/{uuid.uuid4().hex[:8]}/"


# -- records ---------------------------------------------------------------------------------


async def test_put_get_list_with_models(db: ConfigDB, prefix: str) -> None:
    pools = {name: Pool(name=name, path=f"/srv/{name}", created_at=1.0) for name in "abc"}
    revisions = {}
    for name, pool in pools.items():
        revisions[name] = await db.put(f"{prefix}pools/{name}", pool)
    assert revisions["a"] < revisions["b"] < revisions["c"]
    # A key that shares the prefix's text but not its directory stays out of the listing.
    await db.put(f"{prefix}pools-other", Pool(name="z", created_at=1.0))

    entry = await db.get(Pool, f"{prefix}pools/b")
    assert entry is not None
    assert isinstance(entry.value, Pool)
    assert entry.value == pools["b"]
    assert entry.revision == revisions["b"]
    assert entry.key == f"{prefix}pools/b"
    assert entry.lease == 0

    listed = await db.list(Pool, f"{prefix}pools/")
    assert [e.key for e in listed] == [f"{prefix}pools/{n}" for n in "abc"]
    assert [e.value for e in listed] == list(pools.values())
    assert [e.revision for e in listed] == [revisions[n] for n in "abc"]

    entries, at = await db.list_at(Pool, f"{prefix}pools/")
    assert len(entries) == 3
    assert at >= revisions["c"] + 1  # the pools-other put came after
    assert await db.revision() == at

    assert await db.get(Pool, f"{prefix}pools/missing") is None
    assert await db.get_raw(f"{prefix}pools/missing") is None
    raw, raw_revision = await db.get_raw(f"{prefix}pools/a")
    assert Pool.model_validate_json(raw) == pools["a"]
    assert raw_revision == revisions["a"]

    deleted_at = await db.delete(f"{prefix}pools/a")
    assert deleted_at > at
    assert await db.get(Pool, f"{prefix}pools/a") is None
    assert [e.key for e in await db.list(Pool, f"{prefix}pools/")] == [
        f"{prefix}pools/b",
        f"{prefix}pools/c",
    ]


async def test_overwrite_moves_the_revision(db: ConfigDB, prefix: str) -> None:
    first = await db.put(f"{prefix}k", Counter(name="k", count=1))
    second = await db.put(f"{prefix}k", Counter(name="k", count=2))
    assert second > first
    entry = await db.get(Counter, f"{prefix}k")
    assert entry is not None
    assert (entry.value.count, entry.revision) == (2, second)


async def test_cas_with_stale_revision_conflicts(db: ConfigDB, prefix: str) -> None:
    key = f"{prefix}cas"
    r1 = await db.put(key, Counter(name="cas", count=1))
    r2 = await db.put(key, Counter(name="cas", count=2), revision=r1)
    assert r2 > r1
    with pytest.raises(Conflict):
        await db.put(key, Counter(name="cas", count=99), revision=r1)
    with pytest.raises(Conflict):
        await db.put(key, Counter(name="cas", count=98), revision=0)  # 0: must be absent
    with pytest.raises(Conflict):
        await db.delete(key, revision=r1)
    entry = await db.get(Counter, key)
    assert entry is not None
    assert (entry.value.count, entry.revision) == (2, r2)

    # The current revision still works, for a write and for a delete.
    r3 = await db.put(key, Counter(name="cas", count=3), revision=r2)
    await db.delete(key, revision=r3)
    assert await db.get(Counter, key) is None
    # revision 0 on an absent key creates it.
    await db.put(key, Counter(name="cas", count=4), revision=0)
    assert (await db.get(Counter, key)).value.count == 4


async def test_create_twice_conflicts(db: ConfigDB, prefix: str) -> None:
    key = f"{prefix}names/vm/web"
    revision = await db.create(key, "id-1")
    with pytest.raises(Conflict):
        await db.create(key, "id-2")
    assert await db.get_raw(key) == (b"id-1", revision)


async def test_concurrent_creates_one_wins(etcd: EtcdMember, prefix: str) -> None:
    key = f"{prefix}names/vm/race"
    clients = [ConfigDB([etcd.endpoint]) for _ in range(4)]
    for client in clients:
        await client.connect()
    try:
        results = await asyncio.gather(
            *(c.create(key, f"id-{i}") for i, c in enumerate(clients)), return_exceptions=True
        )
    finally:
        for client in clients:
            await client.close()
    winners = [i for i, r in enumerate(results) if isinstance(r, int)]
    assert len(winners) == 1, results
    assert all(isinstance(r, Conflict) for i, r in enumerate(results) if i not in winners)
    async with ConfigDB([etcd.endpoint]) as db:
        value, _ = await db.get_raw(key)
    assert value == f"id-{winners[0]}".encode()


async def test_failed_txn_applies_none_of_its_writes(db: ConfigDB, prefix: str) -> None:
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
    assert await db.revision() == before  # nothing at all was written


async def test_successful_txn_applies_all_at_one_revision(db: ConfigDB, prefix: str) -> None:
    await db.put(f"{prefix}old", "x")
    txn = (
        Txn()
        .require_absent(f"{prefix}names/vm/new")
        .put(f"{prefix}vms/2", Counter(name="two"))
        .put(f"{prefix}names/vm/new", "2")
        .delete(f"{prefix}old")
    )
    revision = await db.commit(txn)
    vm = await db.get(Counter, f"{prefix}vms/2")
    name = await db.get_raw(f"{prefix}names/vm/new")
    assert vm is not None and vm.revision == revision
    assert name == (b"2", revision)
    assert await db.get_raw(f"{prefix}old") is None
    assert await db.revision() == revision


async def test_commit_of_delete_only_txn_returns_its_revision(db: ConfigDB, prefix: str) -> None:
    written = await db.put(f"{prefix}gone", "x")
    revision = await db.commit(Txn().delete(f"{prefix}gone"))
    assert revision == written + 1
    assert await db.revision() == revision


async def test_update_retries_under_contention(etcd: EtcdMember, prefix: str) -> None:
    key = f"{prefix}counter"
    writers, rounds = 5, 8
    clients = [ConfigDB([etcd.endpoint]) for _ in range(writers)]
    for client in clients:
        await client.connect()
    calls = 0
    try:
        await clients[0].create(key, Counter(name="c"))

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
        final = await clients[0].get(Counter, key)
    finally:
        for client in clients:
            await client.close()
    assert final is not None
    assert final.value.count == writers * rounds
    assert sorted(final.value.touched_by) == sorted(
        f"w{i}" for i in range(writers) for _ in range(rounds)
    )
    assert calls > writers * rounds, "no update had to retry: the test had no contention"


async def test_update_of_missing_key(db: ConfigDB, prefix: str) -> None:
    with pytest.raises(KeyError):
        await db.update(Counter, f"{prefix}nothing", lambda c: c)


async def test_update_gives_up_when_always_beaten(
    db: ConfigDB, prefix: str, monkeypatch: pytest.MonkeyPatch
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
        await db.put(key, Counter(name="hot", count=-1))  # another writer slips in every time
        return entry

    monkeypatch.setattr(db, "get", get_then_interfere)
    with pytest.raises(Conflict):
        await db.update(Counter, key, change, attempts=3)
    monkeypatch.undo()
    assert attempts == 3
    assert (await db.get(Counter, key)).value.count == -1


# -- watches ---------------------------------------------------------------------------------


async def test_watch_delivers_puts_and_deletes_in_order(db: ConfigDB, prefix: str) -> None:
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
        revisions = [e.revision for e in events]
        assert revisions == sorted(revisions)
        assert len(set(revisions)) == 5
        assert revisions[0] == start
        assert revisions[3] == middle

        # Live changes follow the history.
        live = await db.put(f"{prefix}w/c", "5")
        events = await watcher.wait_count(6)
        assert summary(events[5:]) == [("put", f"{prefix}w/c", b"5")]
        assert events[5].revision == live
    finally:
        await watcher.close()

    # A watch from a later revision starts there.
    late = Collector(db, f"{prefix}w/", middle)
    try:
        assert [e.value for e in await late.wait_count(3)] == [b"3", b"4", b"5"]
        # ...and nothing else arrives: a marker written after is the very next event.
        await db.put(f"{prefix}w/marker", "m")
        assert summary((await late.wait_count(4))[3:]) == [("put", f"{prefix}w/marker", b"m")]
        assert len(late.events) == 4
    finally:
        await late.close()


async def test_watch_from_compacted_revision_asks_for_resync(db: ConfigDB, prefix: str) -> None:
    first = await db.put(f"{prefix}c/1", "1")
    await db.put(f"{prefix}c/2", "2")
    kept = await db.put(f"{prefix}c/3", "3")
    await db.client.compact(kept)
    watcher = Collector(db, f"{prefix}c/", first)
    try:
        events = await watcher.wait_count(2)
        assert (events[0].type, events[0].revision) == ("resync", kept)
        # It carries on from the oldest revision etcd still has.
        assert summary(events[1:]) == [("put", f"{prefix}c/3", b"3")]
        live = await db.put(f"{prefix}c/4", "4")
        events = await watcher.wait_count(3)
        assert (events[2].key, events[2].revision) == (f"{prefix}c/4", live)
        assert len(watcher.events) == 3
    finally:
        await watcher.close()


async def test_watch_resumes_across_etcd_restart(tmp_path: Path) -> None:
    [member] = start_members(tmp_path, ["restarted"])
    prefix = "/heron/test/restart/"
    try:
        async with ConfigDB([member.endpoint]) as db:
            start = await db.revision() + 1
            watcher = Collector(db, prefix, start)
            try:
                await db.put(f"{prefix}a", "1")
                await db.put(f"{prefix}b", "2")
                await db.delete(f"{prefix}a")
                await watcher.wait_count(3)

                old_pid = member.pid()
                await asyncio.to_thread(member.stop)
                assert member.pid() is None
                await asyncio.to_thread(member.start)
                await asyncio.to_thread(member.wait_healthy, 30)
                assert member.pid() != old_pid

                async with ConfigDB([member.endpoint]) as writer:
                    writes = [
                        lambda: writer.put(f"{prefix}c", "3"),
                        lambda: writer.put(f"{prefix}a", "4"),
                        lambda: writer.delete(f"{prefix}b"),
                        lambda: writer.put(f"{prefix}end", "5"),
                    ]
                    for write in writes:
                        await write_when_reachable(write, "a write after the restart")
                events = await watcher.wait_count(7, timeout=30)
                assert summary(events) == [
                    ("put", f"{prefix}a", b"1"),
                    ("put", f"{prefix}b", b"2"),
                    ("delete", f"{prefix}a", b""),
                    ("put", f"{prefix}c", b"3"),
                    ("put", f"{prefix}a", b"4"),
                    ("delete", f"{prefix}b", b""),
                    ("put", f"{prefix}end", b"5"),
                ]
                assert [e.revision for e in events] == list(range(start, start + 7))

                # The watching client itself works again too, and nothing is repeated.
                await write_when_reachable(
                    lambda: db.put(f"{prefix}after", "6"), "a write through the old client"
                )
                events = await watcher.wait_count(8)
                assert summary(events[7:]) == [("put", f"{prefix}after", b"6")]
                assert len(watcher.events) == 8
            finally:
                await watcher.close()
    finally:
        member.stop()


# -- leases ----------------------------------------------------------------------------------


async def test_lease_expires_unless_refreshed(db: ConfigDB, prefix: str) -> None:
    kept_lease = await db.grant(2)  # granted first: unrefreshed, it would expire first
    lost_lease = await db.grant(2)
    await db.put(f"{prefix}kept", "alive", lease=kept_lease)
    await db.create(f"{prefix}lost", "alive", lease=lost_lease)
    assert await db.get_raw(f"{prefix}kept") is not None

    async def lost_gone_while_refreshing_kept() -> bool:
        remaining = await db.refresh(kept_lease)
        assert remaining > 0, "the refreshed lease expired"
        assert await db.get_raw(f"{prefix}kept") is not None, "the refreshed key vanished"
        return await db.get_raw(f"{prefix}lost") is None

    await eventually(lost_gone_while_refreshing_kept, 15, "the unrefreshed key to expire", 0.3)
    assert await db.get_raw(f"{prefix}kept") is not None
    assert await db.refresh(lost_lease) <= 0

    # Left alone, the other one goes too.
    await eventually(
        lambda: _absent(db, f"{prefix}kept"), 15, "the no longer refreshed key to expire"
    )


async def _absent(db: ConfigDB, key: str) -> bool:
    return await db.get_raw(key) is None


async def test_update_keeps_the_lease(db: ConfigDB, prefix: str) -> None:
    lease = await db.grant(30)
    try:
        await db.put(f"{prefix}leased", Counter(name="l"), lease=lease)
        entry = await db.update(
            Counter, f"{prefix}leased", lambda c: c.model_copy(update={"count": 1})
        )
        assert entry.lease == lease
        stored = await db.get(Counter, f"{prefix}leased")
        assert stored is not None
        assert (stored.value.count, stored.lease) == (1, lease)
        await db.revoke(lease)
        assert await db.get_raw(f"{prefix}leased") is None
    finally:
        await db.revoke(lease)


# -- watch-fed caches -------------------------------------------------------------------------


async def test_cache_lists_then_follows_puts_and_deletes(db: ConfigDB, prefix: str) -> None:
    await db.put(f"{prefix}a", Counter(name="a", count=1))
    await db.put(f"{prefix}b", Counter(name="b"))
    cache = Cache(db, Counter, prefix)
    await cache.start()
    try:
        assert sorted((c.name, c.count) for c in cache.values()) == [("a", 1), ("b", 0)]
        changed = cache.listen()
        revision = await db.put(f"{prefix}a", Counter(name="a", count=2))
        deleted = await db.delete(f"{prefix}b")
        created = await db.put(f"{prefix}c", Counter(name="c", count=3))
        # Reading one's own writes: after wait_for, the copy holds all three changes.
        assert await cache.wait_for(max(revision, deleted, created))
        assert changed.is_set()
        assert sorted((c.name, c.count) for c in cache.values()) == [("a", 2), ("c", 3)]
        entry = cache.get("c")
        assert entry is not None
        assert (entry.key, entry.revision) == (f"{prefix}c", created)
        assert cache.get("b") is None
        # And the copy matches what etcd lists, entry for entry.
        listed = {e.key: (e.value, e.revision) for e in await db.list(Counter, prefix)}
        assert {e.key: (e.value, e.revision) for e in cache} == listed
    finally:
        await cache.stop()


async def test_cache_carries_leases_and_skips_records_it_cannot_read(
    db: ConfigDB, prefix: str
) -> None:
    await db.put(f"{prefix}junk-at-start", "not a record")
    cache = Cache(db, Counter, prefix)
    await cache.start()
    lease = await db.grant(30)
    try:
        assert len(cache) == 0
        await db.put(f"{prefix}junk", '{"name": 5}')
        revision = await db.put(f"{prefix}ok", Counter(name="ok"), lease=lease)
        assert await cache.wait_for(revision)
        assert [e.key for e in cache] == [f"{prefix}ok"]
        entry = cache.get("ok")
        assert entry is not None and entry.lease == lease
    finally:
        await db.revoke(lease)
        await cache.stop()


async def test_cache_wait_for_gives_up_on_a_revision_that_never_comes(
    db: ConfigDB, prefix: str
) -> None:
    cache = Cache(db, Counter, prefix)
    await cache.start()
    try:
        elsewhere = await db.put(prefix.rstrip("/") + "-other/x", Counter(name="x"))
        assert not await cache.wait_for(elsewhere, timeout=0.2)
    finally:
        await cache.stop()


async def test_cache_start_fails_when_etcd_is_unreachable() -> None:
    [port] = free_ports(1)
    async with ConfigDB([f"127.0.0.1:{port}"]) as unreachable:
        cache = Cache(unreachable, Counter, "/heron/test/")
        with pytest.raises(aetcd.exceptions.ConnectionFailedError):
            await cache.start()


# -- a 3-member cluster ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EtcdMember]]:
    members = start_members(tmp_path_factory.mktemp("etcd3"), ["m1", "m2", "m3"])
    try:
        yield members
    finally:
        for member in members:
            member.stop()


async def test_write_on_member_1_reaches_watcher_on_member_3(cluster: list[EtcdMember]) -> None:
    m1, _, m3 = cluster
    prefix = f"/heron/test/{uuid.uuid4().hex[:8]}/"
    async with ConfigDB([m1.endpoint]) as one, ConfigDB([m3.endpoint]) as three:
        served_by_1 = (await one.client.get_prefix(b"/")).header.member_id
        served_by_3 = (await three.client.get_prefix(b"/")).header.member_id
        assert served_by_1 != served_by_3
        start = await three.revision() + 1
        watcher = Collector(three, prefix, start)
        try:
            revision = await one.put(f"{prefix}k", Counter(name="k", count=7))
            [event] = await watcher.wait_count(1)
            assert (event.type, event.key, event.revision) == ("put", f"{prefix}k", revision)
            assert Counter.model_validate_json(event.value).count == 7
            await one.delete(f"{prefix}k")
            events = await watcher.wait_count(2)
            assert summary(events[1:]) == [("delete", f"{prefix}k", b"")]
        finally:
            await watcher.close()
        # Reads on member 3 are linearizable: they see member 1's write at once.
        await one.put(f"{prefix}k2", "v")
        assert await three.get_raw(f"{prefix}k2") is not None


async def test_client_fails_over_to_another_member(cluster: list[EtcdMember]) -> None:
    prefix = f"/heron/test/{uuid.uuid4().hex[:8]}/"
    async with ConfigDB([m.endpoint for m in cluster]) as db:
        await db.put(f"{prefix}before", "1")
        names = {m.id: m.name async for m in db.client.members()}
        assert sorted(names.values()) == ["m1", "m2", "m3"]
        serving = names[(await db.client.get_prefix(b"/")).header.member_id]
        [stopped] = [m for m in cluster if m.name == serving]
        rest = [m for m in cluster if m is not stopped]
        try:
            await asyncio.to_thread(stopped.stop)
            assert stopped.pid() is None
            for member in rest:
                await asyncio.to_thread(member.wait_healthy, 30)  # a leader again

            revision = await db.put(f"{prefix}after", "2")
            reply = await db.client.get_prefix(prefix.encode())
            assert names[reply.header.member_id] != serving
            assert {kv.key.decode(): kv.value for kv in reply} == {
                f"{prefix}before": b"1",
                f"{prefix}after": b"2",
            }
            assert await db.get_raw(f"{prefix}after") == (b"2", revision)
        finally:
            await asyncio.to_thread(stopped.start)
            await asyncio.to_thread(stopped.wait_healthy, 30)
