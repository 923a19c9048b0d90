"""Templates: a stopped VM marked so that it never starts or migrates; VMs are cloned from
it (services/clones.py), linked clones reading its disks."""

from heron.configdb import ConfigDB, Entry, Txn, keys
from heron.configdb.store import Conflict as StoreConflict
from heron.models.vm import VM, PowerState, RunState, TemplateSet, VMStatus
from heron.services.clones import refuse_if_read
from heron.services.errors import Conflict
from heron.services.lookup import find_vm


async def set_template(db: ConfigDB, ref: str, body: TemplateSet) -> Entry[VM]:
    """Make a stopped VM a template, or a template a VM again (no linked clone reading its
    disks: once it runs they would change under them)."""
    entry = await find_vm(db, ref)
    vm = entry.value
    if body.revision is not None and body.revision != entry.revision:
        raise Conflict(
            f"VM {vm.spec.name} changed since revision {body.revision} (now {entry.revision}); "
            "read it again"
        )
    if vm.template == body.template:
        return entry
    if body.template:
        status = await db.get(VMStatus, keys.vm_status(vm.id))
        if vm.power != PowerState.stopped or (
            status is not None
            and status.value.state in (RunState.running, RunState.paused, RunState.pending)
        ):
            raise Conflict(f"VM {vm.spec.name} is not stopped: stop it to make it a template")
        if await db.get_raw(keys.migration(vm.id)) is not None:
            raise Conflict(f"VM {vm.spec.name} is migrating")
    else:
        await refuse_if_read(
            db, f"template {vm.spec.name} cannot become a VM", [d.volume for d in vm.spec.disks]
        )
    changed = vm.model_copy(update={"template": body.template})
    txn = Txn().require_revision(entry.key, entry.revision).put(entry.key, changed)
    try:
        revision = await db.commit(txn)
    except StoreConflict as exc:
        raise Conflict(f"VM {vm.spec.name} was changed meanwhile; try again") from exc
    return Entry(entry.key, changed, revision)
