"""Pools and volumes: define pools, create, import, resize and delete volumes."""

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from pydantic import BaseModel, Field

from heron.api import auth
from heron.api.auth import Principal
from heron.api.context import ApiContext
from heron.api.fanout import ask_others
from heron.configdb import keys
from heron.models.common import Name, new_id
from heron.models.storage import (
    ArdfsMember,
    DeviceClass,
    DiskId,
    Pool,
    PoolCapacity,
    PoolSpec,
    Volume,
    VolumeCreate,
    VolumeFormat,
    VolumeHealth,
    VolumeImport,
    VolumeResize,
)
from heron.models.task import VolumeImportParams
from heron.models.vm import VM
from heron.services import pools as pool_service
from heron.services import volumes as volume_service
from heron.services.lookup import (
    attached,
    find_pool,
    find_volume,
)
from heron.storage.driver import Capabilities
from heron.storage.probe import probe
from heron.storage.registry import capabilities, driver_for

router = APIRouter(tags=["storage"])

_UPLOAD_CHUNK = 4 * 1024 * 1024


class PoolCreate(PoolSpec):
    """A pool definition: the fields that apply depend on `type` (see the Pool schema)."""


class PoolView(Pool):
    revision: int
    capabilities: Capabilities = Field(description="what the pool can do, by its driver")
    capacity: PoolCapacity | None = Field(
        default=None, description="ardfs and shared pools; a local pool's differs by node"
    )


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
async def list_pools(
    request: Request, principal: Principal = Depends(auth.authenticate)
) -> list[PoolView]:
    """The pools the caller sees: all with a cluster-wide role, else those granted to it."""
    ctx = _ctx(request)
    names = await auth.reachable_names(ctx.db, principal, "pool")
    entries = [
        e for e in await ctx.db.list(Pool, keys.POOLS) if names is None or e.value.name in names
    ]
    return [await _pool_view(ctx, e.value, e.revision) for e in entries]


async def _pool_view(ctx: ApiContext, pool: Pool, revision: int) -> PoolView:
    return PoolView(
        **pool.model_dump(),
        revision=revision,
        capabilities=capabilities(pool),
        capacity=await pool_service.capacity(ctx.db, ctx.state_dir, pool),
    )


@router.post("/pools", response_model=PoolView, status_code=201)
async def create_pool(
    body: PoolCreate, request: Request, _: Principal = Depends(auth.admin)
) -> PoolView:
    pool, revision = await pool_service.create(_ctx(request).db, body)
    return PoolView(**pool.model_dump(), revision=revision, capabilities=capabilities(pool))


@router.get("/pools/{name}", response_model=PoolView)
async def get_pool(
    name: Name, request: Request, _: Principal = Depends(auth.pool_viewer)
) -> PoolView:
    ctx = _ctx(request)
    entry = await find_pool(ctx.db, name)
    return await _pool_view(ctx, entry.value, entry.revision)


@router.delete("/pools/{name}", status_code=204)
async def delete_pool(name: Name, request: Request, _: Principal = Depends(auth.admin)) -> None:
    await pool_service.delete(_ctx(request).db, name)


