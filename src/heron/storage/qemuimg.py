"""qemu-img, the engine for creating, converting, resizing and inspecting images."""

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from heron.errors import StorageError

Progress = Callable[[float], Awaitable[None]]
# A file, or any name qemu-img understands (iscsi://..., rbd:..., nbd+unix://..., json:{...}).
Image = str | Path
_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class QemuImgError(StorageError):
    pass


async def _run(*args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "qemu-img", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip().splitlines()
        if message:
            raise QemuImgError(message[-1])
        # Nothing said: killed, or out of memory; the exit status is all there is to tell.
        status = proc.returncode or 0  # set: communicate() waited for the exit
        how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
        raise QemuImgError(f"qemu-img {args[0]} failed ({how})")
    return out


async def create(path: Image, fmt: str, size: int) -> None:
    await _run("create", "-q", "-f", fmt, str(path), str(size))


async def create_overlay(path: Path, backing: str, backing_format: str, size: int) -> None:
    """A qcow2 image at `path` that reads `backing` (a name relative to `path`'s directory,
    so the pair can move together) wherever it has not been written itself."""
    await _run(
        "create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_format, str(path), str(size)
    )


async def info(path: Image, fmt: str | None = None) -> dict[str, Any]:
    """qemu-img's JSON about the image. `fmt`: its format where the caller knows it; qemu-img
    otherwise guesses from the data, and a raw volume whose data begins like a qcow2 image
    (a memory state's, or any that a guest wrote) is then reported at that image's size."""
    args = ["-f", fmt] if fmt else []
    return json.loads(await _run("info", "--output=json", "-U", *args, str(path)))


async def files_read(image: Image, fmt: str | None) -> list[tuple[str, int]]:
    """Every file qemu-img reads for `image` — it, its backing chain, and their extents (a
    VMDK's descriptor names its data files) — each with the bytes it must hold at least:
    a flat extent shorter than its descriptor says would be read as zeroes, without error.
    A `json:` name's inner file counts as itself."""
    args = ["--backing-chain", *(["-f", fmt] if fmt else []), str(image)]
    chain = json.loads(await _run("info", "--output=json", "-U", *args))
    found = []
    for layer in chain if isinstance(chain, list) else [chain]:
        found.append((_plain(str(layer["filename"])), 0))
        extents = layer.get("format-specific", {}).get("data", {}).get("extents", [])
        found += [
            (_plain(str(e["filename"])), int(e["virtual-size"]) if e.get("format") == "FLAT" else 0)
            for e in extents
        ]
    return found


def _plain(name: str) -> str:
    """A file name as qemu-img reports it; for a json: name, the file it reads in the end."""
    if not name.startswith("json:"):
        return name
    spec = json.loads(name[5:])
    while isinstance(spec.get("file"), dict):
        spec = spec["file"]
    return str(spec.get("filename", name))


async def resize(path: Image, fmt: str, size: int) -> None:
    await _run("resize", "-q", "-f", fmt, str(path), str(size))


async def convert(
    source: Image,
    source_format: str | None,
    target: Image,
    target_format: str,
    progress: Progress | None = None,
    existing_zero_target: bool = False,
    snapshot: str | None = None,
    force_share: bool = False,
) -> None:
    """Copy an image into a new file (or into an existing target that reads as zeroes),
    reporting progress as qemu-img prints it; `snapshot`: the source's internal snapshot of
    that name, not its current data; `force_share`: read it though a QEMU has it open."""
    args = ["convert", "-p", "-O", target_format]
    if snapshot is not None:
        args += ["-l", f"snapshot.name={snapshot}"]
    if force_share:
        args += ["-U"]
    if existing_zero_target:
        args += ["-n", "--target-is-zero"]
    if source_format:
        args += ["-f", source_format]
    code, err = await _with_progress([*args, str(source), str(target)], progress)
    if code != 0:
        raise QemuImgError(err or "qemu-img convert failed")


async def compare(
    source: Image,
    source_format: str | None,
    target: Image,
    target_format: str,
    progress: Progress | None = None,
) -> None:
    """Check that `target` reads exactly as `source` (a copy verified after it was made);
    where one is larger, the rest must read as zeroes. Raises QemuImgError on a difference.
    `source_format`: none only for a json: name, which carries its format."""
    given = ["-f", source_format] if source_format else []
    args = ["compare", "-p", *given, "-F", target_format, str(source), str(target)]
    code, err = await _with_progress(args, progress)
    if code == 1:
        raise QemuImgError(f"the copy differs from its source: {err or 'contents differ'}")
    if code != 0:
        raise QemuImgError(err or "qemu-img compare failed")


async def _with_progress(args: list[str], progress: Progress | None) -> tuple[int, str]:
    """Run qemu-img with `-p`, passing on its progress; its exit status and last error line."""
    proc = await asyncio.create_subprocess_exec(
        "qemu-img", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    buffer = b""
    while chunk := await proc.stdout.read(256):
        buffer = (buffer + chunk)[-256:]
        found = _PERCENT.findall(buffer)
        if found and progress is not None:
            await progress(float(found[-1]) / 100)
            buffer = b""
    err = await proc.stderr.read()
    code = await proc.wait()
    lines = err.decode(errors="replace").strip().splitlines()
    return code, lines[-1] if lines else ""


async def detect_format(path: Image) -> str:
    return str((await info(path))["format"])


# Internal snapshots of a qcow2 image whose VM is stopped (qemu-img refuses an image a running
# QEMU holds: its lock). While it runs, the hypervisor's QMP snapshot commands do this; QEMU
# reverts a snapshot without memory state only here.


async def snapshot_names(path: Image) -> list[str]:
    """The names of the internal snapshots of the image at `path`, oldest first."""
    return [str(s["name"]) for s in (await info(path)).get("snapshots", [])]


async def snapshot_create(path: Image, name: str) -> None:
    await _run("snapshot", "-q", "-c", name, str(path))


async def snapshot_revert(path: Image, name: str) -> None:
    """Make the image's current data that of its snapshot `name` (which stays)."""
    await _run("snapshot", "-q", "-a", name, str(path))


async def snapshot_delete(path: Image, name: str) -> None:
    await _run("snapshot", "-q", "-d", name, str(path))
