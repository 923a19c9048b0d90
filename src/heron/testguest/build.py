"""Build Heron's test guest: a tiny raw disk image that boots to a shell loop under SeaBIOS.

Usage: ``python -m heron.testguest.build --out DIR`` prints the path of ``DIR/testguest.raw``.

Why it is built this way:

* Everything comes from Debian packages (the cloud kernel, busybox-static, syslinux) so the image
  can be rebuilt on any developer or CI machine from the ordinary package registry, with no
  prebuilt blobs in the repository and no network access beyond apt.
* The kernel and busybox are fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``
  rather than installed, so building never changes the host's own boot setup. The ``.deb`` files
  are kept in ``DIR/cache`` and a stamp records the inputs, so a second run is offline and instant.
* The image is assembled with sfdisk, mtools (``-i image@@offset``) and the mtools flavour of the
  syslinux installer, all working on a plain file: no loop devices, no mount, no root.
* The guest runs entirely from its initramfs (written here as a newc cpio, so device nodes need no
  privileges) and never touches its disk after boot. That keeps it immune to disk caching modes
  and lets a migrated guest carry on without any storage state.
* The guest talks only over the serial console: one ``HERON-GUEST-READY uuid=...`` line carrying
  the SMBIOS UUID (proves which VM answered), then ``heron-tick N`` once a second (proves a
  migrated guest keeps running rather than rebooting), and on an ACPI power button press it prints
  ``HERON-GUEST-POWEROFF`` and powers off (proves graceful shutdown is wired end to end).
* The guest checks its own memory (``memcheck.c``, compiled here with the host's gcc): a region
  filled with a known pattern, kept changing and read back every second, with ``heron-memcheck``
  lines on the console and a ``MISMATCH`` line for every word that is not what was written. A
  live migration that loses a page therefore shows in the guest's own output
  (``heron.testguest.console`` reads it). ``heron.memcheck=MIB:HOT:RATE`` on the kernel command
  line sets its size; ``variant()`` makes an image with other settings.
* The guest has a network (``guest/*.sh``, ``nettool.c``), brought up in the background so READY,
  the ticks and the memory checker never wait for it. Every NIC (virtio-net; 8021q is loaded
  for VLAN sub-interfaces) gets DHCP with the MTU of option 26, and each new state is one line:
  ``heron-net eth0 mac=... addr=10.1.0.5/24 mtu=1450 router=10.1.0.1`` (or ``addr=none`` when
  the first try finds no server; the client keeps trying, and the line with the lease follows).
  ``heron-net-up NIC`` does the same for a NIC made later (a VLAN sub-interface).
  ``nettool serve 7`` answers TCP echo and sink requests; ``nettool send`` and ``nettool rtt``
  measure throughput and round trips to another guest. Busybox brings ping, ip, nc, udhcpc.
* Tests command the guest over the serial console: a line ``heron-run TAG COMMAND`` runs the
  command (side by side with others) and the guest answers ``heron-out TAG LINE`` for each line
  of output, then ``heron-done TAG rc=N``. ``heron.testguest.net`` sends them and reads both.
* /init opens the power button before it prints READY, so ``system_powerdown`` works from the
  READY line on. A press before that is lost, as on any OS still booting: QEMU drops it while
  the guest has not yet enabled the ACPI power button event. Callers wait for READY first.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from heron.errors import HeronError

# Bump whenever the output of this script changes for the same packages: it invalidates stamps.
BUILD_VERSION = 7

IMAGE_NAME = "testguest.raw"
STAMP_NAME = "testguest.stamp.json"
LOCK_NAME = ".testguest.lock"
CACHE_DIR_NAME = "cache"

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# Host packages whose files end up in the image (boot code, ldlinux): their versions are inputs.
HOST_PACKAGES = ("syslinux", "syslinux-common", "gcc", "libc6-dev")
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")

READY_MARKER = "HERON-GUEST-READY"
POWEROFF_MARKER = "HERON-GUEST-POWEROFF"
TICK_PREFIX = "heron-tick"
# The memory checker's defaults: MiB checked (at most half of what is free), hot pages rewritten
# 100 times a second, pages a second of the slow sweep over the rest. Small enough for a 64 MiB
# guest and for a migration capped at 1 MiB/s to converge.
MEMCHECK_DEFAULT = "32:64:256"
KERNEL_CMDLINE = f"console=ttyS0,115200 quiet panic=-1 heron.memcheck={MEMCHECK_DEFAULT}"
MEMCHECK_SOURCE = Path(__file__).with_name("memcheck.c")
NETTOOL_SOURCE = Path(__file__).with_name("nettool.c")
DISKLOG_SOURCE = Path(__file__).with_name("disklog.c")
# The guest's own shell scripts: where they go in the initramfs, and their sources here.
GUEST_SCRIPTS = {
    "bin/heron-net-up": Path(__file__).with_name("guest") / "net-up.sh",
    "bin/heron-dhcp-event": Path(__file__).with_name("guest") / "dhcp-event.sh",
    "bin/heron-commands": Path(__file__).with_name("guest") / "command-channel.sh",
}
# nettool's server, started at boot: the well-known echo port.
NETTOOL_PORT = 7

SECTOR_SIZE = 512
MIB = 1024 * 1024
# 1 MiB alignment is what every partitioning tool defaults to; syslinux does not care.
PARTITION_START_SECTOR = 2048
# Room left on the FAT partition beyond the payload, for FAT tables and ldlinux.
PARTITION_SLACK_BYTES = 2 * MIB
PARTITION_ROUNDING_BYTES = 8 * MIB
MAX_IMAGE_BYTES = 48 * MIB
# Fixed identifiers keep two builds from the same inputs as alike as mtools allows.
DISK_LABEL_ID = 0x48524F4E
FAT_VOLUME_SERIAL = "48524F4E"

# Kernel features the guest cannot work without; a future cloud kernel that turns one of them
# into a module (or off) must fail the build loudly instead of producing a guest that hangs.
REQUIRED_BUILTIN_CONFIG = (
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_RD_GZIP",
    "CONFIG_DEVTMPFS",
    "CONFIG_DMIID",
    "CONFIG_SERIAL_8250_CONSOLE",
    "CONFIG_ACPI",
    "CONFIG_INPUT",
)
# Drivers needed to see the ACPI power button as an input device. Debian's cloud kernel builds
# both as modules, so they have to travel in the initramfs and be loaded by /init.
POWER_BUTTON_CONFIG = (("CONFIG_ACPI_BUTTON", "button"), ("CONFIG_INPUT_EVDEV", "evdev"))

# Drivers for the guest's network, loaded by /init in the background: the NIC (virtio-pci is a
# module in the cloud kernel too), VLAN sub-interfaces for trunk tests, and raw packet sockets
# for udhcpc. Each must be built in or a module; a kernel without one fails the build.
NETWORK_CONFIG = (
    ("CONFIG_VIRTIO_PCI", "virtio_pci"),
    ("CONFIG_VIRTIO_NET", "virtio_net"),
    ("CONFIG_VLAN_8021Q", "8021q"),
    ("CONFIG_PACKET", "af_packet"),
)
# Loaded when the kernel has them, skipped when not: Debian's cloud kernel has no e1000.
# virtio_blk (loaded with the network drivers, after virtio_pci) shows disks plugged in while
# the guest runs: the guest boots from its disk through the firmware, never needing it.
OPTIONAL_NETWORK_CONFIG = (("CONFIG_E1000", "e1000"), ("CONFIG_VIRTIO_BLK", "virtio_blk"))

BUSYBOX_APPLETS = (
    "sh", "mount", "cat", "sleep", "insmod", "dd", "poweroff",
    # the network and the commands tests run over the console
    "ip", "udhcpc", "ping", "nc", "vconfig", "arping", "ifconfig", "route", "netstat",
    "mkdir", "rm", "ls", "ps", "kill", "grep", "head", "tail", "wc", "seq", "timeout", "dmesg",
    "lsmod", "sysctl", "stty", "udhcpd", "killall", "pidof",
)  # fmt: skip
MEMCHECK_BINARY = "bin/heron-memcheck"
NETTOOL_BINARY = "bin/nettool"
DISKLOG_BINARY = "bin/heron-disklog"

# The ACPI button driver names its input device like this for the fixed and the PNP0C0C button.
POWER_BUTTON_INPUT_NAME = "Power Button"
# sizeof(struct input_event) on x86_64: an evdev read needs at least one whole event.
INPUT_EVENT_SIZE = 24


class BuildError(HeronError):
    """A step of the build failed; the message says which and why."""


@dataclass(frozen=True)
class DebPackage:
    """One binary package as apt would download it."""

    name: str
    version: str

    @property
    def spec(self) -> str:
        return f"{self.name}={self.version}"


def log(message: str) -> None:
    # stdout carries only the image path, so scripts can capture it.
    print(f"testguest: {message}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str], *, cwd: Path | None = None, stdin: str | None = None) -> str:
    # apt translates its field names ("Depends:"), and they are parsed here.
    env = dict(os.environ, LC_ALL="C")
    try:
        proc = subprocess.run(
            list(cmd), cwd=cwd, input=stdin, capture_output=True, text=True, env=env, check=False
        )
    except FileNotFoundError as exc:
        raise BuildError(f"{cmd[0]} is not installed") from exc
    if proc.returncode != 0:
        output = (proc.stderr + proc.stdout).strip()
        raise BuildError(f"{' '.join(cmd)} failed with status {proc.returncode}:\n{output}")
    return proc.stdout


# --- apt and dpkg -----------------------------------------------------------------------------


def parse_kernel_dependency(apt_cache_depends: str, metapackage: str = KERNEL_METAPACKAGE) -> str:
    """Return the versioned kernel package named by ``apt-cache depends`` of the metapackage."""
    for line in apt_cache_depends.splitlines():
        key, _, value = line.strip().lstrip("|").partition(":")
        value = value.strip()
        if key == "Depends" and value.startswith("linux-image-") and value != metapackage:
            return value
    raise BuildError(f"no linux-image-* dependency in apt-cache depends {metapackage}")


def parse_control_stanzas(control: str) -> list[dict[str, str]]:
    """Split Debian control-format text (apt-cache show, dpkg-deb -f) into field dicts."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in [*control.splitlines(), ""]:
        if not line.strip():
            if current:
                stanzas.append(current)
            current = {}
        elif not line[0].isspace():
            key, sep, value = line.partition(":")
            if sep:
                current[key] = value.strip()
    return stanzas


