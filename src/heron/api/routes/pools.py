"""Pools and volumes: define pools, create, import, resize and delete volumes."""

import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from pydantic import BaseModel, Field

from heron.api import auth
from heron.api.auth import Principal
from heron.api.cluster import (
    attached,
    find_pool,
    find_volume,
    live_nodes,
    new_placement,
    new_volume_format,
)
from heron.api.context import ApiContext, with_task
from heron.api.errors import Conflict, Invalid, NotFound
from heron.api.fanout import ask_others
from heron.configdb import Txn, keys
from heron.configdb.store import Conflict as StoreConflict
from heron.models.common import Name, new_id
from heron.models.storage import (
    ArdfsDisk,
    ArdfsMember,
    ArdfsNodeStatus,
    DiskId,
    Pool,
    PoolSpec,
    Volume,
    VolumeFormat,
    VolumeHealth,
)
from heron.models.task import new_task
from heron.models.vm import VM
from heron.storage.driver import driver_for
from heron.storage.probe import probe

router = APIRouter(tags=["storage"])

_UPLOAD_CHUNK = 4 * 1024 * 1024


class PoolCreate(PoolSpec):
    """A pool definition: the fields that apply depend on `type` (see the Pool schema)."""


class PoolCapacity(BaseModel):
    total_bytes: int = Field(description="what volumes can hold, after replication or parity")
    free_bytes: int
    raw_total_bytes: int = Field(description="the disks' space")
    raw_free_bytes: int


class PoolView(Pool):
    revision: int
    capacity: PoolCapacity | None = Field(
        default=None, description="ardfs and shared pools; a local pool's differs by node"
    )


class VolumeCreate(BaseModel):
    model_config = {"extra": "forbid"}
    name: Name
    size: int = Field(gt=0, le=64 * 2**40, description="bytes")
    format: VolumeFormat | None = Field(
        default=None, description="qcow2 by default; raw in rbd and ardfs pools"
    )
    node: Name | None = Field(default=None, description="for a local pool; default this node")


class VolumeImport(BaseModel):
    model_config = {"extra": "forbid"}
    name: Name
    path: str = Field(pattern=r"^/", description="image file on the node")
    format: VolumeFormat | None = Field(
        default=None, description="qcow2 by default; raw in rbd and ardfs pools"
    )
    node: Name | None = Field(default=None, description="node holding the file; default this")


class VolumeResize(BaseModel):
    model_config = {"extra": "forbid"}
    size: int = Field(gt=0, le=64 * 2**40, description="new size in bytes; only growing")


class VolumeView(Volume):
    revision: int
    allocation: int | None = None
    attached_to: str | None = None
    health: VolumeHealth | None = Field(
        default=None, description="ardfs: redundancy as the owner's heron-io last reported it"
    )


class TaskRef(BaseModel):
    task: str
    volume: str | None = None


def _ctx(request: Request) -> ApiContext:
    return request.app.state.ctx


@router.get("/pools", response_model=list[PoolView])
async def list_pools(request: Request, _: Principal = Depends(auth.viewer)) -> list[PoolView]:
    ctx = _ctx(request)
    entries = await ctx.db.list(Pool, keys.POOLS)
    return [await _pool_view(ctx, e.value, e.revision) for e in entries]


async def _pool_view(ctx: ApiContext, pool: Pool, revision: int) -> PoolView:
    return PoolView(**pool.model_dump(), revision=revision, capacity=await _capacity(ctx, pool))


