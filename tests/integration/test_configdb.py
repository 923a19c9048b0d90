"""The ConfigDB (heron.configdb.store.ConfigDB) against real etcd members, for what the
shared contract (tests/contracts/configdb.py, run on etcd by test_configdb_contract.py and on
the in-memory fake by the unit tests) cannot cover: restarts, the caches, a 3-member cluster.

One single-member etcd serves most tests (each test under a prefix of its own); the watch
resume test restarts a member of its own, and a 3-member cluster covers replication and
client fail-over.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aetcd.exceptions
import pytest
from contracts.configdb import Collector, Counter, summary
from support import eventually

from heron.configdb import ConfigDB
from heron.configdb.cache import Cache
from heron.configdb.etcd import EtcdMember
from heron.util.ports import free_ports

pytestmark = pytest.mark.integration


# -- helpers ---------------------------------------------------------------------------------


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


async def test_overwrite_moves_the_revision(db: ConfigDB, prefix: str) -> None:
    first = await db.put(f"{prefix}k", Counter(name="k", count=1))
    second = await db.put(f"{prefix}k", Counter(name="k", count=2))
    assert second > first
    entry = await db.get(Counter, f"{prefix}k")
    assert entry is not None
    assert (entry.value.count, entry.revision) == (2, second)


# -- watches ---------------------------------------------------------------------------------


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


async def test_a_watch_answered_late_never_feeds_the_next_one(
    db: ConfigDB, etcd: EtcdMember, prefix: str
) -> None:
    """A watch whose create timed out (etcd paused) is answered once etcd runs again; that
    answer must not be taken for the next watch created meanwhile (configdb.client.Watcher),
    which would then see the first prefix's events and never its own."""
    # The channel and the watch stream open first: a paused etcd would not let them.
    opened = await db.client.watch_prefix(f"{prefix}opened/".encode())
    watcher = db.client._watcher  # the client's one watch stream (made at connect)
    pid = etcd.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        watcher._timeout = 0.5  # well before gRPC's keepalive gives up on the paused member
        with pytest.raises(aetcd.exceptions.WatchTimeoutError):
            await db.client.watch_prefix(f"{prefix}first/".encode())
        watcher._timeout = 30
        second = asyncio.create_task(db.client.watch_prefix(f"{prefix}second/".encode()))

        async def sent() -> bool:
            return watcher._new_callback is not None  # its create request is queued

        await eventually(sent, 10, "the second watch's create request")
    finally:
        os.kill(pid, signal.SIGCONT)
    watch = await second
    try:
        await db.put(f"{prefix}first/k", "1")
        await db.put(f"{prefix}second/k", "2")
        event = await asyncio.wait_for(anext(aiter(watch)), 30)
        assert (event.kv.key, event.kv.value) == (f"{prefix}second/k".encode(), b"2")
    finally:
        await watch.cancel()
        await opened.cancel()


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


async def test_cache_start_waits_while_etcd_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A node starting while etcd is out of reach: its caches wait (saying so) instead of
    failing the agent's tasks; stopped meanwhile, they end cleanly."""
    [port] = free_ports(1)
    async with ConfigDB([f"127.0.0.1:{port}"]) as unreachable:
        cache = Cache(unreachable, Counter, "/heron/test/")
        starting = asyncio.create_task(cache.start())

        async def said() -> bool:
            return "etcd cannot be reached" in caplog.text

        await eventually(said, 60, "the cache to say etcd cannot be reached")
        assert not starting.done()
        await cache.stop()
        await asyncio.gather(starting, return_exceptions=True)


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
