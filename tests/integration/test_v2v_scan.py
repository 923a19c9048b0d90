"""The directory source on a datastore of real disk files: qemu-img makes every VMDK variant it
can (monolithicSparse, monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat,
streamOptimized), snapshot deltas, VHDX fixed and dynamic, VHD fixed and dynamic; .vmx files are
written as VMware writes them, an OVF and an OVA as vSphere exports them, Hyper-V exports as
2012 (XML) and 2012 R2+ (.vmcx) leave them. The scan must find each VM with the right disks,
capacities, formats, chains, NICs and blockers, and never raise for a broken file.

Differencing disks: `qemu-img create` cannot make a differencing VHDX ("Backing file not
supported for file format 'vhdx'") nor VHD, so the test makes them as Hyper-V lays them out,
from qemu-img's own dynamic images: the VHDX gets its "has parent" flag and a parent locator
in its metadata region, the VHD its differencing type and parent name (checksums fixed). They
also show why the scan reads these headers itself: qemu-img refuses the VHDX and reads the
VHD as a whole disk, without its parent.
"""

import asyncio
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from datastores import make_differencing_vhd, make_differencing_vhdx

from heron.models.v2v import ScannedVm, ScanReport
from heron.v2v.scan import qemu_source, scan_directory

pytestmark = pytest.mark.integration

MiB, GiB = 1 << 20, 1 << 30


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def vmx(path: Path, disks: dict[str, str], extra: str = "", name: str | None = None) -> None:
    lines = [
        '.encoding = "UTF-8"',
        'config.version = "8"',
        'virtualHW.version = "19"',
        f'displayName = "{name or path.stem}"',
        'guestOS = "debian12-64"',
        'memsize = "1024"',
        'numvcpus = "2"',
        'scsi0.present = "TRUE"',
        'scsi0.virtualDev = "lsilogic"',
        'ethernet0.present = "TRUE"',
        'ethernet0.virtualDev = "vmxnet3"',
        'ethernet0.networkName = "VM Network"',
        'ethernet0.addressType = "generated"',
        'ethernet0.generatedAddress = "00:0c:29:00:00:01"',
    ]
    for device, file in disks.items():
        lines += [f'{device}.present = "TRUE"', f'{device}.fileName = "{file}"']
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + extra)


def vmdk_variants(store: Path) -> None:
    for subformat, size in (
        ("monolithicSparse", 64 * MiB),
        ("monolithicFlat", 32 * MiB),
        ("twoGbMaxExtentSparse", 3 * GiB),
        ("twoGbMaxExtentFlat", 3 * GiB),
        ("streamOptimized", 48 * MiB),
    ):
        folder = store / subformat
        folder.mkdir(parents=True)
        qemu_img(
            "create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", folder / "d.vmdk", size
        )
        vmx(folder / f"{subformat}.vmx", {"scsi0:0": "d.vmdk"})


def snapshot_vm(store: Path) -> None:
    folder = store / "snap"
    folder.mkdir()
    qemu_img("create", "-q", "-f", "vmdk", folder / "snap.vmdk", 128 * MiB)
    qemu_img(
        "create", "-q", "-f", "vmdk", "-b", "snap.vmdk", "-F", "vmdk", folder / "snap-000001.vmdk"
    )
    qemu_img(
        "create", "-q", "-f", "vmdk", "-b", "snap-000001.vmdk", "-F", "vmdk",
        folder / "snap-000002.vmdk",
    )  # fmt: skip
    extra = 'firmware = "efi"\nuefi.secureBoot.enabled = "TRUE"\n'
    extra += 'ethernet1.present = "TRUE"\nethernet1.virtualDev = "e1000e"\n'
    extra += 'ethernet1.addressType = "static"\nethernet1.address = "00:50:56:00:00:22"\n'
    extra += 'ethernet1.networkName = "Backup"\n'
    vmx(folder / "snap.vmx", {"scsi0:0": "snap-000002.vmdk"}, extra)


