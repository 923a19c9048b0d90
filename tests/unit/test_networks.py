"""Switches, networks and their addresses (services.networks and network.ipam on the
in-memory ConfigDB): what is refused, and that no two NICs ever get one MAC or address."""

import pytest
from fakes.configdb import FakeConfigDB
from test_network_plan import node

from heron.configdb import keys
from heron.configdb.store import Conflict as StoreConflict
from heron.models.network import (
    NetworkCreate,
    NetworkUpdate,
    NodeNetworkStatus,
    Subnet,
    SwitchCreate,
    SwitchState,
    SwitchUpdate,
    vlan_ranges,
)
from heron.models.vm import VM, NicSpec, VMSpec
from heron.network.ipam import dhcp_server, fits, release_nics
from heron.services import networks
from heron.services.errors import Conflict, Invalid


async def made(db: FakeConfigDB, **subnet: object) -> None:
    await networks.create_switch(db, SwitchCreate(name="sw", mtu=1500))
    await networks.create_network(
        db,
        NetworkCreate(
            name="lan",
            switch="sw",
            kind="vlan",
            vlan=100,
            subnet=Subnet.model_validate({"cidr": "10.1.0.0/29", "gateway": "10.1.0.1", **subnet}),
        ),
    )


async def vm_with(db: FakeConfigDB, vm_id: str, nics: list[NicSpec], vms: list[VM]) -> VM:
    given, txn = await networks.address_nics(db, vm_id, nics, vms)
    vm = VM(id=vm_id, spec=VMSpec(name=vm_id, nics=given), node="n1", created_at=0)
    await db.commit(txn.put(keys.vm(vm_id), vm))
    vms.append(vm)
    return vm


def test_vlan_ranges_merge_and_sort() -> None:
    assert vlan_ranges(["300", "100-199", "200", "150-160"]) == [(100, 200), (300, 300)]


def test_subnet_keeps_gateway_and_dhcp_server_out() -> None:
    subnet = Subnet(cidr="10.1.0.0/24", gateway="10.1.0.254")
    assert str(dhcp_server(subnet)) == "10.1.0.253"  # the highest host that is not the gateway
    assert not fits(subnet, "10.1.0.254") and not fits(subnet, "10.1.0.253")
    assert not fits(subnet, "10.1.0.0") and not fits(subnet, "10.1.1.5")
    assert fits(subnet, "10.1.0.7")
    with pytest.raises(ValueError, match="not a host address"):
        Subnet(cidr="10.1.0.0/24", gateway="10.2.0.1")


async def test_addresses_are_given_lowest_first_and_never_twice() -> None:
    db = FakeConfigDB()
    await made(db)
    vms: list[VM] = []
    first = await vm_with(db, "a", [NicSpec(network="lan"), NicSpec(network="lan")], vms)
    assert [n.address for n in first.spec.nics] == ["10.1.0.2", "10.1.0.3"]
    second = await vm_with(db, "b", [NicSpec(network="lan", address="10.1.0.5")], vms)
    assert second.spec.nics[0].address == "10.1.0.5"
    macs = {n.mac for v in vms for n in v.spec.nics}
    assert len(macs) == 3 and all(m and m.startswith("52:54:00:") for m in macs)
    # .4 is next (.5 is taken, .6 is the DHCP server's, .1 the gateway's): then the /29 is full
    third = await vm_with(db, "c", [NicSpec(network="lan")], vms)
    assert third.spec.nics[0].address == "10.1.0.4"
    with pytest.raises(Conflict, match="no free address"):
        await networks.address_nics(db, "d", [NicSpec(network="lan")], vms)
    with pytest.raises(Conflict, match="in use"):
        await networks.address_nics(db, "d", [NicSpec(network="lan", address="10.1.0.5")], vms)
    with pytest.raises(Conflict, match="MAC"):
        mac = first.spec.nics[0].mac
        await networks.address_nics(db, "d", [NicSpec(network="user", mac=mac)], vms)
    with pytest.raises(Invalid, match=r"body\.nics\.0\.address"):
        await networks.address_nics(db, "d", [NicSpec(network="lan", address="10.1.0.6")], vms)
    with pytest.raises(Invalid, match=r"body\.nics\.0\.network"):
        await networks.address_nics(db, "d", [NicSpec(network="nowhere")], vms)
    # The index keys go with the VM: once released, the address is free again.
    await db.commit(release_nics(networks.Txn(), third.spec.nics))
    vms.remove(third)
    again, _ = await networks.address_nics(db, "d", [NicSpec(network="lan")], vms)
    assert again[0].address == "10.1.0.4"


