"""The V2V guest fix with real parts: the VMware-style Debian guest (heron.testguest.vmware:
root=/dev/sda2, an initramfs without virtio, open-vm-tools and Hyper-V's daemons) does not
boot on a virtio disk; heron.v2v.guestfix, running libguestfs' appliance under the host's
accelerator, fixes it; and it then boots on virtio on Heron's own QEMU command line, to its
HERON-GUEST-READY line on the serial console.

Bounded: one image (built once from Debian packages and cached), one failed boot (its
initramfs' 180 s wait for the root shortened with rootdelay=), one fix, one boot.
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.running import short_directory
from support import eventually, wait_for

from heron.hypervisor import command
from heron.hypervisor.accel import choose_accelerator
from heron.hypervisor.command import ResolvedDisk, RuntimePaths
from heron.hypervisor.qemu import QemuVM
from heron.models.common import new_id
from heron.models.vm import VM, VMSpec
from heron.testguest import build, debian, vmware
from heron.util.proc import find_running
from heron.v2v import guestfix

pytestmark = pytest.mark.integration

CACHE = Path(os.environ.get("HERON_CACHE_DIR", "/var/cache/heron"))
# TCG on a shared machine: the guest fix takes about 2 minutes alone (the appliance's start,
# update-initramfs and apt-get in the guest, all emulated), and a boot 30-60 s.
FIX_TIMEOUT = 600.0
NO_ROOT = 240.0
BOOT = 400.0


@pytest.fixture(scope="module")
def vmware_guest() -> debian.DebianGuest:
    if shutil.which("guestfish") is None or shutil.which("qemu-system-x86_64") is None:
        pytest.skip("guestfish or qemu-system-x86_64 is not installed (scripts/install-deps)")
    return vmware.build(CACHE / "debian-vmware")


@pytest.fixture
def disk(vmware_guest: debian.DebianGuest) -> Iterator[Path]:
    """A copy-on-write copy of the guest's disk, as the import leaves it in a pool."""
    with short_directory() as root:
        disk = root / "disk.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
             str(vmware_guest.image), str(disk)],
            check=True,
        )  # fmt: skip
        yield disk


def test_unfixed_the_guest_finds_no_root_on_virtio(
    vmware_guest: debian.DebianGuest, disk: Path
) -> None:
    """Its own kernel and initramfs (copies of the disk's) on a virtio disk: the initramfs has
    no virtio driver, sees no disk, gives up on /dev/sda2 and (panic=-1) reboots, which
    -no-reboot turns into QEMU's exit."""
    accel = choose_accelerator(CACHE)
    args = [
        "qemu-system-x86_64", "-accel", accel, "-m", "512", "-display", "none", "-nodefaults",
        "-no-user-config", "-no-reboot", "-serial", "stdio", "-monitor", "none",
        "-kernel", str(vmware_guest.kernel), "-initrd", str(vmware_guest.initrd),
        "-append", f"{vmware_guest.cmdline} rootdelay=2",
        "-drive", f"file={disk},format=qcow2,if=virtio,snapshot=on",
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = b""
    try:
        while time.monotonic() - started < NO_ROOT:
            ready, _, _ = select.select([proc.stdout], [], [], 5)
            chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
            output += chunk
            if ready and not chunk:
                break  # QEMU exited: the guest rebooted
    finally:
        proc.kill()
        proc.wait()
    console = output.decode(errors="replace")
    print(f"gave up after {time.monotonic() - started:.0f}s")
    assert build.READY_MARKER not in console
    assert "Gave up waiting for root file system device" in console, console[-3000:]
    assert "/dev/sda2 does not exist" in console, console[-3000:]


async def test_fixed_the_guest_boots_on_virtio(disk: Path) -> None:
    lines: list[str] = []
    started = time.monotonic()

    def log(line: str) -> None:
        lines.append(f"{time.monotonic() - started:6.1f}s {line}")

    report = await asyncio.to_thread(
        guestfix.fix_linux, disk, "qcow2", timeout=FIX_TIMEOUT, log=log
    )
    print("\n".join(lines))
    print(f"guest fix took {report.duration_seconds:.0f}s")
    assert (report.distro, report.version) == ("debian", "12.0") or report.distro == "debian"
    assert report.kernels and all(k.endswith("-cloud-amd64") for k in report.kernels)
    assert report.initramfs_tool == "update-initramfs"
    changed = {(c.kind, c.path.split(" ")[0]) for c in report.changes}
    assert ("device-names", "/etc/fstab") in changed
    # The boot loader's configuration is on the FAT partition the guest does not mount.
    assert ("device-names", "/syslinux.cfg") in changed
    assert ("initramfs", "/etc/initramfs-tools/modules") in changed
    assert ("initramfs", f"/boot/initrd.img-{report.kernels[0]}") in changed
    assert ("boot-file", "/initrd.gz") in changed
    assert ("package-removed", "open-vm-tools") in changed
    assert ("package-removed", "hyperv-daemons") in changed
    assert report.warnings == []

    with short_directory() as root:
        spec = VMSpec(name="imported", memory_mib=512)
        vm = VM(id=new_id(), spec=spec, node="n", created_at=1)
        qemu = QemuVM(vm.id, RuntimePaths(root / "run"))
        resolved = [ResolvedDisk("virtio", {"driver": "file", "filename": str(disk)}, "qcow2")]
        args = command.build(vm, resolved, qemu.paths, choose_accelerator(CACHE))
        started = time.monotonic()
        await qemu.launch(args)
        try:

            async def ready() -> bool:
                log = qemu.paths.console_log
                return log.exists() and build.READY_MARKER in log.read_text(errors="replace")

            await eventually(ready, BOOT, "the fixed guest's ready line on virtio")
            print(f"booted on virtio {time.monotonic() - started:.0f}s after launch")
        finally:
            await qemu.kill()
            await qemu.close()


def test_a_disk_without_an_os_is_refused_and_the_deadline_holds(
    vmware_guest: debian.DebianGuest,
) -> None:
    """A clear error for a disk with no guest in it; and a fix cut by its deadline leaves
    neither guestfish nor the appliance running."""
    with short_directory() as root:
        empty = root / "empty.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(empty), "64M"], check=True)
        with pytest.raises(guestfix.GuestFixError, match="no operating system found"):
            guestfix.fix_linux(empty, "qcow2", timeout=FIX_TIMEOUT, log=print)
        with pytest.raises(guestfix.GuestFixError, match="ran out of time"):
            guestfix.fix_linux(empty, "qcow2", timeout=2.0, log=print)
        wait_for(lambda: not find_running(str(empty)), 60, "the cut fix's processes to end")
