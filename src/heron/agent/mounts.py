"""This node's NFS mounts of pools that no longer exist: unmounted.

Each node mounts an nfs pool's export at `<state>/mnt/<pool>` the first time it uses the
pool there (storage/dirpool.py). Deleting a pool is refused while it holds volumes; once it is
gone, every node unmounts its mount point and removes the empty directory. An unmount that
fails (something outside Heron still uses the mount) is tried again at every pool change
and every CHECK seconds, with one warning per mount point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from heron.configdb import ConfigDB, keys
from heron.configdb.cache import Cache
from heron.models.storage import Pool
from heron.storage.dirpool import mounted
from heron.storage.registry import capabilities

log = logging.getLogger(__name__)

CHECK = 60.0


class MountKeeper:
    def __init__(self, db: ConfigDB, state_dir: Path):
        self.db = db
        self.root = state_dir / "mnt"
        self.pools = Cache(db, Pool, keys.POOLS)
        self._warned: set[str] = set()

    async def run(self) -> None:
        await self.pools.start()
        wake = self.pools.listen()
        try:
            while True:
                try:
                    await self.sweep()
                except Exception as exc:
                    log.warning("nfs mounts: %s", exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CHECK):
                        await wake.wait()
                wake.clear()
        finally:
            await self.pools.stop()

    async def sweep(self) -> None:
        wanted = {p.name for p in self.pools.values() if capabilities(p).mounted}
        try:
            # The directory's own entries: nothing here looks inside a mount (its server may
            # be away, and a stat of the mount point would wait for it).
            with os.scandir(self.root) as entries:
                names = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return
        for name in names:
            folder = self.root / name
            if name in wanted:
                continue
            if await self.db.get_raw(keys.pool(name)) is not None:
                continue  # in the ConfigDB though not (yet) in the copy: leave it be
            if mounted(folder) and not await self._unmount(folder):
                continue
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: never delete what a failed unmount shows
            self._warned.discard(name)

    async def _unmount(self, folder: Path) -> bool:
        proc = await asyncio.create_subprocess_exec(
            "umount", str(folder), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        if proc.returncode == 0:
            log.info("pool %s was deleted: its export is unmounted from %s", folder.name, folder)
            return True
        if folder.name not in self._warned:
            message = err.decode(errors="replace").strip() or f"umount exited {proc.returncode}"
            log.warning("pool %s was deleted; %s stays mounted: %s", folder.name, folder, message)
            self._warned.add(folder.name)
        return False
