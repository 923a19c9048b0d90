"""Security groups on the in-memory ConfigDB (services.secgroups): what is refused, and that a
group in use stays."""

import pytest
from fakes.configdb import FakeConfigDB

from heron.configdb import keys
from heron.models.network import Rule, SecurityGroupCreate, SecurityGroupUpdate
from heron.models.vm import VM, NicSpec, VMSpec
from heron.services import secgroups
from heron.services.errors import Conflict, Invalid, NotFound


async def test_groups_are_made_changed_and_their_rules_added_and_taken() -> None:
    db = FakeConfigDB()
    await secgroups.create_security_group(db, SecurityGroupCreate(name="web"))
    with pytest.raises(Conflict):
        await secgroups.create_security_group(db, SecurityGroupCreate(name="web"))
    ssh = Rule(protocol="tcp", ports="22", remote="10.0.0.0/8")
    await secgroups.add_rule(db, "web", ssh)
    group = await secgroups.add_rule(db, "web", ssh)  # not twice
    assert group.rules == [ssh]
    await secgroups.add_rule(db, "web", Rule(protocol="icmp", remote_group="web"))
    group = await secgroups.remove_rule(db, "web", 0)
    assert [r.protocol for r in group.rules] == ["icmp"]
    with pytest.raises(NotFound):
        await secgroups.remove_rule(db, "web", 5)
    group = await secgroups.update_security_group(
        db, "web", SecurityGroupUpdate(description="front", rules=[])
    )
    assert (group.description, group.rules) == ("front", [])
    assert [g.name for g in await secgroups.list_security_groups(db)] == ["web"]


async def test_rules_may_name_only_groups_that_exist() -> None:
    db = FakeConfigDB()
    body = SecurityGroupCreate(name="db", rules=[Rule(), Rule(remote_group="app")])
    with pytest.raises(Invalid) as caught:
        await secgroups.create_security_group(db, body)
    assert caught.value.fields[0]["field"] == "body.rules.1.remote_group"
    with pytest.raises(Invalid):
        await secgroups.add_rule(db, "db", Rule(remote_group="app"))


async def test_a_group_in_use_is_not_deleted() -> None:
    db = FakeConfigDB()
    await secgroups.create_security_group(db, SecurityGroupCreate(name="web"))
    await secgroups.create_security_group(
        db, SecurityGroupCreate(name="db", rules=[Rule(remote_group="web")])
    )
    with pytest.raises(Conflict, match="rules of groups: db"):
        await secgroups.delete_security_group(db, "web")
    nic = NicSpec(network="lan", mac="52:54:00:00:00:01", security_groups=["db"])
    vm = VM(id="v1", spec=VMSpec(name="v1", nics=[nic]), node="n1", created_at=0)
    await db.put(keys.vm("v1"), vm)
    with pytest.raises(Conflict, match="NICs of VMs: v1"):
        await secgroups.delete_security_group(db, "db")
    await db.delete(keys.vm("v1"))
    await secgroups.delete_security_group(db, "db")
    await secgroups.delete_security_group(db, "web")
    with pytest.raises(NotFound):
        await secgroups.find_security_group(db, "web")


async def test_nics_name_groups_that_exist_and_only_on_switched_networks() -> None:
    db = FakeConfigDB()
    await secgroups.create_security_group(db, SecurityGroupCreate(name="web"))
    await secgroups.check_nics(db, [NicSpec(network="lan", security_groups=["web"])])
    with pytest.raises(Invalid) as caught:
        await secgroups.check_nics(
            db, [NicSpec(network="lan"), NicSpec(network="lan", security_groups=["web", "x"])]
        )
    assert caught.value.fields[0]["field"] == "body.nics.1.security_groups.1"
    with pytest.raises(Invalid) as caught:
        await secgroups.check_nics(db, [NicSpec(network="user", egress_mbps=5)], field="body")
    assert caught.value.fields[0]["field"] == "body.egress_mbps"