async def _capacity(ctx: ApiContext, pool: Pool) -> PoolCapacity | None:
    if pool.type == "ardfs":
        nodes = await ctx.db.list(ArdfsNodeStatus, f"{keys.ARDFS_STATUS}{pool.name}/")
        disks = [d for e in nodes for d in e.value.disks.values()]
        if not disks:
            return None
        total = sum(d.total_bytes for d in disks)
        free = sum(d.free_bytes for d in disks)
        kind, number = pool.protection[:2], int(pool.protection[2])
        share = 1 / number if kind == "rf" else number / (number + 1)
        return PoolCapacity(
            total_bytes=int(total * share),
            free_bytes=int(free * share),
            raw_total_bytes=total,
            raw_free_bytes=free,
        )
    if not pool.shared or pool.lun_backed:
        return None
    found = await probe(pool.name, driver_for(pool, ctx.state_dir).capacity)
    if found is None:
        return None
    return PoolCapacity(
        total_bytes=found[0], free_bytes=found[1], raw_total_bytes=found[0], raw_free_bytes=found[1]
    )


@router.post("/pools", response_model=PoolView, status_code=201)
async def create_pool(
    body: PoolCreate, request: Request, _: Principal = Depends(auth.admin)
) -> PoolView:
    pool = Pool(**body.model_dump(), created_at=time.time())
    if pool.type == "dir" and pool.shared and pool.path is None:
        raise Invalid("body.path", "a shared pool needs the path where every node mounts it")
    try:
        revision = await _ctx(request).db.create(keys.pool(pool.name), pool)
    except StoreConflict as exc:
        raise Conflict(f"pool {pool.name} already exists") from exc
    return PoolView(**pool.model_dump(), revision=revision)


@router.get("/pools/{name}", response_model=PoolView)
async def get_pool(name: Name, request: Request, _: Principal = Depends(auth.viewer)) -> PoolView:
    ctx = _ctx(request)
    entry = await find_pool(ctx.db, name)
    return await _pool_view(ctx, entry.value, entry.revision)


@router.delete("/pools/{name}", status_code=204)
async def delete_pool(name: Name, request: Request, _: Principal = Depends(auth.admin)) -> None:
    db = _ctx(request).db
    entry = await find_pool(db, name)
    if any(v.value.pool == name for v in await db.list(Volume, keys.VOLUMES)):
        raise Conflict(f"pool {name} still has volumes")
    # An ardfs pool's peer key goes with it (a pool made again under that name gets another).
    gone = Txn().require_revision(entry.key, entry.revision).delete(entry.key)
    await db.commit(gone.delete(keys.ardfs_secret(name)))
    # Its members, their disks' status and old tombstones: each node's agent then stops the
    # pool's heron-io. One by one: a transaction holds at most 128 operations.
    for prefix in (keys.ARDFS_MEMBERS, keys.ARDFS_STATUS, keys.ARDFS_DELETED):
        for key in await db.dump(f"{prefix}{name}/"):
            await db.delete(key)


@router.get("/pools/{name}/volumes", response_model=list[VolumeView])
async def list_volumes(
    name: Name, request: Request, local: bool = False, _: Principal = Depends(auth.viewer)
) -> list[VolumeView]:
    """Volumes of the pool; allocation is read by the node holding each file.

    `local=true` lists only what the answering node holds (shared volumes and its own).
    """
    ctx = _ctx(request)
    pool = (await find_pool(ctx.db, name)).value
    users = attached([e.value for e in await ctx.db.list(VM, keys.VMS)])
    here = driver_for(pool, ctx.state_dir)
    volumes = [e for e in await ctx.db.list(Volume, keys.VOLUMES) if e.value.pool == name]
    if local:
        volumes = [e for e in volumes if e.value.node in (None, ctx.node)]
    remote = {e.value.node for e in volumes} - {None, ctx.node}
    allocations = {
        view["id"]: view["allocation"]
        for node, views in (await ask_others(request, f"/pools/{name}/volumes", {},
                                             only=remote)).items()  # type: ignore[arg-type]
        for view in views
        if view["node"] == node
    } if remote else {}  # fmt: skip
    health = await _health(ctx, pool)
    mine = [e.value for e in volumes if e.value.node in (None, ctx.node)]
    allocations |= await probe(name, lambda: {v.id: here.allocation(v) for v in mine}) or {}
    views = []
    for entry in volumes:
        volume = entry.value
        views.append(
            VolumeView(
                **volume.model_dump(),
                revision=entry.revision,
                allocation=allocations.get(volume.id),
                attached_to=users.get(volume.id),
                health=health.get(volume.id),
            )
        )
    return sorted(views, key=lambda v: v.name)