RDM = """# Disk DescriptorFile
version=1
CID=fffffffe
parentCID=ffffffff
createType="vmfsPassthroughRawDeviceMap"

# Extent description
RW 2097152 VMFSRDM "sql-rdmp.vmdk"

# The Disk Data Base
#DDB
ddb.adapterType = "lsilogic"
"""


def broken_vms(store: Path, outside: Path) -> None:
    folder = store / "sql"
    folder.mkdir()
    (folder / "sql_1.vmdk").write_text(RDM)
    qemu_img(
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        folder / "sql.vmdk",
        16 * MiB,
    )
    os.unlink(folder / "sql-flat.vmdk")  # the descriptor stays, its extent is gone
    vmx(
        folder / "sql.vmx",
        {"scsi0:0": "sql.vmdk", "scsi0:1": "sql_1.vmdk", "scsi0:2": "gone.vmdk"},
        'pciPassthru0.present = "TRUE"\npciPassthru0.vgpu = "grid_t4-1q"\n',
    )
    (store / "junk").mkdir()
    (store / "junk" / "junk.vmx").write_text('displayName = "junk"\nthis is not a vmx line\n')
    # Names that lead outside the directory: never read, never imported.
    secret = outside / "secret.vmdk"
    secret.write_text('# Disk DescriptorFile\ncreateType="vmfs"\nRW 8 VMFS "x"\nsecret line\n')
    sneaky = store / "sneaky"
    sneaky.mkdir()
    (sneaky / "link.vmdk").symlink_to(secret)
    vmx(sneaky / "sneaky.vmx", {"scsi0:0": str(secret), "scsi0:1": "link.vmdk"})


def ovf_files(store: Path) -> None:
    folder = store / "appliance"
    folder.mkdir()
    disk = folder / "appliance-disk1.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", disk, 96 * MiB)
    envelope = f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="appliance-disk1.vmdk" ovf:id="file1" ovf:size="{disk.stat().st_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="96" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1"
      ovf:fileRef="file1"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="appliance">
    <Info>A virtual machine</Info>
    <Name>appliance</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="otherLinux64Guest">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>2048</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>DMZ</rasd:Connection><rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""
    (folder / "appliance.ovf").write_text(envelope)
    ova = store / "appliance.ova"
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as archive:
        archive.add(folder / "appliance.ovf", "appliance.ovf")
        manifest = b"SHA256(appliance.ovf)= 00\n"
        info = tarfile.TarInfo("appliance.mf")
        info.size = len(manifest)
        archive.addfile(info, io.BytesIO(manifest))
        archive.add(disk, "appliance-disk1.vmdk")


