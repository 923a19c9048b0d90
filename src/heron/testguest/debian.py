"""Build the Debian guest of the snapshot tests: Debian 12 with systemd, qemu-guest-agent,
PostgreSQL 15 and MariaDB 10.11, on a disk that boots by itself under SeaBIOS.

Usage: ``python -m heron.testguest.debian --out DIR`` prints the path of ``DIR/debian.qcow2``.

Why it is built this way:

* Like the test guest (``heron.testguest.build``) everything comes from Debian packages, from
  the same mirror the host's apt uses (read from /etc/apt), so any developer or CI machine that
  reaches Debian can build it and nothing prebuilt lives in the repository.
* ``mmdebstrap --variant=minbase`` makes the root tree, without recommends, documentation or
  translations, as root in a directory (``--mode=root``: no loop devices, no mounts of ours).
  The kernel is Debian's cloud kernel; its initramfs is made inside the tree by initramfs-tools
  with only the drivers Heron's disk buses need (``debian/initramfs``): small and quick to
  unpack under TCG.
* The disk is an MBR with two partitions: a FAT one with syslinux, the kernel and the initramfs
  (assembled with mtools, as the test guest's is), and the ext4 root made by
  ``mkfs.ext4 -d`` from the tree, with a fixed UUID the kernel command line names. So a Heron
  VM boots it from its disk like any other image, and QEMU can also boot it directly with
  ``-kernel``/``-initrd`` (``DebianGuest.kernel``/``initrd``, copies beside the image).
* cloud-init, looking only for a NoCloud seed (``cidata``): with none, as in every test but the
  cloud-init one, it is disabled at boot by its generator and costs nothing.
* Inside (``debian/overlay``): qemu-guest-agent (started by udev when the
  ``org.qemu.guest_agent.0`` virtio-serial port appears) with its fsfreeze hook on: the
  runner and the PostgreSQL and MySQL hooks Heron ships (``guest/``), the first checkpointing
  before a freeze, the second holding FLUSH TABLES WITH READ LOCK across it (installed as
  ``10-postgresql`` and ``90-mysql``: hooks freeze in name order, and the lock, which stops
  MariaDB's commits, then lasts only the freeze and not PostgreSQL's checkpoint);
  PostgreSQL 15 with a database ``heron``, a table ``load_rows`` and a superuser role
  ``root``; MariaDB 10.11 (Debian's ``mariadb-server``) with the same database and table in
  InnoDB, root connecting over the unix socket; ``heron-insert-load``, an insert load into
  either that reports the last committed row; and the test guest's command channel
  (``heron-run TAG CMD``, driven by ``heron.testguest.net.CommandChannel``) as a systemd
  service on ttyS0 in place of a login prompt, which prints ``HERON-GUEST-READY uuid=...``
  once it reads requests (after both databases are up).
* The image is rebuilt only when an input changes: the versions apt would install now of the
  packages named here (from the host's package lists, so the check is offline), the versions of
  the host tools that shape the image, and the builder's own files. ``debian.packages`` beside
  the image lists every package version inside it.
* Other guests are flavours of this one (``Flavour``: packages, initramfs configuration,
  kernel command line, fstab, overlay files, customize steps), built by the same code into
  their own files: the V2V tests' VMware-style guest (``heron.testguest.vmware``) is one.
  ``SNAPSHOT`` is this guest, the default everywhere.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from heron.testguest import build as testguest
from heron.testguest.build import BuildError, run

# Bump whenever the output of this module changes for the same inputs: it invalidates stamps.
BUILD_VERSION = 3

# A flavour's files in the output directory are NAME.qcow2, NAME.vmlinuz, NAME.initrd,
# NAME.packages (the versions inside), NAME.stamp.json and .NAME.lock (Flavour.guest, build).
BUILD_DIR_PREFIX = ".build-"

SUITE = "bookworm"
# The packages asked for; apt adds their dependencies. Their candidate versions are the stamp's.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "udev",
    testguest.KERNEL_METAPACKAGE,
    "initramfs-tools",
    "qemu-guest-agent",
    "postgresql-15",
    "postgresql-client-15",
    # MariaDB and its client (a dependency): the MySQL freeze hook's real server.
    "mariadb-server",
    # The cloud-init tests' NoCloud seed; without a seed ds-identify turns it off at boot
    # (datasource_list in the overlay names only NoCloud), so the other tests do not wait on it.
    "cloud-init",
)
# Host tools whose versions shape the image.
HOST_PACKAGES = ("mmdebstrap", "e2fsprogs", "syslinux", "syslinux-common", "mtools", "qemu-utils")

HERE = Path(__file__).with_name("debian")
OVERLAY = HERE / "overlay"
# What Heron ships for guests (in the repository, beside src/): the fsfreeze hook runner and
# the database hooks. The guest runs the very files administrators install, not copies.
SHIPPED = HERE.parents[3] / "guest"
SHIPPED_HOOKS = SHIPPED / "fsfreeze-hook.d"
HOOKS = {
    "fsfreeze-hook": "etc/qemu/fsfreeze-hook",
    "fsfreeze-hook.d/postgresql": "etc/qemu/fsfreeze-hook.d/10-postgresql",
    "fsfreeze-hook.d/mysql": "etc/qemu/fsfreeze-hook.d/90-mysql",
}
INITRAMFS_CONFIG = HERE / "initramfs"
# The test guest's command channel, the same script in both guests.
COMMAND_CHANNEL = testguest.GUEST_SCRIPTS["bin/heron-commands"]
COMMAND_CHANNEL_PATH = "usr/local/sbin/heron-commands"

DATABASE = "heron"
TABLE = "load_rows"
PG_VERSION = "15"
# A fixed filesystem UUID: the kernel command line finds the root by it on any disk bus.
ROOT_UUID = "48524f4e-0015-4deb-8000-000000000001"
KERNEL_CMDLINE = (
    f"console=ttyS0,115200 root=UUID={ROOT_UUID} rootfstype=ext4 rw quiet loglevel=3 "
    "systemd.show_status=false fsck.mode=skip panic=-1"
)
MIB = 1024 * 1024
SECTOR_SIZE = 512
BOOT_START_SECTOR = 2048
# Room on the root beyond its files: the database grows under the tests' insert load.
ROOT_HEADROOM_BYTES = 512 * MIB
ROOT_ROUNDING_BYTES = 64 * MIB
# mmdebstrap's stamps on files: fixed, so two builds of the same packages differ less.
SOURCE_DATE_EPOCH = "1700000000"

# Timers and services a test VM does not want running under TCG during a test.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "systemd-tmpfiles-clean.timer",
    # The command channel has ttyS0; a login prompt there would steal its input.
    "serial-getty@ttyS0.service",
    "getty@tty1.service",
)
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    # PostgreSQL's JIT and the LLVM it loads: a third of the image, and jit is off
    # (heron.conf). postgres itself does not link LLVM; without llvmjit.so it never compiles.
    "path-exclude=/usr/lib/postgresql/*/lib/llvmjit*",
    "path-exclude=/usr/lib/postgresql/*/lib/bitcode/*",
    "path-exclude=/usr/lib/x86_64-linux-gnu/libLLVM-*",
    "path-exclude=/usr/lib/x86_64-linux-gnu/libz3.so*",
    # MariaDB's offline tools, 5 MiB each (a hundred in all): neither its install (which runs
    # mariadb-install-db, my_print_defaults and resolveip), nor the server, nor the tests
    # (the mariadb client) run them.
    "path-exclude=/usr/bin/aria_*",
    "path-exclude=/usr/bin/myisam*",
    "path-exclude=/usr/bin/mariadb-binlog",
    "path-exclude=/usr/bin/mariadb-conv",
    "path-exclude=/usr/bin/mariadb-dump*",
    "path-exclude=/usr/bin/mariadb-import",
    "path-exclude=/usr/bin/mariadb-plugin",
    "path-exclude=/usr/bin/mariadb-show",
    "path-exclude=/usr/bin/mariadb-slap",
    "path-exclude=/usr/bin/mariadb-waitpid",
    "path-exclude=/usr/bin/perror",
    "path-exclude=/usr/bin/resolve_stack_dump",
)


@dataclass(frozen=True)
class DebianGuest:
    """A built Debian guest: its disk, and copies of its kernel and initramfs for -kernel."""

    image: Path
    kernel: Path
    initrd: Path
    cmdline: str = KERNEL_CMDLINE


def log(message: str) -> None:
    print(f"debian-guest: {message}", file=sys.stderr, flush=True)


# --- pure parts -------------------------------------------------------------------------------


def mirror_lines(sources: str, suite: str = SUITE) -> list[str]:
    """One-line ``deb`` entries for `suite` (and its -updates, -security) in apt sources text,
    deb822 (``.sources``) or one-line (``.list``)."""
    lines: list[str] = []
    if any(line.startswith("Types:") for line in sources.splitlines()):
        for stanza in testguest.parse_control_stanzas(sources):
            if "deb" not in stanza.get("Types", "").split() or stanza.get("Enabled") == "no":
                continue
            components = stanza.get("Components", "main")
            for uri in stanza.get("URIs", "").split():
                lines += [
                    f"deb {uri} {s} {components}"
                    for s in stanza.get("Suites", "").split()
                    if s.split("-")[0] == suite
                ]
        return lines
    for line in sources.splitlines():
        words = line.split("#", 1)[0].split()
        # Options in brackets ([signed-by=...]) name host paths mmdebstrap does not need.
        words = [w for w in words if not (w.startswith("[") or w.endswith("]") or "=" in w)]
        if len(words) >= 3 and words[0] == "deb" and words[2].split("-")[0] == suite:
            lines.append(" ".join(words))
    return lines


def host_mirrors(apt: Path = Path("/etc/apt"), suite: str = SUITE) -> list[str]:
    """The Debian mirror entries the host's apt uses, so the guest comes from the same place."""
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.sources"))]
    files += sorted((apt / "sources.list.d").glob("*.list"))
    lines: list[str] = []
    for path in files:
        if path.is_file():
            lines += mirror_lines(path.read_text(), suite)
    if not lines:
        raise BuildError(f"no {suite} entry in the host's apt sources under {apt}")
    return lines


