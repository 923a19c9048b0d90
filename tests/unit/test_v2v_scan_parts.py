"""The directory source's parts that need no qemu-img: confinement to the scanned directory,
the walk, descriptor files, and the name qemu-img opens an OVA member by."""

import json
import struct
from pathlib import Path

import pytest

from heron.models.v2v import ScannedDisk
from heron.v2v.common import ParseError
from heron.v2v.scan import (
    DirectorySource,
    _vmfs_relative,
    _walk,
    inside,
    qemu_source,
    read_vmdk_descriptor,
)


def test_inside_follows_links(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "f").write_text("x")
    (root / "in").write_text("x")
    (root / "out").symlink_to(outside / "f")
    assert inside(str(root / "in"), str(root))
    assert not inside(str(root / "out"), str(root))
    assert not inside(str(root / ".." / "outside" / "f"), str(root))
    # A sibling whose name starts like the root is not inside it.
    (tmp_path / "root2").mkdir()
    assert not inside(str(tmp_path / "root2"), str(root))
    source = DirectorySource(root)
    assert source.capabilities.files and not source.capabilities.warm
    assert source.contains(str(root / "in")) and not source.contains(str(root / "out"))


def test_walk_finds_each_file_once_despite_loops(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.VMX").write_text("")
    (tmp_path / "a" / "y.ova").write_text("")
    (tmp_path / "a" / "t.vmtx").write_text("")
    (tmp_path / "a" / "b" / "up").symlink_to(tmp_path)
    (tmp_path / "e" / "Virtual Machines").mkdir(parents=True)
    (tmp_path / "e" / "d.vhdx").write_text("")
    found = _walk(str(tmp_path), 8)
    assert found.vmx == [str(tmp_path / "a" / "t.vmtx"), str(tmp_path / "a" / "b" / "x.VMX")]
    assert found.ova == [str(tmp_path / "a" / "y.ova")]
    assert found.hyperv_exports == [str(tmp_path / "e")]
    assert found.hard_disks == [str(tmp_path / "e" / "d.vhdx")]
    assert any("loops back" in note for note in found.notes)
    shallow = _walk(str(tmp_path), 1)
    assert shallow.vmx == [str(tmp_path / "a" / "t.vmtx")]
    assert any("below depth 1" in n for n in shallow.notes)


def test_descriptor_files(tmp_path: Path) -> None:
    text = '# Disk DescriptorFile\nversion=1\ncreateType="vmfs"\nRW 2048 VMFS "d-flat.vmdk"\n'
    (tmp_path / "d.vmdk").write_text(text)
    assert read_vmdk_descriptor(str(tmp_path / "d.vmdk")).capacity == 1 << 20
    embedded = '# Disk DescriptorFile\ncreateType="monolithicSparse"\nRW 4096 SPARSE "s.vmdk"\n'
    header = struct.pack("<4sIIQQQQ", b"KDMV", 1, 3, 4096, 128, 1, 20).ljust(512, b"\0")
    (tmp_path / "s.vmdk").write_bytes(header + embedded.encode().ljust(20 * 512, b"\0"))
    assert read_vmdk_descriptor(str(tmp_path / "s.vmdk")).capacity == 2 << 20
    # A header that puts its descriptor far into a big file: only those sectors are read.
    far = struct.pack("<4sIIQQQQ", b"KDMV", 1, 3, 4096, 128, 1 << 30, 20).ljust(512, b"\0")
    (tmp_path / "far.vmdk").write_bytes(far)
    with pytest.raises(ParseError, match="ends before its embedded descriptor"):
        read_vmdk_descriptor(str(tmp_path / "far.vmdk"))
    (tmp_path / "flat.vmdk").write_bytes(b"\0" * 4096)
    with pytest.raises(ParseError, match="neither a text descriptor nor a sparse VMDK"):
        read_vmdk_descriptor(str(tmp_path / "flat.vmdk"))
    (tmp_path / "cowd.vmdk").write_bytes(b"COWD" + b"\0" * 2044)
    with pytest.raises(ParseError, match="vmfsSparse data extent"):
        read_vmdk_descriptor(str(tmp_path / "cowd.vmdk"))


def test_qemu_source_of_a_member_reads_it_in_place() -> None:
    plain = ScannedDisk(device="d", file="/x/a.vmdk", format="vmdk")
    assert qemu_source(plain) == "/x/a.vmdk"
    member = ScannedDisk(
        device="d",
        file='/x/odd "name".ova',
        member="a.vmdk",
        member_offset=1536,
        member_size=65536,
        format="vmdk",
    )
    name = qemu_source(member)
    assert name.startswith("json:")
    assert json.loads(name[5:]) == {
        "driver": "vmdk",
        "file": {
            "driver": "raw",
            "offset": 1536,
            "size": 65536,
            "file": {"driver": "file", "filename": '/x/odd "name".ova'},
        },
    }


def test_a_scan_report_reads_back_from_its_json(tmp_path: Path) -> None:
    from heron.models.v2v import ScannedVm, ScanReport

    vm = ScannedVm(kind="vmware", path="/d/a.vmx", name="a", vcpus=2, memory_mib=512)
    vm.disks.append(ScannedDisk(device="scsi0:0", file="/d/a.vmdk", chain=["/d/b.vmdk"]))
    vm.block("rdm", "a raw device mapping", "scsi0:0")
    report = ScanReport(root="/d", vms=[vm])
    again = ScanReport.model_validate_json(report.model_dump_json())
    assert again == report and not again.vms[0].importable


def test_datastore_paths_map_into_the_copy() -> None:
    assert list(_vmfs_relative("/vmfs/volumes/ds1/vm/vm.vmdk", "/mnt/copy")) == [
        "/mnt/copy/vm/vm.vmdk",
        "/mnt/copy/ds1/vm/vm.vmdk",
    ]
    assert list(_vmfs_relative("vm.vmdk", "/mnt/copy")) == []