@router.get("/pools/{name}/volumes/{ref}", response_model=VolumeView)
async def get_volume(
    name: Name, ref: Name, request: Request, _: Principal = Depends(auth.viewer)
) -> VolumeView:
    ctx = _ctx(request)
    pool = (await find_pool(ctx.db, name)).value
    entry = await find_volume(ctx.db, name, ref)
    users = attached([e.value for e in await ctx.db.list(VM, keys.VMS)])
    volume = entry.value
    here = volume.node in (None, ctx.node)
    driver = driver_for(pool, ctx.state_dir)
    return VolumeView(
        **volume.model_dump(),
        revision=entry.revision,
        allocation=await probe(name, lambda: driver.allocation(volume)) if here else None,
        attached_to=users.get(volume.id),
        health=(await _health(ctx, pool)).get(volume.id),
    )


async def _health(ctx: ApiContext, pool: Pool) -> dict[str, VolumeHealth]:
    if pool.type != "ardfs":
        return {}
    return {
        e.key.rsplit("/", 1)[1]: e.value
        for e in await ctx.db.list(VolumeHealth, keys.VOLUME_HEALTH)
    }


async def _new_volume(
    ctx: ApiContext,
    pool_name: str,
    name: str,
    fmt: VolumeFormat | None,
    size: int,
    node: str | None,
    kind: str,
    params: dict,
    user: str,
) -> TaskRef:
    pool = (await find_pool(ctx.db, pool_name)).value
    fmt = new_volume_format(pool, fmt, "path.name", "body.format")
    target = node or ctx.node
    if node is not None and node not in await live_nodes(ctx.db):
        raise Invalid("body.node", f"no live node {node!r}")
    volume = Volume(
        id=new_id(),
        pool=pool.name,
        name=name,
        format=fmt,
        size=size,
        node=None if pool.shared else target,
        placement=await new_placement(ctx.db, pool, "path.name"),
        created_at=time.time(),
    )
    task = new_task(kind, target, volume.id, user, params)
    txn = (
        Txn()
        .require_absent(keys.volume_name(pool.name, name))
        .put(keys.volume_name(pool.name, name), volume.id)
        .put(keys.volume(volume.id), volume)
    )
    try:
        await ctx.db.commit(with_task(txn, task))
    except StoreConflict as exc:
        raise Conflict(f"pool {pool.name} already has a volume {name}") from exc
    return TaskRef(task=task.id, volume=volume.id)


@router.post("/pools/{name}/volumes", response_model=TaskRef, status_code=202)
async def create_volume(
    name: Name, body: VolumeCreate, request: Request, principal: Principal = Depends(auth.operator)
) -> TaskRef:
    return await _new_volume(
        _ctx(request),
        name,
        body.name,
        body.format,
        body.size,
        body.node,
        "volume.create",
        {},
        principal.user,
    )


@router.post("/pools/{name}/volumes/import", response_model=TaskRef, status_code=202)
async def import_volume(
    name: Name, body: VolumeImport, request: Request, principal: Principal = Depends(auth.admin)
) -> TaskRef:
    """Import an image file that is already on a node (admins only: it reads node paths)."""
    return await _new_volume(
        _ctx(request),
        name,
        body.name,
        body.format,
        0,
        body.node,
        "volume.import",
        {"path": body.path},
        principal.user,
    )


