"""The .vmx parser on the shapes ESXi, vCenter and Workstation write: what each VM is, its
disks and NICs, what blocks its import and what carries over with a change."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heron.v2v import vmdk, vmx
from heron.v2v.common import ParseError
from heron.v2v.vmx import Resolved, decode_value, encode_value, parse_pairs, parse_vmx

# An ESXi 8 Linux VM as the host client writes it: UEFI with secure boot, pvscsi, vmxnet3.
ESXI_LINUX = """\
.encoding = "UTF-8"
config.version = "8"
virtualHW.version = "20"
vmci0.present = "TRUE"
floppy0.present = "FALSE"
numvcpus = "4"
cpuid.coresPerSocket = "2"
memSize = "4096"
firmware = "efi"
uefi.secureBoot.enabled = "TRUE"
tools.upgrade.policy = "manual"
sched.cpu.units = "mhz"
vm.createDate = "1700000000000000"
scsi0.virtualDev = "pvscsi"
scsi0.present = "TRUE"
scsi0:0.deviceType = "scsi-hardDisk"
scsi0:0.fileName = "web01.vmdk"
sched.scsi0:0.shares = "normal"
scsi0:0.present = "TRUE"
scsi0:1.deviceType = "scsi-hardDisk"
scsi0:1.fileName = "web01_1.vmdk"
scsi0:1.present = "TRUE"
sata0.present = "TRUE"
sata0:0.startConnected = "FALSE"
sata0:0.deviceType = "cdrom-image"
sata0:0.fileName = "/vmfs/volumes/5f1e-aa/iso/debian-12.iso"
sata0:0.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.networkName = "VM Network"
ethernet0.addressType = "generated"
ethernet0.wakeOnPcktRcv = "FALSE"
ethernet0.uptCompatibility = "TRUE"
ethernet0.present = "TRUE"
displayName = "web01"
guestOS = "debian12-64"
toolScripts.afterPowerOn = "TRUE"
ethernet0.generatedAddress = "00:0c:29:5a:1b:2c"
ethernet0.generatedAddressOffset = "0"
uuid.bios = "56 4d 1a 2b 3c 4d 5e 6f-70 81 92 a3 b4 c5 d6 e7"
"""

# A Workstation 17 Windows VM: NVMe disk, SATA CD-ROM, e1000e with a static MAC, BIOS.
WORKSTATION_WINDOWS = """\
.encoding = "windows-1252"
displayName = "Windows Server 2022"
guestOS = "windows2019srvNext-64"
memsize = "8192"
numvcpus = "2"
nvme0.present = "TRUE"
nvme0:0.fileName = "Windows Server 2022.vmdk"
nvme0:0.present = "TRUE"
sata0.present = "TRUE"
sata0:1.deviceType = "cdrom-image"
sata0:1.fileName = "C:\\ISO\\SERVER_EVAL_x64FRE_en-us.iso"
sata0:1.present = "TRUE"
ethernet0.connectionType = "nat"
ethernet0.addressType = "static"
ethernet0.address = "00:50:56:3F:00:10"
ethernet0.virtualDev = "e1000e"
ethernet0.present = "TRUE"
usb.present = "TRUE"
sound.present = "TRUE"
"""

# An ESXi 5.5 VM made by vCenter: lsilogic, IDE CD-ROM, vpx MAC, keys in other cases, some
# values unquoted as old tools wrote them, a distributed port group.
VCENTER_OLD = """\
config.version = 8
virtualHW.version = "10"
memsize = 1024
displayName = "legacy-app"
guestOS = "rhel6-64"
SCSI0.present = "TRUE"
SCSI0.virtualDev = "lsilogic"
SCSI0:0.present = "TRUE"
SCSI0:0.FileName = "/vmfs/volumes/datastore1/legacy-app/legacy-app.vmdk"
ide1:0.present = "TRUE"
ide1:0.clientDevice = "TRUE"
ide1:0.deviceType = "atapi-cdrom"
ide1:0.fileName = "/dev/cdrom"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "e1000"
ethernet0.addressType = "vpx"
ethernet0.generatedAddress = "00:50:56:a1:22:33"
ethernet0.dvs.switchId = "50 2b 5c 1a 4d 6e 7f 80-91 a2 b3 c4 d5 e6 f7 08"
ethernet0.dvs.portgroupId = "dvportgroup-42"
ethernet1.present = "FALSE"
ethernet1.virtualDev = "vmxnet3"
"""

FLAT = """# Disk DescriptorFile
version=1
CID=fffffffe
parentCID=ffffffff
createType="vmfs"

# Extent description
RW {sectors} VMFS "{name}-flat.vmdk"

# The Disk Data Base
#DDB
ddb.adapterType = "lsilogic"
ddb.thinProvisioned = "1"
"""

DELTA = """# Disk DescriptorFile
version=1
CID=11111111
parentCID=fffffffe
createType="vmfsSparse"
parentFileNameHint="{parent}"
# Extent description
RW {sectors} VMFSSPARSE "{name}-delta.vmdk"
"""


def resolver(files: dict[str, str]) -> vmx.DiskResolver:
    """Descriptors by path, as the scan would find them in a directory."""

    def resolve(name: str) -> Resolved | None:
        if name not in files:
            return None
        return Resolved(name, vmdk.parse_descriptor(files[name], name))

    return resolve


def test_esxi_linux_vm() -> None:
    files = {
        "/ds/web01/web01.vmdk": FLAT.format(sectors=41943040, name="web01"),
        "/ds/web01/web01_1.vmdk": FLAT.format(sectors=2097152, name="web01_1"),
    }
    vm = parse_vmx(ESXI_LINUX, "/ds/web01/web01.vmx", resolver(files))
    assert (vm.kind, vm.name, vm.vcpus, vm.cores_per_socket, vm.memory_mib) == (
        "vmware",
        "web01",
        4,
        2,
        4096,
    )
    assert (vm.firmware, vm.secure_boot) == ("uefi", True)
    assert (vm.guest_os.id, vm.guest_os.family) == ("debian12-64", "linux")
    assert [(d.device, d.bus, d.controller, d.unit) for d in vm.disks] == [
        ("scsi0:0", "scsi", 0, 0),
        ("scsi0:1", "scsi", 0, 1),
    ]
    first = vm.disks[0]
    assert first.file == "/ds/web01/web01.vmdk"
    assert (first.format, first.subformat, first.capacity) == ("vmdk", "vmfs", 41943040 * 512)
    assert first.extents == ["/ds/web01/web01-flat.vmdk"]
    assert first.chain == []
    assert first.controller_model == "pvscsi"
    assert vm.disks[1].capacity == 1 << 30
    (nic,) = vm.nics
    assert (nic.device, nic.mac, nic.mac_kind, nic.network, nic.model) == (
        "ethernet0",
        "00:0c:29:5a:1b:2c",
        "generated",
        "VM Network",
        "vmxnet3",
    )
    assert vm.blockers == []
    codes = {w.code for w in vm.warnings}
    assert {"nic-model", "controller-model", "uefi-variables"} <= codes
    assert vm.importable


def test_workstation_windows_vm() -> None:
    vm = parse_vmx(WORKSTATION_WINDOWS, "/vms/Windows Server 2022/Windows Server 2022.vmx")
    assert (vm.name, vm.firmware, vm.secure_boot, vm.memory_mib, vm.vcpus) == (
        "Windows Server 2022",
        "bios",
        False,
        8192,
        2,
    )
    assert vm.guest_os.family == "windows"
    (disk,) = vm.disks  # the CD-ROM is not a disk
    assert (disk.device, disk.bus, disk.controller_model) == ("nvme0:0", "nvme", "nvme")
    assert disk.file == "/vms/Windows Server 2022/Windows Server 2022.vmdk"
    assert disk.capacity is None  # no resolver: listed without its descriptor
    (nic,) = vm.nics
    assert (nic.mac, nic.mac_kind, nic.model, nic.network) == (
        "00:50:56:3f:00:10",
        "static",
        "e1000e",
        "nat",
    )
    assert "windows-drivers" in {w.code for w in vm.warnings}
    assert "nic-model" not in {w.code for w in vm.warnings}  # QEMU has an e1000e


def test_old_vcenter_vm_with_mixed_case_keys_and_unquoted_values() -> None:
    seen: list[str] = []

    def resolve(name: str) -> Resolved | None:
        seen.append(name)
        return Resolved(name, vmdk.parse_descriptor(FLAT.format(sectors=2048, name="x"), name))

    vm = parse_vmx(VCENTER_OLD, "/ds/legacy-app/legacy-app.vmx", resolve)
    assert vm.memory_mib == 1024 and vm.vcpus == 1  # numvcpus defaults to one
    assert vm.guest_os.family == "linux"
    assert [d.device for d in vm.disks] == ["scsi0:0"]  # ide1:0 is a CD-ROM
    # An absolute datastore path goes to the resolver as written: the scan maps it.
    assert seen == ["/vmfs/volumes/datastore1/legacy-app/legacy-app.vmdk"]
    assert vm.disks[0].controller_model == "lsilogic"
    (nic,) = vm.nics  # ethernet1 is not present
    assert (nic.mac, nic.mac_kind, nic.network, nic.model) == (
        "00:50:56:a1:22:33",
        "generated",
        "dvportgroup-42",
        "e1000",
    )


def test_disabled_devices_and_controllers_are_left_out() -> None:
    text = """
