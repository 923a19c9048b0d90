"""Guest fixes: make an imported VMware or Hyper-V Linux guest boot on virtio.

A VM made on VMware or Hyper-V often cannot boot as it is on virtio disks:

* its fstab, its boot loader's kernel command line (``root=``, ``resume=``) and crypttab may
  name the root by the device the old controller gave it (``/dev/sda2``, ``/dev/hda1``),
  which a virtio-blk disk is not (``/dev/vda2``): the initramfs then waits for a device that
  never comes ("Gave up waiting for root file system device");
* its initramfs was built for the old hardware only (initramfs-tools' ``MODULES=dep``,
  dracut's host-only mode): no virtio_pci/virtio_blk, so the kernel sees no disk at all;
* the other hypervisor's tools (open-vm-tools, VMware Tools, Hyper-V daemons) are useless
  there and are removed.

How: libguestfs (Debian's ``libguestfs0``/``guestfish``) boots its appliance, a small VM
with the guest's disks attached (files, or ARDFS volumes over NBD), under KVM or TCG as the
host allows; guestfish runs as a server (``--listen``) and each step is one remote command,
so the decisions and the text rewriting stay here, in pure functions with unit tests.
Device names become ``UUID=`` of the filesystem the appliance finds at the same place (same
disk, same partition number); the initramfs is rebuilt by the guest's own tool
(update-initramfs or dracut, run in the guest's root by the appliance) with the virtio
drivers asked for, and checked to hold them; packages are removed with the guest's own
package manager. A boot partition the guest does not mount (syslinux on
FAT) is searched too, and a copy of an initramfs there is refreshed with the rebuilt one.

Why not virt-v2v-in-place (Debian's virt-v2v 2.2): docs/v2v.md ("Guest fixes") gives the
measurements; in short, it refuses a guest whose boot loader it does not know, and the import
needs a report of what was changed that it does not give in a readable form.

This module is the step only: the import decides when to call it and what to do when it fails
(a Windows guest without a virtio-win ISO gets SATA and e1000 instead).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from heron.errors import HeronError
from heron.hypervisor.accel import choose_accelerator
from heron.models.v2v import GuestFixChange, GuestFixKind, GuestFixReport, InitramfsTool
from heron.v2v import appliance

# What the guest's initramfs must carry to find its disk and network on a Heron VM.
VIRTIO_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net")
# Without these the guest cannot find its root on virtio; virtio_net only costs the network.
ROOT_MODULES = ("virtio_pci", "virtio_blk")

# Where the administrator puts Red Hat's virtio-win ISO (drivers for Windows): Debian does not
# ship it (its licence and its build are Red Hat's), so Heron cannot install it.
VIRTIO_WIN_ISO = Path("/var/lib/heron/v2v/virtio-win.iso")

# Packages of other hypervisors' guest tools (deb and rpm names).
VMWARE_PACKAGES = (
    "open-vm-tools", "open-vm-tools-desktop", "open-vm-tools-sdmp", "open-vm-tools-dev",
    "open-vm-tools-containerinfo", "open-vm-tools-salt-minion", "vmware-tools",
    "VMwareTools", "vmware-tools-core", "vmware-tools-plugins", "vmware-tools-services",
)  # fmt: skip
HYPERV_PACKAGES = (
    "hyperv-daemons", "hyperv-daemons-license", "hypervkvpd", "hypervvssd", "hypervfcopyd",
    "hyperv-tools", "hyper-v",
)  # fmt: skip
# VMware Tools installed from VMware's tarball, not a package: its own uninstaller.
VMWARE_TARBALL_UNINSTALLER = "/usr/bin/vmware-uninstall-tools.pl"

# Files on the guest's root whose text may name devices (and boot loader configurations).
ROOT_FILES = (
    "/etc/fstab",
    "/etc/crypttab",
    "/etc/default/grub",
    "/etc/initramfs-tools/conf.d/resume",
    "/etc/kernel/cmdline",
)
BOOT_CONFIGS = (
    "/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/boot/grub/menu.lst", "/boot/grub/grub.conf",
    "/boot/syslinux.cfg", "/boot/syslinux/syslinux.cfg", "/boot/extlinux/extlinux.conf",
    "/boot/extlinux.conf",
    # The same, on a filesystem that is itself the boot partition.
    "/grub/grub.cfg", "/grub2/grub.cfg", "/grub/menu.lst", "/grub/grub.conf", "/syslinux.cfg",
    "/syslinux/syslinux.cfg", "/extlinux/extlinux.conf", "/extlinux.conf",
)  # fmt: skip
# Boot Loader Specification entries (Fedora, RHEL 8+) and EFI system partitions' grub.cfg.
BOOT_CONFIG_GLOBS = ("/boot/loader/entries/*.conf", "/loader/entries/*.conf", "/EFI/*/grub.cfg")

# A guest device name of a disk or partition by its controller: SCSI/SATA (sd), IDE (hd), Xen
# (xvd) and virtio (vd); letters name the disk, the number the partition.
DEVICE_NAME = re.compile(
    r"(?<![\w/.-])/dev/(?P<kind>sd|hd|xvd|vd)(?P<disk>[a-z]{1,3})(?P<part>[0-9]*)(?![\w/.-])"
)
# The guest's network configuration, read for the names of its NICs on the source.
NETWORK_CONFIGS = (
    "/etc/network/interfaces",
    "/etc/network/interfaces.d/*",
    "/etc/netplan/*.yaml",
    "/etc/systemd/network/*.network",
    "/etc/sysconfig/network-scripts/ifcfg-*",
    "/etc/NetworkManager/system-connections/*",
)
# A name systemd/udev gives a NIC from where it sits on the bus (its "predictable" name:
# onboard, PCI slot, PCI path, MAC), which changes when the NIC becomes virtio-net. Kernel
# names (eth0) and virtual devices (bridges, bonds, VLANs) are not these.
PREDICTABLE_NIC = re.compile(
    r"(?<![\w.:-])(en(?:o\d+|s\d+(?:f\d+)?(?:d\d+)?|p\d+s\d+(?:f\d+)?(?:d\d+)?"
    r"|x[0-9a-f]{12}))(?![\w.-]|:\d)"
)
LINK_FILE = "/etc/systemd/network/10-heron-v2v-{name}.link"
UDEV_RULES = "/etc/udev/rules.d/70-heron-v2v-net-names.rules"
PATH_ENV = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
CACHE_DIR = "/var/cache/heron"
SLOW_STEP = 5.0


class GuestFixError(HeronError):
    """The guest cannot be fixed (or the fix failed); the message says why and what to do."""


# --- pure parts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drive:
    """One disk of the guest as qemu-img names it (a file, or an ARDFS volume's NBD export)
    and its format; in the VM's disk order, which the device names in the guest follow."""

    image: str
    format: str


def add_drive_command(drive: Drive) -> list[str]:
    """guestfish's ``add-drive`` for a drive: a file as it is; an NBD export on a Unix socket
    (``nbd+unix:///EXPORT?socket=PATH``, how heron-io serves ARDFS volumes) through
    libguestfs' NBD protocol. Other kinds (rbd:, http:) raise GuestFixError."""
    if "://" not in drive.image and ":" not in drive.image.split("/")[0]:
        return ["add-drive", drive.image, f"format:{drive.format}"]
    found = urlsplit(drive.image)
    sockets = parse_qs(found.query).get("socket", [])
    if found.scheme != "nbd+unix" or len(sockets) != 1:
        raise GuestFixError(
            f"{drive.image.split('?')[0]}: the guest fix opens files and NBD exports on a "
            "Unix socket only"
        )
    return [
        "add-drive", found.path.lstrip("/"), f"format:{drive.format}", "protocol:nbd",
        f"server:unix:{sockets[0]}",
    ]  # fmt: skip


def disk_index(letters: str) -> int:
    """The disk's place (0-based) from its letters: a=0, z=25, aa=26 (as Linux names them)."""
    index = 0
    for letter in letters:
        index = index * 26 + ord(letter) - ord("a") + 1
    return index - 1


def disk_letters(index: int) -> str:
    """The inverse of `disk_index`."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return letters


def appliance_name(guest_device: str) -> str | None:
    """The name the fix's appliance gives the device a guest name means, if it is one.

    The appliance sees the disks in the order they were given, as sda, sdb...: the guest's
    sda, hda and xvda were its first disk (the import gives the disks in the VM's order)."""
    found = DEVICE_NAME.fullmatch(guest_device)
    if found is None:
        return None
    return f"/dev/sd{found['disk']}{found['part']}"


@dataclass
class Rewrite:
    """A text with device names replaced, what was replaced, and what could not be."""

    text: str
    replaced: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.replaced)


def rewrite_device_names(text: str, uuids: Mapping[str, str]) -> Rewrite:
    """Replace device names (``/dev/sda2``) by ``UUID=...`` in fstab, crypttab, boot loader
    configurations and kernel command lines, outside comments.

    `uuids` maps appliance device names (``/dev/sda2``) to their filesystem UUIDs. A name is
    replaced wherever it stands alone as a value: the first field of fstab, ``root=`` and
    ``resume=`` on a kernel command line, ``RESUME=``. A name whose device has no UUID (or is
    not there) is left as it was and listed in `unknown`. Virtio names (``/dev/vda``) are
    replaced too: they would change on a virtio-scsi disk.
    """
    result = Rewrite(text)
    lines = []
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("#"):
            lines.append(line)
            continue

        def replace(found: re.Match[str]) -> str:
            name = found.group(0)
            device = appliance_name(name)
            uuid = uuids.get(device) if device else None
            if uuid is None:
                if name not in result.unknown:
                    result.unknown.append(name)
                return name
            result.replaced[name] = f"UUID={uuid}"
            return f"UUID={uuid}"

        lines.append(DEVICE_NAME.sub(replace, line))
    result.text = "".join(lines)
    return result


def nic_names(configs: Iterable[str]) -> list[str]:
    """The predictable NIC names the configuration texts use, by kind then in their
    numbers' order (ens160 before ens192 before ens224, as VMware numbers its NICs' slots)."""
    found = {m.group(1) for text in configs for m in PREDICTABLE_NIC.finditer(text)}

    def order(name: str) -> tuple[str, list[int], str]:
        return name[:3], [int(n) for n in re.findall(r"\d+", name)], name

    return sorted(found, key=order)


def link_file(name: str, mac: str) -> str:
    """A systemd .link file that names the NIC with `mac` `name`."""
    return (
        "# Written by Heron's V2V guest fix: this VM's NIC was named "
        f"{name} on its source, and\n# its network configuration names it so. Remove this "
        "file once the configuration\n# names the NIC as this hardware does.\n"
        f"[Match]\nMACAddress={mac}\n\n[Link]\nName={name}\n"
    )


def udev_rules(names: Mapping[str, str]) -> str:
    """udev rules naming each NIC by its MAC (`names`: name -> MAC), for a guest whose udev
    has no .link files."""
    lines = [
        "# Written by Heron's V2V guest fix: the names this VM's NICs had on its source,",
        "# which its network configuration uses.",
    ]
    lines += [
        f'SUBSYSTEM=="net", ACTION=="add", ATTR{{address}}=="{mac.lower()}", NAME="{name}"'
        for name, mac in names.items()
    ]
    return "\n".join(lines) + "\n"


def with_modules(modules_file: str, modules: Sequence[str]) -> str | None:
    """initramfs-tools' /etc/initramfs-tools/modules with `modules` added, or None if it lists
    them already. (Listed modules go into the initramfs whatever MODULES= says, and are loaded
    at boot.)"""
    listed = {
        line.split()[0]
        for line in modules_file.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    missing = [module for module in modules if module not in listed]
    if not missing:
        return None
    text = modules_file if not modules_file or modules_file.endswith("\n") else modules_file + "\n"
    return (
        text
        + "# Heron's V2V import: the VM runs on virtio now.\n"
        + "".join(f"{module}\n" for module in missing)
    )


def dracut_config(modules: Sequence[str]) -> str:
    """A dracut.conf.d file that puts `modules` in every initramfs dracut makes."""
    return (
        f'# Heron\'s V2V import: the VM runs on virtio now.\nadd_drivers+=" {" ".join(modules)} "\n'
    )


def tools_to_remove(installed: Iterable[str]) -> list[str]:
    """The installed packages of VMware's and Hyper-V's guest tools, in a stable order."""
    present = set(installed)
    return [name for name in (*VMWARE_PACKAGES, *HYPERV_PACKAGES) if name in present]


def parse_package_list(text: str) -> list[str]:
    """Names of installed packages from ``dpkg-query -W -f '${Package} ${db:Status-Abbrev}\\n'``
    (only those marked ``ii``/``iU``...: installed) or ``rpm -qa --qf '%{NAME}\\n'`` lines."""
    names = []
    for line in text.splitlines():
        words = line.split()
        if len(words) == 1 or (len(words) >= 2 and words[1][1:2] in ("i", "U", "F", "W", "t")):
            names.append(words[0])
    return names


def boot_config_initrds(text: str) -> list[str]:
    """The initramfs files a syslinux/extlinux configuration loads (``INITRD x`` lines and
    ``initrd=x`` on ``APPEND`` lines), as written (relative to the configuration's filesystem;
    a leading / or none both mean its root)."""
    found: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        keyword = words[0].lower()
        values: list[str] = []
        if keyword == "initrd" and len(words) > 1:
            values = words[1].split(",")
        elif keyword == "append":
            for word in words[1:]:
                if word.startswith("initrd="):
                    values += word.removeprefix("initrd=").split(",")
        found += [value for value in values if value and value not in found]
    return found


def parse_mountpoints(text: str) -> dict[str, str]:
    """guestfish ``inspect-get-mountpoints``/``list-filesystems`` output: ``key: value`` lines."""
    result = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            result[key.strip()] = value.strip()
    return result


def initramfs_paths(tool: str, kernels: Sequence[str]) -> dict[str, str]:
    """Each kernel's initramfs, where the guest's tool writes it."""
    if tool == "dracut":
        return {kernel: f"/boot/initramfs-{kernel}.img" for kernel in kernels}
    return {kernel: f"/boot/initrd.img-{kernel}" for kernel in kernels}


def listed_modules(listing: str) -> set[str]:
    """Module names in an initramfs listing (lsinitramfs or lsinitrd output)."""
    names = set()
    for line in listing.splitlines():
        base = line.rsplit("/", 1)[-1].split()[-1] if line.strip() else ""
        for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
            if base.endswith(suffix):
                names.add(base.removesuffix(suffix).replace("-", "_"))
    return names


def builtin_modules(modules_builtin: str) -> set[str]:
    """Module names a kernel has built in, from its modules.builtin."""
    return {
        line.rsplit("/", 1)[-1].removesuffix(".ko").replace("-", "_")
        for line in modules_builtin.splitlines()
        if line.strip()
    }


# --- the appliance ----------------------------------------------------------------------------


def appliance_env(
    accelerator: str, kernel_dir: Path | None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment libguestfs runs its appliance with.

    * The direct backend (no libvirtd) and, when KVM does not work on this host, TCG
      (``force_tcg``): libguestfs would otherwise try KVM, whose guests hang on such hosts.
    * supermin builds the appliance from the host's own kernel in /boot. A host without one
      (a container) gets the Debian kernel `kernel_dir` holds (``heron.v2v.appliance``
      unpacks it, scripts/install-deps runs it): SUPERMIN_KERNEL, _MODULES, _KERNEL_VERSION.
    """
    env = dict(os.environ if base is None else base)
    env["LIBGUESTFS_BACKEND"] = "direct"
    settings = [s for s in env.get("LIBGUESTFS_BACKEND_SETTINGS", "").split(":") if s]
    settings = [s for s in settings if s != "force_tcg"]
    if accelerator == "tcg":
        settings.append("force_tcg")
    if settings:
        env["LIBGUESTFS_BACKEND_SETTINGS"] = ":".join(settings)
    else:
        env.pop("LIBGUESTFS_BACKEND_SETTINGS", None)
    if kernel_dir is not None:
        kernel = appliance.find_kernel(kernel_dir)
        env["SUPERMIN_KERNEL"] = str(kernel.vmlinuz)
        env["SUPERMIN_MODULES"] = str(kernel.modules)
        env["SUPERMIN_KERNEL_VERSION"] = kernel.version
    return env


class Guestfish:
    """A guestfish server (``--listen``) with the guest's disks, driven one remote command at
    a time, every command bounded by the fix's deadline."""

    def __init__(
        self, drives: Sequence[Drive], env: dict[str, str], deadline: float, errors: Path
    ) -> None:
        commands = [add_drive_command(d) for d in drives]  # refused before anything starts
        self.env = env
        self.deadline = deadline
        self.errors = errors
        self.qemu_pid: int | None = None
        # Told of each step that takes SLOW_STEP or more (the log: where the time goes).
        self.slow: Callable[[str], None] | None = None
        # The server forks, its parent prints the PID and exits; the server closes its stdout
        # (so reading it ends) but keeps stderr: a file, read when something fails.
        args = ["guestfish", "--listen"]
        try:
            with errors.open("ab") as stderr:
                proc = subprocess.run(
                    args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                    env=env, timeout=max(1.0, deadline - time.monotonic()), check=False,
                )  # fmt: skip
        except FileNotFoundError:
            raise GuestFixError(
                "guestfish is not installed (Debian package guestfish; scripts/install-deps "
                "installs it)"
            ) from None
        except subprocess.TimeoutExpired:
            raise GuestFixError("guestfish --listen did not start in time") from None
        out = proc.stdout.decode(errors="replace")
        found = re.search(r"GUESTFISH_PID=(\d+)", out)
        if proc.returncode != 0 or found is None:
            raise GuestFixError(f"guestfish --listen failed: {out.strip()} {self.stderr()}")
        self.pid = int(found.group(1))
        for command in commands:
            self(*command)

    def stderr(self, tail: int = 2000) -> str:
        """The end of what the server and its appliance wrote to stderr."""
        try:
            return self.errors.read_text(errors="replace")[-tail:].strip()
        except FileNotFoundError:
            return ""

    def _run(self, args: list[str]) -> str:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise GuestFixError("the guest fix ran out of time")
        try:
            proc = subprocess.run(
                args, capture_output=True, text=True, env=self.env, timeout=left, check=False
            )
        except subprocess.TimeoutExpired:
            raise GuestFixError(f"the guest fix ran out of time in: {' '.join(args)}") from None
        took = time.monotonic() - (self.deadline - left)
        if took >= SLOW_STEP and self.slow is not None:
            self.slow(f"{' '.join(args[3:])[:80]}: {took:.0f}s")
        if proc.returncode != 0:
            # The server printed the reason on its own stderr (the file), and has exited.
            reason = (proc.stderr or proc.stdout).strip() or self.stderr(600)
            raise GuestFixError(f"{' '.join(args[3:])[:200]}: {reason}")
        return proc.stdout

    def __call__(self, *command: str) -> str:
        """Run a command; an error ends the server (guestfish exits on a command's error) and
        raises GuestFixError with the reason."""
        return self._run(["guestfish", f"--remote={self.pid}", "--", *command])

    def try_(self, *command: str) -> str | None:
        """The command's output, or None if it failed (a file that is not there). Sent with
        guestfish's "-" prefix, so the server carries on; the client then exits 0 either
        way, and the error shows only as a "libguestfs: error:" line on the server's stderr."""
        before = self._errors_size()
        out = self._run(["guestfish", f"--remote={self.pid}", "--", f"-{command[0]}", *command[1:]])
        if self._errors_size() > before:
            return None
        return out

    def _errors_size(self) -> int:
        try:
            return self.errors.stat().st_size
        except FileNotFoundError:
            return 0

    def launch(self) -> None:
        self("run")
        pid = self.try_("get-pid")
        self.qemu_pid = int(pid) if pid and pid.strip().isdigit() else None

    def close(self) -> None:
        """Shut the appliance down; kill it (and the server) by pid if it does not answer."""
        try:
            self.deadline = max(self.deadline, time.monotonic() + 30)
            self("exit")
        except GuestFixError:
            for pid in (self.qemu_pid, self.pid):
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


# --- the fix ----------------------------------------------------------------------------------


class _Fix:
    def __init__(self, g: Guestfish, work: Path, log: Callable[[str], None]) -> None:
        self.g = g
        self.work = work
        self.log = log
        self.changes: list[GuestFixChange] = []
        self.warnings: list[str] = []
        self.boot_loaders: list[str] = []
        self.uuids: dict[str, str] = {}

    def change(self, kind: GuestFixKind, path: str, detail: str) -> None:
        self.log(f"{path}: {detail}")
        self.changes.append(GuestFixChange(kind=kind, path=path, detail=detail))

    def warn(self, message: str) -> None:
        self.log(f"warning: {message}")
        if message not in self.warnings:
            self.warnings.append(message)

    def read(self, path: str) -> bytes | None:
        if self.g.try_("is-file", path) != "true\n":
            return None
        local = self.work / "read"
        self.g("download", path, str(local))
        return local.read_bytes()

    def write(self, path: str, data: bytes) -> None:
        local = self.work / "write"
        local.write_bytes(data)
        self.g("upload", str(local), path)

    def sh(self, script: str) -> str:
        return self.g("sh", f"{PATH_ENV}; export PATH; {script}")

    def device_uuids(self) -> None:
        for device, fstype in parse_mountpoints(self.g("list-filesystems")).items():
            if fstype in ("unknown", ""):
                continue
            uuid = (self.g.try_("vfs-uuid", device) or "").strip()
            if uuid:
                self.uuids[device] = uuid

    def rewrite(self, path: str, where: str) -> None:
        """Replace device names in one text file (if it is there)."""
        data = self.read(path)
        if data is None:
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self.warn(f"{where}: not text, left as it was")
            return
        result = rewrite_device_names(text, self.uuids)
        for name in result.unknown:
            self.warn(f"{where} names {name}, which is not a filesystem on this disk: left as is")
        if result.changed:
            self.write(path, result.text.encode())
            pairs = ", ".join(f"{old} -> {new}" for old, new in sorted(result.replaced.items()))
            self.change("device-names", where, pairs)

    def boot_configs(self) -> list[str]:
        found = [path for path in BOOT_CONFIGS if self.g.try_("is-file", path) == "true\n"]
        for pattern in BOOT_CONFIG_GLOBS:
            found += [p for p in (self.g.try_("glob-expand", pattern) or "").split() if p]
        return found


def _inspect(g: Guestfish) -> tuple[str, dict[str, str]]:
    roots = g("inspect-os").split()
    if not roots:
        raise GuestFixError("no operating system found on its disks (libguestfs inspection)")
    kinds = {root: g("inspect-get-type", root).strip() for root in roots}
    linux = [root for root in roots if kinds[root] == "linux"]
    if not linux:
        if "windows" in kinds.values():
            raise GuestFixError(
                "a Windows guest: its virtio drivers come from Red Hat's virtio-win ISO, which "
                f"Debian does not ship; put it at {VIRTIO_WIN_ISO} to have them installed, or "
                "import the VM with SATA disks and an e1000 NIC"
            )
        raise GuestFixError(f"no Linux found on its disks (found: {', '.join(kinds.values())})")
    root = linux[0]
    facts = {
        "distro": g("inspect-get-distro", root).strip(),
        "product": g("inspect-get-product-name", root).strip(),
        "major": g("inspect-get-major-version", root).strip(),
        "minor": g("inspect-get-minor-version", root).strip(),
    }
    return root, facts


def _mount_guest(g: Guestfish, root: str) -> None:
    # mount-options, never mount: libguestfs' mount adds -o sync, which made every write
    # synchronous (measured: 40 s for a 6 MiB file on the FAT boot partition under TCG).
    mounts = parse_mountpoints(g("inspect-get-mountpoints", root))
    for point in sorted(mounts, key=len):
        g("mount-options", "", mounts[point], point)


def _kernels(fix: _Fix) -> list[str]:
    modules = set((fix.g.try_("ls", "/lib/modules") or "").split())
    boot = (fix.g.try_("ls", "/boot") or "").split()
    return sorted(
        name.removeprefix("vmlinuz-")
        for name in boot
        if name.startswith("vmlinuz-") and name.removeprefix("vmlinuz-") in modules
    )


def _remove_tools(fix: _Fix, package_format: str) -> None:
    if package_format == "deb":
        listing = fix.sh("dpkg-query -W -f '${Package} ${db:Status-Abbrev}\\n'")
    elif package_format == "rpm":
        listing = fix.sh("rpm -qa --qf '%{NAME}\\n'")
    else:
        fix.warn(f"packages of format {package_format!r} are not looked at: tools left as is")
        listing = ""
    packages = tools_to_remove(parse_package_list(listing))
    if packages:
        names = " ".join(packages)
        if package_format == "deb":
            fix.sh(
                "DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Options::=--force-confdef"
                f" purge {names} || DEBIAN_FRONTEND=noninteractive dpkg --purge {names}"
            )
            left = tools_to_remove(
                parse_package_list(fix.sh("dpkg-query -W -f '${Package} ${db:Status-Abbrev}\\n'"))
            )
        else:
            fix.sh(f"rpm -e --nodeps {names}")
            left = tools_to_remove(parse_package_list(fix.sh("rpm -qa --qf '%{NAME}\\n'")))
        for package in packages:
            if package in left:
                fix.warn(f"could not remove {package}")
            else:
                fix.change("package-removed", package, "removed (another hypervisor's tools)")
    if fix.g.try_("is-file", VMWARE_TARBALL_UNINSTALLER) == "true\n":
        try:
            fix.sh(f"{VMWARE_TARBALL_UNINSTALLER} </dev/null")
            fix.change("package-removed", "VMware Tools", "uninstalled by its own uninstaller")
        except GuestFixError as exc:
            fix.warn(f"VMware Tools (from VMware's tarball) could not be uninstalled: {exc}")


def _keep_nic_names(fix: _Fix, macs: Sequence[str]) -> None:
    """Have the NICs keep the names their source gave them, which the guest's network
    configuration uses: on virtio-net (another PCI slot) udev would name them otherwise and
    the guest would come up without its network. Each name the configuration uses is given,
    in order, to the NIC with the next MAC (the VM's NICs in their source order)."""
    texts = []
    for pattern in NETWORK_CONFIGS:
        for path in (fix.g.try_("glob-expand", pattern) or "").split():
            data = fix.read(path)
            if data is not None:
                texts.append(data.decode(errors="replace"))
    names = nic_names(texts)
    if not names:
        return
    if len(names) > len(macs):
        fix.warn(
            f"the network configuration names {', '.join(names)}; the VM has {len(macs)} "
            f"NICs: {', '.join(names[len(macs) :])} keep no NIC"
        )
    pairs = dict(zip(names, macs, strict=False))
    has_link_files = any(
        fix.g.try_("is-dir", d) == "true\n"
        for d in ("/lib/systemd/network", "/usr/lib/systemd/network")
    )
    if has_link_files:
        fix.g("mkdir-p", "/etc/systemd/network")
        for name, mac in pairs.items():
            path = LINK_FILE.format(name=name)
            fix.write(path, link_file(name, mac).encode())
            fix.change("nic-name", path, f"the NIC with MAC {mac} keeps its name {name}")
    else:
        fix.g("mkdir-p", "/etc/udev/rules.d")
        fix.write(UDEV_RULES, udev_rules(pairs).encode())
        named = ", ".join(f"{mac} -> {name}" for name, mac in pairs.items())
        fix.change("nic-name", UDEV_RULES, f"the NICs keep their names: {named}")


def _rebuild_initramfs(
    fix: _Fix, kernels: Sequence[str]
) -> tuple[InitramfsTool | None, dict[str, str]]:
    """Rebuild every kernel's initramfs with the virtio drivers; returns the tool and the
    sha256 of each initramfs as it was before (copies elsewhere are found by it)."""
    g = fix.g
    tool: InitramfsTool
    if g.try_("is-file", "/usr/sbin/update-initramfs") == "true\n":
        tool = "update-initramfs"
    elif any(g.try_("is-file", p) == "true\n" for p in ("/usr/bin/dracut", "/usr/sbin/dracut")):
        tool = "dracut"
    else:
        fix.warn("no update-initramfs or dracut in the guest: its initramfs is as it was")
        return None, {}
    before: dict[str, str] = {}
    paths = initramfs_paths(tool, kernels)
    for kernel in kernels:
        digest = g.try_("checksum", "sha256", paths[kernel])
        if digest:
            before[kernel] = digest.strip()
        builtin = builtin_modules(g.try_("cat", f"/lib/modules/{kernel}/modules.builtin") or "")
        absent = [m for m in ROOT_MODULES if m not in builtin and not _has_module(g, kernel, m)]
        if absent:
            fix.warn(f"kernel {kernel} has no {', '.join(absent)}: it cannot boot on virtio")
    if tool == "update-initramfs":
        path = "/etc/initramfs-tools/modules"
        current = fix.read(path)
        updated = with_modules(current.decode() if current else "", VIRTIO_MODULES)
        if updated is not None:
            fix.write(path, updated.encode())
            fix.change("initramfs", path, f"lists {', '.join(VIRTIO_MODULES)}")
        fix.log("rebuilding the initramfs with update-initramfs (in the guest)")
        fix.sh("update-initramfs -u -k all 2>&1")
    else:
        path = "/etc/dracut.conf.d/heron-virtio.conf"
        fix.write(path, dracut_config(VIRTIO_MODULES).encode())
        fix.change("initramfs", path, f"adds {', '.join(VIRTIO_MODULES)}")
        fix.log("rebuilding the initramfs with dracut (in the guest)")
        for kernel in kernels:
            fix.sh(f"dracut -f {paths[kernel]} {kernel} 2>&1")
    lister = "lsinitramfs" if tool == "update-initramfs" else "lsinitrd"
    for kernel in kernels:
        builtin = builtin_modules(g.try_("cat", f"/lib/modules/{kernel}/modules.builtin") or "")
        listing = fix.g.try_("sh", f"{PATH_ENV}; export PATH; {lister} {paths[kernel]}")
        if listing is None:
            fix.warn(f"kernel {kernel}: no initramfs at {paths[kernel]} after the rebuild")
            continue
        carried = listed_modules(listing) | builtin
        missing = [m for m in VIRTIO_MODULES if m not in carried]
        if missing:
            fix.warn(f"the initramfs of {kernel} still lacks {', '.join(missing)}")
        else:
            fix.change("initramfs", paths[kernel], f"rebuilt with {', '.join(VIRTIO_MODULES)}")
    return tool, before


def _has_module(g: Guestfish, kernel: str, module: str) -> bool:
    pattern = f"/lib/modules/{kernel}/kernel/drivers/*/{module.replace('_', '?')}.ko*"
    deeper = f"/lib/modules/{kernel}/kernel/drivers/*/*/{module.replace('_', '?')}.ko*"
    return bool((g.try_("glob-expand", pattern) or "").split()) or bool(
        (g.try_("glob-expand", deeper) or "").split()
    )


def _selinux(fix: _Fix) -> None:
    config = fix.read("/etc/selinux/config")
    if config is None:
        return
    mode = re.search(rb"^SELINUX=(\w+)", config, re.MULTILINE)
    if mode and mode.group(1) in (b"enforcing", b"permissive"):
        fix.g("touch", "/.autorelabel")
        fix.change("selinux", "/.autorelabel", "files are relabelled at the next boot")


def _scan_boot_partitions(
    fix: _Fix, root: str, guest_mounts: Iterable[str]
) -> list[tuple[str, str, str]]:
    """Filesystems the guest does not mount (a FAT partition with syslinux): device names in
    their boot loader configuration are fixed; returns the initramfs files they load, as
    (device, path, sha256), for `_refresh_copies`, which writes the copies at the end."""
    g = fix.g
    mounted = set(guest_mounts)
    loaded: list[tuple[str, str, str]] = []
    for device, fstype in parse_mountpoints(g("list-filesystems")).items():
        if device in mounted or device == root or fstype in ("swap", "unknown", ""):
            continue
        if g.try_("mount-options", "", device, "/") is None:
            continue
        try:
            for config in fix.boot_configs():
                where = f"{config} (partition {device})"
                fix.boot_loaders.append(where)
                fix.rewrite(config, where)
                text = (fix.read(config) or b"").decode(errors="replace")
                base = config.rsplit("/", 1)[0]
                for initrd in boot_config_initrds(text):
                    path = initrd if initrd.startswith("/") else f"{base}/{initrd}"
                    digest = (g.try_("checksum", "sha256", path) or "").strip()
                    if digest:
                        loaded.append((device, path, digest))
        finally:
            g("umount-all")
    return loaded


BOOT_MOUNT = "/.heron-boot"


def _refresh_copies(
    fix: _Fix, loaded: Sequence[tuple[str, str, str]], rebuilt: Mapping[str, str]
) -> None:
    """Replace each initramfs a boot partition loads that was a copy of one rebuilt
    (`rebuilt`: the old one's sha256 -> the rebuilt one's path in the guest's root, which is
    mounted). The partition is mounted inside the root, on a directory made for it and
    removed after, and the file copied by the appliance: uploading it to the partition mounted
    alone took 40 s after update-initramfs under TCG, a copy 0.3 s."""
    for device, path, digest in loaded:
        if digest not in rebuilt:
            continue
        fix.g("mkdir", BOOT_MOUNT)
        try:
            fix.g("mount-options", "", device, BOOT_MOUNT)
            try:
                fix.g("cp", rebuilt[digest], f"{BOOT_MOUNT}{path}")
            finally:
                fix.g("umount", BOOT_MOUNT)
        finally:
            fix.g("rmdir", BOOT_MOUNT)
        fix.change(
            "boot-file",
            f"{path} (partition {device})",
            f"replaced by {rebuilt[digest]}, rebuilt, of which it was a copy",
        )


def fix_linux(
    drives: Sequence[Drive],
    *,
    timeout: float,
    log: Callable[[str], None],
    macs: Sequence[str] = (),
    accelerator: str | None = None,
    kernel_dir: Path | None = None,
) -> GuestFixReport:
    """Fix the Linux guest on `drives` (all the VM's disks, in its order: its root, /boot or
    /usr may be on any) so it boots on virtio, in place; raises GuestFixError for a guest it
    cannot fix (Windows, no Linux found) or when `timeout` seconds pass. `macs`: its NICs'
    MAC addresses on Heron, in the source's order, which keep the names the guest's network
    configuration gives them.

    `accelerator` is "kvm" or "tcg" for the appliance (by default the node's choice,
    heron.hypervisor.accel); `kernel_dir` a kernel for it when the host has none in /boot (by
    default heron.v2v.appliance's, if the host needs it)."""
    started = time.monotonic()
    deadline = started + timeout
    if accelerator is None:
        accelerator = choose_accelerator(Path(os.environ.get("HERON_CACHE_DIR", CACHE_DIR)))
    if kernel_dir is None:
        kernel_dir = appliance.kernel_dir_if_needed()
    env = appliance_env(accelerator, kernel_dir)
    names = ", ".join(d.image for d in drives)
    log(f"starting the libguestfs appliance ({accelerator}) on {names}")
    with tempfile.TemporaryDirectory(prefix="heron-guestfix-") as tmp:
        g = Guestfish(drives, env, deadline, Path(tmp) / "guestfish.log")
        try:
            try:
                g.launch()
            except GuestFixError as exc:
                raise GuestFixError(
                    f"libguestfs' appliance did not start: {exc}\n{g.stderr()}"
                ) from exc
            log(f"appliance up after {time.monotonic() - started:.0f}s")
            fix = _Fix(g, Path(tmp), log)
            g.slow = log
            return _fix(fix, started, macs)
        finally:
            g.close()


def _fix(fix: _Fix, started: float, macs: Sequence[str]) -> GuestFixReport:
    g = fix.g
    root, facts = _inspect(g)
    fix.log(f"found {facts['product']} on {root}")
    package_format = g("inspect-get-package-format", root).strip()
    fix.device_uuids()
    guest_mounts = set(parse_mountpoints(g("inspect-get-mountpoints", root)).values())
    loaded = _scan_boot_partitions(fix, root, guest_mounts)
    _mount_guest(g, root)
    kernels = _kernels(fix)
    if not kernels:
        fix.warn("no kernel found in /boot with its modules in /lib/modules")
    for path in ROOT_FILES:
        fix.rewrite(path, path)
    for config in fix.boot_configs():
        fix.boot_loaders.append(config)
        fix.rewrite(config, config)
    _remove_tools(fix, package_format)
    _keep_nic_names(fix, macs)  # before the initramfs, which may carry the .link files
    tool, before = _rebuild_initramfs(fix, kernels)
    # The rebuilt initramfs files by the digest of what they replaced, for the copies.
    paths = initramfs_paths(tool or "", kernels)
    _refresh_copies(fix, loaded, {before[k]: paths[k] for k in kernels if k in before})
    _selinux(fix)
    g("umount-all")
    if not fix.boot_loaders:
        fix.warn("no boot loader configuration found: its kernel command line is as it was")
    g("sync")
    return GuestFixReport(
        distro=facts["distro"],
        product=facts["product"],
        version=f"{facts['major']}.{facts['minor']}",
        root=root,
        kernels=kernels,
        initramfs_tool=tool,
        boot_loaders=fix.boot_loaders,
        changes=fix.changes,
        warnings=fix.warnings,
        duration_seconds=round(time.monotonic() - started, 1),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m heron.v2v.guestfix DISK... --format FMT``: fix a guest's disks by hand,
    print the report as JSON (the import calls fix_linux itself)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m heron.v2v.guestfix", description=__doc__)
    parser.add_argument("disks", nargs="+", help="files or nbd+unix:// exports, in order")
    parser.add_argument("--format", default="qcow2", help="the disk's format (qemu-img's name)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(f"guestfix: {line}", file=sys.stderr, flush=True)

    try:
        drives = [Drive(disk, args.format) for disk in args.disks]
        report = fix_linux(drives, timeout=args.timeout, log=log)
    except GuestFixError as exc:
        log(f"error: {exc}")
        return 1
    print(report.model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