@router.post("/pools/{name}/volumes/upload", response_model=TaskRef, status_code=202)
async def upload_volume(
    name: Name,
    request: Request,
    # Annotated, not `= Form(...)`: FastAPI drops a Name's validator from a Form default, and
    # an invalid name then failed deep inside as a 500.
    volume_name: Annotated[Name, Form(alias="name")],
    file: UploadFile = File(...),
    format: VolumeFormat | None = Form(None),
    principal: Principal = Depends(auth.operator),
) -> TaskRef:
    """Upload an image (any format qemu-img reads) into a new volume on this node."""
    ctx = _ctx(request)
    await find_pool(ctx.db, name)
    uploads = ctx.state_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    staged = uploads / f"{new_id()}.upload"
    try:
        with open(staged, "wb") as out:
            while chunk := await file.read(_UPLOAD_CHUNK):
                out.write(chunk)
        return await _new_volume(
            ctx,
            name,
            volume_name,
            format,
            0,
            None,
            "volume.import",
            {"path": str(staged), "remove_source": True},
            principal.user,
        )
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise


class DiskAdd(BaseModel):
    model_config = {"extra": "forbid"}
    node: Name
    path: str = Field(pattern=r"^/", description="a directory on that node for its chunks")
    site: Name | None = Field(default=None, description="the node's site (failure domain)")
    weight: float = Field(default=1.0, gt=0, le=1000, description="share of the data, relative")


@router.get("/pools/{name}/members", response_model=list[ArdfsMember])
async def list_members(
    name: Name, request: Request, _: Principal = Depends(auth.viewer)
) -> list[ArdfsMember]:
    """The nodes of an ardfs pool, with their heron-io address and the disks they give."""
    ctx = _ctx(request)
    await find_pool(ctx.db, name)
    return [e.value for e in await ctx.db.list(ArdfsMember, f"{keys.ARDFS_MEMBERS}{name}/")]


@router.post("/pools/{name}/disks", response_model=ArdfsMember, status_code=201)
async def add_disk(
    name: Name, body: DiskAdd, request: Request, _: Principal = Depends(auth.admin)
) -> ArdfsMember:
    """Give an ardfs pool a directory of a node for its chunks (a disk, as the pool sees it)."""
    ctx = _ctx(request)
    pool = (await find_pool(ctx.db, name)).value
    if pool.type != "ardfs":
        raise Conflict(f"pool {name} ({pool.type}) takes no disks; only ardfs pools do")
    if body.node not in await live_nodes(ctx.db):
        raise Invalid("body.node", f"no live node {body.node!r}")
    key = keys.ardfs_member(name, body.node)
    for _ in range(20):
        members = await ctx.db.list(ArdfsMember, f"{keys.ARDFS_MEMBERS}{name}/")
        entry = next((e for e in members if e.value.node == body.node), None)
        member = entry.value if entry else ArdfsMember(pool=name, node=body.node)
        if any(d.path == body.path for d in member.disks):
            raise Conflict(f"{body.node}:{body.path} is already a disk of pool {name}")
        taken = {d.id for e in members for d in e.value.disks}
        disk_id = next(i for i in (f"d{new_id()[:8]}" for _ in range(100)) if i not in taken)
        disks = [*member.disks, ArdfsDisk(id=disk_id, path=body.path, weight=body.weight)]
        member = member.model_copy(update={"disks": disks, "site": body.site or member.site})
        try:
            await ctx.db.put(key, member, revision=entry.revision if entry else 0)
        except StoreConflict:
            continue  # its heron-io registered meanwhile: read again
        request.state.audit_target = f"{name}/{body.node}"
        return member
    raise Conflict(f"the membership of {body.node} in pool {name} kept changing")