async def test_an_index_key_written_meanwhile_fails_the_transaction() -> None:
    db = FakeConfigDB()
    await made(db)
    _, one = await networks.address_nics(db, "a", [NicSpec(network="lan")], [])
    _, two = await networks.address_nics(db, "b", [NicSpec(network="lan")], [])
    await db.commit(one)
    with pytest.raises(StoreConflict):
        await db.commit(two)  # both picked 10.1.0.2: the second is refused by etcd


async def test_networks_refuse_what_cannot_be_built() -> None:
    db = FakeConfigDB()
    await made(db)
    with pytest.raises(Conflict, match="VLAN 100 of switch sw is network lan"):
        await networks.create_network(
            db, NetworkCreate(name="lan2", switch="sw", kind="vlan", vlan=100)
        )
    with pytest.raises(Invalid, match="more than 1450"):
        await networks.create_network(
            db, NetworkCreate(name="ov", switch="sw", kind="vxlan", vni=7, mtu=1500)
        )
    with pytest.raises(Invalid, match=r"body\.switch"):
        await networks.create_network(db, NetworkCreate(name="x", switch="none-such"))
    with pytest.raises(Invalid, match="reserved"):
        await networks.create_network(db, NetworkCreate(name="user", switch="sw"))
    await networks.create_network(db, NetworkCreate(name="ov", switch="sw", kind="vxlan", vni=7))
    with pytest.raises(Conflict, match="VNI 7"):
        await networks.create_network(
            db, NetworkCreate(name="ov2", switch="sw", kind="vxlan", vni=7)
        )
    with pytest.raises(ValueError, match="needs vni"):
        NetworkCreate(name="ov3", switch="sw", kind="vxlan")
    with pytest.raises(ValueError, match="no subnet"):
        NetworkCreate.model_validate(
            {
                "name": "t",
                "switch": "sw",
                "kind": "trunk",
                "trunk": ["5"],
                "subnet": {"cidr": "10.0.0.0/24"},
            }
        )
    with pytest.raises(Conflict, match="still has networks"):
        await networks.delete_switch(db, "sw")


async def test_in_use_networks_keep_their_addresses() -> None:
    db = FakeConfigDB()
    await made(db)
    vms: list[VM] = []
    await vm_with(db, "a", [NicSpec(network="lan")], vms)  # 10.1.0.2
    with pytest.raises(Conflict, match=r"10\.1\.0\.2"):
        await networks.update_network(db, "lan", NetworkUpdate(subnet=Subnet(cidr="10.9.0.0/24")))
    with pytest.raises(Conflict, match="NICs of VMs: a"):
        await networks.delete_network(db, "lan")
    wider = await networks.update_network(
        db, "lan", NetworkUpdate(subnet=Subnet(cidr="10.1.0.0/24", dns=["10.1.0.53"]))
    )
    assert wider.subnet and wider.subnet.dns == ["10.1.0.53"]
    with pytest.raises(Invalid, match=r"body\.mtu"):
        await networks.update_network(db, "lan", NetworkUpdate(mtu=9000))
    await networks.update_network(db, "lan", NetworkUpdate(mtu=1400))
    with pytest.raises(Invalid, match=r"more than 1300"):
        await networks.update_switch(db, "sw", SwitchUpdate(mtu=1300))
    # An explicit null takes the network back to the switch's MTU; leaving it out keeps it.
    kept = await networks.update_network(db, "lan", NetworkUpdate(description="x"))
    assert kept.mtu == 1400
    back = await networks.update_network(db, "lan", NetworkUpdate.model_validate({"mtu": None}))
    assert back.mtu is None


async def test_the_report_of_a_node_that_is_down_is_marked_so() -> None:
    db = FakeConfigDB()
    for name in ("n1", "n2"):
        status = NodeNetworkStatus(
            node=name, switches={"sw": SwitchState(in_sync=True)}, updated_at=0
        )
        await db.put(keys.network_status(name), status)
    await db.put(keys.node("n1"), node("n1", None))  # n2's lease has run out: no record
    up = {s.node: s.node_up for s in await networks.node_status(db)}
    assert up == {"n1": True, "n2": False}