def hyperv_exports(store: Path) -> None:
    # 2012 R2 and later: a binary .vmcx, whose format is not documented.
    modern = store / "web01"
    (modern / "Virtual Machines").mkdir(parents=True)
    (modern / "Virtual Machines" / "3A1B.vmcx").write_bytes(b"\x00binary\x01" * 64)
    (modern / "Virtual Hard Disks").mkdir()
    qemu_img("create", "-q", "-f", "vhdx", modern / "Virtual Hard Disks" / "web01.vhdx", 80 * MiB)
    # 2012: the XML configuration, a fixed VHDX on IDE and a fixed VHD on SCSI.
    legacy = store / "files"
    (legacy / "Virtual Machines").mkdir(parents=True)
    disks = legacy / "Virtual Hard Disks"
    disks.mkdir()
    qemu_img("create", "-q", "-f", "vhdx", "-o", "subformat=fixed", disks / "files.vhdx", 40 * MiB)
    qemu_img("create", "-q", "-f", "vpc", "-o", "subformat=fixed", disks / "data.vhd", 24 * MiB)
    ide, scsi = (
        "_83f8638b-8dca-4152-9eda-2ca8b33039b4_0_",
        "_d422512d-2bf2-4752-809d-7b82b5fcb1b4_0_",
    )
    config = f"""<?xml version="1.0" encoding="UTF-16" standalone="yes"?>
<configuration>
  <properties><name type="string">files</name><subtype type="integer">0</subtype></properties>
  <settings>
    <processors><count type="integer">4</count></processors>
    <memory><bank><size type="integer">3072</size></bank></memory>
  </settings>
  <{ide}><controller0><drive0>
    <pathname type="string">C:\\Hyper-V\\files\\Virtual Hard Disks\\files.vhdx</pathname>
    <type type="string">VHD</type>
  </drive0></controller0></{ide}>
  <{scsi}><controller0><drive1>
    <pathname type="string">C:\\Hyper-V\\files\\Virtual Hard Disks\\data.vhd</pathname>
    <type type="string">VHD</type>
  </drive1></controller0></{scsi}>
  <_8922da15-e4d1-4b1c-a10f-ef0ffc4cd3c8_>
    <address type="string">00155D0A0B0C</address>
    <is_static_address type="bool">True</is_static_address>
    <connection><AltSwitchName type="string">LAN</AltSwitchName></connection>
  </_8922da15-e4d1-4b1c-a10f-ef0ffc4cd3c8_>
</configuration>
"""
    (legacy / "Virtual Machines" / "9C2D.xml").write_bytes(config.encode("utf-16"))


def loose_disks(store: Path) -> None:
    folder = store / "loose"
    folder.mkdir()
    qemu_img("create", "-q", "-f", "vpc", "-o", "subformat=dynamic", folder / "dyn.vhd", 20 * MiB)
    qemu_img("create", "-q", "-f", "vpc", folder / "base.vhd", 20 * MiB)
    qemu_img("create", "-q", "-f", "vpc", folder / "child.vhd", 20 * MiB)
    make_differencing_vhd(folder / "child.vhd", "base.vhd")
    qemu_img("create", "-q", "-f", "vhdx", folder / "base.vhdx", 30 * MiB)
    qemu_img("create", "-q", "-f", "vhdx", folder / "child.avhdx", 30 * MiB)
    make_differencing_vhdx(folder / "child.avhdx", "base.vhdx")


