"""Pool drivers' pure parts: definitions, capabilities, LUN listings, names QEMU and
qemu-img get; and the size qemu-img reads of a raw volume whose data looks like a qcow2."""

import os
from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from heron.models.storage import Pool, PoolType, Protection, Volume, VolumeFormat
from heron.storage import qemuimg
from heron.storage.dirpool import DirPool
from heron.storage.driver import Capabilities
from heron.storage.lunpool import disk_luns, volume_name
from heron.storage.registry import DRIVERS, capabilities, definition_problem, driver_for

STATE = Path("/var/lib/heron")
LISTING = """\
Target:iqn.2026-11.org.heron:other Portal:10.0.0.5:3260,1
Lun:0    Type:STORAGE_ARRAY_CONTROLLER
Lun:1    Type:DIRECT_ACCESS (Size:10G)
Target:iqn.2026-11.org.heron:array Portal:10.0.0.5:3260,1
Lun:0    Type:STORAGE_ARRAY_CONTROLLER
Lun:1    Type:DIRECT_ACCESS (Size:63M)
Lun:3    Type:DIRECT_ACCESS (Size:1T)
Lun:4    Type:SEQUENTIAL_ACCESS
"""


def pool(**fields: object) -> Pool:
    return Pool.model_validate({"name": "p", "created_at": 0, **fields})


def volume(**fields: object) -> Volume:
    base = {"id": "v1", "pool": "p", "name": "d1", "format": "raw", "size": 1, "created_at": 0}
    return Volume.model_validate({**base, **fields})


def test_every_type_but_dir_is_shared_and_needs_its_fields() -> None:
    assert pool(type="dir").shared is False
    assert pool(type="nfs", server="filer", export="/vm").shared is True
    assert pool(type="iscsi", portal="a", target="iqn.2026-11.x:y", shared=False).shared is True
    for kind, missing in (("nfs", "server"), ("iscsi", "portal"), ("block", "path"),
                          ("rbd", "rbd_pool")):  # fmt: skip
        with pytest.raises(ValidationError, match=missing):
            pool(type=kind)
    with pytest.raises(ValidationError):
        pool(type="tape")
    with pytest.raises(ValidationError):
        pool(type="nfs", server="filer", export="/vm", options="vers=4;rm -rf /")


def test_protection_is_read_in_one_place() -> None:
    replicated, coded = Protection.parse("rf3"), Protection.parse("ec2+1")
    assert (replicated.width, replicated.erasure_coded, replicated.label()) == (3, False, "rf3")
    assert (coded.width, coded.erasure_coded, coded.label()) == (3, True, "ec2+1")
    assert replicated.share == pytest.approx(1 / 3) and coded.share == pytest.approx(2 / 3)
    assert Protection.parse("rf1").share == 1 and Protection.parse("ec3+1").width == 4
    assert pool(type="ardfs", protection="ec3+1").width == 4
    for wrong in ("rf4", "ec4+1", "ec2+2", "rf", ""):
        with pytest.raises(ValueError, match="protection"):
            Protection.parse(wrong)


def test_disk_luns_of_one_target() -> None:
    assert disk_luns(LISTING, "iqn.2026-11.org.heron:array") == [1, 3]
    assert disk_luns(LISTING, "iqn.2026-11.org.heron:other") == [1]
    assert disk_luns(LISTING, "iqn.2026-11.org.heron:absent") is None


def test_volume_names_from_device_names() -> None:
    assert volume_name("wwn-0x5000C500A1B2C3D4") == "wwn-0x5000c500a1b2c3d4"
    assert volume_name("scsi-3600a0980:part1") == "scsi-3600a0980-part1"
    assert volume_name("__") == "device"
    assert len(volume_name("x" * 100)) == 63


def test_iscsi_protocol_and_url() -> None:
    driver = driver_for(pool(type="iscsi", portal="10.0.0.5", target="iqn.2026-11.x:y"), STATE)
    lun = volume(location="3")
    assert driver.protocol(lun) == {
        "driver": "iscsi",
        "transport": "tcp",
        "portal": "10.0.0.5:3260",
        "target": "iqn.2026-11.x:y",
        "lun": 3,
        "initiator-name": "iqn.2026-11.org.heron:initiator",
    }
    assert driver.image(lun) == "iscsi://10.0.0.5:3260/iqn.2026-11.x:y/3"


def test_block_protocol_is_the_device() -> None:
    driver = driver_for(pool(type="block", path="/dev/mapper", pattern="mpath*"), STATE)
    lun = volume(location="/dev/mapper/mpatha")
    assert driver.protocol(lun)["driver"] == "host_device"
    assert driver.image(lun) == "/dev/mapper/mpatha"


