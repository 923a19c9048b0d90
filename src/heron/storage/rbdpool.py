"""Ceph RBD pools, for users who already run Ceph: each volume is an RBD image, opened by
QEMU's own librbd (no kernel mapping). Images are raw; Ceph provides thin provisioning,
replication, snapshots and clones itself, driven here through the `rbd` tool (ceph-common).

Snapshots are RBD snapshots named by Heron's snapshot id, one `rbd snap create` per image.
The agent pauses the guest (QMP `stop` drains and flushes its I/O) around `snapshot_create`,
so the images' snapshots are of one instant without an RBD group: `rbd group snap create`
would need each VM's images kept in a group (in step with every attach, detach, clone and
delete), and the snapshots it makes live in the group's namespace, where `rbd snap rollback`,
`rbd clone` and `rbd snap rm` by name do not reach them one image at a time, as Heron reverts,
clones and deletes. A failed create removes what it took.

Linked clones are `rbd clone`s of a protected snapshot: a VM snapshot's own, or for a
template one made for that clone alone (`heron-base-<clone's volume id>`, not listed as a
snapshot), which goes when the clone is deleted. One snapshot per clone rather than one per
template: there is nothing to share, hence no race between clones made and deleted at once
(a mass deployment), and it costs the template image only metadata. Full clones are
`rbd cp` (the image's data only; `rbd deep cp` would copy the source's snapshots too, which
belong to the source VM). Ceph refuses to unprotect a snapshot that clones read; this driver
refuses, naming them, to delete such a snapshot or its image, as Heron does by its records.

A full copy may be cut short (the agent killed, the node down) and its task run again: the
copy goes to a name of its own (`heron-partial-<clone's volume id>`), is tagged with the
volume's id (image metadata `heron.volume`) and only then renamed to the volume's name.
A leftover under the partial name was made by Heron for that clone alone, so a rerun removes
it and copies again; an image under the volume's name carrying its id is the finished copy
(the rename was the last step done); any other image of that name is someone else's: the
clone is refused and the image left alone. Nothing Heron cannot prove it made is deleted.

Tested where a Ceph cluster is reachable (see docs/operations.md): these machines have none;
the unit tests run these command sequences against a stand-in `rbd` (tests/fakes/rbd.py).
"""

import asyncio
import contextlib
import errno
import json
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from heron.models.storage import Volume
from heron.storage import qemuimg
from heron.storage.driver import Capabilities, PoolDriver, StorageError, VolumeSnapshot
from heron.storage.qemuimg import Progress

log = logging.getLogger(__name__)

BASE_PREFIX = "heron-base-"  # the snapshot of a template that one linked clone reads
PARTIAL_PREFIX = "heron-partial-"  # a full copy being made, before it gets its volume's name
OWNER_KEY = "heron.volume"  # image metadata: the id of the volume a full copy was made for
_ERRNO = re.compile(r"\((\d+)\) ")  # rbd says "rbd: <what> failed: (17) File exists"
_PERCENT = re.compile(rb"(\d+)% complete")  # rbd's progress on stderr: "Image copy: 42% ..."
# What rbd says without an errno in the text (src/tools/rbd/action/Snap.cc, Remove.cc).
_SAID = {
    "snap is already unprotected": errno.EINVAL,
    "snap is already protected": errno.EBUSY,
    "is protected from removal": errno.EBUSY,
    "image has snapshots": errno.ENOTEMPTY,
}


class RbdError(StorageError):
    """The rbd tool failed; `code` is the errno it reported (0 when it gave none)."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code


def base_snapshot(clone: Volume) -> str:
    """The template's snapshot that the linked clone `clone` reads (made for it alone)."""
    return f"{BASE_PREFIX}{clone.id}"


def partial_image(clone: Volume) -> str:
    """The name a full copy has until it is complete (made for the clone `clone` alone)."""
    return f"{PARTIAL_PREFIX}{clone.id}"


