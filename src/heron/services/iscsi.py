"""iSCSI exports of ARDFS volumes: written here, served by the exporting node's agent
(agent/iscsi.py). An export is one record (what is wanted, and where it is served) and its
CHAP secret apart (keys.ISCSI_SECRETS), returned only in the reply that sets it."""

import secrets
import string
import time

from heron.configdb import ConfigDB, Txn, keys
from heron.configdb.store import Conflict as StoreConflict
from heron.models.iscsi import (
    IscsiExport,
    IscsiExportCreate,
    IscsiExportView,
    IscsiSecret,
    target_iqn,
)
from heron.models.vm import VM
from heron.services.errors import Conflict, Invalid, NotFound
from heron.services.lookup import attached, find_pool, find_volume
from heron.storage.registry import capabilities

_ALPHABET = string.ascii_letters + string.digits


def new_secret() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(16))


async def export(
    db: ConfigDB, here: str, pool_name: str, ref: str, body: IscsiExportCreate, user: str
) -> IscsiExportView:
    """Export a volume no VM uses, from the node that owns it (or `here` if none does yet)."""
    pool = (await find_pool(db, pool_name)).value
    if not capabilities(pool).member_disks:
        raise Invalid("path.name", f"pool {pool_name} is not an ardfs pool: only ARDFS exports")
    entry = await find_volume(db, pool_name, ref)
    volume = entry.value
    if volume.size <= 0:
        raise Conflict(f"volume {volume.name} is not made yet")
    users = attached([e.value for e in await db.list(VM, keys.VMS)])
    if volume.id in users:
        raise Conflict(f"volume {volume.name} is used by VM {users[volume.id]}")
    if len(set(body.initiators)) != len(body.initiators):
        raise Invalid("body.initiators", "an initiator is named twice")
    if await exported(db, volume.id):
        raise Conflict(f"volume {volume.name} is already exported")
    user_name = body.chap_user or volume.name
    if any(e.chap_user == user_name for e in await exports(db)):
        # tgt keeps one account per user name: two targets cannot have two secrets for it.
        raise Invalid("body.chap_user", f"CHAP user {user_name} is taken by another export")
    secret = body.chap_secret or new_secret()
    record = IscsiExport(
        volume=volume.id,
        pool=pool_name,
        volume_name=volume.name,
        node=volume.owner or here,
        iqn=target_iqn(pool_name, volume.name, volume.id),
        chap_user=user_name,
        initiators=body.initiators,
        created_by=user,
        created_at=time.time(),
    )
    txn = (
        Txn()
        .require_revision(entry.key, entry.revision)
        .require_absent(keys.iscsi_export(volume.id))
        .put(keys.iscsi_export(volume.id), record)
        .put(keys.iscsi_secret(volume.id), IscsiSecret(chap_secret=secret))
    )
    try:
        await db.commit(txn)
    except StoreConflict as exc:
        if await db.get_raw(keys.iscsi_export(volume.id)) is not None:
            raise Conflict(f"volume {volume.name} is already exported") from exc
        raise Conflict(f"volume {volume.name} changed meanwhile: try again") from exc
    return IscsiExportView(**record.model_dump(), chap_secret=secret)


async def unexport(db: ConfigDB, pool_name: str, ref: str) -> None:
    """Stop an export: the exporting node's agent removes the target."""
    volume = (await find_volume(db, pool_name, ref)).value
    found = await db.get(IscsiExport, keys.iscsi_export(volume.id))
    if found is None:
        raise NotFound(f"volume {volume.name} is not exported")
    await db.commit(
        Txn()
        .require_revision(found.key, found.revision)
        .delete(found.key)
        .delete(keys.iscsi_secret(volume.id))
    )


async def exports(db: ConfigDB) -> list[IscsiExport]:
    return [e.value for e in await db.list(IscsiExport, keys.ISCSI_EXPORTS)]


async def exported(db: ConfigDB, volume_id: str) -> bool:
    return await db.get_raw(keys.iscsi_export(volume_id)) is not None
