"""The rbd pool driver's snapshots and clones: the `rbd` commands it runs, against a
stand-in for rbd (tests/fakes/rbd.py: no Ceph cluster can run here) that answers as rbd does
and keeps Ceph's rules on protected snapshots and clones. Where Ceph is reachable,
tests/integration/test_external_pools.py runs the same steps on a real cluster."""

import os
from pathlib import Path

import pytest
from fakes.rbd import Cluster, install

from heron.models.storage import Pool, Volume
from heron.storage.driver import StorageError
from heron.storage.rbdpool import RbdPool, base_snapshot, partial_image

GIB = 2**30


@pytest.fixture
def ceph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    """The stand-in rbd first on PATH, with an empty Ceph pool `vms`."""
    program = install(tmp_path / "bin", tmp_path / "stand-in-rbd.json")
    monkeypatch.setenv("PATH", f"{program.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return Cluster(tmp_path / "stand-in-rbd.json")


def driver(tmp_path: Path) -> RbdPool:
    pool = Pool.model_validate(
        {"name": "ceph", "type": "rbd", "rbd_pool": "vms", "user": "heron", "created_at": 0}
    )
    return RbdPool(pool, tmp_path)


def volume(name: str, size: int = GIB, id_: str | None = None) -> Volume:
    return Volume(id=id_ or f"id-{name}", pool="ceph", name=name, format="raw", size=size,
                  state="ready", created_at=0)  # fmt: skip


async def test_snapshots_of_several_images_listed_with_sizes_and_reverted(
    ceph: Cluster, tmp_path: Path
) -> None:
    rbd = driver(tmp_path)
    a, b = volume("a"), volume("b")
    ceph.add("vms/a", GIB, "a0")
    ceph.add("vms/b", GIB, "b0", features=["layering", "exclusive-lock"])  # no fast-diff
    ceph.write("vms/a", "a1", 3 * 4096)
    await rbd.snapshot_create([a, b], "s1")
    ceph.write("vms/a", "a2", 4096)
    await rbd.snapshot_create([a], "s2")
    assert ceph.journal()[:2] == ["snap create vms/a@s1", "snap create vms/b@s1"]
    assert all(argv[:2] == ["--id", "heron"] for argv in ceph.load()["journal"])

    listed = await rbd.snapshots(a)
    assert [(s.name, s.size) for s in listed] == [("s1", 3 * 4096), ("s2", 4096)]
    assert all(abs(s.created_at - listed[0].created_at) < 60 for s in listed)
    assert listed[0].created_at > 1.7e9  # rbd's ctime text, read as epoch seconds
    # Without fast-diff `rbd du` reads every object: not asked, no size.
    before = len(ceph.journal())
    assert [(s.name, s.size) for s in await rbd.snapshots(b)] == [("s1", None)]
    assert not any(c.startswith("du") for c in ceph.journal()[before:])

    ceph.write("vms/a", "a3", 4096)
    await rbd.snapshot_revert(a, "s1")
    assert ceph.image("vms/a")["data"] == "a1"  # type: ignore[index]
    assert [s.name for s in await rbd.snapshots(a)] == ["s1", "s2"]  # they stay
    await rbd.snapshot_delete(a, "s1")
    await rbd.snapshot_delete(a, "s1")  # a repeat: gone already
    assert [s.name for s in await rbd.snapshots(a)] == ["s2"]
    with pytest.raises(StorageError, match="No such file"):
        await rbd.snapshot_revert(a, "s1")


async def test_a_snapshot_is_taken_of_every_image_or_of_none(ceph: Cluster, tmp_path: Path) -> None:
    rbd = driver(tmp_path)
    a, b = volume("a"), volume("b")
    ceph.add("vms/a", GIB, "a0")
    ceph.add("vms/b", GIB, "b0")
    ceph.fail("snap create vms/b@s1", "rbd: failed to create snapshot: (5) Input/output error")
    with pytest.raises(StorageError, match="Input/output error"):
        await rbd.snapshot_create([a, b], "s1")
    assert await rbd.snapshots(a) == [] and await rbd.snapshots(b) == []
    # A name already taken is refused, and the snapshot that has it is left alone.
    ceph.fail("snap create vms/b@s1", "")
    await rbd.snapshot_create([b], "s1")
    with pytest.raises(StorageError, match="File exists"):
        await rbd.snapshot_create([a, b], "s1")
    assert [s.name for s in await rbd.snapshots(b)] == ["s1"] and await rbd.snapshots(a) == []


async def test_linked_clones_of_a_template_hold_it_until_they_go(
    ceph: Cluster, tmp_path: Path
) -> None:
    rbd = driver(tmp_path)
    template = volume("tpl")
    ceph.add("vms/tpl", GIB, "golden")
    await rbd.snapshot_create([template], "kept")  # a snapshot of its own, before
    one, two = volume("one", id_="c1"), volume("two", id_="c2")
    await rbd.clone(template, None, one, True, None)
    await rbd.clone(template, None, two, True, None)
    for clone in (one, two):
        image = ceph.image(f"vms/{clone.name}")
        assert image is not None and image["data"] == "golden"
        assert image["parent"] == {"image": "vms/tpl", "snapshot": base_snapshot(clone)}
    assert ceph.changes()[-3:] == [
        f"snap create vms/tpl@{base_snapshot(two)}",
        f"snap protect vms/tpl@{base_snapshot(two)}",
        f"clone vms/tpl@{base_snapshot(two)} vms/two",
    ]
    # The clones' bases are no snapshots of the template's VM.
    assert [s.name for s in await rbd.snapshots(template)] == ["kept"]

    with pytest.raises(StorageError, match=r"base of linked clones \(vms/one\)"):
        await rbd.delete(template)
    assert ceph.image("vms/tpl") is not None
    await rbd.delete(one)
    assert ceph.image("vms/one") is None
    names = [s["name"] for s in ceph.image("vms/tpl")["snaps"]]  # type: ignore[index]
    assert names == ["kept", base_snapshot(two)]  # one's base went with it
    # A base that cannot be removed does not fail its clone's delete: the template's takes it.
    unprotect = f"snap unprotect vms/tpl@{base_snapshot(two)}"
    ceph.fail(unprotect, "rbd: unprotecting snap failed: (110) Connection timed out")
    await rbd.delete(two)
    assert ceph.image("vms/two") is None
    assert len(ceph.image("vms/tpl")["snaps"]) == 2  # type: ignore[index]
    ceph.fail(unprotect, "")
    await rbd.delete(template)  # its own snapshots and the leftover base go with it
    await rbd.delete(template)  # a repeat: gone already
    assert ceph.load()["images"] == {}


async def test_a_snapshot_a_linked_clone_reads_cannot_be_deleted(
    ceph: Cluster, tmp_path: Path
) -> None:
    rbd = driver(tmp_path)
    source = volume("src")
    ceph.add("vms/src", GIB, "v1")
    await rbd.snapshot_create([source], "s1")
    ceph.write("vms/src", "v2", 4096)
    clone = volume("copy")
    await rbd.clone(source, "s1", clone, True, None)
    assert ceph.image("vms/copy")["data"] == "v1"  # type: ignore[index]
    assert ceph.changes()[-2:] == ["snap protect vms/src@s1", "clone vms/src@s1 vms/copy"]
    with pytest.raises(StorageError, match=r"snapshot s1 of volume src .*\(vms/copy\)"):
        await rbd.snapshot_delete(source, "s1")
    with pytest.raises(StorageError, match="base of linked clones"):
        await rbd.delete(source)
    # A revert is the source's own business: the clone still reads the snapshot.
    await rbd.snapshot_revert(source, "s1")
    assert [s.name for s in await rbd.snapshots(source)] == ["s1"]
    # A clone task cut short and run again finds its clone made.
    await rbd.clone(source, "s1", clone, True, None)
    await rbd.delete(clone)
    await rbd.snapshot_delete(source, "s1")  # unprotected, then removed
    assert ceph.changes()[-2:] == ["snap unprotect vms/src@s1", "snap rm vms/src@s1"]
    assert await rbd.snapshots(source) == []


async def test_a_failed_template_clone_leaves_no_base(ceph: Cluster, tmp_path: Path) -> None:
    rbd = driver(tmp_path)
    template, clone = volume("tpl"), volume("web", id_="c9")
    ceph.add("vms/tpl", GIB, "golden")
    ceph.add("vms/web", GIB, "someone else's")
    with pytest.raises(StorageError, match="already has an image web"):
        await rbd.clone(template, None, clone, True, None)
    assert ceph.image("vms/tpl")["snaps"] == []  # type: ignore[index]
    assert ceph.image("vms/web")["data"] == "someone else's"  # type: ignore[index]
    # Failed before its protection: removed all the same (rbd: "already unprotected").
    other = volume("db", id_="c8")
    protect = f"snap protect vms/tpl@{base_snapshot(other)}"
    ceph.fail(protect, "rbd: protecting snap failed: (5) Input/output error")
    with pytest.raises(StorageError, match="Input/output error"):
        await rbd.clone(template, None, other, True, None)
    assert ceph.image("vms/tpl")["snaps"] == [] and ceph.image("vms/db") is None  # type: ignore[index]


async def test_full_clones_copy_with_progress_and_grow_to_the_record(
    ceph: Cluster, tmp_path: Path
) -> None:
    rbd = driver(tmp_path)
    source = volume("src", size=2 * GIB)
    ceph.add("vms/src", GIB, "v1")
    await rbd.snapshot_create([source], "s1")
    ceph.write("vms/src", "v2", 4096)
    seen: list[float] = []

    async def progress(fraction: float) -> None:
        seen.append(fraction)

    of_snapshot, of_image = volume("c1", size=2 * GIB), volume("c2")
    await rbd.clone(source, "s1", of_snapshot, False, progress)
    await rbd.clone(source, None, of_image, False, None)
    # rbd's percentages, the newest of each read from its stderr (they may come together).
    assert seen and seen == sorted(seen) and seen[-1] == 1.0
    assert set(seen) <= {0.25, 0.5, 0.75, 1.0}
    copied, now = ceph.image("vms/c1"), ceph.image("vms/c2")
    assert copied is not None and now is not None
    assert (copied["data"], copied["parent"], copied["snaps"]) == ("v1", None, [])
    assert copied["size"] == 2 * GIB  # the snapshot was 1 GiB: grown to the record's size
    assert now["data"] == "v2"
    assert "cp vms/src@s1 vms/heron-partial-id-c1" in ceph.journal()
    assert "rename vms/heron-partial-id-c1 vms/c1" in ceph.journal()
    await rbd.delete(source)  # copies read nothing of it
    assert ceph.image("vms/src") is None


async def test_rbd_missing_or_failing_is_said(
    ceph: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rbd = driver(tmp_path)
    with pytest.raises(
        StorageError, match=r"rbd snap create .*vms/nothing@s1: .*\(2\) No such file"
    ):
        await rbd.snapshot_create([volume("nothing")], "s1")
    assert await rbd.snapshots(volume("nothing")) == []
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(StorageError, match="need the rbd tool"):
        await rbd.snapshot_create([volume("a")], "s1")


async def test_a_full_clone_cut_short_is_made_again_and_no_image_of_others_removed(
    ceph: Cluster, tmp_path: Path
) -> None:
    rbd = driver(tmp_path)
    source, target = volume("src"), volume("copy", id_="c7")
    ceph.add("vms/src", GIB, "v1")
    state = ceph.load()  # a source tagged by its own copy (rbd cp copies the tag)
    state["images"]["vms/src"]["meta"] = {"heron.volume": "id-src"}
    ceph.save(state)
    partial = f"vms/{partial_image(target)}"
    # The agent's rbd cp killed halfway: part of the data under the partial name only.
    ceph.cut(f"cp vms/src {partial}")
    with pytest.raises(StorageError, match="killed by signal 9"):
        await rbd.clone(source, None, target, False, None)
    assert ceph.image(partial)["data"] == "part of v1"  # type: ignore[index]
    assert ceph.image("vms/copy") is None
    # The task's rerun removes its own leftover and copies again (rbd said "File exists").
    ceph.cut(f"cp vms/src {partial}", False)
    await rbd.clone(source, None, target, False, None)
    copied = ceph.image("vms/copy")
    assert copied is not None and copied["data"] == "v1"
    assert copied["meta"] == {"heron.volume": "c7"}
    assert ceph.image(partial) is None
    assert ceph.changes()[-4:] == [
        f"rm {partial}",
        f"cp vms/src {partial}",
        f"image-meta set {partial} heron.volume c7",
        f"rename {partial} vms/copy",
    ]
    # A rerun after the rename (its record not yet ready) finds the copy its own: no copy.
    before = len(ceph.changes())
    await rbd.clone(source, None, target, False, None)
    assert ceph.changes()[before:] == [] and ceph.image("vms/copy")["data"] == "v1"  # type: ignore[index]

    # Someone else's image under the volume's name is refused and left alone, tagged or not.
    other = volume("web", id_="c6")
    ceph.add("vms/web", GIB, "someone else's")
    with pytest.raises(StorageError, match="already has an image web"):
        await rbd.clone(source, None, other, False, None)
    state = ceph.load()
    state["images"]["vms/web"]["meta"] = {"heron.volume": "c5"}
    ceph.save(state)
    with pytest.raises(StorageError, match="already has an image web"):
        await rbd.clone(source, None, other, False, None)
    assert ceph.image("vms/web")["data"] == "someone else's"  # type: ignore[index]
    assert not any(c.startswith("cp ") for c in ceph.changes()[before:])

    # A volume whose copy was cut short and is then deleted takes its leftover with it.
    third = volume("db", id_="c4")
    ceph.cut(f"cp vms/src vms/{partial_image(third)}")
    with pytest.raises(StorageError, match="killed"):
        await rbd.clone(source, None, third, False, None)
    assert ceph.image(f"vms/{partial_image(third)}") is not None
    await rbd.delete(third.model_copy(update={"state": "error"}))
    assert ceph.image(f"vms/{partial_image(third)}") is None
    assert set(ceph.load()["images"]) == {"vms/src", "vms/copy", "vms/web"}
