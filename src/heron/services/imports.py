"""V2V imports: sources, their scans, and the plan that makes Heron VMs of scanned VMs.

An import is planned here as a VM create is (services/vms.py `plan_create`): the VM and its
new volumes are written with one `v2v.import` task in one transaction, so a node that
restarts half-way finds both or neither. The task converts the disks, verifies them and
fixes the guest (agent/handlers.py); when it fails it removes what it made, so nothing
half-imported stays in the pool. Everything a request asks is checked, for every VM, before
anything is written: a batch is imported whole or refused whole.
"""

import asyncio
import re
import time

from heron.configdb import ConfigDB, Txn, keys
from heron.configdb.store import Conflict as StoreConflict
from heron.models.imports import (
    GuestFixMode,
    ImportDisk,
    ImportedVm,
    ImportItem,
    ImportRequest,
    ImportSource,
    ImportSourceCreate,
    ScanResult,
)
from heron.models.storage import Volume
from heron.models.task import (
    ImportParams,
    ScanParams,
    Task,
    TaskKind,
    TaskParams,
    new_task,
)
from heron.models.v2v import ScannedDisk, ScannedVm
from heron.models.vm import DiskRequest, NicSpec, VMCreate
from heron.scheduler.inventory import Inventory
from heron.services.errors import Conflict, Invalid, NotFound
from heron.services.plan import Plan
from heron.services.tasks import with_task
from heron.services.vms import plan_create
from heron.tls.pinned import server_fingerprint
from heron.v2v.scan import qemu_source

MIB = 1024**2


async def find_source(db: ConfigDB, name: str, field: str | None = None) -> ImportSource:
    found = await db.get(ImportSource, keys.import_source(name))
    if found is None:
        if field is not None:
            raise Invalid(field, f"no import source {name!r}")
        raise NotFound(f"import source {name!r} does not exist")
    return found.value


async def create_source(
    db: ConfigDB, inventory: Inventory, body: ImportSourceCreate, user: str
) -> ImportSource:
    inventory = await inventory.ready()
    if body.node is not None and inventory.nodes.get(body.node) is None:
        raise Invalid("body.node", f"no node {body.node!r}")
    if body.type == "vsphere":
        body = body.model_copy(update={"fingerprint": await _pin(body)})
    source = ImportSource(**body.model_dump(), created_at=time.time(), created_by=user)
    try:
        await db.create(keys.import_source(body.name), source)
    except StoreConflict as exc:
        raise Conflict(f"an import source {body.name!r} already exists") from exc
    return source


async def _pin(body: ImportSourceCreate) -> str:
    """The fingerprint of the certificate the server shows now, which must be the one given;
    none given: it is pinned as it is (the reply shows it, to be compared with the server's)."""
    host = body.host or ""
    try:
        shown = await asyncio.to_thread(server_fingerprint, host, body.port)
    except (OSError, ValueError) as exc:
        raise Invalid("body.host", f"{host}:{body.port} does not answer over TLS: {exc}") from exc
    if body.fingerprint is not None and body.fingerprint != shown:
        raise Invalid(
            "body.fingerprint",
            f"{host}:{body.port} shows a certificate with SHA-256 fingerprint {shown}, not "
            f"{body.fingerprint}",
        )
    return shown


async def delete_source(db: ConfigDB, name: str) -> None:
    await find_source(db, name)
    busy = [
        e.value.id
        for e in await db.list(Task, keys.TASKS)
        if e.value.kind in (TaskKind.v2v_import, TaskKind.v2v_scan)
        and not e.value.state.finished
        and e.value.params.get("source") == name
    ]
    if busy:
        raise Conflict(f"import source {name} is in use by {len(busy)} unfinished task(s)")
    await db.commit(Txn().delete(keys.import_source(name)).delete(keys.import_scan(name)))


async def scan(db: ConfigDB, inventory: Inventory, name: str, user: str) -> Task:
    """A `v2v.scan` task on the node that reads the source; its result is the source's scan."""
    source = await find_source(db, name)
    node = _reader(source, sorted((await inventory.ready()).live_nodes()))
    task = new_task(TaskKind.v2v_scan, node, name, user, ScanParams(source=name))
    await db.commit(with_task(Txn(), task))
    return task


def _reader(source: ImportSource, live: list[str]) -> str:
    """The node that reads `source`: its own node, or for NFS any live one."""
    if source.node is not None:
        if source.node not in live:
            raise Conflict(f"node {source.node}, which reads source {source.name}, is not up")
        return source.node
    if not live:
        raise Conflict("no node is up")
    return live[0]


async def last_scan(db: ConfigDB, name: str) -> ScanResult:
    await find_source(db, name)
    found = await db.get(ScanResult, keys.import_scan(name))
    if found is None:
        raise NotFound(f"import source {name} has not been scanned yet")
    return found.value