def field(stanza: dict[str, str], name: str) -> str:
    try:
        return stanza[name]
    except KeyError:
        raise BuildError(f"no {name} field in package information {stanza}") from None


def candidates(names: Sequence[str]) -> list[DebPackage]:
    """The versions apt would pick now; reads only the local package lists, so works offline."""
    # One apt-cache call for all names: each call costs about half a second.
    stanzas = parse_control_stanzas(run(["apt-cache", "show", "--no-all-versions", *names]))
    versions = {field(stanza, "Package"): field(stanza, "Version") for stanza in stanzas}
    missing = [name for name in names if name not in versions]
    if missing:
        raise BuildError(f"apt knows no {', '.join(missing)}; has apt-get update been run?")
    return [DebPackage(name, versions[name]) for name in names]


def resolve_packages() -> tuple[DebPackage, DebPackage]:
    """Return the (kernel, busybox) packages to build from."""
    kernel = parse_kernel_dependency(run(["apt-cache", "depends", KERNEL_METAPACKAGE]))
    kernel_pkg, busybox_pkg = candidates([kernel, BUSYBOX_PACKAGE])
    return kernel_pkg, busybox_pkg


def host_package_version(name: str) -> str:
    return run(["dpkg-query", "-W", "-f=${Version}", name]).strip()


