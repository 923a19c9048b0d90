"""A kernel for libguestfs' appliance on hosts that have none in /boot (containers).

supermin builds the appliance the guest fix runs in (heron.v2v.guestfix) from the host's own
files, and boots it with the host's kernel from /boot and its modules from /lib/modules. A
container has neither, so Heron gives supermin Debian's cloud kernel instead: the package
``linux-image-cloud-amd64`` depends on, downloaded with ``apt-get download`` (the ordinary
Debian registry) and unpacked with ``dpkg-deb -x`` (the host's boot setup is not touched),
with its modules.dep made by ``depmod -b`` (the package leaves that to its postinst). It has
what the appliance needs as modules: virtio_scsi, virtio_blk, virtio_console, virtio_net,
ext4, vfat, sd_mod.

Usage (scripts/install-deps): ``python -m heron.v2v.appliance --out DIR`` prepares
``DIR/kernel`` when the host needs it, and says so; otherwise it does nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from heron.errors import HeronError

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
DEFAULT_DIR = Path(os.environ.get("HERON_CACHE_DIR", "/var/cache/heron")) / "guestfs"
KERNEL_SUBDIR = "kernel"


class ApplianceError(HeronError):
    """No kernel for the libguestfs appliance could be found or prepared."""


@dataclass(frozen=True)
class ApplianceKernel:
    vmlinuz: Path
    modules: Path
    version: str


def host_kernel(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")) -> str | None:
    """A kernel version supermin can use from the host itself (readable vmlinuz in /boot with
    its modules directory), if there is one."""
    for vmlinuz in sorted(boot.glob("vmlinuz-*"), reverse=True):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        if os.access(vmlinuz, os.R_OK) and (modules / version).is_dir():
            return version
    return None


def find_kernel(directory: Path) -> ApplianceKernel:
    """The kernel unpacked in `directory` (by `prepare`)."""
    kernels = sorted((directory / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ApplianceError(
            f"no kernel for libguestfs' appliance in {directory} (run scripts/install-deps)"
        )
    version = kernels[0].name.removeprefix("vmlinuz-")
    for modules in (directory / "lib/modules" / version, directory / "usr/lib/modules" / version):
        if (modules / "modules.dep").is_file():
            return ApplianceKernel(kernels[0], modules, version)
    raise ApplianceError(f"the kernel in {directory} has no modules.dep (run install-deps)")


def kernel_dir_if_needed(directory: Path = DEFAULT_DIR) -> Path | None:
    """None when supermin can use the host's kernel; else the prepared one's directory."""
    if host_kernel() is not None:
        return None
    target = directory / KERNEL_SUBDIR
    find_kernel(target)  # says what to do when it is not there
    return target


def _run(cmd: Sequence[str], cwd: Path | None = None) -> str:
    env = dict(os.environ, LC_ALL="C")
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise ApplianceError(f"{' '.join(cmd)} failed: {(proc.stderr + proc.stdout).strip()}")
    return proc.stdout


def kernel_package(depends: str) -> str:
    """The versioned linux-image package in ``apt-cache depends`` output of the metapackage."""
    for line in depends.splitlines():
        key, _, value = line.strip().lstrip("|").partition(":")
        value = value.strip()
        if key == "Depends" and value.startswith("linux-image-") and value != KERNEL_METAPACKAGE:
            return value
    raise ApplianceError(f"apt-cache depends {KERNEL_METAPACKAGE} names no linux-image-*")


def prepare(directory: Path = DEFAULT_DIR, debs: Sequence[Path] = ()) -> Path:
    """Unpack the cloud kernel into ``directory/kernel`` (kept while apt's candidate is the
    same version). A .deb of it in `debs` (the test guest's cache) saves the download."""
    package = kernel_package(_run(["apt-cache", "depends", KERNEL_METAPACKAGE]))
    version = package.removeprefix("linux-image-")
    target = directory / KERNEL_SUBDIR
    if (target / "boot" / f"vmlinuz-{version}").is_file():
        try:
            find_kernel(target)
            return target
        except ApplianceError:
            pass
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".prepare-") as tmp:
        work = Path(tmp)
        deb = next((d for d in debs if d.name.startswith(f"{package}_")), None)
        if deb is None:
            cmd = ["apt-get", "download", "-q"]
            if os.geteuid() == 0:
                cmd += ["-o", "APT::Sandbox::User=root"]
            _run([*cmd, package], cwd=work)
            deb = next(work.glob("*.deb"))
        tree = work / "tree"
        _run(["dpkg-deb", "-x", str(deb), str(tree)])
        _run(["depmod", "-b", str(tree), version])
        # Only what supermin reads: the kernel and the modules.
        for name in os.listdir(tree / "boot"):
            if not name.startswith("vmlinuz-"):
                (tree / "boot" / name).unlink()
        shutil.rmtree(tree / "usr/share", ignore_errors=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tree, target)
    find_kernel(target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m heron.v2v.appliance",
        description="Prepare a kernel for libguestfs' appliance if the host has none in /boot.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--debs", type=Path, help="a directory of .deb files to reuse")
    parser.add_argument("--force", action="store_true", help="even if the host has a kernel")
    args = parser.parse_args(argv)
    if not args.force and (version := host_kernel()) is not None:
        print(f"appliance: the host's kernel {version} will do", file=sys.stderr)
        return 0
    debs = sorted(args.debs.glob("*.deb")) if args.debs and args.debs.is_dir() else []
    try:
        target = prepare(args.out.resolve(), debs)
    except ApplianceError as exc:
        print(f"appliance: error: {exc}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
