"""Taking a disk out of an ardfs pool (services.pools.remove_disk, on the in-memory ConfigDB):
what the protection needs left, and the only copies of an rf1 pool."""

import pytest
from fakes.configdb import FakeConfigDB

from heron.configdb import keys
from heron.models.storage import ArdfsDisk, ArdfsMember, PlacedDisk, PoolSpec, Volume
from heron.services import pools
from heron.services.errors import Conflict


async def pool_with_disks(db: FakeConfigDB, protection: str, disks: int) -> None:
    await pools.create(db, PoolSpec(name="hci", type="ardfs", protection=protection))
    for i in range(disks):
        member = ArdfsMember(
            pool="hci", node=f"n{i}", disks=[ArdfsDisk(id=f"d{i}", path=f"/srv/d{i}")]
        )
        await db.put(keys.ardfs_member("hci", f"n{i}"), member)


async def place(db: FakeConfigDB, name: str, disks: list[str] | None) -> None:
    placed = None if disks is None else [PlacedDisk(id=d, node=f"n{d[1:]}") for d in disks]
    volume = Volume(
        id=name, pool="hci", name=name, format="raw", size=1, placement=placed, created_at=0
    )
    await db.put(keys.volume(name), volume)


async def test_an_rf1_disk_holding_volumes_is_kept(db: FakeConfigDB) -> None:
    await pool_with_disks(db, "rf1", 3)
    await place(db, "data", ["d0", "d1"])
    with pytest.raises(Conflict, match=r"volumes data have blocks only on disk d0"):
        await pools.remove_disk(db, "hci", "d0")
    left = await pools.remove_disk(db, "hci", "d2")  # nothing on it
    assert left.disks == []
    # A volume not pinned yet may have blocks on any disk.
    await place(db, "fresh", None)
    with pytest.raises(Conflict, match="fresh"):
        await pools.remove_disk(db, "hci", "d1")


async def test_copies_elsewhere_let_a_disk_go_while_the_protection_has_enough(
    db: FakeConfigDB,
) -> None:
    await pool_with_disks(db, "rf2", 3)
    await place(db, "data", ["d0", "d1", "d2"])
    await pools.remove_disk(db, "hci", "d0")  # its copies are made again from the others
    with pytest.raises(Conflict, match="would keep 1 disks, rf2 needs 2"):
        await pools.remove_disk(db, "hci", "d1")