def root_size(tree_bytes: int, headroom: int = ROOT_HEADROOM_BYTES) -> int:
    """The root filesystem's size for a tree of `tree_bytes`: room for metadata and growth."""
    return testguest.round_up(tree_bytes + tree_bytes // 4 + headroom, ROOT_ROUNDING_BYTES)


def disk_layout(boot_bytes: int, root_bytes: int) -> str:
    """The sfdisk script: a bootable FAT partition for syslinux, then the ext4 root."""
    boot_sectors = boot_bytes // SECTOR_SIZE
    root_start = BOOT_START_SECTOR + boot_sectors
    return (
        "label: dos\n"
        f"label-id: 0x{testguest.DISK_LABEL_ID:08x}\n"
        "unit: sectors\n\n"
        f"start={BOOT_START_SECTOR}, size={boot_sectors}, type=e, bootable\n"
        f"start={root_start}, size={root_bytes // SECTOR_SIZE}, type=83\n"
    )


def database_setup_sql() -> str:
    """What PostgreSQL's single-user mode runs at build time, one statement a line."""
    return (
        "CREATE ROLE root SUPERUSER LOGIN;\n"
        f"CREATE TABLE {TABLE} (n bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());\n"
    )


def mariadb_setup_sql() -> str:
    """What MariaDB's bootstrap mode runs at build time, one statement a line (it reads a
    statement up to a line ending in ";"): the load's database and table, in InnoDB (the
    engine whose crash recovery the tests see)."""
    return (
        f"CREATE DATABASE {DATABASE};\n"
        f"CREATE TABLE {DATABASE}.{TABLE} (n BIGINT PRIMARY KEY, "
        "at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB;\n"
    )


def database_setup(root_var: str) -> list[str]:
    """The snapshot guest's own customize steps: its databases, started at boot."""
    r = root_var
    pg = f"/usr/lib/postgresql/{PG_VERSION}/bin/postgres"
    data = f"/var/lib/postgresql/{PG_VERSION}/main"
    conf = f"config_file=/etc/postgresql/{PG_VERSION}/main/postgresql.conf"
    single = f"chroot {r} runuser -u postgres -- {pg} --single -D {data} -c {conf}"
    statements = database_setup_sql().splitlines()
    return [
        f"chroot {r} systemctl enable --quiet postgresql.service mariadb.service",
        f"echo 'CREATE DATABASE {DATABASE};' | {single} postgres >/dev/null",
        *(f"echo '{sql}' | {single} {DATABASE} >/dev/null" for sql in statements),
        # Debian's MariaDB logs to the journal and makes no /var/log/mysql; the overlay's
        # log_error (a file the tests read across reboots of clones) needs it.
        f"chroot {r} install -d -o mysql -g adm -m 2750 /var/log/mysql",
        # The package's postinst made MariaDB's system tables; bootstrap mode runs SQL
        # without a socket, and resizes the redo log to the overlay's setting on the way.
        f"printf '%s\\n' {shlex.join(mariadb_setup_sql().splitlines())}"
        f" | chroot {r} mariadbd --user=mysql --bootstrap",
        # Its messages went to the error log: the guest's starts with its first boot.
        f"rm -f {r}/var/log/mysql/error.log",
    ]


@dataclass(frozen=True)
class Flavour:
    """What makes one guest built here differ from another: the snapshot tests' guest
    (`SNAPSHOT`, the default everywhere) and variants of it, such as the V2V tests'
    VMware-style guest (heron.testguest.vmware)."""

    # The prefix of its files in the output directory (NAME.qcow2, NAME.vmlinuz, ...).
    name: str
    packages: tuple[str, ...]
    # Copied into /etc/initramfs-tools before any package is installed.
    initramfs: Path
    cmdline: str
    # /etc/fstab, whole.
    fstab: str
    # The root filesystem's UUID (mkfs.ext4 -U).
    root_uuid: str
    # Files of OVERLAY (relative paths) it takes; None: all of it, with the freeze hooks.
    overlay_files: tuple[str, ...] | None
    # Its own customize steps, given the shell expression of the root tree.
    setup: Callable[[str], list[str]]
    root_headroom: int = ROOT_HEADROOM_BYTES
    # The boot partition's size as a multiple of its files' (room for a bigger initramfs).
    boot_room: int = 1
    # Files of its own its stamp follows (its module, its configuration).
    sources: tuple[Path, ...] = ()

    def guest(self, out: Path) -> DebianGuest:
        return DebianGuest(
            out / f"{self.name}.qcow2", out / f"{self.name}.vmlinuz", out / f"{self.name}.initrd",
            self.cmdline,
        )  # fmt: skip


SNAPSHOT = Flavour(
    name="debian",
    packages=PACKAGES,
    initramfs=INITRAMFS_CONFIG,
    cmdline=KERNEL_CMDLINE,
    fstab=f"UUID={ROOT_UUID} / ext4 rw,errors=remount-ro 0 0\n",
    root_uuid=ROOT_UUID,
    overlay_files=None,
    setup=database_setup,
)


def customize_script(root_var: str = '"$1"', flavour: Flavour = SNAPSHOT) -> str:
    """mmdebstrap's customize hook (run on the host with the root tree as $1)."""
    r = root_var
    masks = " ".join(MASKED_UNITS)
    return "\n".join(
        [
            "set -eu",
            f"echo heron-debian > {r}/etc/hostname",
            f"printf '%s' {shlex.quote(flavour.fstab)} > {r}/etc/fstab",
            # No root password: the console runs the command channel, and nothing listens on
            # a network.
            f"chroot {r} passwd -d root >/dev/null",
            f"chroot {r} systemctl enable --quiet heron-commands.service",
            f"chroot {r} systemctl mask --quiet {masks}",
            *flavour.setup(r),
            f"chroot {r} dpkg-query -W > {r}/.heron-packages",
            # What apt downloaded is not part of the guest.
            f"rm -rf {r}/var/cache/apt/archives/*.deb {r}/var/lib/apt/lists/*",
            "",
        ]
    )


# --- I/O --------------------------------------------------------------------------------------


def mounts_under(directory: Path, mounts: str) -> list[Path]:
    """Mount points at or below `directory` in /proc/self/mounts text, deepest first."""
    found = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        # The kernel escapes spaces and the like in mount points as octal (\040).
        point = Path(fields[1].encode().decode("unicode_escape"))
        if point == directory or directory in point.parents:
            found.append(point)
    return sorted(found, key=lambda point: len(point.parts), reverse=True)


def remove_build_dir(directory: Path) -> None:
    """Remove a build directory, unmounting first what mmdebstrap left mounted in its tree.

    mmdebstrap --mode=root bind-mounts the host's /dev nodes and /sys into the tree and
    unmounts them when it ends, but not when it is killed. Deleting a tree with those still
    mounted would delete the host's own files through them, so anything left is unmounted, and
    a directory that stays mounted is left alone, loudly.
    """
    for point in mounts_under(directory, Path("/proc/self/mounts").read_text()):
        subprocess.run(["umount", "--recursive", "--lazy", str(point)], check=False)
    left = mounts_under(directory, Path("/proc/self/mounts").read_text())
    if left:
        raise BuildError(f"not removing {directory}: still mounted there: {left}")
    shutil.rmtree(directory, ignore_errors=True)


def resolve_packages(flavour: Flavour = SNAPSHOT) -> list[testguest.DebPackage]:
    """The versions apt would pick now for the packages asked for (and the versioned kernel)."""
    kernel = testguest.parse_kernel_dependency(
        run(["apt-cache", "depends", testguest.KERNEL_METAPACKAGE])
    )
    return testguest.candidates([*flavour.packages, kernel])


def overlay_sources(flavour: Flavour = SNAPSHOT) -> list[Path]:
    """The overlay files a flavour takes."""
    if flavour.overlay_files is None:
        return sorted(p for p in OVERLAY.rglob("*") if p.is_file())
    return [OVERLAY / name for name in flavour.overlay_files]


def source_digests(flavour: Flavour = SNAPSHOT) -> dict[str, str]:
    files = [Path(__file__), COMMAND_CHANNEL, *overlay_sources(flavour), *flavour.sources]
    files += sorted(p for p in flavour.initramfs.rglob("*") if p.is_file())
    digests = {
        str(path.relative_to(HERE.parent)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in files
    }
    if flavour.overlay_files is None:
        for name in HOOKS:
            digests[f"guest/{name}"] = hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest()
    return digests


def stamp_inputs(
    packages: Sequence[testguest.DebPackage], flavour: Flavour = SNAPSHOT
) -> dict[str, object]:
    return {
        "build_version": BUILD_VERSION,
        "packages": [package.spec for package in packages],
        "host": {name: testguest.host_package_version(name) for name in HOST_PACKAGES},
        "sources": source_digests(flavour),
    }


def make_tree(root: Path, work: Path, flavour: Flavour = SNAPSHOT) -> None:
    """The root tree, by mmdebstrap, with Heron's files and setup in it."""
    overlay = work / "overlay"
    if flavour.overlay_files is None:
        shutil.copytree(OVERLAY, overlay, symlinks=True)
        for name, path in HOOKS.items():
            target = overlay / path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SHIPPED / name, target)
            target.chmod(0o755)
    for name in flavour.overlay_files or ():
        target = overlay / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(OVERLAY / name, target)
    channel = overlay / COMMAND_CHANNEL_PATH
    channel.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(COMMAND_CHANNEL, channel)
    channel.chmod(0o755)
    hook = work / "customize.sh"
    hook.write_text(customize_script(flavour=flavour))
    cmd = [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        "--format=directory",
        "--quiet",
        f"--include={','.join(flavour.packages)}",
        "--aptopt=Acquire::Check-Valid-Until false",
        "--aptopt=APT::Install-Recommends false",
        *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
        # Before any package: the kernel's first initramfs is then already the small one.
        f'--setup-hook=mkdir -p "$1/etc/initramfs-tools" && '
        f'cp -r {flavour.initramfs}/. "$1/etc/initramfs-tools/"',
        f'--customize-hook=cp -r {overlay}/. "$1/"',
        f'--customize-hook=sh {hook} "$1"',
        SUITE,
        str(root),
        *host_mirrors(),
    ]
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, LC_ALL="C.UTF-8")
    env.pop("APT_CONFIG", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise BuildError(f"mmdebstrap failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def boot_files(root: Path) -> tuple[Path, Path]:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise BuildError(f"expected one kernel and one initramfs in {root}/boot")
    return kernels[0], initrds[0]


def tree_bytes(root: Path) -> int:
    return int(run(["du", "-sb", "--one-file-system", str(root)]).split()[0])


def make_disk(
    raw: Path, root: Path, kernel: Path, initrd: Path, work: Path, flavour: Flavour = SNAPSHOT
) -> None:
    """The partitioned raw disk: syslinux + kernel + initramfs on FAT, the tree on ext4."""
    files = {
        "vmlinuz": kernel.read_bytes(),
        "initrd.gz": initrd.read_bytes(),
        "syslinux.cfg": testguest.render_syslinux_cfg(flavour.cmdline).encode(),
    }
    boot_bytes = testguest.partition_size(
        sum(len(data) for data in files.values()) * flavour.boot_room
    )
    root_bytes = root_size(tree_bytes(root), flavour.root_headroom)
    ext4 = work / "root.ext4"
    log(f"making the {root_bytes // MIB} MiB ext4 root")
    env_mkfs = ["env", f"E2FSPROGS_FAKE_TIME={SOURCE_DATE_EPOCH}"]
    uuid = flavour.root_uuid
    run(
        [*env_mkfs, "mkfs.ext4", "-q", "-F", "-L", "heron-root", "-U", uuid,
         "-E", f"hash_seed={uuid}", "-d", str(root), str(ext4), f"{root_bytes // 1024}k"]
    )  # fmt: skip
    boot_offset = BOOT_START_SECTOR * SECTOR_SIZE
    root_offset = boot_offset + boot_bytes
    with raw.open("wb") as handle:
        handle.truncate(root_offset + root_bytes)
    run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(raw)],
        stdin=disk_layout(boot_bytes, root_bytes),
    )
    with raw.open("r+b") as handle:
        handle.write(testguest.SYSLINUX_MBR.read_bytes())
    target = f"{raw}@@{boot_offset}"
    geometry = ["-T", str(boot_bytes // SECTOR_SIZE), "-h", "64", "-s", "32"]
    run(["mformat", "-i", target, *geometry, "-H", str(BOOT_START_SECTOR),
         "-N", testguest.FAT_VOLUME_SERIAL, "-v", "HERONBOOT", "::"])  # fmt: skip
    run(["syslinux", "--offset", str(boot_offset), "--install", str(raw)])
    sources = []
    for name, data in files.items():
        sources.append(work / name)
        sources[-1].write_bytes(data)
    run(["mcopy", "-i", target, *map(str, sources), "::"])
    # Sparse both ways: the empty part of the root costs nothing on the host's disk.
    run(["dd", f"if={ext4}", f"of={raw}", "bs=4M", f"seek={root_offset}", "oflag=seek_bytes",
         "conv=notrunc,sparse", "status=none"])  # fmt: skip


def build(out: Path, *, force: bool = False, flavour: Flavour = SNAPSHOT) -> DebianGuest:
    """Build ``out/debian.qcow2`` (``NAME.qcow2`` of another flavour) unless an image from the
    same inputs is already there."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / f".{flavour.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(out, force=force, flavour=flavour)


def _build_locked(out: Path, *, force: bool, flavour: Flavour) -> DebianGuest:
    guest = flavour.guest(out)
    stamp = out / f"{flavour.name}.stamp.json"
    manifest_name = f"{flavour.name}.packages"
    inputs = stamp_inputs(resolve_packages(flavour), flavour)
    complete = all(path.is_file() for path in (guest.image, guest.kernel, guest.initrd))
    if not force and complete and testguest.up_to_date(guest.image, stamp, inputs):
        log("up to date")
        return guest
    if os.geteuid() != 0:
        raise BuildError("building the Debian guest needs root (mmdebstrap --mode=root)")
    stamp.unlink(missing_ok=True)
    # Leftovers of a build that was killed (we hold the lock: no build is running).
    for stale in out.glob(f"{BUILD_DIR_PREFIX}{flavour.name}-*"):
        remove_build_dir(stale)
    work = Path(tempfile.mkdtemp(dir=out, prefix=f"{BUILD_DIR_PREFIX}{flavour.name}-"))
    try:
        root = work / "root"
        log(f"bootstrapping Debian {SUITE} into {root}")
        make_tree(root, work, flavour)
        kernel, initrd = boot_files(root)
        manifest = root / ".heron-packages"
        shutil.move(manifest, work / manifest_name)
        raw = work / "debian.raw"
        make_disk(raw, root, kernel, initrd, work, flavour)
        partial = work / guest.image.name
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(partial)])
        shutil.copyfile(kernel, work / guest.kernel.name)
        shutil.copyfile(initrd, work / guest.initrd.name)
        for path in (guest.kernel, guest.initrd, out / manifest_name, guest.image):
            os.replace(work / path.name, path)
    finally:
        remove_build_dir(work)
    stamp.write_text(json.dumps(inputs, indent=2, sort_keys=True) + "\n")
    log(f"built {guest.image} ({guest.image.stat().st_size // MIB} MiB)")
    return guest


def main(
    argv: Sequence[str] | None = None,
    prog: str = "python -m heron.testguest.debian",
    description: str = "Build the Debian guest of the snapshot tests from Debian packages.",
    flavour: Flavour = SNAPSHOT,
) -> int:
    """The command line of this builder and of its flavours' (heron.testguest.vmware)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        guest = build(args.out.resolve(), force=args.force, flavour=flavour)
    except BuildError as exc:
        log(f"error: {exc}")
        return 1
    print(guest.image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
