"""Switches and networks (port groups): define, change and delete them; and the addresses
and MACs their NICs get (IPAM), written as index keys in the VMs' own transactions."""

import time
from collections.abc import Iterable

from heron.configdb import ConfigDB, Entry, cas, keys
from heron.configdb.store import Conflict as StoreConflict
from heron.configdb.store import Txn
from heron.models.network import (
    BUILTIN_NETWORKS,
    VXLAN_OVERHEAD,
    Lease,
    Network,
    NetworkCreate,
    NetworkUpdate,
    NodeNetworkStatus,
    Switch,
    SwitchCreate,
    SwitchUpdate,
)
from heron.models.node import Node
from heron.models.vm import VM, NicSpec
from heron.network.ipam import fits, pool_of, random_mac
from heron.services.errors import Conflict, Invalid, NotFound

# -- switches ----------------------------------------------------------------------------


async def list_switches(db: ConfigDB) -> list[Switch]:
    return [e.value for e in await db.list(Switch, keys.SWITCHES)]


async def find_switch(db: ConfigDB, name: str, field: str | None = None) -> Entry[Switch]:
    entry = await db.get(Switch, keys.switch(name)) if "/" not in name else None
    if entry is None:
        if field:
            raise Invalid(field, f"no switch {name!r}")
        raise NotFound(f"no switch {name!r}")
    return entry


async def create_switch(db: ConfigDB, body: SwitchCreate) -> Switch:
    switch = Switch(**body.model_dump(), created_at=time.time())
    try:
        await db.create(keys.switch(switch.name), switch)
    except StoreConflict as exc:
        raise Conflict(f"switch {switch.name} already exists") from exc
    return switch


async def update_switch(db: ConfigDB, name: str, body: SwitchUpdate) -> Switch:
    changes = body.model_dump(include=body.model_fields_set, exclude_none=True)

    async def attempt() -> Switch:
        entry = await find_switch(db, name)
        switch = entry.value.model_copy(update=changes)
        if switch.mtu < entry.value.mtu:
            for network in await list_networks(db):
                if network.switch == name and network.mtu:
                    check_mtu(network.kind, network.mtu, switch, "body.mtu")
        await db.put(entry.key, switch, revision=entry.revision)
        return switch

    return await cas.retry(attempt, f"switch {name}")


async def delete_switch(db: ConfigDB, name: str) -> None:
    entry = await find_switch(db, name)
    used = sorted(n.name for n in await list_networks(db) if n.switch == name)
    if used:
        raise Conflict(f"switch {name} still has networks: {', '.join(used[:5])}")
    await db.delete(entry.key, revision=entry.revision)


async def node_status(db: ConfigDB) -> list[NodeNetworkStatus]:
    """Every node's last report; a report of a node that is down now says so (`node_up`
    false): what it last built may have changed since, unseen."""
    up = {e.value.name for e in await db.list(Node, keys.NODES)}
    return [
        e.value.model_copy(update={"node_up": e.value.node in up})
        for e in await db.list(NodeNetworkStatus, keys.NETWORK_STATUS)
    ]


# -- networks ----------------------------------------------------------------------------


async def list_networks(db: ConfigDB) -> list[Network]:
    return [e.value for e in await db.list(Network, keys.NETWORKS)]


async def find_network(db: ConfigDB, name: str, field: str | None = None) -> Entry[Network]:
    entry = await db.get(Network, keys.network(name)) if "/" not in name else None
    if entry is None:
        if field:
            raise Invalid(field, f"no network {name!r}")
        raise NotFound(f"no network {name!r}")
    return entry


def check_mtu(kind: str, mtu: int, switch: Switch, field: str) -> None:
    most = switch.mtu - VXLAN_OVERHEAD if kind == "vxlan" else switch.mtu
    if mtu > most:
        why = f"switch {switch.name} carries {switch.mtu}"
        if kind == "vxlan":
            why += f", less {VXLAN_OVERHEAD} for the VXLAN headers"
        raise Invalid(field, f"is more than {most} ({why})")


async def create_network(db: ConfigDB, body: NetworkCreate) -> Network:
    if body.name in BUILTIN_NETWORKS:
        raise Invalid("body.name", f"{body.name!r} is reserved for NICs without a network")
    switch = (await find_switch(db, body.switch, "body.switch")).value
    if body.mtu is not None:
        check_mtu(body.kind, body.mtu, switch, "body.mtu")
    if body.vlan is not None:
        for other in await list_networks(db):
            if other.switch == switch.name and other.vlan == body.vlan:
                raise Conflict(
                    f"VLAN {body.vlan} of switch {switch.name} is network {other.name} already",
                    [{"field": "body.vlan", "reason": f"is network {other.name}'s"}],
                )
    network = Network(**body.model_dump(), created_at=time.time())
    txn = Txn().require_absent(keys.network(network.name)).put(keys.network(network.name), network)
    if network.vni is not None:
        txn.require_absent(keys.vni(network.vni)).put(keys.vni(network.vni), network.name)
    try:
        await db.commit(txn)
    except StoreConflict as exc:
        if await db.get_raw(keys.network(network.name)) is not None:
            raise Conflict(f"network {network.name} already exists") from exc
        raise Conflict(
            f"VNI {network.vni} is another segment's",
            [{"field": "body.vni", "reason": "is another segment's"}],
        ) from exc
    return network