displayName = "d"
memsize = "512"
scsi0.present = "TRUE"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "a.vmdk"
scsi0:1.present = "FALSE"
scsi0:1.fileName = "b.vmdk"
scsi1.present = "FALSE"
scsi1:0.present = "TRUE"
scsi1:0.fileName = "c.vmdk"
sata0:0.present = "TRUE"
sata0:0.fileName = "d.iso"
ethernet0.present = "FALSE"
pciPassthru0.present = "FALSE"
"""
    vm = parse_vmx(text, "/x/d.vmx")
    assert [d.file for d in vm.disks] == ["/x/a.vmdk"]
    assert vm.nics == [] and vm.blockers == []


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ('encryption.keySafe = "vmware:key/list/(pair/(null/vmware:key/fqid/x))"', "encrypted-vm"),
        ('encryption.data = "AAAA"', "encrypted-vm"),
        ('pciPassthru0.present = "TRUE"\npciPassthru0.id = "00000:059:00.0"', "pci-passthrough"),
        ('pciPassthru0.present = "TRUE"\npciPassthru0.vgpu = "grid_t4-2q"', "vgpu"),
        ('scsi0:0.sharing = "multi-writer"', "multi-writer"),
        ('scsi0.sharedBus = "physical"', "shared-bus"),
        ('nvdimm0.present = "TRUE"', "nvdimm"),
    ],
)
def test_what_blocks_an_import(extra: str, code: str) -> None:
    text = f"""
displayName = "b"
memsize = "1024"
scsi0.present = "TRUE"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "b.vmdk"
{extra}
"""
    vm = parse_vmx(text, "/x/b.vmx")
    assert code in {b.code for b in vm.blockers}
    assert not vm.importable
    assert all(b.message for b in vm.blockers)


def test_scsi_passthrough_device_is_a_blocker_not_a_disk() -> None:
    text = 'scsi0:3.present = "TRUE"\nscsi0:3.deviceType = "scsi-passthru"\n'
    text += 'scsi0:3.fileName = "/vmfs/devices/genscsi/naa.600"\nmemsize = "64"'
    vm = parse_vmx(text, "/x/t.vmx")
    assert vm.disks == []
    assert [b.code for b in vm.blockers] == ["scsi-passthrough"]


@pytest.mark.parametrize("mode", ["independent-persistent", "independent-nonpersistent"])
def test_independent_disks_are_a_warning(mode: str) -> None:
    text = 'memsize = "64"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "i.vmdk"\n'
    text += f'scsi0:0.mode = "{mode}"\n'
    vm = parse_vmx(text, "/x/i.vmx")
    (warning,) = [w for w in vm.warnings if w.code == "independent-disk"]
    assert warning.device == "scsi0:0" and mode in warning.message
    assert vm.importable


def test_snapshot_chain_imports_the_current_state_and_lists_the_chain() -> None:
    files = {
        "/ds/db/db-000002.vmdk": DELTA.format(
            parent="db-000001.vmdk", sectors=16777216, name="db-000002"
        ),
        "/ds/db/db-000001.vmdk": DELTA.format(parent="db.vmdk", sectors=16777216, name="db-000001"),
        "/ds/db/db.vmdk": FLAT.format(sectors=16777216, name="db"),
    }
    text = 'memsize = "2048"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "db-000002.vmdk"\n'
    vm = parse_vmx(text, "/ds/db/db.vmx", resolver(files))
    (disk,) = vm.disks
    assert disk.file == "/ds/db/db-000002.vmdk"
    assert disk.chain == ["/ds/db/db-000001.vmdk", "/ds/db/db.vmdk"]
    assert disk.extents == ["/ds/db/db-000002-delta.vmdk"]
    assert disk.subformat == "vmfsSparse" and disk.capacity == 8 << 30
    assert [w.code for w in vm.warnings if w.device == "scsi0:0"] == ["snapshot-chain"]
    assert vm.importable


def test_a_broken_chain_is_a_blocker_of_its_vm() -> None:
    files = {"/d/a-000001.vmdk": DELTA.format(parent="a.vmdk", sectors=8, name="a-000001")}
    text = 'memsize = "64"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "a-000001.vmdk"\n'
    vm = parse_vmx(text, "/d/a.vmx", resolver(files))
    (blocker,) = vm.blockers
    assert blocker.code == "missing-disk" and "snapshot parent /d/a.vmdk" in blocker.message


def test_a_chain_that_loops_is_a_blocker() -> None:
    files = {
        "/d/a.vmdk": DELTA.format(parent="b.vmdk", sectors=8, name="a"),
        "/d/b.vmdk": DELTA.format(parent="a.vmdk", sectors=8, name="b"),
    }
    text = 'memsize = "64"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "a.vmdk"\n'
    vm = parse_vmx(text, "/d/a.vmx", resolver(files))
    assert [b.code for b in vm.blockers] == ["chain-loop"]


def test_rdm_and_encrypted_descriptors_are_blockers() -> None:
    rdm = """# Disk DescriptorFile
