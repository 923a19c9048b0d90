"""The pure parts of the V2V guest fix: device names to UUID=, the initramfs configuration,
the tools to remove, the appliance's environment and kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from heron.models.v2v import GuestFixChange, GuestFixReport
from heron.testguest import debian, vmware
from heron.v2v import appliance, guestfix

UUIDS = {"/dev/sda1": "A1B2-C3D4", "/dev/sda2": "48524f4e-0018-4deb-8000-000000000002"}
ROOT = "UUID=48524f4e-0018-4deb-8000-000000000002"


def test_disk_letters_count_like_linux() -> None:
    for index, letters in [(0, "a"), (1, "b"), (25, "z"), (26, "aa"), (27, "ab"), (701, "zz")]:
        assert guestfix.disk_index(letters) == index
        assert guestfix.disk_letters(index) == letters


def test_ide_scsi_xen_and_virtio_names_mean_the_same_disk_in_the_appliance() -> None:
    assert guestfix.appliance_name("/dev/sda2") == "/dev/sda2"
    assert guestfix.appliance_name("/dev/hda1") == "/dev/sda1"
    assert guestfix.appliance_name("/dev/xvdb3") == "/dev/sdb3"
    assert guestfix.appliance_name("/dev/vda") == "/dev/sda"
    assert guestfix.appliance_name("/dev/mapper/vg-root") is None
    assert guestfix.appliance_name("/dev/sda2x") is None


def test_fstab_device_names_become_uuids_and_comments_stay() -> None:
    fstab = (
        "# / was on /dev/sda2 during installation\n"
        "/dev/sda2 / ext4 errors=remount-ro 0 1\n"
        "/dev/hda1\t/boot/efi vfat umask=0077 0 1\n"
        "UUID=1234 /srv xfs defaults 0 2\n"
        "/dev/mapper/vg-home /home ext4 defaults 0 2\n"
        "/dev/sr0 /media/cdrom0 udf,iso9660 user,noauto 0 0\n"
    )
    result = guestfix.rewrite_device_names(fstab, UUIDS)
    lines = result.text.splitlines()
    assert lines[0] == "# / was on /dev/sda2 during installation"
    assert lines[1] == f"{ROOT} / ext4 errors=remount-ro 0 1"
    assert lines[2] == "UUID=A1B2-C3D4\t/boot/efi vfat umask=0077 0 1"
    assert lines[3:] == fstab.splitlines()[3:]
    assert result.replaced == {"/dev/sda2": ROOT, "/dev/hda1": "UUID=A1B2-C3D4"}
    assert result.unknown == []
    assert result.text.endswith("\n")


def test_kernel_command_lines_in_boot_loader_configurations() -> None:
    syslinux = "DEFAULT linux\nLABEL linux\n  KERNEL vmlinuz\n  APPEND root=/dev/sda2 ro quiet\n"
    assert guestfix.rewrite_device_names(syslinux, UUIDS).text.splitlines()[3] == (
        f"  APPEND root={ROOT} ro quiet"
    )
    grub = (
        "menuentry 'Debian' {\n"
        "\tlinux /boot/vmlinuz-6.1.0 root=/dev/sda2 ro resume=/dev/sdb5 quiet\n}\n"
    )
    result = guestfix.rewrite_device_names(grub, UUIDS)
    assert f"root={ROOT} ro resume=/dev/sdb5" in result.text
    # A device on another disk (or a swap without a UUID) is left and reported.
    assert result.unknown == ["/dev/sdb5"]
    default = 'GRUB_CMDLINE_LINUX="root=/dev/sda2"\n'
    assert (
        guestfix.rewrite_device_names(default, UUIDS).text == f'GRUB_CMDLINE_LINUX="root={ROOT}"\n'
    )


def test_names_inside_other_paths_are_not_device_names() -> None:
    text = "/dev/disk/by-id/scsi-36000c29-part2 / ext4 0 1\n/srv/dev/sda2 /x none bind 0 0\n"
    result = guestfix.rewrite_device_names(text, UUIDS)
    assert result.text == text and not result.changed


def test_initramfs_tools_modules_get_the_missing_virtio_drivers_once() -> None:
    current = "# List of modules\nloop\nvirtio_blk\n"
    updated = guestfix.with_modules(current, guestfix.VIRTIO_MODULES)
    assert updated is not None and updated.startswith(current)
    added = [line for line in updated.splitlines()[3:] if not line.startswith("#")]
    assert added == ["virtio_pci", "virtio_scsi", "virtio_net"]
    assert guestfix.with_modules(updated, guestfix.VIRTIO_MODULES) is None
    assert guestfix.with_modules("", ["virtio_blk"]) == (
        "# Heron's V2V import: the VM runs on virtio now.\nvirtio_blk\n"
    )
    assert guestfix.with_modules("loop", ["virtio_blk"]).startswith("loop\n")  # type: ignore[union-attr]


def test_dracut_gets_the_drivers_in_its_own_syntax() -> None:
    assert 'add_drivers+=" virtio_pci virtio_blk "' in guestfix.dracut_config(
        ["virtio_pci", "virtio_blk"]
    )


def test_only_other_hypervisors_tools_are_removed() -> None:
    dpkg = (
        "open-vm-tools ii \n"
        "hyperv-daemons ii \n"
        "open-vm-tools-desktop rc \n"  # removed, its configuration left: not installed
        "systemd ii \n"
    )
    installed = guestfix.parse_package_list(dpkg)
    assert installed == ["open-vm-tools", "hyperv-daemons", "systemd"]
    assert guestfix.tools_to_remove(installed) == ["open-vm-tools", "hyperv-daemons"]
    assert guestfix.tools_to_remove(guestfix.parse_package_list("bash\nhypervkvpd\n")) == [
        "hypervkvpd"
    ]


def test_the_initramfs_files_a_syslinux_configuration_loads() -> None:
    text = (
        "# INITRD old.gz\nDEFAULT linux\nLABEL linux\n  KERNEL /vmlinuz\n  INITRD initrd.gz\n"
        "LABEL other\n  APPEND initrd=/a.img,/b.img root=/dev/sda2\n"
    )
    assert guestfix.boot_config_initrds(text) == ["initrd.gz", "/a.img", "/b.img"]


def test_guestfish_listings_and_initramfs_contents() -> None:
    assert guestfix.parse_mountpoints("/: /dev/sda2\n/boot: /dev/sda1\n") == {
        "/": "/dev/sda2",
        "/boot": "/dev/sda1",
    }
    listing = (
        "usr/lib/modules/6.1.0-57-cloud-amd64/kernel/drivers/block/virtio_blk.ko\n"
        "usr/lib/modules/6.1.0-57-cloud-amd64/kernel/drivers/virtio/virtio_pci.ko.xz\n"
        "-rw-r--r--   1 root root 1 Jan 1 lib/modules/x/kernel/drivers/scsi/virtio_scsi.ko.zst\n"
    )
    assert guestfix.listed_modules(listing) == {"virtio_blk", "virtio_pci", "virtio_scsi"}
    assert guestfix.builtin_modules("kernel/drivers/net/virtio_net.ko\n") == {"virtio_net"}
    assert guestfix.initramfs_paths("dracut", ["5.14.0"]) == {
        "5.14.0": "/boot/initramfs-5.14.0.img"
    }
    assert guestfix.initramfs_paths("update-initramfs", ["6.1.0"]) == {
        "6.1.0": "/boot/initrd.img-6.1.0"
    }


def test_the_appliance_runs_direct_under_tcg_with_the_prepared_kernel(tmp_path: Path) -> None:
    version = "6.1.0-57-cloud-amd64"
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / f"vmlinuz-{version}").write_bytes(b"k")
    modules = tmp_path / "lib/modules" / version
    modules.mkdir(parents=True)
    with pytest.raises(appliance.ApplianceError, match=r"modules\.dep"):
        appliance.find_kernel(tmp_path)
    (modules / "modules.dep").write_text("")
    env = guestfix.appliance_env(
        "tcg", tmp_path, {"LIBGUESTFS_BACKEND_SETTINGS": "force_tcg:foo", "PATH": "/bin"}
    )
    assert env["LIBGUESTFS_BACKEND"] == "direct"
    assert env["LIBGUESTFS_BACKEND_SETTINGS"] == "foo:force_tcg"
    assert env["SUPERMIN_KERNEL"] == str(tmp_path / "boot" / f"vmlinuz-{version}")
    assert env["SUPERMIN_MODULES"] == str(modules)
    assert env["SUPERMIN_KERNEL_VERSION"] == version
    kvm = guestfix.appliance_env("kvm", None, {"LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"})
    assert "LIBGUESTFS_BACKEND_SETTINGS" not in kvm and "SUPERMIN_KERNEL" not in kvm


def test_the_host_kernel_is_used_when_it_has_its_modules(tmp_path: Path) -> None:
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    modules.mkdir()
    (boot / "vmlinuz-6.1.0-1-amd64").write_bytes(b"k")
    assert appliance.host_kernel(boot, modules) is None
    (modules / "6.1.0-1-amd64").mkdir()
    assert appliance.host_kernel(boot, modules) == "6.1.0-1-amd64"


def test_the_versioned_kernel_package_is_read_from_apt() -> None:
    depends = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-57-cloud-amd64\n"
    assert appliance.kernel_package(depends) == "linux-image-6.1.0-57-cloud-amd64"
    with pytest.raises(appliance.ApplianceError):
        appliance.kernel_package("linux-image-cloud-amd64\n")


def test_the_report_model_refuses_unknown_fields() -> None:
    change = GuestFixChange(kind="device-names", path="/etc/fstab", detail="a -> b")
    report = GuestFixReport(
        distro="debian", product="Debian GNU/Linux 12", version="12.0", root="/dev/sda2",
        kernels=["6.1.0"], initramfs_tool="update-initramfs", boot_loaders=[], changes=[change],
        warnings=[], duration_seconds=1.0,
    )  # fmt: skip
    assert GuestFixReport.model_validate(report.model_dump()) == report
    with pytest.raises(ValueError):
        GuestFixReport.model_validate({**report.model_dump(), "extra": 1})


def test_the_vmware_style_guest_names_its_root_by_device_and_has_no_virtio() -> None:
    flavour = vmware.FLAVOUR
    assert "root=/dev/sda2" in flavour.cmdline and "UUID" not in flavour.cmdline
    assert "/dev/sda2 / ext4" in debian.customize_script(flavour=flavour)
    hook = (flavour.initramfs / "hooks/heron").read_text()
    modules = hook.split("manual_add_modules", 1)[1].split()
    assert "ata_piix" in modules and "vmw_pvscsi" in modules
    assert not any(module.startswith("virtio") for module in modules)
    assert "MODULES=list" in (flavour.initramfs / "conf.d/heron").read_text()
    assert {"open-vm-tools", "hyperv-daemons"} <= set(flavour.packages)
    # Its own files, its own stamp: building it never touches the snapshot guest's.
    assert flavour.guest(Path("/c")).image == Path("/c/debian-vmware.qcow2")
    assert debian.SNAPSHOT.guest(Path("/c")).image == Path("/c/debian.qcow2")
    digests = debian.source_digests(flavour)
    assert "vmware.py" in digests and "vmware/initramfs/hooks/heron" in digests
    assert not any("postgresql" in name for name in digests)
    # Without the databases' steps; its network named as on VMware.
    script = debian.customize_script(flavour=flavour)
    assert "mariadbd" not in script
    assert "Name=ens160" in script and "enable --quiet systemd-networkd.service" in script


def test_a_file_is_added_as_it_is_and_an_ardfs_volume_over_nbd() -> None:
    file = guestfix.Drive("/pools/local/web-disk0.qcow2", "qcow2")
    assert guestfix.add_drive_command(file) == [
        "add-drive", "/pools/local/web-disk0.qcow2", "format:qcow2"]  # fmt: skip
    nbd = guestfix.Drive("nbd+unix:///3f2a?socket=/var/lib/heron/ardfs/hci/nbd.sock", "raw")
    assert guestfix.add_drive_command(nbd) == [
        "add-drive", "3f2a", "format:raw", "protocol:nbd",
        "server:unix:/var/lib/heron/ardfs/hci/nbd.sock",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "image", ["rbd:vms/web-disk0:id=heron", "nbd://10.0.0.1/x", "nbd+unix:///x", "http://a/b"]
)
def test_other_drives_are_refused_with_a_reason(image: str) -> None:
    with pytest.raises(guestfix.GuestFixError, match="files and NBD exports on a Unix socket"):
        guestfix.add_drive_command(guestfix.Drive(image, "raw"))


def test_predictable_nic_names_in_network_configurations_in_slot_order() -> None:
    interfaces = "auto lo\niface lo inet loopback\nallow-hotplug ens192\niface ens192 inet dhcp\n"
    netplan = "network:\n  ethernets:\n    ens160:\n      dhcp4: true\n    enp11s0f1: {}\n"
    others = [
        "[Match]\nName=ens224\n\n[Network]\nDHCP=yes\n",
        "DEVICE=eno1\nBOOTPROTO=dhcp\nONBOOT=yes\n",
        "[connection]\ninterface-name=enx0050569a1b2c\n",
        # not NICs of the hardware: kernel names, VLANs, aliases, bridges, words
        "auto eth0\niface ens160.20 inet manual\niface ens160:1 inet static\nbridge_ports br0\n"
        "# enabled, ens, enslaved\n",
    ]
    assert guestfix.nic_names([interfaces, netplan, *others]) == [
        "eno1", "enp11s0f1", "ens160", "ens192", "ens224", "enx0050569a1b2c"
    ]  # fmt: skip
    assert guestfix.nic_names(["iface eth0 inet dhcp\n"]) == []


def test_the_names_are_kept_by_mac_in_link_files_or_udev_rules() -> None:
    link = guestfix.link_file("ens160", "00:50:56:a1:b2:c3")
    assert "[Match]\nMACAddress=00:50:56:a1:b2:c3\n" in link and "[Link]\nName=ens160\n" in link
    assert all(line.startswith("#") for line in link.splitlines()[:3])
    rules = guestfix.udev_rules({"ens160": "00:50:56:A1:B2:C3", "ens192": "52:54:00:00:00:01"})
    assert (
        'SUBSYSTEM=="net", ACTION=="add", ATTR{address}=="00:50:56:a1:b2:c3", NAME="ens160"'
        in rules.splitlines()
    )
    assert rules.count("NAME=") == 2
