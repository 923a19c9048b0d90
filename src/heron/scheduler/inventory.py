"""The nodes VMs may use: the live ones, with what the admin decided about them."""

from heron.configdb import ConfigDB, keys
from heron.models.group import VMGroup
from heron.models.node import Node, NodeSettings
from heron.models.vm import VM


async def live_nodes(db: ConfigDB) -> dict[str, Node]:
    """Nodes whose lease is alive, with their maintenance flag from the admin's settings."""
    nodes = {e.value.name: e.value for e in await db.list(Node, keys.NODES)}
    for entry in await db.list(NodeSettings, keys.NODE_SETTINGS):
        name = entry.key.rsplit("/", 1)[1]
        if name in nodes:
            nodes[name] = nodes[name].model_copy(update={"maintenance": entry.value.maintenance})
    return nodes


async def group_of(db: ConfigDB, vm: VM) -> VMGroup | None:
    if vm.spec.group is None:
        return None
    found = await db.get(VMGroup, keys.group(vm.spec.group))
    return found.value if found else None
