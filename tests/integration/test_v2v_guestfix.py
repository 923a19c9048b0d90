"""The V2V guest fix with real parts: the VMware-style Debian guest (heron.testguest.vmware:
root=/dev/sda2, an initramfs without virtio, open-vm-tools and Hyper-V's daemons) does not
boot on a virtio disk; imported as a VMware VM from a folder source, the import task fixes it
(heron.v2v.guestfix, libguestfs' appliance under the host's accelerator) and Heron starts it:
it boots on virtio to its HERON-GUEST-READY line on the serial console.

Bounded: one image (built once from Debian packages and cached), one failed boot (its
initramfs' 180 s wait for the root shortened with rootdelay=), one import with its fix, one
boot, on one node.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from datastores import vmware_vm
from fakes.running import short_directory
from support import Api, serial_lines, wait_for

from heron.devcluster import DevCluster
from heron.hypervisor.accel import choose_accelerator
from heron.testguest import build, debian, vmware
from heron.testguest.net import CommandChannel
from heron.util.proc import find_running
from heron.v2v import guestfix

pytestmark = pytest.mark.integration
CLUSTER_NODES = 1
MAC = "00:50:56:a1:b2:d0"

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


def test_an_import_fixes_the_guest_which_boots_on_virtio(
    vmware_guest: debian.DebianGuest,
    cluster1: tuple[DevCluster, str],
    api: Api,
    tmp_path: Path,
) -> None:
    """The whole path: the guest as a VMware VM in a folder source, scanned, imported (copied,
    compared, fixed by the import task) and started by Heron, boots on virtio."""
    cluster, _ = cluster1
    node = cluster.nodes[0]
    vmware_vm(tmp_path, "legacy", vmware_guest.image, "monolithicSparse", MAC,
              guest_format="qcow2")  # fmt: skip
    source = {"name": "old-esxi", "type": "directory", "path": str(tmp_path), "node": node.name}
    api.ok("POST", "/imports/sources", json=source)
    api.wait_task(api.ok("POST", "/imports/sources/old-esxi/scan")["task"])
    found = api.ok("GET", "/imports/sources/old-esxi/scan")["report"]["vms"]
    request = {
        "source": "old-esxi", "pool": "local", "networks": {"VM Network": "user"},
        "vms": [{"vm": found[0]["path"], "memory_mib": 512}], "start": True,
    }  # fmt: skip
    task = api.ok("POST", "/imports", json=request)["vms"][0]["task"]
    done = api.wait_task(task, FIX_TIMEOUT)
    print("\n".join(done["log"]))
    fixed = next(line for line in done["log"] if line.startswith("guest fixed ("))
    for change in (
        "device-names /etc/fstab",
        "device-names /syslinux.cfg",  # on the FAT partition the guest does not mount
        "initramfs /etc/initramfs-tools/modules",
        "boot-file /initrd.gz",
        "package-removed open-vm-tools",
        "package-removed hyperv-daemons",
        "nic-name /etc/systemd/network/10-heron-v2v-ens160.link",
    ):
        assert change in fixed, fixed
    assert re.search(r"initramfs /boot/initrd\.img-\S+-cloud-amd64", fixed), fixed
    assert not [line for line in done["log"] if line.startswith("guest fix:")]  # no warnings
    vm = api.ok("GET", "/vms/legacy")
    assert vm["spec"]["disks"][0]["bus"] == "virtio" and vm["spec"]["nics"][0]["mac"] == MAC
    console = Path(node.state_dir) / "vms" / vm["id"] / "console.log"
    wait_for(lambda: serial_lines(console, build.READY_MARKER), BOOT, "the fixed guest on virtio")
    # Its network, configured for the NIC's VMware name, is up on virtio under that name.
    with CommandChannel(console.with_name("serial.sock")) as channel:

        def link() -> str | None:
            said = channel.run(
                f"cat /sys/class/net/{vmware.NIC}/address && "
                f"cat /run/systemd/netif/links/$(cat /sys/class/net/{vmware.NIC}/ifindex)"
            )
            return said.output if said.rc == 0 and "OPER_STATE=routable" in said.output else None

        state = wait_for(link, 60, f"{vmware.NIC} configured by DHCP")
    assert state.splitlines()[0] == MAC, state
    api.ok("POST", "/vms/legacy/actions/stop")


def test_a_disk_without_an_os_is_refused_and_the_deadline_holds(
    vmware_guest: debian.DebianGuest,
) -> None:
    """A clear error for a disk with no guest in it, read over NBD as an ARDFS volume is; and
    a fix cut by its deadline leaves neither guestfish nor the appliance running."""
    with short_directory() as root:
        empty = root / "empty.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(empty), "64M"], check=True)
        socket = root / "nbd.sock"
        server = subprocess.Popen(
            ["qemu-nbd", "-f", "qcow2", "-x", "empty", "-k", str(socket), "--persistent",
             str(empty)]
        )  # fmt: skip
        try:
            wait_for(socket.exists, 30, "qemu-nbd's socket")
            over_nbd = guestfix.Drive(f"nbd+unix:///empty?socket={socket}", "raw")
            with pytest.raises(guestfix.GuestFixError, match="no operating system found"):
                guestfix.fix_linux([over_nbd], timeout=FIX_TIMEOUT, log=print)
        finally:
            server.terminate()
            server.wait()
        with pytest.raises(guestfix.GuestFixError, match="ran out of time"):
            guestfix.fix_linux([guestfix.Drive(str(empty), "qcow2")], timeout=2.0, log=print)
        wait_for(lambda: not find_running(str(empty)), 60, "the cut fix's processes to end")
