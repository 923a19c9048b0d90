"""The layers of an ardfs volume's record (storage/layers.py): snapshot, revert, delete of a
middle snapshot, linked clones, what heron-io is told (agent/ardfs.io_config), and the
snapshot sizes the owner's agent writes from what heron-io reports."""

import uuid
from pathlib import Path

import pytest
from fakes.configdb import FakeConfigDB

from heron.agent.ardfs import IoSupervisor, io_config
from heron.configdb import keys
from heron.errors import StorageError
from heron.models.snapshot import Snapshot, SnapshotDisk, SnapshotState
from heron.models.storage import ArdfsDisk, ArdfsMember, Pool, Volume, VolumeFormat
from heron.storage import layers


def volume(name: str = "v") -> Volume:
    return Volume(id=str(uuid.uuid4()), pool="p", name=name, format=VolumeFormat.raw,
                  size=1 << 30, created_at=1.0)  # fmt: skip


def test_a_snapshot_freezes_the_top_under_a_new_one() -> None:
    v = volume()
    base = uuid.UUID(v.id).hex
    assert layers.stack(v) == [base]
    one = layers.snapshotted(v, "s1", 2.0)
    assert layers.stack(one) == [base, one.top]
    assert layers.snapshotted(one, "s1", 3.0) == one  # a repeat changes nothing
    two = layers.snapshotted(one, "s2", 3.0)
    assert len(layers.stack(two)) == 3
    assert layers.kept(two) == []


def test_revert_keeps_newer_snapshots_off_the_stack_and_drops_the_old_top() -> None:
    v = layers.snapshotted(layers.snapshotted(volume(), "s1", 2.0), "s2", 3.0)
    s1 = layers.snapshot_layer(v, "s1")
    s2 = layers.snapshot_layer(v, "s2")
    assert s1 is not None and s2 is not None
    back, dropped = layers.reverted(v, "s1", 4.0)
    assert dropped == [v.top]
    assert layers.stack(back) == [s1.id, back.top]
    assert layers.kept(back) == [s2.id]
    with pytest.raises(StorageError):
        layers.reverted(v, "nope", 5.0)


def test_deleting_a_middle_snapshot_merges_it_into_the_layers_above() -> None:
    v = layers.snapshotted(layers.snapshotted(volume(), "s1", 2.0), "s2", 3.0)
    back, _ = layers.reverted(v, "s1", 4.0)  # s1's layer now has two layers above it
    s1 = layers.snapshot_layer(back, "s1")
    s2 = layers.snapshot_layer(back, "s2")
    assert s1 is not None and s2 is not None
    marked, dropped = layers.deleting(back, "s1")
    assert dropped == []
    assert layers.merging(marked) == {s1.id: [s2.id, back.top]}
    assert layers.snapshot_layer(marked, "s1") is None  # no longer listed
    done = layers.merged(marked, s1.id)
    assert layers.stack(done) == [back.top]
    assert layers.kept(done) == [s2.id]
    # A leaf snapshot (nothing above it) goes at once.
    gone, dropped = layers.deleting(done, "s2")
    assert dropped == [s2.id] and layers.kept(gone) == []


def test_a_linked_clone_reads_its_sources_layers_and_blocks_their_removal() -> None:
    source = layers.snapshotted(volume("src"), "s1", 2.0)
    s1 = layers.snapshot_layer(source, "s1")
    assert s1 is not None
    clone = layers.linked(source, s1.id, volume("clone"), 3.0)
    assert layers.stack(clone) == [s1.id, clone.top]
    assert layers.own_layers(clone) == [clone.top]
    assert layers.readers(source, [source, clone]) == [clone]
    assert layers.read_by_others(s1.id, source, [source, clone])
    frozen, base = layers.frozen(source, 4.0)
    assert base == source.top and layers.stack(frozen)[-2] == base