@router.get("/pools/{name}/volumes", response_model=list[VolumeView])
async def list_volumes(
    name: Name, request: Request, local: bool = False, _: Principal = Depends(auth.pool_viewer)
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
    remote = {n for e in volumes if (n := e.value.node) is not None} - {ctx.node}
    allocations = {
        view["id"]: view["allocation"]
        for node, views in (await ask_others(request, f"/pools/{name}/volumes", {},
                                             only=remote)).items()
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
    name: Name, ref: Name, request: Request, _: Principal = Depends(auth.pool_viewer)
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
    if not capabilities(pool).member_disks:
        return {}
    return {
        e.key.rsplit("/", 1)[1]: e.value
        for e in await ctx.db.list(VolumeHealth, keys.VOLUME_HEALTH)
    }


@router.post("/pools/{name}/volumes", response_model=TaskRef, status_code=202)
async def create_volume(
    name: Name,
    body: VolumeCreate,
    request: Request,
    principal: Principal = Depends(auth.pool_operator),
) -> TaskRef:
    ctx = _ctx(request)
    task = await volume_service.create(
        ctx.db,
        ctx.node,
        name,
        body.name,
        body.format,
        body.size,
        body.node,
        principal.user,
        device_class=body.device_class,
    )
    return TaskRef(task=task.id, volume=task.target)


@router.post("/pools/{name}/volumes/import", response_model=TaskRef, status_code=202)
async def import_volume(
    name: Name, body: VolumeImport, request: Request, principal: Principal = Depends(auth.admin)
) -> TaskRef:
    """Import an image file that is already on a node (admins only: it reads node paths)."""
    ctx = _ctx(request)
    source = VolumeImportParams(path=body.path)
    task = await volume_service.create(
        ctx.db, ctx.node, name, body.name, body.format, 0, body.node, principal.user, source
    )
    return TaskRef(task=task.id, volume=task.target)


@router.post("/pools/{name}/volumes/upload", response_model=TaskRef, status_code=202)
async def upload_volume(
    name: Name,
    request: Request,
    # Annotated, not `= Form(...)`: FastAPI drops a Name's validator from a Form default, and
    # an invalid name then failed deep inside as a 500.
    volume_name: Annotated[Name, Form(alias="name")],
    file: UploadFile = File(...),
    format: VolumeFormat | None = Form(None),
    principal: Principal = Depends(auth.pool_operator),
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
        source = VolumeImportParams(path=str(staged), remove_source=True)
        task = await volume_service.create(
            ctx.db, ctx.node, name, volume_name, format, 0, None, principal.user, source
        )
        return TaskRef(task=task.id, volume=task.target)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise


class DiskAdd(BaseModel):
    model_config = {"extra": "forbid"}
    node: Name
    path: str = Field(pattern=r"^/", description="a directory on that node for its chunks")
    site: Name | None = Field(default=None, description="the node's site (failure domain)")
    weight: float = Field(default=1.0, gt=0, le=1000, description="share of the data, relative")
    device_class: DeviceClass | None = Field(
        default=None,
        description="nvme, ssd or hdd; omitted: the node's agent detects it from the kernel",
    )


class DiskChange(BaseModel):
    model_config = {"extra": "forbid"}
    device_class: DeviceClass = Field(description="nvme, ssd or hdd")


@router.get("/pools/{name}/members", response_model=list[ArdfsMember])
async def list_members(
    name: Name, request: Request, _: Principal = Depends(auth.pool_viewer)
) -> list[ArdfsMember]:
    """The nodes of an ardfs pool, with their heron-io address and the disks they give."""
    ctx = _ctx(request)
    await find_pool(ctx.db, name)
    return [e.value for e in await ctx.db.list(ArdfsMember, f"{keys.ARDFS_MEMBERS}{name}/")]


@router.post("/pools/{name}/disks", response_model=ArdfsMember, status_code=201)
async def add_disk(
    name: Name, body: DiskAdd, request: Request, _: Principal = Depends(auth.admin)
) -> ArdfsMember:
    """Give an ardfs pool a directory of a node for its chunks (a disk, as the pool sees it).
    Its device class is the one given, else the node's agent detects it (`class_source`
    says which; until then a pool that asks for a class does not place on it)."""
    db = _ctx(request).db
    member = await pool_service.add_disk(
        db, name, body.node, body.path, body.site, body.weight, body.device_class
    )
    request.state.audit_target = f"{name}/{body.node}"
    return member


@router.patch("/pools/{name}/disks/{disk}", response_model=ArdfsMember)
async def change_disk(
    name: Name, disk: DiskId, body: DiskChange, request: Request, _: Principal = Depends(auth.admin)
) -> ArdfsMember:
    """Set a disk's device class. In a pool that asks for a class, a disk that leaves it has
    the copies it holds moved onto the class's other disks by the leader, as a disk taken
    out (refused, 409, when those would be fewer than the protection spans, or in an rf1 pool
    while volumes have blocks on it); a disk that joins it has volumes spread onto it."""
    member, before, after = await pool_service.set_disk_class(
        _ctx(request).db, name, disk, body.device_class
    )
    request.state.audit_target = f"{name}/{member.node}/{disk}"
    was = before.device_class or "not told"
    request.state.audit_reason = f"device class {was} -> {after.device_class}"
    return member


@router.delete("/pools/{name}/disks/{disk}", response_model=ArdfsMember)
async def remove_disk(
    name: Name, disk: DiskId, request: Request, _: Principal = Depends(auth.admin)
) -> ArdfsMember:
    """Take a disk out of an ardfs pool (it failed, or leaves): the leader moves the copies it
    held onto the pool's other disks at once (`volume.rebalance` tasks); its directory is
    left as it is. Refused when the disks left would be fewer than the protection spans, and in
    a pool that keeps one copy (rf1) while volumes have blocks on it (they exist nowhere
    else)."""
    member = await pool_service.remove_disk(_ctx(request).db, name, disk)
    request.state.audit_target = f"{name}/{member.node}/{disk}"
    return member


@router.post("/pools/{name}/scan", response_model=TaskRef, status_code=202)
async def scan_pool(
    name: Name, request: Request, principal: Principal = Depends(auth.admin)
) -> TaskRef:
    """Find the LUNs of an iscsi or block pool: new ones become volumes, sizes are updated;
    carried out by the answering node."""
    ctx = _ctx(request)
    task = await volume_service.scan(ctx.db, ctx.node, name, principal.user)
    return TaskRef(task=task.id)


@router.patch("/pools/{name}/volumes/{ref}", response_model=TaskRef, status_code=202)
async def resize_volume(
    name: Name,
    ref: Name,
    body: VolumeResize,
    request: Request,
    principal: Principal = Depends(auth.pool_operator),
) -> TaskRef:
    ctx = _ctx(request)
    task = await volume_service.resize(ctx.db, ctx.node, name, ref, body.size, principal.user)
    return TaskRef(task=task.id, volume=task.target)


@router.delete("/pools/{name}/volumes/{ref}", response_model=TaskRef, status_code=202)
async def delete_volume(
    name: Name, ref: Name, request: Request, principal: Principal = Depends(auth.pool_operator)
) -> TaskRef:
    ctx = _ctx(request)
    task = await volume_service.delete(ctx.db, ctx.node, name, ref, principal.user)
    return TaskRef(task=task.id, volume=task.target)
