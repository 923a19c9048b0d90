"""iSCSI exports as the API writes them (services/iscsi.py), on the fake ConfigDB: what is
refused and why, and that the CHAP secret is shown once and kept apart from the record."""

import time

import pytest
from fakes.configdb import FakeConfigDB
from pydantic import ValidationError

from heron.configdb import keys
from heron.models.iscsi import IscsiExport, IscsiExportCreate, IscsiSecret, target_iqn
from heron.models.storage import Pool, Volume, VolumeFormat
from heron.services import iscsi, volumes
from heron.services.errors import Conflict, Invalid, NotFound

ESX = "iqn.1998-01.com.vmware:esx01"
ALLOW = IscsiExportCreate(initiators=[ESX])
VOLUME_ID = "4a8150d6-96f5-4fc2-aeab-866f209a28e2"


@pytest.fixture
async def db() -> FakeConfigDB:
    db = FakeConfigDB()
    now = time.time()
    await db.create(keys.pool("hci"), Pool(name="hci", type="ardfs", created_at=now))
    await db.create(keys.pool("local"), Pool(name="local", type="dir", created_at=now))
    volume = Volume(id=VOLUME_ID, pool="hci", name="lun_a", format=VolumeFormat.raw,
                    size=2**26, owner="node2", created_at=now)  # fmt: skip
    await db.create(keys.volume(volume.id), volume)
    await db.create(keys.volume_name("hci", "lun_a"), volume.id)
    return db


def test_the_target_name_is_an_iqn_from_pool_volume_and_id() -> None:
    assert target_iqn("hci", "lun_a", VOLUME_ID) == "iqn.2026-12.org.heron:hci.lun-a.4a8150d6"


def test_bad_initiators_and_secrets_are_refused_by_field() -> None:
    for body, field in (
        ({"initiators": []}, "initiators"),
        ({"initiators": ["esx01"]}, "initiators"),
        ({"initiators": [ESX], "chap_secret": "short"}, "chap_secret"),
        ({"initiators": [ESX], "chap_secret": "with a space!"}, "chap_secret"),
        ({"initiators": [ESX], "chap_user": "a b"}, "chap_user"),
    ):
        with pytest.raises(ValidationError) as caught:
            IscsiExportCreate.model_validate(body)
        assert caught.value.errors()[0]["loc"][0] == field, body


async def test_an_export_shows_its_secret_once_and_blocks_deletion(db: FakeConfigDB) -> None:
    made = await iscsi.export(
        db, "node1", "hci", "lun_a", IscsiExportCreate(initiators=[ESX]), "me"
    )
    assert made.node == "node2"  # the volume's owner serves it
    assert made.chap_secret is not None and len(made.chap_secret) == 16
    stored = await db.get(IscsiExport, keys.iscsi_export(VOLUME_ID))
    assert stored is not None and "chap_secret" not in stored.value.model_dump()
    secret = await db.get(IscsiSecret, keys.iscsi_secret(VOLUME_ID))
    assert secret is not None and secret.value.chap_secret == made.chap_secret
    with pytest.raises(Conflict, match="already exported"):
        await iscsi.export(db, "node1", "hci", "lun_a", ALLOW, "me")
    with pytest.raises(Conflict, match="unexport it first"):
        await volumes.delete(db, "node1", "hci", "lun_a", "me")
    await iscsi.unexport(db, "hci", "lun_a")
    assert await db.get_raw(keys.iscsi_secret(VOLUME_ID)) is None
    with pytest.raises(NotFound):
        await iscsi.unexport(db, "hci", "lun_a")


async def test_only_ardfs_volumes_and_unique_chap_users(db: FakeConfigDB) -> None:
    with pytest.raises(Invalid) as caught:
        await iscsi.export(db, "node1", "local", "x", ALLOW, "me")
    assert caught.value.fields[0]["field"] == "path.name"
    twice = IscsiExportCreate(initiators=[ESX, ESX])
    with pytest.raises(Invalid) as caught:
        await iscsi.export(db, "node1", "hci", "lun_a", twice, "me")
    assert caught.value.fields[0]["field"] == "body.initiators"
    other = Volume(id="5b000000-0000-4000-8000-000000000000", pool="hci", name="lun-b",
                   format=VolumeFormat.raw, size=2**26, created_at=time.time())  # fmt: skip
    await db.create(keys.volume(other.id), other)
    await iscsi.export(db, "node1", "hci", "lun_a", ALLOW, "me")
    taken = IscsiExportCreate(initiators=[ESX], chap_user="lun_a")
    with pytest.raises(Invalid) as caught:
        await iscsi.export(db, "node1", "hci", other.id, taken, "me")
    assert caught.value.fields[0]["field"] == "body.chap_user"
    made = await iscsi.export(
        db, "node1", "hci", other.id, IscsiExportCreate(initiators=[ESX]), "me"
    )
    assert made.node == "node1"  # no owner yet: the node that was asked