def test_heron_io_is_told_the_stack_the_kept_layers_and_the_merges(tmp_path: Path) -> None:
    pool = Pool(name="p", type="ardfs", protection="rf2", created_at=1.0)
    members = [
        ArdfsMember(
            pool="p",
            node=n,
            address=f"127.0.0.1:{2000 + i}",
            disks=[ArdfsDisk(id=f"d{i}", path=f"/tmp/d{i}")],
        )
        for i, n in enumerate(["a", "b"])
    ]
    plain = volume("plain")
    v = layers.snapshotted(layers.snapshotted(volume(), "s1", 2.0), "s2", 3.0)
    back, _ = layers.reverted(v, "s1", 4.0)
    marked, _ = layers.deleting(back, "s1")
    config = io_config("a", tmp_path, pool, members, [plain, marked])
    specs = {s.name: s for s in config.volumes}
    assert specs[plain.id].layers == [] and specs[plain.id].chain == [uuid.UUID(plain.id).hex]
    spec = specs[marked.id]
    assert spec.layers == layers.stack(marked)
    assert spec.kept == layers.kept(marked)
    assert spec.merges == layers.merging(marked)


def test_only_own_snapshot_layers_whose_reported_size_changed_are_written() -> None:
    v = layers.snapshotted(layers.snapshotted(volume(), "s1", 2.0), "s2", 3.0)
    s1, s2 = layers.snapshot_layer(v, "s1"), layers.snapshot_layer(v, "s2")
    assert s1 is not None and s2 is not None and v.top is not None
    # The top is written all the time: it is no snapshot's, and not written to the record.
    reported = {s1.id: 8 << 20, s2.id: 4 << 20, v.top: 12 << 20}
    assert layers.resized(v, reported) == {s1.id: 8 << 20, s2.id: 4 << 20}
    sized = layers.with_bytes(v, layers.resized(v, reported))
    assert [x.bytes for x in sized.layers] == [8 << 20, 4 << 20, None]
    assert layers.resized(sized, reported) == {}  # written once
    merged = {s1.id: 8 << 20, s2.id: 12 << 20}  # an older snapshot merged into s2's layer
    assert layers.resized(sized, merged) == {s2.id: 12 << 20}
    # A linked clone's shared layers are its source's to size.
    clone = layers.linked(sized, s1.id, volume("clone"), 4.0)
    assert layers.resized(clone, {s1.id: 1}) == {}


async def test_the_owner_writes_snapshot_sizes_once_their_snapshots_are_taken(
    db: FakeConfigDB, tmp_path: Path
) -> None:
    v = layers.snapshotted(layers.snapshotted(volume(), "sa0000000000a", 2.0), "sb0000000000b", 3.0)
    await db.put(keys.volume(v.id), v)
    disk = SnapshotDisk(index=0, volume=v.id, pool="p", method="native")
    other = SnapshotDisk(index=1, volume="another", pool="p", method="native", size=5)
    ready = Snapshot(id="sa0000000000a", vm="vm1", name="a", created_at=2.0,
                     disks=[disk, other], state=SnapshotState.ready)  # fmt: skip
    taking = ready.model_copy(update={"id": "sb0000000000b", "name": "b",
                                      "state": SnapshotState.creating})  # fmt: skip
    for s in (ready, taking):
        await db.put(keys.snapshot("vm1", s.id), s)
    a, b = layers.snapshot_layer(v, ready.id), layers.snapshot_layer(v, taking.id)
    assert a is not None and b is not None
    supervisor = IoSupervisor(db, "n1", "127.0.0.1:1", tmp_path)
    await supervisor._publish_sizes(v, {a.id: 8 << 20, b.id: 4 << 20})
    found = await db.get(Snapshot, keys.snapshot("vm1", ready.id))
    assert found is not None and [d.size for d in found.value.disks] == [8 << 20, 5]
    record = await db.get(Volume, keys.volume(v.id))
    assert record is not None
    # The snapshot still being taken is sized at a later look (its task writes it last).
    assert {x.id: x.bytes for x in record.value.layers if x.snapshot} == {a.id: 8 << 20, b.id: None}
    assert layers.resized(record.value, {a.id: 8 << 20, b.id: 4 << 20}) == {b.id: 4 << 20}
