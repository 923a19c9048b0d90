"""File pools: volumes are qcow2 or raw files in a directory.

`dir`: the node's own `<state>/pools/<name>`, or a path every node mounts (`shared`), which
the administrator provides. `nfs`: an export each node mounts itself, at
`<state>/mnt/<pool>`, the first time the pool is used there.

Filesystem calls run in threads, not on the event loop: on a hard NFS mount whose server is
away they block until it is back, and the node's agent must go on meanwhile (see probe.py).
"""

import asyncio
import os
from pathlib import Path
from typing import Any

from heron.models.storage import PoolSpec, Volume, VolumeFormat
from heron.storage import qemuimg
from heron.storage.driver import Capabilities, PoolDriver, StorageError
from heron.storage.qemuimg import Progress


class DirPool(PoolDriver):
    CAPABILITIES = Capabilities(
        formats=(VolumeFormat.qcow2, VolumeFormat.raw), linked_clones=True, memory_state=True
    )

    @classmethod
    def capabilities_of(cls, pool: PoolSpec) -> Capabilities:
        # Whether every node sees the directory is the administrator's word (`shared`).
        return cls.CAPABILITIES.model_copy(update={"shared": pool.shared})

    @classmethod
    def definition_problem(cls, pool: PoolSpec) -> tuple[str, str] | None:
        if pool.shared and pool.path is None:
            # <state>/pools/<name> is each node's own: no other node sees its files.
            return "path", "a shared pool needs the path where every node mounts it"
        return None

    @property
    def root(self) -> Path:
        if self.pool.path:
            return Path(self.pool.path)
        return self.state_dir / "pools" / self.pool.name

    def path(self, volume: Volume) -> Path:
        return self.root / f"{volume.name}.{volume.format.value}"

    def protocol(self, volume: Volume) -> dict[str, Any]:
        return {"driver": "file", "filename": str(self.path(volume)), "aio": "threads"}

    def image(self, volume: Volume) -> str:
        return str(self.path(volume))

    async def prepare(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)

    async def create(self, volume: Volume) -> None:
        await self.prepare()
        target = self.path(volume)
        # A retried task after a crash finds its own half-made file: start again.
        await asyncio.to_thread(target.unlink, missing_ok=True)
        await qemuimg.create(target, volume.format.value, volume.size)

    async def import_image(
        self,
        volume: Volume,
        source: str,
        progress: Progress | None,
        source_format: str | None = None,
    ) -> int:
        await self.prepare()
        target = self.path(volume)
        partial = target.with_name(target.name + ".partial")
        fmt = source_format or await qemuimg.detect_format(source)
        await qemuimg.convert(source, fmt, str(partial), volume.format.value, progress)
        if volume.size > 0:
            current = int((await qemuimg.info(partial, volume.format.value))["virtual-size"])
            if volume.size > current:
                await qemuimg.resize(partial, volume.format.value, volume.size)
        # Only a complete copy gets the volume's name: a crash leaves just a .partial file.
        await asyncio.to_thread(os.replace, partial, target)
        return int((await qemuimg.info(target, volume.format.value))["virtual-size"])

    async def clone(
        self,
        source: Volume,
        snapshot: str | None,
        target: Volume,
        linked: bool,
        progress: Progress | None,
    ) -> None:
        """Linked: a qcow2 overlay whose backing file is the source's (named relative to the
        pool's directory); full: a copy by qemu-img, of the snapshot `snapshot` inside a
        qcow2 source if given. A snapshot inside an image cannot back an overlay."""
        if source.pool != self.pool.name:
            raise StorageError(self._not_here(f"volume {source.name} is of another pool"))
        if linked and snapshot is not None:
            raise StorageError(
                self._not_here("a snapshot inside a qcow2 image cannot back a linked clone")
            )
        if linked and target.format != VolumeFormat.qcow2:
            raise StorageError(self._not_here("a linked clone is a qcow2 overlay"))
        await self.prepare()
        origin, path = self.path(source), self.path(target)
        partial = path.with_name(path.name + ".partial")
        await asyncio.to_thread(partial.unlink, missing_ok=True)
        if linked:
            await qemuimg.create_overlay(partial, origin.name, source.format.value, source.size)
        else:
            # A snapshot is read while its VM may run: QEMU never rewrites a snapshot's
            # clusters in place, and the task keeps the snapshot from being deleted meanwhile.
            await qemuimg.convert(
                origin, source.format.value, partial, target.format.value, progress,
                snapshot=snapshot, force_share=snapshot is not None,
            )  # fmt: skip
        # Only a complete clone gets the volume's name: a crash leaves just a .partial file.
        await asyncio.to_thread(os.replace, partial, path)
        if progress is not None:
            await progress(1.0)

    async def resize(self, volume: Volume, size: int) -> None:
        await qemuimg.resize(self.path(volume), volume.format.value, size)

    async def delete(self, volume: Volume) -> None:
        await asyncio.to_thread(self.path(volume).unlink, missing_ok=True)

    def allocation(self, volume: Volume) -> int | None:
        """Bytes really allocated on disk (sparse files count only written blocks)."""
        try:
            return self.path(volume).stat().st_blocks * 512
        except FileNotFoundError:
            return None

    def capacity(self) -> tuple[int, int] | None:
        """(total, free) bytes of the filesystem holding the pool: before its first volume
        makes its directory, of the filesystem the directory will be made on."""
        place = self.root
        while not place.exists() and place != place.parent:
            place = place.parent
        try:
            stat = os.statvfs(place)
        except OSError:
            return None
        return stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize


class NfsPool(DirPool):
    CAPABILITIES = DirPool.CAPABILITIES.model_copy(update={"mounted": True})

    @classmethod
    def definition_problem(cls, pool: PoolSpec) -> tuple[str, str] | None:
        return None  # the mount point is Heron's own (`<state>/mnt/<pool>`), not `path`

    @property
    def root(self) -> Path:
        return self.state_dir / "mnt" / self.pool.name

    def source(self) -> str:
        return f"{self.pool.server}:{self.pool.export}"

    async def prepare(self) -> None:
        await mount_nfs(self.source(), self.root, self.pool.options or "vers=4.2,hard,noatime")

    def capacity(self) -> tuple[int, int] | None:
        return super().capacity() if mounted(self.root) else None


async def mount_nfs(source: str, root: Path, options: str) -> None:
    """Mount the NFS export `source` (server:/path) at `root`, unless something already is."""
    if mounted(root):
        return
    root.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        "mount", "-t", "nfs", "-o", options, source, str(root),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip() or f"mount exited {proc.returncode}"
        raise StorageError(f"cannot mount {source}: {message}")


def mounted(path: Path) -> bool:
    """Is something mounted exactly at `path` (as this process sees the mount table)?

    Touches nothing on the mount itself (its parent is resolved, not the path), so it answers
    even when the mount's server does not."""
    wanted = str(path.parent.resolve() / path.name)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    # Field 5 is the mount point, with spaces and the like escaped as octal.
    return any(
        line.split()[4].encode().decode("unicode_escape") == wanted
        for line in lines
        if len(line.split()) > 4
    )
