"""VM groups: changing a group's rules (services.groups on the in-memory ConfigDB) and the
rule check it makes against where the members are (scheduler.placement.rule_broken)."""

import pytest
from fakes.configdb import FakeConfigDB

from heron.configdb import keys
from heron.models.group import GroupCreate, GroupUpdate, VMGroup
from heron.models.vm import VM, HAPolicy, VMSpec
from heron.scheduler.placement import rule_broken
from heron.services import groups
from heron.services.errors import Conflict, NotFound


def vm(name: str, node: str, group: str | None = "db") -> VM:
    return VM(id=name, spec=VMSpec(name=name, group=group), node=node, created_at=0)


def rule(placement: str, strict: bool = True) -> VMGroup:
    return VMGroup.model_validate(
        {"name": "db", "placement": placement, "strict": strict, "created_at": 0}
    )


def test_spread_is_broken_by_two_members_on_one_node() -> None:
    members = [vm("db-2", "n1"), vm("db-1", "n1"), vm("db-3", "n2"), vm("other", "n2", None)]
    assert rule_broken(rule("spread"), members) == (
        "one VM per node is broken by members sharing a node: db-1, db-2 on n1"
    )
    assert rule_broken(rule("spread"), members[2:]) is None
    assert rule_broken(rule("spread", strict=False), members) is None  # soft: only weighs
    assert rule_broken(rule("none"), members) is None


def test_together_is_broken_by_members_on_several_nodes() -> None:
    members = [vm("app-1", "n1"), vm("app-2", "n2")]
    why = rule_broken(rule("together"), members)
    assert why == "all on one node is broken by members on 2 nodes: app-1 on n1; app-2 on n2"
    assert rule_broken(rule("together"), [vm("a", "n1"), vm("b", "n1")]) is None
    assert rule_broken(rule("together"), []) is None


async def test_a_rule_is_changed_in_place_and_the_rest_stays(db: FakeConfigDB) -> None:
    await groups.create(db, GroupCreate(name="db", placement="none", ha=HAPolicy(enabled=True)))
    changed = await groups.update(db, "db", GroupUpdate(placement="spread", strict=False))
    assert (changed.placement, changed.strict, changed.ha) == (
        "spread",
        False,
        HAPolicy(enabled=True),
    )
    stored = await db.get(VMGroup, keys.group("db"))
    assert stored is not None and stored.value == changed
    # ha: null takes the group's HA policy away; leaving it out keeps it.
    cleared = await groups.update(db, "db", GroupUpdate.model_validate({"ha": None}))
    assert cleared.ha is None and cleared.placement == "spread"
    with pytest.raises(NotFound):
        await groups.update(db, "nope", GroupUpdate(strict=True))


async def test_a_strict_rule_the_members_break_is_refused(db: FakeConfigDB) -> None:
    await groups.create(db, GroupCreate(name="db", placement="spread", strict=False))
    for member in (vm("db-1", "n1"), vm("db-2", "n1")):
        await db.put(keys.vm(member.id), member)
    with pytest.raises(Conflict, match="db-1, db-2 on n1") as refused:
        await groups.update(db, "db", GroupUpdate(strict=True))
    assert refused.value.fields[0]["field"] == "body.strict"
    stored = await db.get(VMGroup, keys.group("db"))
    assert stored is not None and stored.value.strict is False  # nothing written
    # Together, strict, is what they keep; and a group with members is not deleted.
    assert (await groups.update(db, "db", GroupUpdate(placement="together", strict=True))).strict
    with pytest.raises(Conflict, match="still has VMs: db-1, db-2"):
        await groups.delete(db, "db")


async def test_a_rule_kept_as_it_is_is_not_checked_again(db: FakeConfigDB) -> None:
    await groups.create(db, GroupCreate(name="db", placement="spread", strict=True))
    # Members that break it already (placed while it was soft, say).
    for member in (vm("db-1", "n1"), vm("db-2", "n1")):
        await db.put(keys.vm(member.id), member)
    changed = await groups.update(db, "db", GroupUpdate(strict=True, ha=HAPolicy(enabled=True)))
    assert changed.ha == HAPolicy(enabled=True)
    # A change of placement is checked, and the refusal names that field.
    await groups.update(db, "db", GroupUpdate(placement="together"))
    with pytest.raises(Conflict) as refused:
        await groups.update(db, "db", GroupUpdate(placement="spread"))
    assert refused.value.fields[0]["field"] == "body.placement"
