"""The vsphere source's pure part: VMs as the vSphere API describes them (reduced to plain
data as heron.agent.vsphere does) made into scanned VMs; datastore paths and URLs; the
source's fields (password write-only, fingerprint pinned)."""

import copy

import pytest
from pydantic import ValidationError

from heron.models.imports import ImportSource, ImportSourceCreate, ImportSourceView
from heron.v2v.common import ParseError
from heron.v2v.vsphere import (
    DeviceFacts,
    VmFacts,
    folder_url,
    parse_datastore_path,
    scanned_vm,
    sibling,
)

PIN = "ab" * 32

# A Debian VM of an ESXi 8 host as its API describes it: UEFI, PVSCSI with two disks (the
# second a snapshot delta over its base), a SATA CD-ROM, a vmxnet3 NIC on a standard port
# group with a generated MAC and an e1000e on a distributed one with a static MAC.
DEBIAN: VmFacts = {
    "name": "web 01",
    "path": "/dc1/vm/prod/web 01",
    "datacenter": "dc1",
    "vmx": "[datastore1] web 01/web 01.vmx",
    "template": False,
    "power": "poweredOff",
    "vcpus": 4,
    "cores_per_socket": 2,
    "memory_mib": 4096,
    "firmware": "efi",
    "secure_boot": True,
    "guest_id": "debian12_64Guest",
    "encrypted": False,
    "cbt": True,
    "devices": [
        {"type": "ParaVirtualSCSIController", "key": 1000, "bus_number": 0,
         "shared_bus": "noSharing"},
        {"type": "VirtualAHCIController", "key": 15000, "bus_number": 0,
         "shared_bus": "noSharing"},
        {"type": "VirtualDisk", "key": 2000, "controller_key": 1000, "unit": 0,
         "capacity": 16 << 30, "backing": "FlatVer2BackingInfo",
         "file": "[datastore1] web 01/web 01.vmdk", "parents": [],
         "disk_mode": "persistent", "sharing": "sharingNone", "encrypted": False},
        {"type": "VirtualDisk", "key": 2001, "controller_key": 1000, "unit": 1,
         "capacity": 100 << 30, "backing": "FlatVer2BackingInfo",
         "file": "[datastore1] web 01/web 01_1-000001.vmdk",
         "parents": ["[datastore1] web 01/web 01_1.vmdk"],
         "disk_mode": "independent_persistent", "sharing": "sharingNone", "encrypted": False},
        {"type": "VirtualCdrom", "key": 16000, "controller_key": 15000, "unit": 0},
        {"type": "VirtualVmxnet3", "key": 4000, "label": "Network adapter 1",
         "mac": "00:50:56:AB:CD:EF", "address_type": "assigned", "network": "VM Network",
         "connected": True},
        {"type": "VirtualE1000e", "key": 4001, "label": "Network adapter 2",
         "mac": "00:50:56:00:00:01", "address_type": "manual", "network": "dvpg-backend",
         "connected": False},
    ],
}  # fmt: skip


def with_device(facts: VmFacts, device: DeviceFacts) -> VmFacts:
    changed = copy.deepcopy(facts)
    changed["devices"].append(device)
    return changed


def codes(facts: VmFacts) -> tuple[set[str], set[str]]:
    vm = scanned_vm(facts)
    return {b.code for b in vm.blockers}, {w.code for w in vm.warnings}


