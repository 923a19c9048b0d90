"""Choosing the accelerator: KVM when it really works on this host, TCG otherwise.

`/dev/kvm` existing is not enough: on some hosts (nested virtualisation) KVM guests hang. So a
throw-away guest is booted under KVM once per host and QEMU version; if it does not answer in
time, the node uses TCG (software emulation) and says so in its status.
"""

import json
import os
import select
import subprocess
import tempfile
import time
from pathlib import Path

PROBE_TIMEOUT = 10.0

# A boot sector that turns on interrupts, waits for five BIOS timer ticks and writes "K" to
# the first serial port: it needs working interrupts and I/O exits, where hung KVM guests fail.
_BOOT_SECTOR = bytes(
    [
        0x31,
        0xC0,
        0x8E,
        0xD8,
        0xFB,
        0xB9,
        0x05,
        0x00,
        0x8B,
        0x1E,
        0x6C,
        0x04,
        0x3B,
        0x1E,
        0x6C,
        0x04,
        0x74,
        0xFA,
        0xE2,
        0xF4,
        0xBA,
        0xF8,
        0x03,
        0xB0,
        0x4B,
        0xEE,
        0xB0,
        0x0A,
        0xEE,
        0xFA,
        0xF4,
        0xEB,
        0xFC,
    ]
)


def _qemu_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def probe_kvm(
    binary: str = "qemu-system-x86_64",
    kernel: Path | None = None,
    initrd: Path | None = None,
    expect: bytes = b"K",
) -> bool:
    """Boot a tiny guest under KVM; True if it printed `expect` on its serial port in time."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    with tempfile.TemporaryDirectory(prefix="heron-kvm-probe-") as tmp:
        args = [
            binary,
            "-accel",
            "kvm",
            "-display",
            "none",
            "-nodefaults",
            "-no-user-config",
            "-m",
            "128",
            "-serial",
            "stdio",
            "-monitor",
            "none",
        ]
        if kernel is not None:
            args += ["-kernel", str(kernel), "-append", "console=ttyS0 quiet panic=-1"]
            if initrd is not None:
                args += ["-initrd", str(initrd)]
        else:
            disk = Path(tmp) / "probe.img"
            disk.write_bytes(_BOOT_SECTOR + bytes(510 - len(_BOOT_SECTOR)) + b"\x55\xaa")
            args += ["-drive", f"file={disk},format=raw,if=ide,snapshot=on"]
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        seen = b""
        end = time.monotonic() + PROBE_TIMEOUT
        try:
            while expect not in seen and (left := end - time.monotonic()) > 0:
                ready, _, _ = select.select([proc.stdout], [], [], left)
                chunk = proc.stdout.read(4096) if ready else b""
                if ready and not chunk and proc.poll() is not None:
                    break
                seen += chunk or b""
        finally:
            proc.kill()
            proc.wait()
        return expect in seen


def choose_accelerator(
    cache_dir: Path,
    binary: str = "qemu-system-x86_64",
    kernel: Path | None = None,
    initrd: Path | None = None,
    expect: bytes = b"K",
) -> str:
    """'kvm' or 'tcg', probed once per host and QEMU version and remembered in `cache_dir`."""
    forced = os.environ.get("HERON_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    key = {
        "qemu": _qemu_version(binary),
        "kernel": os.uname().release,
        "probe": "kernel" if kernel else "bootsector",
    }
    cache = cache_dir / "accelerator.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return str(cached["accelerator"])
    except (FileNotFoundError, ValueError):
        pass
    accelerator = "kvm" if probe_kvm(binary, kernel, initrd, expect) else "tcg"
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "accelerator": accelerator}))
    return accelerator
