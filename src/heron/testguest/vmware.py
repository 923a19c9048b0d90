"""Build the V2V tests' VMware-style Linux guest: the Debian guest (heron.testguest.debian)
as a VM made on VMware would have it, which does not boot on virtio until the guest fix
(heron.v2v.guestfix) has run.

Usage: ``python -m heron.testguest.vmware --out DIR`` prints the path of
``DIR/debian-vmware.qcow2``.

It is a flavour of the Debian guest (same builder, same command channel printing
``HERON-GUEST-READY`` on ttyS0), without the databases, and with what makes a VMware guest
fail on virtio:

* /etc/fstab and the kernel command line (syslinux.cfg on the boot partition) name the root
  ``/dev/sda2``, the name a SCSI or IDE controller gives it, as Debian's installer wrote fstab
  before UUIDs and as many converted or hand-made VMs still have it;
* the initramfs has a VMware VM's drivers only (``vmware/initramfs``: ata_piix, vmw_pvscsi,
  vmxnet3; Debian's cloud kernel has no mptspi, ahci or e1000) and no virtio, as
  initramfs-tools' ``MODULES=dep`` makes it on VMware;
* open-vm-tools is installed (from Debian, with its dependencies: 3 MiB), and Hyper-V's
  daemons (``hyperv-daemons``) too, so one fix shows both removed. Their services do not start
  under QEMU (ConditionVirtualization);
* its network is configured for ``ens160`` (systemd-networkd, DHCP), the name udev gives a
  VMware VM's first NIC (PCI slot 160); on virtio-net the NIC has another name, and the
  guest no network, until the fix keeps the old name.

On a virtio disk its initramfs waits for /dev/sda2 (180 s, initramfs-tools' default) and
gives up; on an IDE disk (an i440fx machine) it boots.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from heron.testguest import build as testguest
from heron.testguest import debian

ROOT_DEVICE = "/dev/sda2"
# Its own filesystem UUID (every ext4 has one; the guest does not use it until fixed).
ROOT_UUID = "48524f4e-0018-4deb-8000-000000000002"
KERNEL_CMDLINE = (
    f"console=ttyS0,115200 root={ROOT_DEVICE} ro quiet loglevel=3 "
    "systemd.show_status=false fsck.mode=skip panic=-1"
)
FSTAB = (
    "# /etc/fstab: static file system information.\n"
    f"# / was on {ROOT_DEVICE} during installation\n"
    f"{ROOT_DEVICE} / ext4 errors=remount-ro 0 1\n"
)
TOOLS = ("open-vm-tools", "hyperv-daemons")
HERE = Path(__file__).with_name("vmware")


NIC = "ens160"
NETWORK = f"[Match]\nName={NIC}\n\n[Network]\nDHCP=ipv4\n"


def setup(root_var: str) -> list[str]:
    return [
        f"echo heron-vmware > {root_var}/etc/hostname",
        f"mkdir -p {root_var}/etc/systemd/network",
        f"printf '{NETWORK}' > {root_var}/etc/systemd/network/20-{NIC}.network",
        f"chroot {root_var} systemctl enable --quiet systemd-networkd.service",
    ]


FLAVOUR = debian.Flavour(
    name="debian-vmware",
    packages=(
        "systemd",
        "systemd-sysv",
        "udev",
        testguest.KERNEL_METAPACKAGE,
        "initramfs-tools",
        *TOOLS,
    ),
    initramfs=HERE / "initramfs",
    cmdline=KERNEL_CMDLINE,
    fstab=FSTAB,
    root_uuid=ROOT_UUID,
    overlay_files=("etc/systemd/system/heron-commands.service",),
    setup=setup,
    root_headroom=128 * debian.MIB,
    # The guest fix writes a bigger initramfs (with the virtio drivers) over the old one.
    boot_room=2,
    sources=(Path(__file__),),
)


def build(out: Path, *, force: bool = False) -> debian.DebianGuest:
    """Build ``out/debian-vmware.qcow2`` unless one from the same inputs is there."""
    return debian.build(out, force=force, flavour=FLAVOUR)


def main(argv: Sequence[str] | None = None) -> int:
    return debian.main(
        argv,
        prog="python -m heron.testguest.vmware",
        description="Build the V2V tests' VMware-style Debian guest from Debian packages.",
        flavour=FLAVOUR,
    )


if __name__ == "__main__":
    sys.exit(main())