def test_a_plain_vm_maps_to_the_scan_fields() -> None:
    vm = scanned_vm(DEBIAN)
    assert (vm.kind, vm.path, vm.name) == ("vmware", "/dc1/vm/prod/web 01", "web 01")
    assert (vm.vcpus, vm.cores_per_socket, vm.memory_mib) == (4, 2, 4096)
    assert (vm.firmware, vm.secure_boot) == ("uefi", True)
    assert (vm.guest_os.id, vm.guest_os.family) == ("debian12_64Guest", "linux")
    assert vm.importable
    first, second = vm.disks
    assert (first.device, first.file, first.format) == (
        "scsi0:0", "[datastore1] web 01/web 01.vmdk", "vmdk")  # fmt: skip
    assert (first.bus, first.controller_model, first.capacity) == ("scsi", "pvscsi", 16 << 30)
    assert second.chain == ["[datastore1] web 01/web 01_1.vmdk"]
    assert [(n.device, n.mac, n.mac_kind, n.network, n.model, n.connected) for n in vm.nics] == [
        ("ethernet0", "00:50:56:ab:cd:ef", "generated", "VM Network", "vmxnet3", True),
        ("ethernet1", "00:50:56:00:00:01", "static", "dvpg-backend", "e1000e", False),
    ]
    warnings = {(w.code, w.device) for w in vm.warnings}
    assert ("snapshot-chain", "scsi0:1") in warnings
    assert ("independent-disk", "scsi0:1") in warnings
    assert ("controller-model", "scsi0") in warnings
    assert ("nic-model", "ethernet0") in warnings
    assert ("uefi-variables", None) in warnings


@pytest.mark.parametrize(
    ("device", "code"),
    [
        ({"type": "VirtualDisk", "key": 2002, "controller_key": 1000, "unit": 2,
          "capacity": 1 << 30, "backing": "RawDiskMappingVer1BackingInfo",
          "file": "[datastore1] web 01/lun.vmdk"}, "rdm"),
        ({"type": "VirtualDisk", "key": 2002, "controller_key": 1000, "unit": 2,
          "capacity": 1 << 30, "backing": "FlatVer2BackingInfo",
          "file": "[datastore1] web 01/x.vmdk", "encrypted": True}, "encrypted-disk"),
        ({"type": "VirtualDisk", "key": 2002, "controller_key": 1000, "unit": 2,
          "capacity": 1 << 30, "backing": "FlatVer2BackingInfo",
          "file": "[datastore1] web 01/x.vmdk", "sharing": "sharingMultiWriter"},
         "multi-writer"),
        ({"type": "VirtualDisk", "key": 2002, "controller_key": 1000, "unit": 2,
          "capacity": None, "backing": "FlatVer2BackingInfo",
          "file": "[datastore1] web 01/x.vmdk"}, "unknown-capacity"),
        ({"type": "VirtualDisk", "key": 2002, "controller_key": 1000, "unit": 2,
          "capacity": 1 << 30, "backing": "FlatVer2BackingInfo",
          "file": "[datastore1] ../../etc/shadow"}, "unreadable-descriptor"),
        ({"type": "VirtualDisk", "key": 2002, "controller_key": 1000, "unit": 2,
          "capacity": 1 << 30, "backing": "FlatVer2BackingInfo", "file": None},
         "missing-disk"),
        ({"type": "VirtualPCIPassthrough", "key": 13000, "label": "PCI device 0",
          "vgpu": "grid_t4-4q"}, "vgpu"),
        ({"type": "VirtualPCIPassthrough", "key": 13000, "label": "PCI device 0",
          "vgpu": None}, "pci-passthrough"),
        ({"type": "VirtualSriovEthernetCard", "key": 4009, "mac": "00:50:56:00:00:09"},
         "sriov"),
        ({"type": "VirtualNVDIMM", "key": 27000}, "nvdimm"),
    ],
)  # fmt: skip
def test_what_does_not_carry_over_blocks_with_its_reason(device: DeviceFacts, code: str) -> None:
    blockers, _ = codes(with_device(DEBIAN, device))
    assert code in blockers


def test_an_encrypted_vm_a_template_and_a_suspended_vm_are_blocked() -> None:
    for change, code in (
        ({"encrypted": True}, "encrypted-vm"),
        ({"template": True}, "template"),
        ({"power": "suspended"}, "suspended"),
    ):
        facts = copy.deepcopy(DEBIAN)
        facts.update(change)  # type: ignore[typeddict-item]
        assert code in codes(facts)[0]


def test_a_running_vm_is_importable_with_a_warning() -> None:
    facts = copy.deepcopy(DEBIAN)
    facts["power"] = "poweredOn"
    blockers, warnings = codes(facts)
    assert not blockers
    assert "powered-on" in warnings


