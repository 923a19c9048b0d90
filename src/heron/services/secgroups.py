"""Security groups: define, change and delete them, and check the NICs naming them.

A group's rules take effect on every node whose VMs' NICs name it (or name a group whose
rules point at it), as the node agents follow the ConfigDB."""

import time
from collections.abc import Sequence

from heron.configdb import ConfigDB, Entry, cas, keys
from heron.configdb.store import Conflict as StoreConflict
from heron.models.network import (
    BUILTIN_NETWORKS,
    Rule,
    SecurityGroup,
    SecurityGroupCreate,
    SecurityGroupUpdate,
)
from heron.models.vm import VM, NicSpec
from heron.services.errors import Conflict, Invalid, NotFound


async def list_security_groups(db: ConfigDB) -> list[SecurityGroup]:
    return [e.value for e in await db.list(SecurityGroup, keys.SECURITY_GROUPS)]


async def find_security_group(
    db: ConfigDB, name: str, field: str | None = None
) -> Entry[SecurityGroup]:
    entry = await db.get(SecurityGroup, keys.security_group(name)) if "/" not in name else None
    if entry is None:
        if field:
            raise Invalid(field, f"no security group {name!r}")
        raise NotFound(f"no security group {name!r}")
    return entry


async def _check_remote_groups(
    db: ConfigDB, group: str, rules: Sequence[Rule], field: str, first: int = 0
) -> None:
    known = {g.name for g in await list_security_groups(db)} | {group}
    for offset, rule in enumerate(rules):
        if rule.remote_group is not None and rule.remote_group not in known:
            raise Invalid(
                f"{field}.{first + offset}.remote_group",
                f"no security group {rule.remote_group!r}",
            )


async def create_security_group(db: ConfigDB, body: SecurityGroupCreate) -> SecurityGroup:
    await _check_remote_groups(db, body.name, body.rules, "body.rules")
    group = SecurityGroup(**body.model_dump(), created_at=time.time())
    try:
        await db.create(keys.security_group(group.name), group)
    except StoreConflict as exc:
        raise Conflict(f"security group {group.name} already exists") from exc
    return group


async def update_security_group(
    db: ConfigDB, name: str, body: SecurityGroupUpdate
) -> SecurityGroup:
    """A new description, or new rules replacing the old ones."""
    changes = body.model_dump(include=body.model_fields_set, exclude_none=True)
    if body.rules is not None:
        await _check_remote_groups(db, name, body.rules, "body.rules")
        changes["rules"] = body.rules

    async def attempt() -> SecurityGroup:
        entry = await find_security_group(db, name)
        group = entry.value.model_copy(update=changes)
        await db.put(entry.key, group, revision=entry.revision)
        return group

    return await cas.retry(attempt, f"security group {name}")


async def add_rule(db: ConfigDB, name: str, rule: Rule) -> SecurityGroup:
    """Add `rule` to the group (unless it has it already)."""
    await _check_remote_groups(db, name, [rule], "body", 0)

    async def attempt() -> SecurityGroup:
        entry = await find_security_group(db, name)
        if rule in entry.value.rules:
            return entry.value
        group = entry.value.model_copy(update={"rules": [*entry.value.rules, rule]})
        await db.put(entry.key, group, revision=entry.revision)
        return group

    return await cas.retry(attempt, f"security group {name}")


async def remove_rule(db: ConfigDB, name: str, index: int) -> SecurityGroup:
    """Take the group's rule `index` (counted from 0, as listed) away."""

    async def attempt() -> SecurityGroup:
        entry = await find_security_group(db, name)
        rules = entry.value.rules
        if not 0 <= index < len(rules):
            raise NotFound(f"security group {name} has no rule {index}")
        group = entry.value.model_copy(update={"rules": rules[:index] + rules[index + 1 :]})
        await db.put(entry.key, group, revision=entry.revision)
        return group

    return await cas.retry(attempt, f"security group {name}")


async def delete_security_group(db: ConfigDB, name: str) -> None:
    """Delete a group no NIC names and no other group's rule points at (409 otherwise)."""
    entry = await find_security_group(db, name)
    users = sorted(
        e.value.spec.name
        for e in await db.list(VM, keys.VMS)
        if any(name in n.security_groups for n in e.value.spec.nics)
    )
    if users:
        raise Conflict(f"security group {name} is used by NICs of VMs: {', '.join(users[:5])}")
    pointing = sorted(
        g.name
        for g in await list_security_groups(db)
        if g.name != name and any(r.remote_group == name for r in g.rules)
    )
    if pointing:
        raise Conflict(
            f"security group {name} is named by rules of groups: {', '.join(pointing[:5])}"
        )
    await db.delete(entry.key, revision=entry.revision)


async def check_nics(
    db: ConfigDB, nics: Sequence[NicSpec], first: int = 0, field: str = "body.nics"
) -> None:
    """Raise Invalid (naming the field) for a NIC naming a security group that does not exist,
    or asking for groups or rate limits on QEMU's user network or no network (not filtered
    there: that would be a promise not kept)."""
    known: set[str] | None = None
    for offset, nic in enumerate(nics):
        where = f"{field}.{first + offset}" if field.endswith("nics") else field
        if nic.network in BUILTIN_NETWORKS:
            for name in ("security_groups", "ingress_mbps", "egress_mbps"):
                if getattr(nic, name):
                    raise Invalid(
                        f"{where}.{name}",
                        f"a NIC on {nic.network!r} is neither filtered nor shaped",
                    )
            continue
        if nic.security_groups and known is None:
            known = {g.name for g in await list_security_groups(db)}
        for position, group in enumerate(nic.security_groups):
            if group not in (known or set()):
                raise Invalid(f"{where}.security_groups.{position}", f"no security group {group!r}")