def test_rbd_names() -> None:
    driver = driver_for(
        pool(type="rbd", rbd_pool="vms", user="heron", monitors=["10.0.0.1", "10.0.0.2:3300"]),
        STATE,
    )
    disk = volume(name="web-disk0")
    assert driver.image(disk) == ("rbd:vms/web-disk0:id=heron:mon_host=10.0.0.1\\;10.0.0.2:3300")
    assert driver.protocol(disk) == {
        "driver": "rbd",
        "pool": "vms",
        "image": "web-disk0",
        "user": "heron",
        "server": [{"host": "10.0.0.1", "port": "6789"}, {"host": "10.0.0.2", "port": "3300"}],
    }


def test_file_pools_paths() -> None:
    local = driver_for(pool(type="dir"), STATE)
    disk = volume(format=VolumeFormat.qcow2)
    assert local.image(disk) == "/var/lib/heron/pools/p/d1.qcow2"
    nfs = driver_for(pool(type="nfs", server="filer", export="/vm"), STATE)
    assert nfs.image(disk) == "/var/lib/heron/mnt/p/d1.qcow2"
    assert nfs.protocol(disk)["driver"] == "file"


def test_ardfs_io_config_from_the_configdb_records() -> None:
    from heron.agent.ardfs import io_config, scheme
    from heron.models.storage import ArdfsDisk, ArdfsMember

    assert scheme("rf3").label() == "rf3" and scheme("ec3+1").label() == "ec3+1"
    hci = pool(name="hci", type="ardfs", protection="ec2+1")
    members = [
        ArdfsMember(pool="hci", node=f"n{i}", address=f"10.0.0.{i}:7000",
                    disks=[ArdfsDisk(id=f"d{i}", path=f"/srv/d{i}")])
        for i in (1, 2, 3)
    ] + [ArdfsMember(pool="hci", node="n4")]  # fmt: skip
    volumes = [
        volume(id="6f1c2a52-8a3e-4d2b-9a4e-0f5d7c1b2a30", pool="hci", size=10_000, owner="n2",
               epoch=3),
        volume(id="00000000-0000-4000-8000-000000000001", pool="hci", size=0),  # not sized yet
        volume(id="00000000-0000-4000-8000-000000000002", pool="other", size=4096),
    ]  # fmt: skip
    config = io_config("n2", STATE, hci, members, volumes)
    assert [n.name for n in config.nodes] == ["n1", "n2", "n3"]  # n4 has no address yet
    assert [d.path for n in config.nodes for d in n.disks] == [None, Path("/srv/d2"), None]
    [served] = config.volumes
    assert served.name == "6f1c2a52-8a3e-4d2b-9a4e-0f5d7c1b2a30"
    assert (served.size, served.owner, served.epoch, served.scheme.label()) == (
        12288,
        "n2",
        3,
        "ec2+1",
    )
    assert config.nbd_socket == STATE / "ardfs" / "hci" / "nbd.sock"
    assert config.peer_key_file == STATE / "ardfs" / "hci" / "peer.key"
    with pytest.raises(ValueError, match="needs more disks"):
        io_config("n2", STATE, hci, members[:2], volumes)
    # Without the node's credentials: no TLS (as before); with them, the files of the node's
    # TLS directory, and "require" only when every member can.
    assert config.tls_files is None
    from heron.tls import NodeCredentials

    credentials = NodeCredentials(STATE / "tls")
    sealed = io_config("n2", STATE, hci, members, volumes, credentials)
    assert sealed.tls_files == (
        credentials.key_file,
        credentials.cert_file,
        credentials.ca_file,
    )
    assert sealed.peer_tls == "prefer"
    assert io_config("n2", STATE, hci, members, volumes, credentials, True).peer_tls == "require"


def test_every_pool_type_has_a_driver() -> None:
    assert set(get_args(PoolType)) == set(DRIVERS)