@router.delete("/pools/{name}/disks/{disk}", response_model=ArdfsMember)
async def remove_disk(
    name: Name, disk: DiskId, request: Request, _: Principal = Depends(auth.admin)
) -> ArdfsMember:
    """Take a disk out of an ardfs pool (it failed, or leaves): the leader moves the copies it
    held onto the pool's other disks at once (`volume.rebalance` tasks); its directory is
    left as it is. Refused when the disks left would be fewer than the protection spans."""
    ctx = _ctx(request)
    pool = (await find_pool(ctx.db, name)).value
    for _ in range(20):
        members = await ctx.db.list(ArdfsMember, f"{keys.ARDFS_MEMBERS}{name}/")
        entry = next((e for e in members if any(d.id == disk for d in e.value.disks)), None)
        if entry is None:
            raise NotFound(f"pool {name} has no disk {disk!r}")
        left = sum(len(e.value.disks) for e in members) - 1
        if left < pool.width:
            raise Conflict(
                f"pool {name} would keep {left} disks, {pool.protection} needs {pool.width}: "
                "add a disk first"
            )
        disks = [d for d in entry.value.disks if d.id != disk]
        member = entry.value.model_copy(update={"disks": disks})
        try:
            await ctx.db.put(entry.key, member, revision=entry.revision)
        except StoreConflict:
            continue
        request.state.audit_target = f"{name}/{member.node}/{disk}"
        return member
    raise Conflict(f"the disks of pool {name} kept changing")


@router.post("/pools/{name}/scan", response_model=TaskRef, status_code=202)
async def scan_pool(
    name: Name, request: Request, principal: Principal = Depends(auth.admin)
) -> TaskRef:
    """Find the LUNs of an iscsi or block pool: new ones become volumes, sizes are updated;
    carried out by the answering node."""
    ctx = _ctx(request)
    entry = await find_pool(ctx.db, name)
    if not entry.value.lun_backed:
        raise Conflict(f"pool {name} ({entry.value.type}) makes its volumes; nothing to scan")
    task = new_task("pool.scan", ctx.node, name, principal.user)
    await ctx.db.commit(with_task(Txn(), task))
    return TaskRef(task=task.id)


@router.patch("/pools/{name}/volumes/{ref}", response_model=TaskRef, status_code=202)
async def resize_volume(
    name: Name,
    ref: Name,
    body: VolumeResize,
    request: Request,
    principal: Principal = Depends(auth.operator),
) -> TaskRef:
    ctx = _ctx(request)
    entry = await find_volume(ctx.db, name, ref)
    volume = entry.value
    pool = (await find_pool(ctx.db, name)).value
    if pool.lun_backed:
        raise Conflict(f"grow the LUN on the array, then scan pool {name}")
    if body.size < volume.size:
        raise Invalid("body.size", f"volumes only grow; it is {volume.size} bytes")
    vms = [e.value for e in await ctx.db.list(VM, keys.VMS)]
    owner = next((vm for vm in vms if any(d.volume == volume.id for d in vm.spec.disks)), None)
    # A disk in use is grown by the node running its VM, online through QMP.
    node = owner.node if owner is not None else (volume.node or ctx.node)
    task = new_task(
        "volume.resize",
        node,
        volume.id,
        principal.user,
        {"size": body.size, "vm": owner.id if owner else None},
    )
    await ctx.db.commit(with_task(Txn().require_revision(entry.key, entry.revision), task))
    return TaskRef(task=task.id, volume=volume.id)


@router.delete("/pools/{name}/volumes/{ref}", response_model=TaskRef, status_code=202)
async def delete_volume(
    name: Name, ref: Name, request: Request, principal: Principal = Depends(auth.operator)
) -> TaskRef:
    ctx = _ctx(request)
    entry = await find_volume(ctx.db, name, ref)
    users = attached([e.value for e in await ctx.db.list(VM, keys.VMS)])
    if entry.value.id in users:
        raise Conflict(f"volume {entry.value.name} is used by VM {users[entry.value.id]}")
    task = new_task("volume.delete", entry.value.node or ctx.node, entry.value.id, principal.user)
    await ctx.db.commit(with_task(Txn().require_revision(entry.key, entry.revision), task))
    return TaskRef(task=task.id, volume=entry.value.id)
