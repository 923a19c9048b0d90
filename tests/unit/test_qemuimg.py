"""qemu-img (the real one) as the import path uses it: a copy verified against its source,
and a fixed VHD read with its format given (guessed, it is raw and 512 bytes too large)."""

from pathlib import Path

import pytest

from heron.storage import qemuimg
from heron.storage.qemuimg import QemuImgError

MIB = 1024**2


async def test_compare_accepts_a_true_copy_and_names_a_difference(tmp_path: Path) -> None:
    source = tmp_path / "disk.raw"
    source.write_bytes(b"\0" * MIB + b"heron" + b"\0" * (MIB - 5))
    copy = tmp_path / "disk.vhd"
    seen: list[float] = []

    async def progress(fraction: float) -> None:
        seen.append(fraction)

    await qemuimg.convert(source, "raw", copy, "vpc")
    await qemuimg.compare(source, "raw", copy, "vpc", progress)
    assert seen and seen[-1] == 1.0

    damaged = tmp_path / "damaged.raw"
    damaged.write_bytes(b"\0" * MIB + b"herom" + b"\0" * (MIB - 5))
    with pytest.raises(QemuImgError, match="differs from its source"):
        await qemuimg.compare(source, "raw", damaged, "raw")
    with pytest.raises(QemuImgError, match="No such file"):
        await qemuimg.compare(source, "raw", tmp_path / "gone.raw", "raw")


async def test_a_fixed_vhd_is_read_at_its_size_only_with_its_format(tmp_path: Path) -> None:
    fixed = tmp_path / "fixed.vhd"
    await qemuimg._run("create", "-q", "-f", "vpc", "-o", "subformat=fixed", str(fixed), "2M")
    guessed = await qemuimg.info(fixed)
    given = await qemuimg.info(fixed, "vpc")
    assert guessed["format"] == "raw" and guessed["virtual-size"] == given["virtual-size"] + 512


async def test_files_read_lists_the_chain_and_the_extents_a_descriptor_names(
    tmp_path: Path,
) -> None:
    """What an import checks before it copies: a VMDK descriptor edited to name a node's
    own file as its extent shows that file."""
    disk = tmp_path / "vm.vmdk"
    await qemuimg._run("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat",
                       str(disk), "1M")  # fmt: skip
    flat = (str(tmp_path / "vm-flat.vmdk"), MIB)  # a flat extent must hold its size
    assert await qemuimg.files_read(disk, "vmdk") == [(str(disk), 0), flat]
    top = tmp_path / "top.qcow2"
    await qemuimg.create_overlay(top, disk.name, "vmdk", MIB)
    assert (await qemuimg.files_read(top, "qcow2"))[:2] == [(str(top), 0), (str(disk), 0)]

    stolen = tmp_path / "secret"
    stolen.write_bytes(b"s" * MIB)
    text = disk.read_text().replace('"vm-flat.vmdk"', f'"{stolen}"')
    disk.write_text(text)
    assert (str(stolen), MIB) in await qemuimg.files_read(disk, "vmdk")