def deb_identity(deb: Path) -> DebPackage:
    fields = run(["dpkg-deb", "-f", str(deb), "Package", "Version"])
    (stanza,) = parse_control_stanzas(fields)
    return DebPackage(field(stanza, "Package"), field(stanza, "Version"))


def fetch_deb(package: DebPackage, cache: Path) -> Path:
    """Return a cached .deb of exactly this package version, downloading it if needed."""
    for deb in sorted(cache.glob(f"{package.name}_*.deb")):
        if deb_identity(deb) == package:
            return deb
    log(f"downloading {package.spec}")
    # Download into a private directory and move the result in, so an interrupted download
    # never leaves a truncated .deb that a later run would trust.
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        cmd = ["apt-get", "download", "-q"]
        if os.geteuid() == 0:
            # As root apt drops to the _apt user, which cannot write into our directory.
            cmd += ["-o", "APT::Sandbox::User=root"]
        run([*cmd, package.spec], cwd=Path(tmp))
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise BuildError(f"apt-get download {package.spec} left {len(debs)} .deb files")
        target = cache / debs[0].name
        os.replace(debs[0], target)
    if deb_identity(target) != package:
        raise BuildError(f"{target} is not {package.spec}")
    return target


def prune_cache(cache: Path, keep: Iterable[Path]) -> None:
    # Kernel ABI bumps rename the package, so without pruning the cache would grow forever.
    kept = {path.resolve() for path in keep}
    for deb in cache.glob("*.deb"):
        if deb.resolve() not in kept:
            log(f"removing stale {deb.name}")
            deb.unlink()