@pytest.fixture(scope="module")
def datastore(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    top = tmp_path_factory.mktemp("v2v")
    store, outside = top / "datastore", top / "outside"
    store.mkdir()
    outside.mkdir()
    vmdk_variants(store)
    snapshot_vm(store)
    broken_vms(store, outside)
    ovf_files(store)
    hyperv_exports(store)
    loose_disks(store)
    (store / "loop").symlink_to(store)  # a symbolic link back up must not loop the walk
    return store


@pytest.fixture(scope="module")
def report(datastore: Path) -> ScanReport:
    return asyncio.run(scan_directory(datastore, timeout=30))


def vm(report: ScanReport, path_end: str, name: str | None = None) -> ScannedVm:
    found = [v for v in report.vms if v.path.endswith(path_end) and name in (None, v.name)]
    assert len(found) == 1, [v.path for v in report.vms]
    return found[0]


@pytest.mark.parametrize(
    ("subformat", "capacity", "extents"),
    [
        ("monolithicSparse", 64 * MiB, []),
        ("monolithicFlat", 32 * MiB, ["d-flat.vmdk"]),
        ("twoGbMaxExtentSparse", 3 * GiB, ["d-s001.vmdk", "d-s002.vmdk"]),
        ("twoGbMaxExtentFlat", 3 * GiB, ["d-f001.vmdk", "d-f002.vmdk"]),
        ("streamOptimized", 48 * MiB, []),
    ],
)
def test_every_vmdk_variant(
    report: ScanReport, datastore: Path, subformat: str, capacity: int, extents: list[str]
) -> None:
    found = vm(report, f"/{subformat}/{subformat}.vmx")
    assert (found.kind, found.name, found.vcpus, found.memory_mib) == ("vmware", subformat, 2, 1024)
    (disk,) = found.disks
    assert disk.file == str(datastore / subformat / "d.vmdk")
    assert (disk.format, disk.subformat, disk.capacity, disk.chain) == (
        "vmdk",
        subformat,
        capacity,
        [],
    )
    assert disk.extents == [str(datastore / subformat / e) for e in extents]
    assert (disk.bus, disk.controller_model, disk.unit) == ("scsi", "lsilogic", 0)
    (nic,) = found.nics
    assert (nic.mac, nic.mac_kind, nic.network, nic.model) == (
        "00:0c:29:00:00:01", "generated", "VM Network", "vmxnet3",
    )  # fmt: skip
    assert found.blockers == []
    assert "capacity-mismatch" not in {w.code for w in found.warnings}


def test_snapshot_chain_imports_the_top(report: ScanReport, datastore: Path) -> None:
    found = vm(report, "/snap/snap.vmx")
    (disk,) = found.disks
    folder = datastore / "snap"
    assert disk.file == str(folder / "snap-000002.vmdk")
    assert disk.chain == [str(folder / "snap-000001.vmdk"), str(folder / "snap.vmdk")]
    assert disk.capacity == 128 * MiB
    assert (found.firmware, found.secure_boot) == ("uefi", True)
    assert [(n.device, n.mac, n.mac_kind, n.network) for n in found.nics] == [
        ("ethernet0", "00:0c:29:00:00:01", "generated", "VM Network"),
        ("ethernet1", "00:50:56:00:00:22", "static", "Backup"),
    ]
    codes = {w.code for w in found.warnings}
    assert "snapshot-chain" in codes and "chain-mismatch" not in codes
    assert found.blockers == []


def test_blockers_and_failures(report: ScanReport, datastore: Path) -> None:
    found = vm(report, "/sql/sql.vmx")
    assert {(b.code, b.device) for b in found.blockers} == {
        ("missing-disk", "scsi0:0"),  # its flat extent is gone
        ("rdm", "scsi0:1"),
        ("missing-disk", "scsi0:2"),
        ("vgpu", "pciPassthru0"),
    }
    (failure,) = report.failures
    assert failure.path == str(datastore / "junk" / "junk.vmx")
    assert failure.reason.startswith(f"{datastore}/junk/junk.vmx:2:")


def test_files_outside_the_directory_are_never_read(report: ScanReport) -> None:
    found = vm(report, "/sneaky/sneaky.vmx")
    assert [b.code for b in found.blockers] == ["unreadable-descriptor"] * 2
    for blocker in found.blockers:
        assert "outside the scanned directory" in blocker.message
        assert "secret line" not in blocker.message


def test_ovf_and_ova(report: ScanReport, datastore: Path) -> None:
    envelope = vm(report, "/appliance/appliance.ovf")
    archive = vm(report, "/appliance.ova")
    for found in (envelope, archive):
        assert (found.kind, found.name, found.vcpus, found.memory_mib) == (
            "ovf",
            "appliance",
            2,
            2048,
        )
        (disk,) = found.disks
        assert (disk.format, disk.subformat, disk.capacity) == ("vmdk", "streamOptimized", 96 * MiB)
        assert [(n.network, n.model) for n in found.nics] == [("DMZ", "E1000")]
        assert found.blockers == []
    assert envelope.disks[0].file == str(datastore / "appliance" / "appliance-disk1.vmdk")
    member = archive.disks[0]
    assert (member.file, member.member) == (
        str(datastore / "appliance.ova"),
        "appliance-disk1.vmdk",
    )
    # qemu-img reads the member in place: the same image as the file beside the envelope.
    out = subprocess.run(
        ["qemu-img", "compare", "-f", "vmdk", envelope.disks[0].file, qemu_source(member)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_hyperv_exports(report: ScanReport, datastore: Path) -> None:
    modern = vm(report, "/web01/Virtual Machines/3A1B.vmcx")
    assert (modern.kind, modern.name, modern.vcpus, modern.memory_mib) == (
        "hyperv",
        "web01",
        None,
        None,
    )
    assert any(
        w.message.startswith("hardware not read: give it at import") for w in modern.warnings
    )
    (disk,) = modern.disks
    assert (disk.format, disk.subformat, disk.capacity) == ("vhdx", "dynamic", 80 * MiB)
    assert modern.blockers == []

    legacy = vm(report, "/files/Virtual Machines/9C2D.xml")
    assert (legacy.name, legacy.vcpus, legacy.memory_mib, legacy.firmware) == (
        "files",
        4,
        3072,
        "bios",
    )
    folder = datastore / "files" / "Virtual Hard Disks"
    assert [(d.device, d.file, d.format, d.subformat) for d in legacy.disks] == [
        ("ide0:0", str(folder / "files.vhdx"), "vhdx", "fixed"),
        ("scsi0:1", str(folder / "data.vhd"), "vpc", "fixed"),
    ]
    assert legacy.disks[0].capacity == 40 * MiB
    # A fixed VHD read with its format: the footer's size, not the file's (512 bytes more).
    data = legacy.disks[1]
    assert data.capacity is not None and data.capacity == os.path.getsize(data.file) - 512
    assert data.capacity >= 24 * MiB
    assert [(n.mac, n.mac_kind, n.network) for n in legacy.nics] == [
        ("00:15:5d:0a:0b:0c", "static", "LAN")
    ]
    assert legacy.blockers == []


def test_loose_and_differencing_disks(report: ScanReport, datastore: Path) -> None:
    folder = datastore / "loose"
    dynamic = vm(report, "/loose/dyn.vhd")
    assert [(d.format, d.subformat) for d in dynamic.disks] == [("vpc", "dynamic")]
    assert dynamic.blockers == []
    # The parents are listed in their children's chains, not as VMs of their own.
    assert not [v for v in report.vms if v.path.endswith(("/loose/base.vhd", "/loose/base.vhdx"))]
    for child, parent, fmt in (
        ("child.vhd", "base.vhd", "vpc"),
        ("child.avhdx", "base.vhdx", "vhdx"),
    ):
        found = vm(report, f"/loose/{child}")
        (disk,) = found.disks
        assert (disk.format, disk.subformat, disk.chain) == (
            fmt,
            "differencing",
            [str(folder / parent)],
        )
        # Heron merges the chain at import (test_v2v_import), the current state: a warning
        assert found.blockers == [] and "snapshot-chain" in {w.code for w in found.warnings}
    # Why Heron merges: qemu-img refuses the differencing VHDX, and reads the VHD as a whole
    # disk (no backing file: the parent's data would be missing from its copy).
    vhdx = subprocess.run(
        ["qemu-img", "info", "-f", "vhdx", folder / "child.avhdx"], capture_output=True
    )
    assert vhdx.returncode != 0
    vhd = subprocess.run(
        ["qemu-img", "info", "--output=json", "-f", "vpc", folder / "child.vhd"],
        capture_output=True,
        check=True,
    )
    assert "backing-filename" not in json.loads(vhd.stdout)


def test_the_walk_is_bounded_and_loops_are_noted(report: ScanReport, datastore: Path) -> None:
    assert any("loop" in note for note in report.notes)
    # Each VM once, although the link makes every folder reachable twice.
    paths = [(v.path, v.name) for v in report.vms]
    assert len(paths) == len(set(paths))
    shallow = asyncio.run(scan_directory(datastore, max_depth=0))
    assert [v.path for v in shallow.vms] == [str(datastore / "appliance.ova")]
    assert any("not entered below depth 0" in note for note in shallow.notes)


def test_a_missing_directory_is_a_failure_not_an_exception(tmp_path: Path) -> None:
    empty = asyncio.run(scan_directory(tmp_path / "nothing"))
    assert empty.vms == [] and [f.reason for f in empty.failures] == ["not a directory"]
