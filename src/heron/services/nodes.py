"""Nodes: maintenance (drain and back), the I/O reservation, and leaving the cluster."""

import time
from typing import Any

import aetcd.exceptions

from heron.configdb import ConfigDB, Entry, Txn, cas, keys
from heron.configdb.membership import Member, Membership
from heron.models.cluster import LeavePlan
from heron.models.node import NodeSettings
from heron.models.storage import ArdfsMember, Pool, Volume
from heron.models.task import Task, TaskKind, new_task
from heron.models.vm import VM
from heron.services import leave as leave_plan
from heron.services.errors import Conflict, Invalid, NotFound
from heron.services.lookup import live_nodes
from heron.services.tasks import with_task
from heron.util.wait import until

# etcd refuses a reconfiguration for a moment after the previous one.
_RECONFIGURE_PATIENCE = 10.0


async def enter_maintenance(db: ConfigDB, name: str, user: str) -> Task:
    """Keep new VMs off the node and live-migrate its VMs away (a `node.drain` task)."""
    if name not in await live_nodes(db):
        raise NotFound(f"no live node {name!r}")
    current = await db.get(NodeSettings, keys.node_settings(name))
    settings = _changed(current, maintenance=True)
    task = new_task(TaskKind.node_drain, name, name, user)
    txn = Txn().require_revision(keys.node_settings(name), current.revision if current else 0)
    await db.commit(with_task(txn.put(keys.node_settings(name), settings), task))
    return task


async def exit_maintenance(db: ConfigDB, name: str) -> None:
    """Let the node take VMs again (they are not moved back by themselves); refused for a
    node that left the cluster, which stays out of placement for good."""
    current = await db.get(NodeSettings, keys.node_settings(name))
    if current is None and name not in await live_nodes(db):
        raise NotFound(f"no node {name!r}")
    if current is not None and current.value.left:
        raise Conflict(f"node {name} left the cluster: it takes no VMs again")
    await _update_settings(db, name, maintenance=False)


async def reserve_io(db: ConfigDB, name: str, cpus: int, memory_mib: int) -> None:
    """Reserve cores and memory of a node for heron-io; VMs keep at least one core."""
    nodes = await live_nodes(db)
    if name not in nodes:
        raise NotFound(f"no live node {name!r}")
    node = nodes[name]
    if cpus >= node.cpus:
        raise Invalid("body.cpus", f"node {name} has {node.cpus} cores: leave at least one for VMs")
    if memory_mib >= node.memory_mib:
        raise Invalid("body.memory_mib", f"node {name} has {node.memory_mib} MiB")
    await _update_settings(db, name, io_cpus=cpus, io_memory_mib=memory_mib)


async def left_nodes(db: ConfigDB) -> set[str]:
    """The nodes an administrator took out of the cluster."""
    return {
        e.key.rsplit("/", 1)[1]
        for e in await db.list(NodeSettings, keys.NODE_SETTINGS)
        if e.value.left
    }


async def plan_leave(db: ConfigDB, name: str) -> LeavePlan:
    """What leaving would do now: the VMs in the way, the etcd member, the data on its
    disks. NotFound for a node the cluster does not know at all."""
    plan, _ = await _plan_leave(db, name)
    return plan


async def _plan_leave(db: ConfigDB, name: str) -> tuple[LeavePlan, Member | None]:
    nodes = await live_nodes(db)
    members = await Membership(db).list()
    mine = next((m for m in members if m.name == name), None)
    # A node that is gone for good may be known only as an etcd member any more.
    if name not in nodes and mine is None and await db.get_raw(keys.node_settings(name)) is None:
        raise NotFound(f"no node {name!r}")
    state = leave_plan.ClusterState(
        live=set(nodes),
        left=await left_nodes(db),
        vms_on=[e.value.spec.name for e in await db.list(VM, keys.VMS) if e.value.node == name],
        members=members,
        pools={e.value.name: e.value for e in await db.list(Pool, keys.POOLS)},
        ardfs_members=[e.value for e in await db.list(ArdfsMember, keys.ARDFS_MEMBERS)],
        volumes=[e.value for e in await db.list(Volume, keys.VOLUMES)],
    )
    return leave_plan.plan(name, state), mine


async def leave(db: ConfigDB, name: str) -> tuple[LeavePlan, bool]:
    """Take an empty node out of the cluster for good: its etcd member (if any) is removed
    and placement never uses it again. Refused (Conflict) for what its plan calls blocking.
    Returns the plan it followed and whether it had an etcd member."""
    plan, mine = await _plan_leave(db, name)
    if not plan.can_leave:
        raise Conflict(leave_plan.refusal(plan))
    if mine is not None:
        await _remove_member(Membership(db), mine.id)
    current = await db.get(NodeSettings, keys.node_settings(name))
    settings = _changed(current, maintenance=True, left=True)
    txn = Txn().require_revision(keys.node_settings(name), current.revision if current else 0)
    await db.commit(txn.put(keys.node_settings(name), settings).delete(keys.etcd_join(name)))
    return plan, mine is not None


async def _remove_member(membership: Membership, member_id: int) -> None:
    """Remove an etcd member, trying again while etcd refuses the reconfiguration because
    its members have not been connected long enough since the previous one."""
    refusal: list[Exception] = []

    async def removed() -> bool:
        try:
            await membership.remove(member_id)
            return True
        except aetcd.exceptions.ClientError as exc:
            refusal[:] = [exc]
            # An earlier attempt may have gone through after all.
            return all(m.id != member_id for m in await membership.list())

    if not await until(removed, _RECONFIGURE_PATIENCE, interval=0.5):
        raise refusal[0]


def _changed(current: Entry[NodeSettings] | None, **changes: Any) -> NodeSettings:
    base = current.value if current else NodeSettings(changed_at=time.time())
    return base.model_copy(update={**changes, "changed_at": time.time()})


async def _update_settings(db: ConfigDB, name: str, **changes: Any) -> None:
    """Change some of what the admin set about a node, keeping the rest."""
    key = keys.node_settings(name)

    async def attempt() -> None:
        current = await db.get(NodeSettings, key)
        revision = current.revision if current else 0
        await db.put(key, _changed(current, **changes), revision=revision)

    await cas.retry(attempt, f"the settings of node {name}")
