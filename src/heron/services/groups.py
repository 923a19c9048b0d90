"""VM groups: define one, change its rules, delete an empty one. A rule is placement
(spread, together, none), strict or soft, and the HA policy of members without their own."""

import time

from heron.configdb import ConfigDB, Entry, cas, keys
from heron.configdb.store import Conflict as StoreConflict
from heron.models.group import GroupCreate, GroupUpdate, VMGroup
from heron.models.vm import VM
from heron.scheduler.placement import rule_broken
from heron.services.errors import Conflict, NotFound


async def list_all(db: ConfigDB) -> list[VMGroup]:
    return [e.value for e in await db.list(VMGroup, keys.GROUPS)]


async def find(db: ConfigDB, name: str) -> Entry[VMGroup]:
    entry = await db.get(VMGroup, keys.group(name)) if "/" not in name else None
    if entry is None:
        raise NotFound(f"no group {name!r}")
    return entry


async def create(db: ConfigDB, body: GroupCreate) -> VMGroup:
    group = VMGroup(**body.model_dump(), created_at=time.time())
    try:
        await db.create(keys.group(group.name), group)
    except StoreConflict as exc:
        raise Conflict(f"group {group.name} already exists") from exc
    return group


async def update(db: ConfigDB, name: str, body: GroupUpdate) -> VMGroup:
    """Change the rules that are given. A strict rule the members break where they run now
    is refused rather than written: placement would keep it for new VMs only, and HA and DRS
    could not move the members to keep it (they honour it, they do not enforce it)."""
    changes = body.model_dump(include=body.model_fields_set, exclude_none=True)
    if "ha" in body.model_fields_set:
        changes["ha"] = body.ha  # null is a change too: members without their own HA

    async def attempt() -> VMGroup:
        entry = await find(db, name)
        group = entry.value.model_copy(update=changes)
        before = entry.value
        # Only a rule that changes is checked: one kept as it is (an HA change) is not
        # refused for what happened under it (members placed while it was soft).
        if (group.placement, group.strict) != (before.placement, before.strict):
            members = [e.value for e in await db.list(VM, keys.VMS) if e.value.spec.group == name]
            if why := rule_broken(group, members):
                field = "placement" if group.placement != before.placement else "strict"
                raise Conflict(
                    f"group {name}: {why}; move them first (or make the rule soft)",
                    [{"field": f"body.{field}", "reason": why}],
                )
        await db.put(entry.key, group, revision=entry.revision)
        return group

    return await cas.retry(attempt, f"group {name}")


async def delete(db: ConfigDB, name: str) -> None:
    """Delete a group no VM belongs to any more."""
    entry = await find(db, name)
    members = [e.value.spec.name for e in await db.list(VM, keys.VMS) if e.value.spec.group == name]
    if members:
        raise Conflict(f"group {name} still has VMs: {', '.join(sorted(members)[:5])}")
    await db.delete(entry.key, revision=entry.revision)