def test_what_each_pool_type_can_do() -> None:
    local, shared_dir = pool(type="dir"), pool(type="dir", shared=True, path="/srv/vm")
    nfs = pool(type="nfs", server="filer", export="/vm")
    luns = [pool(type="iscsi", portal="a", target="iqn.2026-11.x:y"),
            pool(type="block", path="/dev/mapper", pattern="mpath*")]  # fmt: skip
    rbd, ardfs = pool(type="rbd", rbd_pool="vms"), pool(type="ardfs")
    files = (VolumeFormat.qcow2, VolumeFormat.raw)
    # qcow2 overlays; a snapshot's memory state in a qcow2 file
    linked = {"formats": files, "linked_clones": True, "memory_state": True}
    assert capabilities(local) == Capabilities(shared=False, **linked)
    assert capabilities(shared_dir) == Capabilities(shared=True, **linked)
    assert capabilities(nfs) == Capabilities(mounted=True, **linked)
    for lun in luns:
        assert capabilities(lun) == Capabilities(scanned=True)
    assert capabilities(rbd) == Capabilities(native_snapshots=True, linked_clones=True)
    assert capabilities(ardfs) == Capabilities(
        member_disks=True,
        owned=True,
        grows_by_reconnect=True,
        native_snapshots=True,
        linked_clones=True,
        memory_state=True,  # qcow2 written into a raw volume
    )
    # A driver made for a node says the same as the registry.
    for each in (local, nfs, *luns, rbd, ardfs):
        assert driver_for(each, STATE).capabilities == capabilities(each)


def test_qemu_needs_a_new_connection_to_see_growth_exactly_over_nbd() -> None:
    for each in (pool(type="dir"), pool(type="rbd", rbd_pool="vms"), pool(type="ardfs")):
        driver = driver_for(each, STATE)
        nbd = driver.protocol(volume(pool=each.name))["driver"] == "nbd"
        assert driver.capabilities.grows_by_reconnect is nbd


def test_capacity_after_redundancy() -> None:
    tib = 2**40
    assert driver_for(pool(type="ardfs", protection="rf2"), STATE).usable_capacity(tib) == tib // 2
    assert driver_for(pool(type="ardfs", protection="rf3"), STATE).usable_capacity(3) == 1
    ec = driver_for(pool(type="ardfs", protection="ec3+1"), STATE)
    assert ec.usable_capacity(4 * tib) == 3 * tib
    assert driver_for(pool(type="dir"), STATE).usable_capacity(tib) == tib


def test_definitions_the_model_accepts_but_cannot_work() -> None:
    assert definition_problem(pool(type="dir", shared=True)) == (
        "path",
        "a shared pool needs the path where every node mounts it",
    )
    assert definition_problem(pool(type="dir", shared=True, path="/srv/vm")) is None
    assert definition_problem(pool(type="dir")) is None
    assert definition_problem(pool(type="nfs", server="filer", export="/vm")) is None


def test_new_volume_formats_follow_the_pool() -> None:
    from heron.services.errors import Invalid
    from heron.services.lookup import new_volume_format

    def fmt(kind: Pool, wanted: VolumeFormat | None) -> VolumeFormat:
        return new_volume_format(kind, wanted, "pool", "format")

    local, rbd = pool(type="dir"), pool(type="rbd", rbd_pool="vms")
    assert fmt(local, None) == VolumeFormat.qcow2 and fmt(local, VolumeFormat.raw) == "raw"
    assert fmt(rbd, None) == VolumeFormat.raw == fmt(pool(type="ardfs"), VolumeFormat.raw)
    with pytest.raises(Invalid, match="an rbd pool holds raw volumes"):
        fmt(rbd, VolumeFormat.qcow2)
    with pytest.raises(Invalid, match="holds the array's LUNs"):
        fmt(pool(type="block", path="/dev/mapper", pattern="mpath*"), None)


async def test_a_raw_volume_holding_a_qcow2_image_is_sized_as_raw(tmp_path: Path) -> None:
    """A raw ARDFS volume holding a memory state (a qcow2 image written into it): asked
    without its format, qemu-img reports the inner image's size, and a wait for the
    volume's size never ended (a snapshot resumed after an agent restart failed so)."""
    volume_file = tmp_path / "state"
    await qemuimg.create(volume_file, "qcow2", 1024**2)
    with volume_file.open("r+b") as raw:
        raw.truncate(16 * 1024**2)
    assert (await qemuimg.info(volume_file))["virtual-size"] == 1024**2  # a guess
    found = await qemuimg.info(volume_file, "raw")
    assert (found["format"], found["virtual-size"]) == ("raw", 16 * 1024**2)


def test_a_dir_pool_without_its_directory_yet_has_the_capacity_it_will_have(
    tmp_path: Path,
) -> None:
    """A node's `local` pool gets its directory with its first volume; before, its size is
    that of the filesystem the directory will be made on (charts and forecasts need it)."""
    pool = DirPool(Pool(name="local", type="dir", created_at=1), tmp_path / "state")
    assert not pool.root.exists()
    found = pool.capacity()
    stat = os.statvfs(tmp_path)
    assert found is not None and found[0] == stat.f_blocks * stat.f_frsize
