"""ARDFS device classes: telling a disk's class from the kernel (storage/devclass.py), on
*fake* sysfs trees made in tmp_path (this machine's real sysfs has one virtual disk, which says
rotational, so the fakes stand for the devices it lacks); and placement over a pool's disks of
mixed classes (services, on the in-memory ConfigDB): only the class asked for, too few refused,
moves and capacity within the class, a disk's class change refused where it would strand
copies."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from fakes.configdb import FakeConfigDB
from typer.testing import CliRunner

from heron.cli import pool as pool_cli
from heron.cli.main import app
from heron.configdb import keys
from heron.models.storage import (
    ArdfsDisk,
    ArdfsMember,
    ArdfsNodeStatus,
    DiskUsage,
    PlacedDisk,
    PoolSpec,
    Volume,
)
from heron.scheduler.rebalance import RebalanceController
from heron.services import pools, volumes
from heron.services.errors import Conflict, Invalid, NotFound
from heron.services.lookup import find_pool, new_placement
from heron.storage.devclass import detect, detect_block


class FakeSysfs:
    """A sysfs tree as the kernel lays it out: devices under devices/, with links to them
    from class/block/NAME and dev/block/MAJ:MIN."""

    def __init__(self, root: Path):
        self.root = root
        (root / "class" / "block").mkdir(parents=True)
        (root / "dev" / "block").mkdir(parents=True)

    def disk(self, name: str, rotational: int | None, dev: tuple[int, int] | None = None) -> Path:
        path = self.root / "devices" / "pci0000:00" / "block" / name
        (path / "queue").mkdir(parents=True)
        if rotational is not None:
            (path / "queue" / "rotational").write_text(f"{rotational}\n")
        self._link(name, path, dev)
        return path

    def partition(self, disk: Path, name: str, dev: tuple[int, int] | None = None) -> Path:
        path = disk / name
        path.mkdir()
        (path / "partition").write_text("1\n")
        self._link(name, path, dev)
        return path

    def virtual(self, name: str, slaves: list[str] = (), backing: str | None = None) -> Path:
        path = self.root / "devices" / "virtual" / "block" / name
        (path / "queue").mkdir(parents=True)
        (path / "queue" / "rotational").write_text("0\n")  # the stack's own word, not read
        if slaves:
            (path / "slaves").mkdir()
            for slave in slaves:
                os.symlink(self.root / "class" / "block" / slave, path / "slaves" / slave)
        if backing is not None:
            (path / "loop").mkdir()
            (path / "loop" / "backing_file").write_text(backing + "\n")
        self._link(name, path, None)
        return path

    def _link(self, name: str, path: Path, dev: tuple[int, int] | None) -> None:
        os.symlink(path, self.root / "class" / "block" / name)
        if dev is not None:
            os.symlink(path, self.root / "dev" / "block" / f"{dev[0]}:{dev[1]}")


def device_of(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return os.major(st.st_dev), os.minor(st.st_dev)


@pytest.fixture
def fake(tmp_path: Path) -> FakeSysfs:
    return FakeSysfs(tmp_path / "fake-sys")


NO_MOUNTS = Path("/nonexistent/mountinfo")
MiB = 2**20


def test_a_directory_on_a_partition_of_a_rotational_disk_is_hdd(
    tmp_path: Path, fake: FakeSysfs
) -> None:
    # The fake tree puts tmp_path's filesystem on sda1, a partition of a spinning sda.
    sda = fake.disk("sda", rotational=1)
    fake.partition(sda, "sda1", dev=device_of(tmp_path))
    found = detect(tmp_path / "not-made-yet" / "disk0", fake.root, NO_MOUNTS)
    assert (found.device_class, found.source) == ("hdd", "detected")
    assert found.note == "sda: rotational"


def test_nvme_and_ssd_by_name_when_not_rotational(fake: FakeSysfs) -> None:
    nvme = fake.disk("nvme0n1", rotational=0)
    fake.partition(nvme, "nvme0n1p2")
    fake.disk("sdb", rotational=0)
    assert detect_block("nvme0n1p2", fake.root, NO_MOUNTS).device_class == "nvme"
    assert detect_block("sdb", fake.root, NO_MOUNTS).device_class == "ssd"
    assert detect_block("sdb", fake.root, NO_MOUNTS).source == "detected"


def test_a_loop_device_is_the_class_of_the_device_under_its_backing_file(
    tmp_path: Path, fake: FakeSysfs
) -> None:
    fake.disk("sdc", rotational=1, dev=device_of(tmp_path))
    image = tmp_path / "images" / "slow.img"
    image.parent.mkdir()
    image.write_bytes(b"")
    fake.virtual("loop3", backing=str(image))
    found = detect_block("loop3", fake.root, NO_MOUNTS)
    assert found.device_class == "hdd"
    assert found.note == f"loop3 on {image}: sdc: rotational"


def test_device_mapper_follows_its_slaves_and_takes_the_slowest_of_mixed_ones(
    fake: FakeSysfs,
) -> None:
    fake.disk("nvme0n1", rotational=0)
    fake.disk("nvme1n1", rotational=0)
    fake.disk("sdd", rotational=1)
    fake.virtual("dm-0", slaves=["nvme0n1", "nvme1n1"])  # a mirror of two NVMe disks
    fake.virtual("dm-1", slaves=["nvme0n1", "sdd"])  # a cache in front of a spinning disk
    fake.virtual("md0", slaves=["dm-0"])  # stacked
    assert detect_block("dm-0", fake.root, NO_MOUNTS).device_class == "nvme"
    assert detect_block("md0", fake.root, NO_MOUNTS).device_class == "nvme"
    mixed = detect_block("dm-1", fake.root, NO_MOUNTS)
    assert mixed.device_class == "hdd" and "several classes" in mixed.note


def test_what_the_kernel_does_not_tell_is_assumed_ssd_and_says_why(
    tmp_path: Path, fake: FakeSysfs
) -> None:
    # tmp_path's device is not in the fake tree: mountinfo says it is on tmpfs.
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"40 1 0:50 / {tmp_path} rw,relatime - tmpfs tmpfs rw\n")
    found = detect(tmp_path / "disk0", fake.root, mountinfo)
    assert (found.device_class, found.source) == ("ssd", "assumed")
    assert "tmpfs" in found.note and "set the class" in found.note
    # A device without queue/rotational.
    fake.disk("vdz", rotational=None)
    assert detect_block("vdz", fake.root, NO_MOUNTS).source == "assumed"
    assert detect_block("sdq", fake.root, NO_MOUNTS).source == "assumed"  # not there at all


def test_a_filesystem_without_a_device_number_is_found_by_its_mount_source(
    tmp_path: Path, fake: FakeSysfs
) -> None:
    # btrfs-like: an anonymous st_dev; its mountinfo source names the partition.
    sde = fake.disk("sde", rotational=1)
    fake.partition(sde, "sde3")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "27 1 254:0 / / rw - ext4 /dev/vda rw\n"
        f"41 27 0:51 / {tmp_path} rw,relatime - btrfs /dev/sde3 rw\n"
    )
    found = detect(tmp_path / "disk0", fake.root, mountinfo)
    assert (found.device_class, found.note) == ("hdd", "sde: rotational")


# -- placement over disks of mixed classes ------------------------------------------------


def disk(i: int, device_class: str | None) -> ArdfsDisk:
    return ArdfsDisk(id=f"d{i}", path=f"/srv/d{i}", device_class=device_class)


async def mixed_pool(db: FakeConfigDB, protection: str, device_class: str | None) -> None:
    """Three nodes with an ssd and an hdd disk each; n3 has an nvme one and one not told."""
    spec = PoolSpec(name="hci", type="ardfs", protection=protection, device_class=device_class)
    await pools.create(db, spec)
    layout = {
        "n1": [disk(1, "ssd"), disk(2, "hdd")],
        "n2": [disk(3, "ssd"), disk(4, "hdd")],
        "n3": [disk(5, "ssd"), disk(6, "hdd"), disk(7, "nvme"), disk(8, None)],
    }
    for node, disks in layout.items():
        member = ArdfsMember(pool="hci", node=node, address=f"{node}:7000", disks=disks)
        await db.put(keys.ardfs_member("hci", node), member)


async def test_a_pool_of_a_class_places_only_on_disks_of_that_class(db: FakeConfigDB) -> None:
    await mixed_pool(db, "rf2", "hdd")
    pool = (await find_pool(db, "hci")).value
    placed = await new_placement(db, pool, "body.pool")
    assert placed is not None and [d.id for d in placed] == ["d2", "d4", "d6"]


async def test_a_pool_asking_no_class_places_on_every_disk(db: FakeConfigDB) -> None:
    await mixed_pool(db, "rf2", None)
    placed = await new_placement(db, (await find_pool(db, "hci")).value, "body.pool")
    assert placed is not None and len(placed) == 8


async def test_too_few_disks_of_the_class_are_refused_with_the_count(db: FakeConfigDB) -> None:
    await mixed_pool(db, "ec2+1", "nvme")  # one nvme disk, three needed
    pool = (await find_pool(db, "hci")).value
    with pytest.raises(Invalid) as refused:
        await new_placement(db, pool, "body.pool")
    (field,) = refused.value.fields
    assert field["field"] == "body.pool"
    assert "has 1 nvme disks (on 1 node), ec2+1 needs 3" in field["reason"]


async def test_moves_count_only_the_disks_of_the_class(db: FakeConfigDB) -> None:
    await mixed_pool(db, "rf2", "ssd")
    pool = (await find_pool(db, "hci")).value
    members = [e.value for e in await db.list(ArdfsMember, f"{keys.ARDFS_MEMBERS}hci/")]
    # n2 has been down past the grace; n1's ssd disk is reported failed (not yet for long).
    inventory = SimpleNamespace(
        live_nodes=lambda: {"n1": None, "n3": None},
        ardfs_status={"hci/n1": SimpleNamespace(value=ArdfsNodeStatus(
            disks={"d1": DiskUsage(total_bytes=1, free_bytes=1, error="gone")}, updated_at=0))},
        node_settings={},
    )  # fmt: skip
    controller = RebalanceController.__new__(RebalanceController)
    controller.inventory = inventory  # type: ignore[assignment]
    controller.down_since = {"n2": -1e12}
    controller.failing_since = {}
    counted, gone, failing = controller.counted(pool, members, pool.device_class)
    assert [d.id for d in counted] == ["d1", "d5"] and gone == {"n2"} and failing == {"d1"}


async def test_capacity_counts_only_the_disks_of_the_class(db: FakeConfigDB) -> None:
    await mixed_pool(db, "rf2", "hdd")
    gib = 2**30
    usage = {f"d{i}": DiskUsage(total_bytes=i * gib, free_bytes=i * gib) for i in range(1, 9)}
    held = {"n1": "d1 d2", "n2": "d3 d4", "n3": "d5 d6 d7 d8"}
    for node in held:
        mine = {k: v for k, v in usage.items() if k in held[node].split()}
        await db.put(keys.ardfs_status("hci", node), ArdfsNodeStatus(disks=mine, updated_at=0))
    pool = (await find_pool(db, "hci")).value
    capacity = await pools.capacity(db, Path("/nonexistent"), pool)
    assert capacity is not None
    assert capacity.raw_total_bytes == (2 + 4 + 6) * gib  # the hdd disks only
    assert capacity.total_bytes == capacity.raw_total_bytes // 2


async def test_a_disk_leaving_the_class_is_refused_where_too_few_would_be_left(
    db: FakeConfigDB,
) -> None:
    await mixed_pool(db, "rf2", "hdd")
    # Three hdd disks: one may become ssd (its copies move to the other two), not two.
    member, before, changed = await pools.set_disk_class(db, "hci", "d2", "ssd")
    assert before.device_class == "hdd"
    assert (changed.device_class, changed.class_source) == ("ssd", "set")
    assert next(d for d in member.disks if d.id == "d2").device_class == "ssd"
    with pytest.raises(Conflict, match="would keep 1 hdd disks, rf2 needs 2: add another hdd disk"):
        await pools.set_disk_class(db, "hci", "d4", "nvme")
    # A disk joining the class, or one outside it changing, is always allowed.
    await pools.set_disk_class(db, "hci", "d8", "hdd")
    await pools.set_disk_class(db, "hci", "d4", "nvme")  # d6, d8 are left
    with pytest.raises(NotFound, match="no disk"):
        await pools.set_disk_class(db, "hci", "d99", "hdd")


async def test_an_rf1_disk_with_the_only_copies_keeps_its_class(db: FakeConfigDB) -> None:
    await mixed_pool(db, "rf1", "ssd")
    placed = [PlacedDisk(id="d1", node="n1"), PlacedDisk(id="d3", node="n2")]
    volume = Volume(
        id="v", pool="hci", name="data", format="raw", size=1, placement=placed, created_at=0
    )
    await db.put(keys.volume("v"), volume)
    with pytest.raises(Conflict, match="volumes data have blocks only on disk d1"):
        await pools.set_disk_class(db, "hci", "d1", "hdd")
    await pools.set_disk_class(db, "hci", "d5", "hdd")  # holds none of them


async def test_a_disk_given_with_a_class_keeps_it_and_others_wait_for_detection(
    db: FakeConfigDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    await pools.create(db, PoolSpec(name="hci", type="ardfs", protection="rf1"))

    async def live(_: object) -> dict[str, object]:
        return {"n1": object()}

    monkeypatch.setattr(pools, "live_nodes", live)
    member = await pools.add_disk(db, "hci", "n1", "/srv/a", None, 1.0, "nvme")
    member = await pools.add_disk(db, "hci", "n1", "/srv/b", None, 1.0)
    given, later = member.disks
    assert (given.device_class, given.class_source) == ("nvme", "set")
    assert (later.device_class, later.class_source) == (None, None)


def test_device_class_is_for_ardfs_pools_only() -> None:
    with pytest.raises(ValueError, match="applies to ardfs pools"):
        PoolSpec(name="local", type="dir", device_class="ssd")


# -- the CLI ---------------------------------------------------------------------------------


class FakeClient:
    sent: list[tuple[str, str, object]] = []

    def get(self, path: str) -> object:
        assert path == "/pools/hci/members"
        return [MEMBER]

    def request(self, method: str, path: str, json: object = None) -> object:
        self.sent.append((method, path, json))
        return MEMBER

    def post(self, path: str, json: dict[str, object]) -> object:
        self.sent.append(("POST", path, json))
        return {"shared": True, "protection": "rf2", **json} if path == "/pools" else MEMBER


MEMBER = {
    "pool": "hci", "node": "n1", "site": "default", "address": "n1:7000",
    "disks": [
        {"id": "d1", "path": "/srv/fast", "weight": 1.0, "device_class": "nvme",
         "class_source": "detected", "class_note": "nvme0n1: NVMe, not rotational"},
        {"id": "d2", "path": "/srv/tmp", "weight": 1.0, "device_class": "ssd",
         "class_source": "assumed", "class_note": "on tmpfs; ssd assumed"},
        {"id": "d3", "path": "/srv/new", "weight": 1.0, "device_class": None,
         "class_source": None, "class_note": ""},
    ],
}  # fmt: skip


def test_the_cli_shows_and_sets_a_disks_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_cli, "Client", FakeClient)
    shown = CliRunner().invoke(app, ["pool", "disks", "hci"])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert any("d1" in x and "nvme" in x and "NVMe, not rotational" in x for x in lines)
    assert any("d2" in x and "ssd (assumed)" in x for x in lines)
    assert any("d3" in x and "not told yet" in x for x in lines)
    done = CliRunner().invoke(app, ["pool", "set-disk-class", "hci", "d2", "hdd"])
    assert done.exit_code == 0, done.output
    assert FakeClient.sent[-1] == ("PATCH", "/pools/hci/disks/d2", {"device_class": "hdd"})
    wrong = CliRunner().invoke(app, ["pool", "set-disk-class", "hci", "d2", "tape"])
    assert wrong.exit_code != 0 and "nvme, ssd or hdd" in wrong.output
    made = CliRunner().invoke(app, ["pool", "create", "fast", "--type", "ardfs",
                                    "--device-class", "nvme"])  # fmt: skip
    assert made.exit_code == 0, made.output
    assert "rf2 on nvme" in made.output
    assert FakeClient.sent[-1][2]["device_class"] == "nvme"  # type: ignore[index]


# -- a volume asking a class of its own --------------------------------------------------


async def test_a_volume_may_ask_a_class_in_a_pool_that_asks_none(db: FakeConfigDB) -> None:
    await mixed_pool(db, "rf2", None)
    pool = (await find_pool(db, "hci")).value
    placed = await new_placement(db, pool, "path.name", "ssd")
    assert placed is not None and [d.id for d in placed] == ["d1", "d3", "d5"]
    with pytest.raises(Invalid) as refused:
        await new_placement(db, pool, "path.name", "nvme")  # one nvme disk
    assert refused.value.fields[0]["field"] == "path.name"
    task = await volumes.create(db, "n1", "hci", "fast", None, MiB, None, "admin",
                                device_class="ssd")  # fmt: skip
    record = (await db.get(Volume, keys.volume(task.target))).value
    assert record.device_class == "ssd" and {d.id for d in record.placement} == {"d1", "d3", "d5"}


async def test_a_volume_class_other_than_its_pools_is_refused(db: FakeConfigDB) -> None:
    await mixed_pool(db, "rf2", "hdd")
    pool = (await find_pool(db, "hci")).value
    with pytest.raises(Invalid) as refused:
        await new_placement(db, pool, "path.name", "ssd")
    assert refused.value.fields == [
        {"field": "body.device_class", "reason": "pool hci places on hdd disks only"}
    ]
    assert await new_placement(db, pool, "path.name", "hdd") is not None  # the same: fine


async def test_moves_and_class_changes_follow_a_volumes_own_class(db: FakeConfigDB) -> None:
    await mixed_pool(db, "rf2", None)
    await volumes.create(db, "n1", "hci", "slow", None, MiB, None, "admin", device_class="hdd")
    pool = (await find_pool(db, "hci")).value
    members = [e.value for e in await db.list(ArdfsMember, f"{keys.ARDFS_MEMBERS}hci/")]
    inventory = SimpleNamespace(live_nodes=lambda: {"n1": None, "n2": None, "n3": None},
                                ardfs_status={}, node_settings={})  # fmt: skip
    controller = RebalanceController.__new__(RebalanceController)
    controller.inventory = inventory  # type: ignore[assignment]
    controller.down_since, controller.failing_since = {}, {}
    counted, _, _ = controller.counted(pool, members, "hdd")
    assert [d.id for d in counted] == ["d2", "d4", "d6"]
    # The pool asks no class, but its volume slow does: hdd disks may go down to two.
    await pools.set_disk_class(db, "hci", "d2", "ssd")
    with pytest.raises(Conflict, match="would keep 1 hdd disks for its hdd volumes, rf2"):
        await pools.set_disk_class(db, "hci", "d4", "ssd")
    with pytest.raises(Conflict, match="would keep 1 hdd disks for its hdd volumes, rf2"):
        await pools.remove_disk(db, "hci", "d6")
    await pools.remove_disk(db, "hci", "d1")  # an ssd disk: slow keeps its two
