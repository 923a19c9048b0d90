"""Choosing the accelerator: KVM when it really works on this host, TCG otherwise.

`/dev/kvm` existing is not enough: on some hosts (nested virtualisation) KVM guests hang. So a
throw-away guest is booted under KVM once per host and QEMU version; if it does not answer in
time, the node uses TCG (software emulation) and says so in its status.

A real Linux kernel is the honest probe: on the hosts we know, a real-mode boot sector runs
fine under KVM while anything that switches to protected mode dies with "KVM internal error".
The kernel is the test guest's (built by the installer) or the host's own; a boot sector is
only the last resort.
"""

import fcntl
import json
import os
import re
import select
import subprocess
import tempfile
import time
from pathlib import Path

from heron.models.node import Accelerator

PROBE_TIMEOUT = 10.0

# A boot sector that turns on interrupts, waits for five BIOS timer ticks and writes "K" to
# the first serial port.
_BOOT_SECTOR = bytes([
    0x31, 0xC0, 0x8E, 0xD8, 0xFB, 0xB9, 0x05, 0x00,
    0x8B, 0x1E, 0x6C, 0x04, 0x3B, 0x1E, 0x6C, 0x04, 0x74, 0xFA, 0xE2, 0xF4,
    0xBA, 0xF8, 0x03, 0xB0, 0x4B, 0xEE, 0xB0, 0x0A, 0xEE, 0xFA, 0xF4, 0xEB, 0xFC,
])  # fmt: skip


def _qemu_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def parse_qemu_version(line: str) -> tuple[int, int]:
    """(major, minor) from `qemu-system-x86_64 --version`'s first line; (0, 0) if unreadable,
    which callers treat as the oldest QEMU."""
    found = re.search(r"version (\d+)\.(\d+)", line)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def qemu_version(binary: str = "qemu-system-x86_64") -> tuple[int, int]:
    return parse_qemu_version(_qemu_version(binary))


def probe_kernel(cache_dir: Path) -> tuple[Path, Path | None] | None:
    """A kernel (and initrd) to boot as the probe guest, if this host has one."""
    guest = cache_dir / "testguest"
    if (guest / "vmlinuz").exists():
        initrd = guest / "initrd.gz"
        return guest / "vmlinuz", initrd if initrd.exists() else None
    own = Path(f"/boot/vmlinuz-{os.uname().release}")
    if os.access(own, os.R_OK):
        return own, None
    return None


def probe_kvm(
    binary: str = "qemu-system-x86_64", kernel: Path | None = None, initrd: Path | None = None
) -> bool:
    """Boot a tiny guest under KVM; True if it printed its first line in time."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    expect = b"Linux version" if kernel is not None else b"K"
    with tempfile.TemporaryDirectory(prefix="heron-kvm-probe-") as tmp:
        args = [binary, "-accel", "kvm", "-display", "none", "-nodefaults", "-no-user-config",
                "-m", "128", "-serial", "stdio", "-monitor", "none"]  # fmt: skip
        if kernel is not None:
            args += ["-kernel", str(kernel), "-append", "console=ttyS0 panic=-1"]
            if initrd is not None:
                args += ["-initrd", str(initrd)]
        else:
            disk = Path(tmp) / "probe.img"
            disk.write_bytes(_BOOT_SECTOR + bytes(510 - len(_BOOT_SECTOR)) + b"\x55\xaa")
            args += ["-drive", f"file={disk},format=raw,if=ide,snapshot=on"]
        # stderr is read too: "KVM internal error" there settles the question at once.
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        seen = b""
        end = time.monotonic() + PROBE_TIMEOUT
        try:
            while expect not in seen and b"KVM internal error" not in seen:
                left = end - time.monotonic()
                if left <= 0:
                    break
                ready, _, _ = select.select([proc.stdout], [], [], left)
                chunk = proc.stdout.read(4096) if ready else b""
                if ready and not chunk and proc.poll() is not None:
                    break
                seen += chunk or b""
        finally:
            proc.kill()
            proc.wait()
        return expect in seen


def _known(value: object) -> Accelerator | None:
    """`value` if it names an accelerator (read from the environment or a file), else None."""
    if value == "kvm":
        return "kvm"
    if value == "tcg":
        return "tcg"
    return None


def choose_accelerator(cache_dir: Path, binary: str = "qemu-system-x86_64") -> Accelerator:
    """'kvm' or 'tcg', probed once per host and QEMU version and remembered in `cache_dir`."""
    forced = _known(os.environ.get("HERON_ACCEL"))
    if forced is not None:
        return forced
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Nodes of a devcluster start together: one probes, the others wait and read its answer.
    with open(cache_dir / ".accelerator.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        guest = probe_kernel(cache_dir)
        kernel, initrd = guest if guest else (None, None)
        key = {"qemu": _qemu_version(binary), "kernel": os.uname().release,
               "probe": str(kernel or "bootsector")}  # fmt: skip
        cache = cache_dir / "accelerator.json"
        try:
            cached = json.loads(cache.read_text())
            remembered = _known(cached.get("accelerator"))
            # A cache that names no accelerator is as good as none: probe again.
            if cached.get("key") == key and remembered is not None:
                return remembered
        except (FileNotFoundError, ValueError):
            pass
        accelerator: Accelerator = "kvm" if probe_kvm(binary, kernel, initrd) else "tcg"
        cache.write_text(json.dumps({"key": key, "accelerator": accelerator}))
        return accelerator