def extract_deb(deb: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    run(["dpkg-deb", "-x", str(deb), str(dest)])
    return dest


# --- kernel -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelTree:
    """The parts of an unpacked linux-image package the guest needs."""

    vmlinuz: Path
    config: Path
    modules: Path


def find_kernel(root: Path) -> KernelTree:
    vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
    configs = sorted((root / "boot").glob("config-*"))
    module_dirs = sorted([*root.glob("lib/modules/*"), *root.glob("usr/lib/modules/*")])
    if len(vmlinuz) != 1 or len(configs) != 1 or len(module_dirs) != 1:
        raise BuildError(f"{root} does not look like exactly one unpacked kernel")
    return KernelTree(vmlinuz[0], configs[0], module_dirs[0])


def parse_kernel_config(text: str) -> dict[str, str]:
    """Map CONFIG_* names to their values; options that are 'not set' are simply absent."""
    config: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_"):
            key, _, value = line.partition("=")
            config[key] = value.strip('"')
    return config


def modules_to_load(config: dict[str, str]) -> list[str]:
    """Check the kernel can run the guest and return the modules /init must load."""
    missing = [key for key in REQUIRED_BUILTIN_CONFIG if config.get(key) != "y"]
    if missing:
        raise BuildError(f"kernel lacks built-in {', '.join(missing)}")
    wanted = []
    for key, module in POWER_BUTTON_CONFIG:
        value = config.get(key)
        if value == "m":
            wanted.append(module)
        elif value != "y":
            raise BuildError(f"kernel has no {key}: the guest could not see the power button")
    return wanted


def network_modules(config: dict[str, str]) -> list[str]:
    """The modules /init must load for the guest's network; fails on a kernel without one."""
    wanted = []
    for key, module in NETWORK_CONFIG:
        value = config.get(key)
        if value == "m":
            wanted.append(module)
        elif value != "y":
            raise BuildError(f"kernel has no {key}: the guest would have no network")
    wanted += [module for key, module in OPTIONAL_NETWORK_CONFIG if config.get(key) == "m"]
    return wanted


def read_modinfo(data: bytes) -> dict[str, str]:
    """Parse the .modinfo section of a 64-bit little-endian kernel module (ELF relocatable)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BuildError("not a 64-bit little-endian ELF kernel module")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        name = struct.unpack_from("<I", data, base)[0]
        offset, size = struct.unpack_from("<QQ", data, base + 24)
        return name, offset, size

    _, names_offset, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        end = data.index(b"\0", names_offset + name)
        if data[names_offset + name : end] == b".modinfo":
            info: dict[str, str] = {}
            for entry in data[offset : offset + size].split(b"\0"):
                key, sep, value = entry.decode("utf-8", "replace").partition("=")
                if sep:
                    info.setdefault(key, value)
            return info
    raise BuildError("kernel module has no .modinfo section")


def load_module(path: Path) -> bytes:
    data = path.read_bytes()
    # busybox insmod cannot be relied on to decompress, so ship plain .ko files.
    return lzma.decompress(data) if path.name.endswith(".ko.xz") else data


def module_name(path: Path) -> str:
    return path.name.split(".ko")[0].replace("-", "_")


def resolve_modules(module_dir: Path, wanted: Iterable[str]) -> list[tuple[str, bytes]]:
    """Return (name, contents) for the wanted modules and their dependencies, dependencies first.

    Debian ships no modules.dep in the package (depmod runs at install time), so the
    dependencies are read from each module's own .modinfo.
    """
    paths = {
        module_name(path): path
        for pattern in ("*.ko", "*.ko.xz")
        for path in (module_dir / "kernel").rglob(pattern)
    }
    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        if name in chain:
            raise BuildError(f"module dependency loop: {' -> '.join((*chain, name))}")
        if name not in paths:
            raise BuildError(f"kernel module {name} not found under {module_dir}")
        data = load_module(paths[name])
        for dep in filter(None, read_modinfo(data).get("depends", "").split(",")):
            visit(dep, (*chain, name))
        seen.add(name)
        ordered.append((name, data))

    for name in wanted:
        visit(name, ())
    return ordered


# --- initramfs --------------------------------------------------------------------------------


class NewcArchive:
    """Writer for the cpio 'newc' format the kernel unpacks as initramfs.

    Written by hand because it is a few lines, needs no cpio binary on the host, and lets the
    archive hold device nodes and root-owned files without the builder being root.
    """

    MAGIC = b"070701"

    def __init__(self, mtime: int = 0) -> None:
        self._chunks: list[bytes] = []
        self._inode = 0
        self._mtime = mtime

    def _add(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        *,
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
        inode: int | None = None,
    ) -> None:
        if inode is None:
            self._inode += 1
            inode = self._inode
        encoded = name.encode() + b"\0"
        fields = (
            inode, mode, 0, 0, nlink, self._mtime, len(data),
            0, 0, rdev[0], rdev[1], len(encoded), 0,
        )  # fmt: skip
        self._padded(self.MAGIC + b"".join(b"%08X" % field for field in fields) + encoded)
        self._padded(data)

    def _padded(self, chunk: bytes) -> None:
        # Every header+name and every file body starts on a 4-byte boundary.
        self._chunks.append(chunk + b"\0" * (-len(chunk) % 4))

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._add(name, stat.S_IFDIR | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._add(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._add("TRAILER!!!", 0, inode=0)
        return b"".join(self._chunks)


def render_init(modules: Sequence[str], network_modules: Sequence[str] = ()) -> str:
    """The guest's /init: a busybox shell script running as PID 1."""
    insmods = "".join(f"insmod /lib/modules/{name}.ko\n" for name in modules)
    net_insmods = "".join(f"    insmod /lib/modules/{name}.ko\n" for name in network_modules)
    return f"""#!/bin/sh
# Heron test guest init, generated by heron.testguest.build. Runs as PID 1 from the initramfs.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# The ACPI power button is an input device once these modules are in.
{insmods}
# Open every power button in this shell, before READY is printed: evdev queues events from the
# moment of open(), so a system_powerdown sent right after READY cannot be missed. The watcher
# runs in the background and inherits the open descriptor.
fd=3
for input in /sys/class/input/event*; do
    [ "$(cat "$input/device/name" 2>/dev/null)" = "{POWER_BUTTON_INPUT_NAME}" ] || continue
    eval "exec $fd<\\"/dev/input/${{input##*/}}\\""
    (
        dd bs={INPUT_EVENT_SIZE} count=1 of=/dev/null 2>/dev/null <&$fd
        echo "{POWEROFF_MARKER}"
        poweroff -f
    ) &
    fd=$((fd + 1))
done
[ "$fd" -gt 3 ] || echo "heron-guest: no ACPI power button found, system_powerdown will not work"

# The memory checker, with the settings of heron.memcheck=MIB:HOT:RATE on the kernel command line.
for arg in $(cat /proc/cmdline); do
    case "$arg" in heron.memcheck=*) memcheck=${{arg#*=}} ;; esac
done
if [ -n "$memcheck" ]; then
    saved_ifs=$IFS
    IFS=:
    set -- $memcheck
    IFS=$saved_ifs
    /{MEMCHECK_BINARY} "$@" &
fi

# The network, in the background: nothing below waits for a driver or a DHCP server.
(
{net_insmods}    # A writer for each disk prepared for the disk log (heron.testguest.disklog); it
    # touches no other disk. The disks show up within moments of virtio_blk's load.
    (
        started=
        for _ in $(seq 20); do
            for dev in /dev/vd[b-z]; do
                case " $started " in *" $dev "*) continue ;; esac
                if /{DISKLOG_BINARY} probe "$dev" 2>/dev/null; then
                    /{DISKLOG_BINARY} write "$dev" &
                    started="$started $dev"
                fi
            done
            sleep 0.25
        done
    ) &
    /bin/heron-net-up
    /{NETTOOL_BINARY} serve {NETTOOL_PORT}
) &

# Tests' commands from the console. Started before READY, so a request sent once READY is seen
# finds it; until it reads them, requests wait in the terminal's input buffer.
/bin/heron-commands </dev/console &

uuid=$(cat /sys/class/dmi/id/product_uuid 2>/dev/null)
# The empty line first: SeaBIOS's serial console (QEMU -nographic) leaves terminal escapes
# without a newline, which would otherwise end up at the start of the READY line.
echo
echo "{READY_MARKER} uuid=${{uuid:-unknown}}"

n=0
while :; do
    sleep 1
    n=$((n + 1))
    echo "{TICK_PREFIX} $n"
done
"""


def compile_static(source: Path, binary: Path) -> bytes:
    """A C program of the guest as a static binary: the guest has no libc of its own."""
    run(["gcc", "-static", "-O2", "-s", "-Wall", "-Werror", "-o", str(binary), str(source)])
    return binary.read_bytes()


def compile_memcheck(work: Path) -> bytes:
    return compile_static(MEMCHECK_SOURCE, work / "heron-memcheck")


def compile_nettool(work: Path) -> bytes:
    return compile_static(NETTOOL_SOURCE, work / "nettool")


def compile_disklog(work: Path) -> bytes:
    return compile_static(DISKLOG_SOURCE, work / "heron-disklog")


def build_initramfs(
    busybox: bytes,
    modules: Sequence[tuple[str, bytes]],
    memcheck: bytes,
    *,
    network_modules: Sequence[tuple[str, bytes]] = (),
    nettool: bytes = b"",
    disklog: bytes = b"",
) -> bytes:
    archive = NewcArchive()
    for directory in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "run", "tmp"):
        archive.directory(directory)
    # The kernel opens /dev/console for PID 1 before /init can mount devtmpfs.
    archive.char_device("dev/console", 5, 1)
    archive.file("bin/busybox", busybox, 0o755)
    for applet in BUSYBOX_APPLETS:
        archive.symlink(f"bin/{applet}", "busybox")
    archive.file(MEMCHECK_BINARY, memcheck, 0o755)
    archive.file(NETTOOL_BINARY, nettool, 0o755)
    archive.file(DISKLOG_BINARY, disklog, 0o755)
    for path, source in GUEST_SCRIPTS.items():
        archive.file(path, source.read_bytes(), 0o755)
    for name, data in [*modules, *network_modules]:
        archive.file(f"lib/modules/{name}.ko", data)
    init = render_init([name for name, _ in modules], [name for name, _ in network_modules])
    archive.file("init", init.encode(), 0o755)
    # mtime=0 keeps the initramfs byte-for-byte reproducible.
    return gzip.compress(archive.finish(), compresslevel=9, mtime=0)