async def update_network(db: ConfigDB, name: str, body: NetworkUpdate) -> Network:
    changes = body.model_dump(include=body.model_fields_set, exclude_none=True)
    for field in ("subnet", "mtu"):
        if field in body.model_fields_set:
            # null: no subnet (and no DHCP); the MTU back to the switch's default
            changes[field] = getattr(body, field)

    async def attempt() -> Network:
        entry = await find_network(db, name)
        network = entry.value.model_copy(update=changes)
        switch = (await find_switch(db, network.switch)).value
        if network.mtu is not None:
            check_mtu(network.kind, network.mtu, switch, "body.mtu")
        if network.kind == "trunk" and network.subnet is not None:
            raise Invalid("body.subnet", "a trunk carries many networks: it has no subnet")
        given = await leases(db, name)
        if given and network.subnet != entry.value.subnet:
            for address in given:
                if network.subnet is None or not fits(network.subnet, address):
                    raise Conflict(
                        f"address {address} of network {name} is given out and would not fit",
                        [{"field": "body.subnet", "reason": f"leaves out {address}, in use"}],
                    )
        await db.put(entry.key, network, revision=entry.revision)
        return network

    return await cas.retry(attempt, f"network {name}")


async def delete_network(db: ConfigDB, name: str) -> None:
    entry = await find_network(db, name)
    users = sorted(
        e.value.spec.name
        for e in await db.list(VM, keys.VMS)
        if any(n.network == name for n in e.value.spec.nics)
    )
    if users:
        raise Conflict(f"network {name} still has NICs of VMs: {', '.join(users[:5])}")
    txn = Txn().require_revision(entry.key, entry.revision).delete(entry.key)
    if entry.value.vni is not None:
        txn.delete(keys.vni(entry.value.vni))
    await db.commit(txn)


# -- addresses and MACs ------------------------------------------------------------------


async def leases(db: ConfigDB, network: str) -> dict[str, Lease]:
    prefix = f"{keys.LEASES}{network}/"
    return {e.key.removeprefix(prefix): e.value for e in await db.list(Lease, prefix)}


async def address_nics(
    db: ConfigDB,
    vm_id: str,
    nics: list[NicSpec],
    vms: Iterable[VM],
    first: int = 0,
    field: str = "body.nics",
) -> tuple[list[NicSpec], Txn]:
    """Give `nics` (the VM's NICs `first`, `first + 1`...) their MACs and addresses: what is
    asked when it is free, the next free one otherwise. A NIC is known by its MAC: what it
    holds already stays its own. The index keys come back as a transaction to merge into the
    VM's own, so two NICs can never get one MAC or address."""
    mine = {n.mac for n in nics if n.mac}
    macs: set[str] = set()
    used: dict[str, set[str]] = {}
    for v in vms:
        for n in v.spec.nics:
            if v.id == vm_id and n.mac in mine:
                continue
            if n.mac:
                macs.add(n.mac)
            if n.address:
                used.setdefault(n.network, set()).add(n.address)
    networks: dict[str, Network] = {}
    txn = Txn()
    out = []
    for offset, nic in enumerate(nics):
        where = f"{field}.{first + offset}" if field.endswith("nics") else field
        mac = nic.mac or random_mac(macs)
        if mac in macs or not await _claim(db, txn, keys.mac(mac), vm_id, (vm_id, mac)):
            raise Conflict(
                f"MAC {mac} is another NIC's", [{"field": f"{where}.mac", "reason": "in use"}]
            )
        macs.add(mac)
        address = None
        if nic.network in BUILTIN_NETWORKS:
            if nic.address is not None:
                raise Invalid(f"{where}.address", f"a NIC on {nic.network!r} has no address")
        else:
            if nic.network not in networks:
                found = await find_network(db, nic.network, f"{where}.network")
                networks[nic.network] = found.value
            subnet = networks[nic.network].subnet
            given = await leases(db, nic.network) if subnet else {}
            taken = used.setdefault(nic.network, set()) | {
                ip for ip, lease in given.items() if (lease.vm, lease.mac) != (vm_id, mac)
            }
            if subnet is None:
                if nic.address is not None:
                    raise Invalid(f"{where}.address", f"network {nic.network} has no subnet")
            elif nic.address is not None:
                if not fits(subnet, nic.address):
                    raise Invalid(
                        f"{where}.address",
                        f"is not a host address of {subnet.cidr} free to give (the gateway "
                        "and the DHCP server's are not)",
                    )
                address = nic.address
            else:
                free = next((ip for ip in pool_of(subnet) if str(ip) not in taken), None)
                if free is None:
                    raise Conflict(f"network {nic.network} has no free address left")
                address = str(free)
            if address is not None:
                lease = Lease(vm=vm_id, nic=first + offset, mac=mac)
                if address in taken or not await _claim(
                    db, txn, keys.lease(nic.network, address), lease, (vm_id, mac)
                ):
                    raise Conflict(
                        f"address {address} of network {nic.network} is in use",
                        [{"field": f"{where}.address", "reason": "in use"}],
                    )
                used[nic.network].add(address)
        out.append(nic.model_copy(update={"mac": mac, "address": address}))
    return out, txn


async def _claim(
    db: ConfigDB, txn: Txn, key: str, value: Lease | str, owner: tuple[str, str]
) -> bool:
    """Add writing index `key` to `txn`: as a new key, or over the NIC's own (`owner`: its
    VM and MAC); False when it is another NIC's."""
    found = await db.get_raw(key)
    if found is None:
        txn.require_absent(key)
    else:
        raw = found[0].decode()
        if isinstance(value, str):
            if raw != owner[0]:
                return False
        else:
            held = Lease.model_validate_json(raw)
            if (held.vm, held.mac) != owner:
                return False
        txn.require_revision(key, found[1])
    txn.put(key, value)
    return True
