"""The real NBD clients ARDFS is tested and measured with: qemu-io, qemu-img, nbdinfo, fio."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from heron.ardfs.errors import ArdfsError


class ToolError(ArdfsError):
    pass


def run(*args: str, timeout: float = 600) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise ToolError(f"{' '.join(args)}: {result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def qemu_io(uri: str, *commands: str, timeout: float = 600) -> str:
    """Run qemu-io commands on a raw NBD export; ToolError if any of them failed.

    qemu-io exits 0 even when a command fails, so its output is checked as well.
    """
    args = ["qemu-io", "-f", "raw"]
    for command in commands:
        args += ["-c", command]
    out = run(*args, uri, timeout=timeout)
    if "failed" in out or "Pattern verification" in out:
        raise ToolError(f"qemu-io {commands}: {out[-2000:]}")
    return out


def extents(uri: str) -> list[dict[str, Any]]:
    """nbdinfo --map --json: [{offset, length, type, description}]."""
    return json.loads(run("nbdinfo", "--map", "--json", uri))


def fio(uri: str, *options: str, timeout: float = 600) -> dict[str, Any]:
    """One fio job with the nbd engine on `uri`; its JSON report."""
    out = run(
        "fio", "--name=ardfs", "--ioengine=nbd", f"--uri={uri}", "--output-format=json",
        *options, timeout=timeout,
    )  # fmt: skip
    return json.loads(out[out.index("{") :])