version=1
createType="vmfsPassthroughRawDeviceMap"
RW 209715200 VMFSRDM "sql-rdmp.vmdk"
ddb.adapterType = "lsilogic"
"""
    encrypted = FLAT.format(sectors=2048, name="e") + 'encryption.keySafe = "vmware:key/x"\n'
    files = {"/d/sql_1.vmdk": rdm, "/d/e.vmdk": encrypted}
    text = 'memsize = "64"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "sql_1.vmdk"\n'
    text += 'scsi0:1.present = "TRUE"\nscsi0:1.fileName = "e.vmdk"\n'
    vm = parse_vmx(text, "/d/sql.vmx", resolver(files))
    assert [(b.code, b.device) for b in vm.blockers] == [
        ("rdm", "scsi0:0"),
        ("encrypted-disk", "scsi0:1"),
    ]


def test_unreadable_descriptor_is_a_blocker_naming_the_line() -> None:
    files = {"/d/x.vmdk": '# Disk DescriptorFile\ncreateType="monolithicFlat"\nthis is junk\n'}
    text = 'memsize = "64"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "x.vmdk"\n'
    vm = parse_vmx(text, "/d/x.vmx", resolver(files))
    (blocker,) = vm.blockers
    assert blocker.code == "unreadable-descriptor"
    assert "/d/x.vmdk:3" in blocker.message


def test_escaped_values_and_name_fallback() -> None:
    pairs = parse_pairs('annotation = "a |22quoted|22 |7C bar|0Anext"\nfoo = ""')
    assert pairs["annotation"].value == 'a "quoted" | bar\nnext'
    assert pairs["foo"].value == ""
    # Multi-byte UTF-8 escaped byte by byte reads back as the character.
    assert decode_value("caf|C3|A9") == "café"
    vm = parse_vmx('memsize = "64"', "/d/no-name.vmx")
    assert vm.name == "no-name"
    assert parse_vmx('displayName = "Ünïcode VM"\nmemsize = "1"', "/d/u.vmx").name == "Ünïcode VM"


def test_numbers_with_leading_zeros_or_in_hex() -> None:
    vm = parse_vmx('memsize = "08192"\nnumvcpus = "0x4"', "/d/n.vmx")
    assert (vm.memory_mib, vm.vcpus) == (8192, 4)


def test_windows_line_ends() -> None:
    vm = parse_vmx(WORKSTATION_WINDOWS.replace("\n", "\r\n"), "/vms/w/w.vmx")
    assert vm.name == "Windows Server 2022" and [d.device for d in vm.disks] == ["nvme0:0"]
    assert vm.nics[0].mac == "00:50:56:3f:00:10"


def test_missing_memsize_is_left_to_the_administrator() -> None:
    vm = parse_vmx('displayName = "m"', "/d/m.vmx")
    assert vm.memory_mib is None
    assert "hardware-not-read" in {w.code for w in vm.warnings}


def test_generated_mac_not_yet_assigned_is_a_warning() -> None:
    vm = parse_vmx('memsize = "1"\nethernet0.present = "TRUE"\n', "/d/n.vmx")
    (nic,) = vm.nics
    assert nic.mac is None and nic.mac_kind == "generated"
    assert "mac-unknown" in {w.code for w in vm.warnings}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('displayName = "a"\nthis line has no equals sign\n', "/d/bad.vmx:2"),
        ('displayName = "unterminated\n', "/d/bad.vmx:1: displayName"),
        ('memsize = "lots"\n', "/d/bad.vmx:1: memsize"),
        ('\n\nnumvcpus = "0"\n', "/d/bad.vmx:3: numvcpus"),
        ('displayName = "a"b"\n', "/d/bad.vmx:1: displayName"),
        ('displayName = a"b\n', "/d/bad.vmx:1: displayName"),
    ],
)
def test_bad_input_is_a_parse_error_naming_line_and_field(text: str, where: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_vmx(text, "/d/bad.vmx")
    assert str(caught.value).startswith(where)


keys = st.from_regex(r"[a-z][a-z0-9_.]{0,20}", fullmatch=True)


@given(st.dictionaries(keys, st.text(max_size=40)))
def test_written_values_read_back(settings: dict[str, str]) -> None:
    text = "\n".join(f"{key} = {encode_value(value)}" for key, value in settings.items())
    parsed = parse_pairs(text)
    assert {k: v.value for k, v in parsed.items()} == settings


@given(st.text(max_size=60))
def test_escape_round_trip(value: str) -> None:
    encoded = encode_value(value)
    assert "\n" not in encoded and encoded.count('"') == 2
    assert decode_value(encoded[1:-1]) == value