def test_a_shared_scsi_bus_blocks_its_disks() -> None:
    facts = copy.deepcopy(DEBIAN)
    facts["devices"][0]["shared_bus"] = "physicalSharing"
    assert "shared-bus" in codes(facts)[0]


def test_buses_follow_their_controllers() -> None:
    facts = copy.deepcopy(DEBIAN)
    facts["devices"] = [
        {"type": "VirtualIDEController", "key": 200, "bus_number": 1},
        {"type": "VirtualNVMEController", "key": 31000, "bus_number": 0},
        {"type": "VirtualDisk", "key": 3000, "controller_key": 200, "unit": 1,
         "capacity": 1 << 20, "backing": "FlatVer2BackingInfo", "file": "[ds] a/a.vmdk"},
        {"type": "VirtualDisk", "key": 3001, "controller_key": 31000, "unit": 3,
         "capacity": 1 << 20, "backing": "SeSparseBackingInfo", "file": "[ds] a/b.vmdk"},
    ]  # fmt: skip
    vm = scanned_vm(facts)
    assert [(d.device, d.bus, d.controller_model) for d in vm.disks] == [
        ("ide1:1", "ide", "ide"),
        ("nvme0:3", "nvme", "nvme"),
    ]
    assert vm.importable


def test_datastore_paths() -> None:
    assert parse_datastore_path("[datastore1] web 01/web 01.vmdk") == (
        "datastore1", "web 01/web 01.vmdk")  # fmt: skip
    for bad in ("web/web.vmdk", "[ds]", "[ds] ../x.vmdk", "[ds] a/../../x"):
        with pytest.raises(ParseError):
            parse_datastore_path(bad)
    assert sibling("[ds] web/web.vmdk", "web-flat.vmdk") == "[ds] web/web-flat.vmdk"
    assert sibling("[ds] top.vmdk", "top-flat.vmdk") == "[ds] top-flat.vmdk"
    for bad in ("../x-flat.vmdk", "/vmfs/volumes/other/x.vmdk", "sub/x.vmdk", ".."):
        with pytest.raises(ParseError):
            sibling("[ds] web/web.vmdk", bad)


def test_folder_urls_quote_the_path_and_name_datacenter_and_datastore() -> None:
    assert folder_url("https://esx:8443", "[data store] web 01/a&b.vmdk", "dc 1") == (
        "https://esx:8443/folder/web%2001/a%26b.vmdk?dcPath=dc+1&dsName=data+store"
    )


def vsphere(**change: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "name": "esx1",
        "type": "vsphere",
        "host": "esx1.example.org",
        "user": "root",
        "password": "secret",
    }
    fields.update(change)
    return fields


def test_a_vsphere_source_needs_host_user_and_password_and_no_path() -> None:
    assert ImportSourceCreate.model_validate(vsphere()).port == 443
    for missing in ("host", "user", "password"):
        fields = vsphere()
        del fields[missing]
        with pytest.raises(ValidationError, match=missing):
            ImportSourceCreate.model_validate(fields)
    for extra in ({"path": "/x"}, {"server": "nfs1"}, {"node": "n1"}):
        with pytest.raises(ValidationError, match=next(iter(extra))):
            ImportSourceCreate.model_validate(vsphere(**extra))
    with pytest.raises(ValidationError, match="password"):
        ImportSourceCreate.model_validate(
            {"name": "d", "type": "directory", "path": "/x", "node": "n1", "password": "p"}
        )


def test_fingerprints_are_kept_as_bare_lower_case_digits() -> None:
    colons = ":".join(["AB"] * 32)
    assert ImportSourceCreate.model_validate(vsphere(fingerprint=colons)).fingerprint == PIN
    with pytest.raises(ValidationError, match="fingerprint"):
        ImportSourceCreate.model_validate(vsphere(fingerprint="ab" * 20))


def test_the_password_is_never_shown() -> None:
    stored = ImportSource.model_validate(
        vsphere(fingerprint=PIN, created_at=1.0, created_by="admin")
    )
    shown = ImportSourceView.of(stored).model_dump(mode="json")
    assert shown["password"] == "set"
    assert "secret" not in str(shown)