def heron_name(text: str) -> str:
    """A Heron name made of a source's VM name: 'Web Server (01)' → 'web-server-01'."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    name = re.sub(r"-{2,}", "-", name)[:63].strip("-._")
    return name or "imported"


async def plan_imports(
    db: ConfigDB, inventory: Inventory, body: ImportRequest, user: str
) -> tuple[list[Plan], list[ImportedVm]]:
    """Check the whole request and place every VM (each counting against the next); with
    `dry_run` the plans only, otherwise written, one transaction per VM."""
    source = await find_source(db, body.source, "body.source")
    found = await db.get(ScanResult, keys.import_scan(source.name))
    if found is None:
        raise Conflict(f"import source {source.name} has not been scanned yet: scan it first")
    report = found.value.report
    inventory = await inventory.ready()
    nodes, vms = inventory.live_nodes(), inventory.vms.values()
    if body.warm is not None and source.type != "vsphere":
        raise Invalid(
            "body.warm",
            f"source {source.name} is a {source.type} source: only a vsphere source's VMs "
            "run while they are copied",
        )
    if source.node is not None and body.node not in (None, source.node):
        raise Invalid("body.node", f"source {source.name} is read on node {source.node} only")
    node = source.node or body.node
    if node is not None and node not in nodes:
        raise Conflict(f"node {node}, which reads source {source.name}, is not up")
    plans, views = [], []
    names = [item.name for item in body.vms if item.name is not None]
    for index, item in enumerate(body.vms):
        field = f"body.vms.{index}"
        vm = _scanned(report.vms, item, field)
        if any(w.code == "powered-on" for w in vm.warnings) and not (body.power_off or body.warm):
            raise Invalid(
                f"{field}.vm",
                f"{vm.name} was running at the last scan: power it off in vSphere (and scan "
                "again), ask power_off to have Heron power it off, or import it warm",
            )
        name = item.name or heron_name(vm.name)
        if item.name is None and name in names:
            raise Invalid(f"{field}.name", f"{name!r} is asked twice: give each VM its own name")
        names.append(name)
        create = _create(vm, item, body, name, node, field)
        fix: GuestFixMode = (
            "auto" if body.guest_fix == "auto" and vm.guest_os.family == "linux" else "none"
        )

        def task_for(
            volumes: list[Volume], vm: ScannedVm = vm, fix: GuestFixMode = fix
        ) -> tuple[TaskKind, TaskParams]:
            disks = [_import_disk(d, v) for d, v in zip(vm.disks, volumes, strict=True)]
            params = ImportParams(
                source=source.name,
                vm=vm.path,
                root=report.root,
                disks=disks,
                guest_fix=fix,
                family=vm.guest_os.family,
                start=body.start,
                power_off=body.power_off,
                warm=body.warm,
            )
            return TaskKind.v2v_import, params

        plan = await plan_create(db, create, nodes, vms, user, task_for)
        vms.append(plan.vm)
        plans.append(plan)
        views.append(
            ImportedVm(
                vm=plan.vm.id,
                name=name,
                node=plan.vm.node or "",
                task="" if body.dry_run else plan.task.id,
                disks=[f"{body.pool}/{name}-disk{i}" for i in range(len(vm.disks))],
                warnings=[w.message for w in vm.warnings] + _changes(vm, fix),
            )
        )
    if body.dry_run:
        return plans, views
    for plan in plans:
        try:
            await db.commit(plan.txn)
        except StoreConflict as exc:
            raise Conflict(f"{plan.vm.spec.name} was created meanwhile; stopped there") from exc
    return plans, views


def _scanned(found: list[ScannedVm], item: ImportItem, field: str) -> ScannedVm:
    matches = [
        v for v in found
        if v.path == item.vm and item.source_name in (None, v.name)
    ]  # fmt: skip
    if not matches:
        raise Invalid(f"{field}.vm", f"{item.vm} is not in the source's last scan")
    if len(matches) > 1:
        raise Invalid(f"{field}.source_name", f"{item.vm} describes several VMs: name one")
    vm = matches[0]
    if vm.blockers:
        reasons = "; ".join(b.message for b in vm.blockers)
        raise Invalid(f"{field}.vm", f"{vm.name} cannot be imported: {reasons}")
    return vm


def _create(
    vm: ScannedVm, item: ImportItem, body: ImportRequest, name: str, node: str | None, field: str
) -> VMCreate:
    vcpus = item.vcpus or vm.vcpus
    memory = item.memory_mib or vm.memory_mib
    if vcpus is None:
        raise Invalid(f"{field}.vcpus", f"the source does not say how many vCPUs {vm.name} has")
    if memory is None:
        raise Invalid(f"{field}.memory_mib", f"the source does not say {vm.name}'s memory")
    # Virtio once the guest is fixed; otherwise buses every guest has drivers for.
    virtio = body.guest_fix == "auto" and vm.guest_os.family == "linux"
    disks = []
    for disk in vm.disks:
        if disk.capacity is None:
            raise Invalid(f"{field}.vm", f"disk {disk.device} of {vm.name} has no known size")
        size = -(-disk.capacity // MIB) * MIB
        disks.append(DiskRequest(bus="virtio" if virtio else "sata", pool=body.pool, size=size))
    nics = []
    for nic in vm.nics:
        network = body.networks.get(nic.network or "")
        if network is None:
            raise Invalid(
                "body.networks",
                f"source network {nic.network!r} ({vm.name}, {nic.device}) is not mapped",
            )
        mac = nic.mac if body.keep_macs else None
        nics.append(NicSpec(model="virtio" if virtio else "e1000", network=network, mac=mac))
    return VMCreate(
        name=name,
        vcpus=vcpus,
        memory_mib=memory,
        firmware=vm.firmware or "bios",
        description=f"imported from {vm.path}",
        disks=disks,
        nics=nics,
        node=node,
        start=False,
    )


def _import_disk(disk: ScannedDisk, volume: Volume) -> ImportDisk:
    return ImportDisk(
        volume=volume.id,
        source=qemu_source(disk),
        format=disk.format if disk.member is None else None,
        chain=disk.chain if disk.format in ("vpc", "vhdx") else [],
    )


def _changes(vm: ScannedVm, fix: str) -> list[str]:
    if fix == "auto":
        return ["disks and NICs become virtio; the guest is fixed to boot on them"]
    return ["disks become SATA and NICs e1000: buses the guest has drivers for"]
