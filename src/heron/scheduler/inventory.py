"""The nodes VMs may use and what runs on them, as the controllers and placement see it."""

import asyncio
from collections.abc import Iterable
from typing import Any

from heron.configdb import ConfigDB, keys
from heron.configdb.cache import Cache
from heron.models.demand import NodeDemand
from heron.models.group import VMGroup
from heron.models.migration import Migration
from heron.models.network import Network, SecurityGroup, Switch
from heron.models.node import Node, NodeSettings, Watchdog
from heron.models.snapshot import Snapshot
from heron.models.storage import ArdfsMember, ArdfsNodeStatus, Pool, Volume
from heron.models.task import Task
from heron.models.vm import VM, VMStatus
from heron.storage.registry import capabilities

# A node's measured demand older than this (three of its half-minute writes) is not used.
FRESH = 90.0


async def live_nodes(db: ConfigDB) -> dict[str, Node]:
    """Nodes whose lease is alive, with what the admin set (maintenance, I/O reservation)."""
    nodes = {e.value.name: e.value for e in await db.list(Node, keys.NODES)}
    settings = {
        e.key.rsplit("/", 1)[1]: e.value for e in await db.list(NodeSettings, keys.NODE_SETTINGS)
    }
    return _with_settings(nodes, settings)


async def measured_demand(
    db: ConfigDB, nodes: dict[str, Node], now: float
) -> dict[str, NodeDemand]:
    """What the VMs of these nodes were measured to use, by node, where it is recent."""
    return fresh_demand((e.value for e in await db.list(NodeDemand, keys.DEMAND)), nodes, now)


def fresh_demand(
    records: Iterable[NodeDemand], nodes: dict[str, Node], now: float
) -> dict[str, NodeDemand]:
    return {d.node: d for d in records if d.node in nodes and now - d.at <= FRESH}


def _with_settings(nodes: dict[str, Node], settings: dict[str, NodeSettings]) -> dict[str, Node]:
    for name, setting in settings.items():
        if name in nodes:
            admin = {
                "maintenance": setting.maintenance,
                "io_cpus": setting.io_cpus,
                "io_memory_mib": setting.io_memory_mib,
            }
            if any(getattr(nodes[name], k) != v for k, v in admin.items()):
                nodes[name] = nodes[name].model_copy(update=admin)
    return nodes


async def group_of(db: ConfigDB, vm: VM) -> VMGroup | None:
    if vm.spec.group is None:
        return None
    found = await db.get(VMGroup, keys.group(vm.spec.group))
    return found.value if found else None


class Inventory:
    """Watch-fed copies of the records cluster-wide decisions read (see `configdb.cache`).

    One per agent, shared by the leader's controllers and the API's placement; the copies are
    made on first use, so an agent that neither leads nor places VMs keeps none.
    """

    def __init__(self, db: ConfigDB):
        self.db = db
        self.nodes = Cache(db, Node, keys.NODES)
        self.node_settings = Cache(db, NodeSettings, keys.NODE_SETTINGS)
        self.watchdogs = Cache(db, Watchdog, keys.WATCHDOGS)
        self.vms = Cache(db, VM, keys.VMS)
        self.vm_status = Cache(db, VMStatus, keys.VM_STATUS)
        self.groups = Cache(db, VMGroup, keys.GROUPS)
        self.pools = Cache(db, Pool, keys.POOLS)
        self.volumes = Cache(db, Volume, keys.VOLUMES)
        self.ardfs_members = Cache(db, ArdfsMember, keys.ARDFS_MEMBERS)
        self.ardfs_status = Cache(db, ArdfsNodeStatus, keys.ARDFS_STATUS)
        self.migrations = Cache(db, Migration, keys.MIGRATIONS)
        self.snapshots = Cache(db, Snapshot, keys.SNAPSHOTS)
        self.tasks = Cache(db, Task, keys.TASKS)
        self.switches = Cache(db, Switch, keys.SWITCHES)
        self.networks = Cache(db, Network, keys.NETWORKS)
        self.security_groups = Cache(db, SecurityGroup, keys.SECURITY_GROUPS)
        self.demand = Cache(db, NodeDemand, keys.DEMAND)
        self._caches: list[Cache[Any]] = [
            self.nodes,
            self.node_settings,
            self.watchdogs,
            self.vms,
            self.vm_status,
            self.groups,
            self.pools,
            self.volumes,
            self.ardfs_members,
            self.ardfs_status,
            self.migrations,
            self.snapshots,
            self.tasks,
            self.switches,
            self.networks,
            self.security_groups,
            self.demand,
        ]
        self._ready: asyncio.Future[None] | None = None

    async def ready(self) -> "Inventory":
        """Start every copy (once; concurrent callers share the start) and return self."""
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._start())
        try:
            await asyncio.shield(self._ready)
        except Exception:
            self._ready = None  # e.g. etcd unreachable: the next caller tries again
            raise
        return self

    async def _start(self) -> None:
        await asyncio.gather(*(c.start() for c in self._caches))

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self._caches))

    def live_nodes(self) -> dict[str, Node]:
        nodes = {e.value.name: e.value for e in self.nodes}
        settings = {name: e.value for name, e in self.node_settings.items()}
        return _with_settings(nodes, settings)

    def measured(self, now: float) -> dict[str, NodeDemand]:
        """The live nodes' measured demand, by node, where it is recent (`FRESH`)."""
        return fresh_demand((e.value for e in self.demand), self.live_nodes(), now)

    def groups_by_name(self) -> dict[str, VMGroup]:
        return {e.value.name: e.value for e in self.groups}

    def group_of(self, vm: VM) -> VMGroup | None:
        if vm.spec.group is None:
            return None
        found = self.groups.get(vm.spec.group)
        return found.value if found else None

    def shared_volumes(self) -> set[str]:
        """Ids of volumes on shared pools: a VM using only these may run on any node."""
        shared = {e.value.name for e in self.pools if capabilities(e.value).shared}
        return {e.value.id for e in self.volumes if e.value.pool in shared}
