"""The Debian guest builder's pure parts: which mirror it takes from the host's apt, the disk's
layout and sizes, and the guest's files it ships."""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

import pytest

from heron.testguest import debian
from heron.testguest.build import BuildError

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main contrib

Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main

Types: deb
Enabled: no
URIs: http://mirror.example/debian
Suites: bookworm
Components: main
"""


def test_mirror_lines_from_deb822_keep_the_suite_and_its_updates_and_security() -> None:
    assert debian.mirror_lines(DEB822) == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main contrib",
    ]


def test_mirror_lines_from_one_line_sources_drop_options_and_comments() -> None:
    text = (
        "# a comment\n"
        "deb [signed-by=/usr/share/keyrings/k.gpg] http://deb.debian.org/debian bookworm main\n"
        "deb-src http://deb.debian.org/debian bookworm main\n"
        "deb http://deb.debian.org/debian trixie main\n"
        "deb http://deb.debian.org/debian-security bookworm-security main # trailing\n"
    )
    assert debian.mirror_lines(text) == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ]


def test_host_mirrors_read_sources_list_d_and_fail_when_none(tmp_path: Path) -> None:
    apt = tmp_path
    (apt / "sources.list.d").mkdir()
    with pytest.raises(BuildError, match="no bookworm entry"):
        debian.host_mirrors(apt)
    (apt / "sources.list.d" / "debian.sources").write_text(DEB822)
    (apt / "sources.list.d" / "other.sources.disabled").write_text(
        DEB822.replace("debian.org", "x")
    )
    assert len(debian.host_mirrors(apt)) == 3


def test_the_root_has_room_to_grow_and_whole_rounding() -> None:
    size = debian.root_size(400 * debian.MIB)
    assert size % debian.ROOT_ROUNDING_BYTES == 0
    assert size >= 400 * debian.MIB * 5 // 4 + debian.ROOT_HEADROOM_BYTES


def test_disk_layout_puts_the_root_right_after_the_bootable_fat_partition() -> None:
    layout = debian.disk_layout(24 * debian.MIB, 1024 * debian.MIB)
    boot, root = [line for line in layout.splitlines() if line.startswith("start=")]
    assert boot == "start=2048, size=49152, type=e, bootable"
    assert root == f"start={2048 + 49152}, size={1024 * 2048}, type=83"


def test_the_kernel_finds_its_root_by_the_uuid_mkfs_gives_it() -> None:
    assert f"root=UUID={debian.ROOT_UUID}" in debian.KERNEL_CMDLINE
    assert "console=ttyS0" in debian.KERNEL_CMDLINE
    assert f"UUID={debian.ROOT_UUID} / ext4" in debian.customize_script()


def test_the_customize_hook_sets_up_the_database_and_masks_the_serial_getty() -> None:
    script = debian.customize_script()
    assert "CREATE DATABASE heron;" in script
    assert "CREATE TABLE load_rows" in script
    assert "serial-getty@ttyS0.service" in script
    # Single-user mode reads one statement a line: none may span lines.
    assert all(line.endswith(";") for line in debian.database_setup_sql().splitlines())
    # MariaDB's table is made by its bootstrap mode, in InnoDB, and the server starts at boot.
    mariadb = debian.mariadb_setup_sql().splitlines()
    assert "ENGINE=InnoDB" in mariadb[-1]
    assert all(line.endswith(";") for line in mariadb)  # bootstrap mode reads up to a ";" line
    assert f"printf '%s\\n' {shlex.join(mariadb)} | chroot \"$1\" mariadbd" in script
    assert "postgresql.service mariadb.service" in script


def test_the_lock_holding_mysql_hook_freezes_after_postgresql_checkpoints() -> None:
    """Hooks freeze in name order: MariaDB's lock, which stops its commits, must not also
    wait out PostgreSQL's CHECKPOINT."""
    installed = sorted(Path(path).name for path in debian.HOOKS.values() if ".d/" in path)
    assert installed == ["10-postgresql", "90-mysql"]
    assert debian.HOOKS["fsfreeze-hook.d/mysql"].endswith("/90-mysql")


def test_the_guest_scripts_are_executable() -> None:
    for path in (
        debian.OVERLAY / "usr/local/bin/heron-insert-load",
        debian.SHIPPED_HOOKS / "postgresql",
        debian.SHIPPED_HOOKS / "mysql",
        debian.INITRAMFS_CONFIG / "hooks/heron",
    ):
        assert os.stat(path).st_mode & stat.S_IXUSR, path


def test_the_stamp_changes_with_the_builder_files() -> None:
    digests = debian.source_digests()
    assert "debian.py" in digests
    # The guest's database hooks are the ones Heron ships, not a copy in the overlay.
    assert "guest/fsfreeze-hook.d/postgresql" in digests
    assert "guest/fsfreeze-hook.d/mysql" in digests
    assert "guest/fsfreeze-hook" in digests
    assert not any(name.startswith("debian/overlay/etc/qemu/fsfreeze-hook.d") for name in digests)
    assert any(name.endswith("command-channel.sh") for name in digests)


def test_mounts_under_a_build_dir_come_deepest_first_and_others_are_left_out() -> None:
    mounts = (
        "sysfs /sys sysfs rw 0 0\n"
        "/dev/vda1 /var/cache/heron/debian/.build-x/root/sys sysfs rw 0 0\n"
        "udev /var/cache/heron/debian/.build-x/root/dev/null devtmpfs rw 0 0\n"
        "sysfs /var/cache/heron/debian/.build-x/root/sys/kernel/security securityfs rw 0 0\n"
        "tmpfs /var/cache/heron/debian/.build-xy tmpfs rw 0 0\n"
        "tmpfs /var/cache/heron/debian/.build-x/with\\040space tmpfs rw 0 0\n"
    )
    build_dir = Path("/var/cache/heron/debian/.build-x")
    found = debian.mounts_under(build_dir, mounts)
    assert found[0] == build_dir / "root/sys/kernel/security"
    assert set(found) == {
        build_dir / "root/sys",
        build_dir / "root/dev/null",
        build_dir / "root/sys/kernel/security",
        build_dir / "with space",
    }