class RbdPool(PoolDriver):
    CAPABILITIES = Capabilities(native_snapshots=True, linked_clones=True)

    def image_spec(self, volume: Volume) -> str:
        return f"{self.pool.rbd_pool}/{volume.name}"

    def snap_spec(self, volume: Volume, snapshot: str) -> str:
        return f"{self.image_spec(volume)}@{snapshot}"

    def protocol(self, volume: Volume) -> dict[str, Any]:
        node: dict[str, Any] = {
            "driver": "rbd",
            "pool": str(self.pool.rbd_pool),
            "image": volume.name,
        }
        if self.pool.user:
            node["user"] = self.pool.user
        if self.pool.conf:
            node["conf"] = self.pool.conf
        if self.pool.monitors:
            node["server"] = [_host_port(m) for m in self.pool.monitors]
        return node

    def image(self, volume: Volume) -> str:
        # qemu-img's rbd: syntax; ';' separates monitors and must be escaped inside it.
        name = f"rbd:{self.image_spec(volume)}"
        if self.pool.user:
            name += f":id={self.pool.user}"
        if self.pool.conf:
            name += f":conf={self.pool.conf}"
        if self.pool.monitors:
            name += ":mon_host=" + "\\;".join(self.pool.monitors)
        return name

    async def create(self, volume: Volume) -> None:
        await qemuimg.create(self.image(volume), "raw", volume.size)

    async def import_image(
        self, volume: Volume, source: str, progress: Progress | None, source_format: str | None
    ) -> int:
        fmt = source_format or await qemuimg.detect_format(source)
        await qemuimg.convert(source, fmt, self.image(volume), "raw", progress)
        size = int((await qemuimg.info(self.image(volume), "raw"))["virtual-size"])
        if volume.size > size:
            await qemuimg.resize(self.image(volume), "raw", volume.size)
            size = volume.size
        return size

    async def resize(self, volume: Volume, size: int) -> None:
        await qemuimg.resize(self.image(volume), "raw", size)

    async def delete(self, volume: Volume) -> None:
        """Remove the image with its snapshots; refused while linked clones read one of
        them. A linked clone of a template takes its base snapshot with it."""
        if volume.state != "ready":  # a full copy may have been cut short: its leftover
            await self._remove_partial(volume)
        try:
            info = await self._info(volume)
        except RbdError as exc:
            if exc.code == errno.ENOENT:
                return  # gone already (a repeat)
            raise
        taken = await self._snap_list(volume)
        protected = [s["name"] for s in taken if s.get("protected") == "true"]
        for name in protected:
            clones = await self._children(volume, name)
            if clones:
                raise StorageError(
                    f"volume {volume.name} is the base of linked clones ({', '.join(clones)}): "
                    "delete them first"
                )
        for name in protected:
            await self._rbd("snap", "unprotect", self.snap_spec(volume, name))
        if taken:
            await self._rbd("snap", "purge", "--no-progress", self.image_spec(volume))
        try:
            await self._rbd("rm", "--no-progress", self.image_spec(volume))
        except RbdError as exc:
            if exc.code != errno.ENOENT:
                raise
        parent = info.get("parent")
        if isinstance(parent, dict) and parent.get("snapshot") == base_snapshot(volume):
            # Made for this clone alone: it goes with it (nothing else reads it).
            spec = "/".join(
                str(p) for p in (parent.get("pool"), parent.get("pool_namespace"),
                                 parent.get("image")) if p
            ) + f"@{parent['snapshot']}"  # fmt: skip
            try:
                await self._drop_snapshot(spec)
            except StorageError as exc:  # the clone is gone; its template's delete purges it
                log.warning("%s stays behind its deleted clone %s: %s", spec, volume.name, exc)

    # -- snapshots and clones ---------------------------------------------------------------

    async def snapshot_create(self, volumes: Sequence[Volume], name: str) -> None:
        """One `rbd snap create` per image, the guest paused by the caller; on an error
        the ones taken are removed again."""
        taken: list[Volume] = []
        try:
            for volume in volumes:
                await self._rbd("snap", "create", "--no-progress", self.snap_spec(volume, name))
                taken.append(volume)
        except StorageError:
            for volume in taken:
                with contextlib.suppress(StorageError):
                    await self._rbd("snap", "rm", "--no-progress", self.snap_spec(volume, name))
            raise

    async def snapshot_delete(self, volume: Volume, name: str) -> None:
        """`rbd snap rm`, unprotected first if no clone reads it; refused if one does."""
        found = next((s for s in await self._snap_list(volume) if s.get("name") == name), None)
        if found is None:
            return  # gone already (a repeat)
        if found.get("protected") == "true":
            clones = await self._children(volume, name)
            if clones:
                raise StorageError(
                    f"snapshot {name} of volume {volume.name} is the base of linked clones "
                    f"({', '.join(clones)}): delete them first"
                )
            await self._rbd("snap", "unprotect", self.snap_spec(volume, name))
        await self._rbd("snap", "rm", "--no-progress", self.snap_spec(volume, name))

    async def snapshot_revert(self, volume: Volume, name: str) -> None:
        """`rbd snap rollback`: the image's data becomes the snapshot's (no VM has it open;
        the snapshot, and the clones reading it, stay as they are)."""
        await self._rbd("snap", "rollback", "--no-progress", self.snap_spec(volume, name))

    async def snapshots(self, volume: Volume) -> list[VolumeSnapshot]:
        """The image's snapshots (not the bases of template clones), oldest first, each
        with the bytes written between the one before it and itself (`rbd du`), where the
        image has the fast-diff feature; without it `rbd du` reads every object: no size."""
        try:
            taken = await self._snap_list(volume)
        except RbdError as exc:
            if exc.code == errno.ENOENT:
                return []
            raise
        taken = [s for s in taken if not str(s.get("name", "")).startswith(BASE_PREFIX)]
        taken.sort(key=lambda s: int(s.get("id", 0)))
        sizes: dict[str, int] = {}
        if taken and "fast-diff" in (await self._info(volume)).get("features", []):
            usage = await self._json("du", self.image_spec(volume))
            for entry in usage.get("images", []) if isinstance(usage, dict) else []:
                if "snapshot" in entry and "used_size" in entry:
                    sizes[str(entry["snapshot"])] = int(entry["used_size"])
        return [
            VolumeSnapshot(
                name=str(s["name"]),
                created_at=_timestamp(str(s.get("timestamp", ""))),
                size=sizes.get(str(s["name"])),
            )
            for s in taken
        ]

    async def clone(
        self,
        source: Volume,
        snapshot: str | None,
        target: Volume,
        linked: bool,
        progress: Progress | None,
    ) -> None:
        """Linked: `rbd clone` of the snapshot (protected first), or of a snapshot of the
        template made for this clone. Full: `rbd cp` of the image or of its snapshot
        (see `_copy`). The clone is then grown to the target's size if the snapshot was
        smaller."""
        if not linked:
            source_spec = self.snap_spec(source, snapshot) if snapshot else self.image_spec(source)
            await self._copy(source_spec, target, progress)
        elif snapshot is not None:
            await self._protect(source, snapshot)
            await self._clone(source, snapshot, target)
        else:
            base = base_snapshot(target)
            if not any(s.get("name") == base for s in await self._snap_list(source)):
                await self._rbd("snap", "create", "--no-progress", self.snap_spec(source, base))
            try:
                await self._protect(source, base)
                await self._clone(source, base, target)
            except StorageError:
                with contextlib.suppress(StorageError):
                    await self._drop_snapshot(self.snap_spec(source, base))
                raise
        size = int((await self._info(target)).get("size", 0))
        if size < target.size:
            await self._rbd(
                "resize", "--no-progress", "--size", f"{target.size}B", self.image_spec(target)
            )

    async def _copy(self, source_spec: str, target: Volume, progress: Progress | None) -> None:
        """`rbd cp` under the partial name, tagged with the target's id, renamed when
        complete, so that a rerun can tell its own work from someone else's image."""
        if await self._owner(self.image_spec(target)) == target.id:
            return  # copied and renamed by a run cut short before its record said ready
        if await self._exists(self.image_spec(target)):
            raise StorageError(f"Ceph pool {self.pool.rbd_pool} already has an image {target.name}")
        partial = f"{self.pool.rbd_pool}/{partial_image(target)}"
        await self._remove_partial(target)
        await self._rbd("cp", source_spec, partial, progress=progress)
        # rbd cp copies the source's metadata too: the tag is set after it, for the target.
        await self._rbd("image-meta", "set", partial, OWNER_KEY, target.id)
        try:
            await self._rbd("rename", partial, self.image_spec(target))
        except RbdError as exc:
            if exc.code != errno.EEXIST:
                raise
            with contextlib.suppress(StorageError):  # ours: no garbage left behind
                await self._remove_partial(target)
            raise StorageError(
                f"Ceph pool {self.pool.rbd_pool} already has an image {target.name}"
            ) from exc

    async def _remove_partial(self, target: Volume) -> None:
        """Remove what a full copy for `target` cut short left (if anything)."""
        try:
            await self._rbd("rm", "--no-progress", f"{self.pool.rbd_pool}/{partial_image(target)}")
        except RbdError as exc:
            if exc.code != errno.ENOENT:
                raise

    async def _owner(self, spec: str) -> str | None:
        """The volume id an image is tagged with; None if it has no tag or no image."""
        try:
            return (await self._rbd("image-meta", "get", spec, OWNER_KEY)).decode().strip()
        except RbdError as exc:
            if exc.code == errno.ENOENT:
                return None
            raise

    async def _exists(self, spec: str) -> bool:
        try:
            await self._json("info", spec)
        except RbdError as exc:
            if exc.code == errno.ENOENT:
                return False
            raise
        return True

    async def _clone(self, source: Volume, snapshot: str, target: Volume) -> None:
        """`rbd clone`; an image of that name already cloned from that snapshot (by a run
        an agent restart cut short) is the clone."""
        try:
            await self._rbd("clone", self.snap_spec(source, snapshot), self.image_spec(target))
        except RbdError as exc:
            if exc.code != errno.EEXIST:
                raise
            parent = (await self._info(target)).get("parent") or {}
            if (parent.get("image"), parent.get("snapshot")) != (source.name, snapshot):
                raise StorageError(
                    f"Ceph pool {self.pool.rbd_pool} already has an image {target.name}"
                ) from exc

    async def _protect(self, volume: Volume, snapshot: str) -> None:
        found = [s for s in await self._snap_list(volume) if s.get("name") == snapshot]
        if not found:
            raise StorageError(f"volume {volume.name} has no snapshot {snapshot}")
        if found[0].get("protected") != "true":
            await self._rbd("snap", "protect", self.snap_spec(volume, snapshot))

    async def _drop_snapshot(self, spec: str) -> None:
        """Unprotect (if it is) and remove a snapshot nothing reads any more."""
        try:
            await self._rbd("snap", "unprotect", spec)
        except RbdError as exc:
            if exc.code != errno.EINVAL:  # EINVAL: it was not protected
                raise
        with contextlib.suppress(RbdError):  # gone already: so much the better
            await self._rbd("snap", "rm", "--no-progress", spec)

    # -- the rbd tool ---------------------------------------------------------------------

    async def _info(self, volume: Volume) -> dict[str, Any]:
        found = await self._json("info", self.image_spec(volume))
        return found if isinstance(found, dict) else {}

    async def _snap_list(self, volume: Volume) -> list[dict[str, Any]]:
        found = await self._json("snap", "ls", self.image_spec(volume))
        return [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []

    async def _children(self, volume: Volume, snapshot: str) -> list[str]:
        """The images cloned from the snapshot (those in Ceph's trash too: they read it)."""
        found = await self._json("children", "--all", self.snap_spec(volume, snapshot))
        return [
            f"{c.get('pool')}/{c.get('image')}" for c in found if isinstance(c, dict)
        ] if isinstance(found, list) else []  # fmt: skip

    async def _json(self, *args: str) -> Any:
        out = await self._rbd(*args, "--format", "json")
        try:
            return json.loads(out or b"null")
        except ValueError as exc:
            raise StorageError(f"rbd {args[0]}: not JSON: {out[:200]!r}") from exc

    def _connection(self) -> list[str]:
        args = []
        if self.pool.user:
            args += ["--id", self.pool.user]
        if self.pool.conf:
            args += ["-c", self.pool.conf]
        if self.pool.monitors:
            args += ["-m", ",".join(self.pool.monitors)]
        return args

    async def _rbd(self, *args: str, progress: Progress | None = None) -> bytes:
        """Run `rbd ARGS` with the pool's connection options; its stdout. Raises RbdError
        with rbd's last line and errno. `progress` follows the percentages rbd writes."""
        try:
            proc = await asyncio.create_subprocess_exec(
                "rbd", *self._connection(), *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except FileNotFoundError as exc:
            raise StorageError("rbd pools need the rbd tool (ceph-common) on each node") from exc
        assert proc.stdout is not None and proc.stderr is not None
        reading = asyncio.ensure_future(proc.stdout.read())
        err = b""
        while chunk := await proc.stderr.read(4096):
            err += chunk
            found = _PERCENT.findall(chunk)
            if progress is not None and found:
                await progress(min(int(found[-1]), 100) / 100)
        out = await reading
        status = await proc.wait()
        if status != 0:
            lines = [x.strip() for x in re.split(r"[\r\n]", err.decode(errors="replace"))]
            said = [x for x in lines if x and "% complete" not in x]
            ended = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
            message = said[-1] if said else ended
            number = _ERRNO.search(message)
            code = int(number.group(1)) if number else 0
            code = next((c for text, c in _SAID.items() if text in message), code)
            message = message.removeprefix("rbd: ")
            raise RbdError(f"rbd {' '.join(args)}: {message}", code)
        return out


def _timestamp(ctime: str) -> float:
    """rbd's snapshot timestamp (ctime's form, in the node's local time) as epoch seconds;
    0 when rbd gave none."""
    try:
        return time.mktime(time.strptime(" ".join(ctime.split()), "%a %b %d %H:%M:%S %Y"))
    except ValueError:
        return 0.0


def _host_port(monitor: str) -> dict[str, str]:
    host, _, port = monitor.rpartition(":") if monitor.count(":") == 1 else (monitor, "", "")
    return {"host": host or monitor, "port": port or "6789"}