# --- disk image -------------------------------------------------------------------------------


def render_syslinux_cfg(cmdline: str = KERNEL_CMDLINE) -> str:
    # SERIAL makes boot loader errors visible in the serial log, which is all a test can see.
    return (
        "SERIAL 0 115200\n"
        "DEFAULT heron\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "LABEL heron\n"
        "  LINUX /vmlinuz\n"
        "  INITRD /initrd.gz\n"
        f"  APPEND {cmdline}\n"
    )


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def partition_size(payload_bytes: int) -> int:
    return round_up(
        payload_bytes + payload_bytes // 8 + PARTITION_SLACK_BYTES, PARTITION_ROUNDING_BYTES
    )


def sfdisk_script(start_sector: int, size_sectors: int) -> str:
    # Type 0x0e (FAT16, LBA): SeaBIOS and mbr.bin only need the active flag, but the type keeps
    # other tools (and people) from guessing wrong.
    return (
        "label: dos\n"
        f"label-id: 0x{DISK_LABEL_ID:08x}\n"
        "unit: sectors\n\n"
        f"start={start_sector}, size={size_sectors}, type=e, bootable\n"
    )


def build_image(image: Path, files: dict[str, bytes]) -> None:
    """Write a partitioned, syslinux-bootable raw image holding ``files`` in its FAT root."""
    part_bytes = partition_size(sum(len(data) for data in files.values()))
    offset = PARTITION_START_SECTOR * SECTOR_SIZE
    total = offset + part_bytes
    if total > MAX_IMAGE_BYTES:
        raise BuildError(
            f"image would be {total // MIB} MiB, over the {MAX_IMAGE_BYTES // MIB} MiB cap"
        )
    with image.open("wb") as handle:
        handle.truncate(total)
    table = sfdisk_script(PARTITION_START_SECTOR, part_bytes // SECTOR_SIZE)
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(image)], stdin=table)

    mbr = SYSLINUX_MBR.read_bytes()
    # Only the 440 bytes of boot code: the disk signature and partition table follow them.
    if len(mbr) > 440:
        raise BuildError(f"{SYSLINUX_MBR} is {len(mbr)} bytes, more than fits before the table")
    with image.open("r+b") as handle:
        handle.write(mbr)

    target = f"{image}@@{offset}"
    # -H: syslinux's boot sector adds the hidden-sector count to every sector it reads, so it
    # has to be the partition's start on the disk.
    geometry = ["-T", str(part_bytes // SECTOR_SIZE), "-h", "64", "-s", "32"]
    hidden = ["-H", str(PARTITION_START_SECTOR)]
    run(["mformat", "-i", target, *geometry, *hidden, "-N", FAT_VOLUME_SERIAL, "-v", "HERON", "::"])
    # Install first so ldlinux.sys sits unfragmented at the start of the empty filesystem.
    run(["syslinux", "--offset", str(offset), "--install", str(image)])
    with tempfile.TemporaryDirectory() as tmp:
        sources = []
        for name, data in files.items():
            sources.append(Path(tmp, name))
            sources[-1].write_bytes(data)
        run(["mcopy", "-i", target, *map(str, sources), "::"])


# --- driver -----------------------------------------------------------------------------------


def stamp_inputs(kernel: DebPackage, busybox: DebPackage) -> dict[str, object]:
    return {
        "build_version": BUILD_VERSION,
        "kernel": kernel.spec,
        "busybox": busybox.spec,
        "host": {name: host_package_version(name) for name in HOST_PACKAGES},
        "sources": {
            path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in (MEMCHECK_SOURCE, NETTOOL_SOURCE, DISKLOG_SOURCE, *GUEST_SCRIPTS.values())
        },
    }


def up_to_date(image: Path, stamp: Path, inputs: dict[str, object]) -> bool:
    try:
        return image.is_file() and json.loads(stamp.read_text()) == inputs
    except (OSError, ValueError):
        return False


def build(out: Path, *, force: bool = False) -> Path:
    """Build ``out/testguest.raw`` unless an image from the same inputs is already there."""
    out.mkdir(parents=True, exist_ok=True)
    # Parallel test workers may all ask for the image at once: one builds, the others then
    # find it up to date instead of downloading and building it again.
    with (out / LOCK_NAME).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(out, force=force)


def _build_locked(out: Path, *, force: bool) -> Path:
    cache = out / CACHE_DIR_NAME
    cache.mkdir(exist_ok=True)
    image = out / IMAGE_NAME
    stamp = out / STAMP_NAME

    kernel_pkg, busybox_pkg = resolve_packages()
    inputs = stamp_inputs(kernel_pkg, busybox_pkg)
    if not force and up_to_date(image, stamp, inputs):
        log(f"up to date ({kernel_pkg.spec}, {busybox_pkg.spec})")
        return image

    kernel_deb = fetch_deb(kernel_pkg, cache)
    busybox_deb = fetch_deb(busybox_pkg, cache)
    prune_cache(cache, [kernel_deb, busybox_deb])

    stamp.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as tmp_name:
        tmp = Path(tmp_name)
        log(f"unpacking {kernel_deb.name}")
        kernel = find_kernel(extract_deb(kernel_deb, tmp / "kernel"))
        busybox = (extract_deb(busybox_deb, tmp / "busybox") / "bin" / "busybox").read_bytes()

        config = parse_kernel_config(kernel.config.read_text())
        wanted = modules_to_load(config)
        modules = resolve_modules(kernel.modules, wanted)
        loaded = {name for name, _ in modules}
        net_wanted = network_modules(config)
        net = [m for m in resolve_modules(kernel.modules, net_wanted) if m[0] not in loaded]
        initrd = build_initramfs(
            busybox,
            modules,
            compile_memcheck(tmp),
            network_modules=net,
            nettool=compile_nettool(tmp),
            disklog=compile_disklog(tmp),
        )
        names = ", ".join(name for name, _ in [*modules, *net]) or "none"
        log(f"initramfs {len(initrd) // 1024} KiB with modules {names}")

        files = {
            "vmlinuz": kernel.vmlinuz.read_bytes(),
            "initrd.gz": initrd,
            "syslinux.cfg": render_syslinux_cfg().encode(),
        }
        partial = tmp / IMAGE_NAME
        build_image(partial, files)
        # The kernel and initrd also lie beside the image: the KVM probe boots them directly.
        for name in ("vmlinuz", "initrd.gz"):
            (tmp / name).write_bytes(files[name])
            os.replace(tmp / name, out / name)
        os.replace(partial, image)
    stamp.write_text(json.dumps(inputs, indent=2, sort_keys=True) + "\n")
    log(f"built {image} ({image.stat().st_size // MIB} MiB)")
    return image


def parse_memcheck(settings: str) -> tuple[int, int, int]:
    """``MIB:HOT:RATE`` for the memory checker, checked."""
    parts = settings.split(":")
    if len(parts) != 3 or not all(part.isdigit() for part in parts) or int(parts[0]) < 1:
        raise BuildError(f"memcheck settings {settings!r} are not MIB:HOT:RATE")
    mib, hot, rate = map(int, parts)
    return mib, hot, rate


def variant(out: Path, memcheck: str) -> Path:
    """A copy of the built image whose memory checker runs with other settings
    (``MIB:HOT:RATE``): a bigger or busier self-checking guest for migration soaks."""
    mib, hot, rate = parse_memcheck(memcheck)
    base = build(out)
    image = out / f"testguest-memcheck-{mib}-{hot}-{rate}.raw"
    with (out / LOCK_NAME).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image.exists() and image.stat().st_mtime >= base.stat().st_mtime:
            return image
        with tempfile.TemporaryDirectory(dir=out, prefix=".variant-") as tmp:
            partial = Path(tmp, image.name)
            shutil.copyfile(base, partial)
            config = Path(tmp, "syslinux.cfg")
            cmdline = KERNEL_CMDLINE.replace(MEMCHECK_DEFAULT, f"{mib}:{hot}:{rate}")
            config.write_text(render_syslinux_cfg(cmdline))
            target = f"{partial}@@{PARTITION_START_SECTOR * SECTOR_SIZE}"
            run(["mcopy", "-o", "-i", target, str(config), "::syslinux.cfg"])
            os.replace(partial, image)
    return image


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m heron.testguest.build",
        description="Build the Heron test guest disk image from Debian packages.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output and cache directory")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument(
        "--memcheck", metavar="MIB:HOT:RATE", help="also make a variant with these checker settings"
    )
    args = parser.parse_args(argv)
    try:
        image = build(args.out.resolve(), force=args.force)
        if args.memcheck:
            image = variant(args.out.resolve(), args.memcheck)
    except BuildError as exc:
        log(f"error: {exc}")
        return 1
    print(image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
