"""The `dir` pool: volumes are qcow2 or raw files in a directory.

The directory is the node's own (`<state>/pools/<name>` by default) or a mount every node sees
(NFS or similar, `shared`), which the administrator provides.
"""

import contextlib
import os
from pathlib import Path

from heron.models.storage import Pool, Volume
from heron.storage import qemuimg
from heron.storage.qemuimg import Progress


class DirPool:
    def __init__(self, pool: Pool, state_dir: Path):
        self.pool = pool
        self.root = Path(pool.path) if pool.path else state_dir / "pools" / pool.name

    def path(self, volume: Volume) -> Path:
        return self.root / f"{volume.name}.{volume.format.value}"

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    async def create(self, volume: Volume) -> None:
        self.ensure()
        target = self.path(volume)
        if target.exists():
            # A retried task after a crash finds its own half-made file: start again.
            target.unlink()
        await qemuimg.create(target, volume.format.value, volume.size)

    async def import_image(
        self,
        volume: Volume,
        source: Path,
        progress: Progress | None,
        source_format: str | None = None,
    ) -> int:
        """Copy `source` into the volume; returns the volume's virtual size."""
        self.ensure()
        target = self.path(volume)
        partial = target.with_name(target.name + ".partial")
        fmt = source_format or await qemuimg.detect_format(source)
        await qemuimg.convert(source, fmt, partial, volume.format.value, progress)
        if volume.size > 0:
            current = int((await qemuimg.info(partial))["virtual-size"])
            if volume.size > current:
                await qemuimg.resize(partial, volume.format.value, volume.size)
        # Only a complete copy gets the volume's name: a crash leaves just a .partial file.
        os.replace(partial, target)
        return int((await qemuimg.info(target))["virtual-size"])

    async def resize(self, volume: Volume, size: int) -> None:
        await qemuimg.resize(self.path(volume), volume.format.value, size)

    def delete(self, volume: Volume) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(volume).unlink()

    def allocation(self, volume: Volume) -> int | None:
        """Bytes really allocated on disk (sparse files count only written blocks)."""
        try:
            return self.path(volume).stat().st_blocks * 512
        except FileNotFoundError:
            return None

    def capacity(self) -> tuple[int, int]:
        """(total, free) bytes of the filesystem holding the pool."""
        self.ensure()
        stat = os.statvfs(self.root)
        return stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize
