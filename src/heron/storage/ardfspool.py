"""ARDFS pools: volumes served by the node's own heron-io over NBD on a unix socket.

The node agent keeps heron-io's configuration in line with the ConfigDB (`agent/ardfs.py`);
this driver only names volumes for QEMU and qemu-img and waits until heron-io serves them.
A volume is exported by heron-io under its Heron id. It is thin: creating one is writing its
record; an image is copied into it with qemu-img once heron-io serves it at the right size.
Its `owner` is the node whose heron-io writes it: the node that runs its VM claims it (owner
and epoch + 1) before QEMU starts, and the chunk stores refuse the previous owner's writes.
"""

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from heron.configdb import ConfigDB, Conflict, Txn, keys
from heron.models.storage import ArdfsMember, ArdfsTombstone, Pool, Volume, VolumeOrigin
from heron.storage import layers, qemuimg
from heron.storage.driver import Capabilities, PoolDriver, StorageError, VolumeSnapshot
from heron.storage.ownership import claim
from heron.storage.qemuimg import Progress, QemuImgError
from heron.util.wait import until

SERVE_TIMEOUT = 60.0  # heron-io (re)loads its configuration and claims in well under this
SECTOR = 4096  # heron-io volumes are a whole number of 4 KiB sectors
MEMBERS_PATIENCE = 30.0
COMMIT_ATTEMPTS = 20


def socket_path(state_dir: Path, pool: str) -> Path:
    return state_dir / "ardfs" / pool / "nbd.sock"


class ArdfsPool(PoolDriver):
    CAPABILITIES = Capabilities(
        member_disks=True,
        owned=True,
        grows_by_reconnect=True,
        native_snapshots=True,
        linked_clones=True,
        memory_state=True,
    )

    def __init__(self, pool: Pool, state_dir: Path, db: ConfigDB | None = None):
        super().__init__(pool, state_dir, db)
        self.socket = socket_path(state_dir, pool.name)

    def usable_capacity(self, raw: int) -> int:
        return int(raw * self.pool.redundancy.share)

    def protocol(self, volume: Volume) -> dict[str, Any]:
        return {
            "driver": "nbd",
            "server": {"type": "unix", "path": str(self.socket)},
            "export": volume.id,
            # heron-io restarts (membership changes, upgrades) without the guest noticing.
            "reconnect-delay": 30,
        }

    def image(self, volume: Volume) -> str:
        return f"nbd+unix:///{volume.id}?socket={self.socket}"

    async def attach(self, volume: Volume, node: str, incoming: bool = False) -> None:
        if self.db is None:
            raise StorageError("an ardfs volume is attached only through the node agent")
        if incoming:
            await self.wait_served(volume)  # exported here as the standby
            return
        claimed = await claim(self.db, volume.id, node)
        await self.wait_owned(claimed)
        await self.wait_served(claimed)

    async def wait_owned(self, volume: Volume) -> None:
        """Until this node's heron-io serves the volume as its owner at its epoch, as its
        status file says (rewritten every second). Serving alone is not enough: heron-io
        may still export the volume as it was while it applies the claim, and a client
        that opens it then meets "no export" once the new owner is applied."""
        status = self.state_dir / "ardfs" / self.pool.name / "state" / "status.json"

        async def owned() -> bool:
            try:
                seen = json.loads(status.read_text()).get("volumes", {}).get(volume.id)
            except (OSError, ValueError):
                return False
            return bool(seen) and seen.get("owned", True) and seen.get("epoch") == volume.epoch

        if await until(owned, SERVE_TIMEOUT, 0.2) is None:
            raise StorageError(
                f"heron-io on this node does not serve {volume.name} as its owner at epoch "
                f"{volume.epoch}"
            )

    async def create(self, volume: Volume) -> None:
        await self.wait_members()
        await self.wait_served(volume, volume.size)

    async def import_image(
        self, volume: Volume, source: str, progress: Progress | None, source_format: str | None
    ) -> int:
        fmt = source_format or await qemuimg.detect_format(source)
        # Read with its format given: a fixed VHD guessed as raw is 512 bytes too large.
        size = max(volume.size, int((await qemuimg.info(source, fmt))["virtual-size"]))
        size = -(-size // SECTOR) * SECTOR
        if size != volume.size:
            await self._set_size(volume, size)
        await self.wait_members()
        await self.wait_served(volume, size)
        # A new volume reads as zeroes: qemu-img need not write them.
        await qemuimg.convert(
            source, fmt, self.image(volume), "raw", progress, existing_zero_target=True
        )
        return size

    async def resize(self, volume: Volume, size: int) -> None:
        size = -(-size // SECTOR) * SECTOR
        await self._set_size(volume, size)
        await self.wait_served(volume, size)

    async def delete(self, volume: Volume) -> None:
        """Mark it deleted: each member's agent removes its chunks (every layer of its own)
        once heron-io let it go. Refused while linked clones read its layers."""
        db = self._db()
        current = await db.get(Volume, keys.volume(volume.id))
        record = current.value if current is not None else volume
        clones = layers.readers(record, await self._volumes())
        if clones:
            names = ", ".join(sorted(c.name for c in clones))
            raise StorageError(
                f"volume {volume.name} is the base of linked clones ({names}): delete them first"
            )
        txn = Txn()
        self._tombstones(txn, [volume.id, *layers.own_layers(record)])
        await db.commit(txn)

    # -- snapshots and clones (heron-io layers: storage/layers.py, ardfs/layered.py) ------

    async def snapshot_create(self, volumes: Sequence[Volume], name: str) -> None:
        """Freeze each volume's top layer as `name` under a new empty top, in one
        transaction, and wait until this node's heron-io serves the new stacks (the caller
        has paused the VM: its next write goes to the new top)."""
        db = self._db()
        now = time.time()
        for _ in range(COMMIT_ATTEMPTS):
            txn, before, after = Txn(), [], []
            for volume in volumes:
                entry = await db.get(Volume, keys.volume(volume.id))
                if entry is None:
                    raise StorageError(f"volume {volume.name} no longer exists")
                if entry.value.moving_to is not None:
                    raise StorageError(f"volume {volume.name} is being moved: snapshot it after")
                changed = layers.snapshotted(entry.value, name, now)
                txn.require_revision(entry.key, entry.revision).put(entry.key, changed)
                before.append(entry.value)
                after.append(changed)
            try:
                await db.commit(txn)
                break
            except Conflict:
                continue
        else:
            raise StorageError("the volumes kept changing; take the snapshot again")
        try:
            await self.wait_layers(after)
        except StorageError:
            for volume in after:  # all or none: the new tops are empty, the VM paused
                with contextlib.suppress(Exception):
                    await self.snapshot_delete(volume, name)
            raise

    async def snapshot_delete(self, volume: Volume, name: str) -> None:
        """Delete a snapshot, the VM running or not: its layer is merged into the layers
        above it by the owner's heron-io, online, and then goes (the owner's agent finishes
        it); the snapshot is no longer listed at once. Refused while a linked clone reads it."""
        db = self._db()
        others = await self._volumes()
        dropped: list[str] = []

        def change(current: Volume) -> Volume:
            nonlocal dropped
            layer = layers.snapshot_layer(current, name)
            if layer is not None and layers.read_by_others(layer.id, current, others):
                raise StorageError(
                    f"snapshot {name} of volume {volume.name} is the base of a linked clone: "
                    "delete the clone first"
                )
            changed, dropped = layers.deleting(current, name)
            return changed

        entry = await db.update(Volume, keys.volume(volume.id), change)
        if dropped:
            txn = Txn()
            self._tombstones(txn, dropped)
            await db.commit(txn)
        here = self.status().get("node")
        if entry.value.owner is None and layers.merging(entry.value) and here:
            # Merges are the owner's: a volume nobody owns (its VM never ran) is owned here.
            await claim(db, volume.id, str(here))

    async def snapshot_revert(self, volume: Volume, name: str) -> None:
        """A new empty top above the snapshot's layer (no VM has the volume open); what was
        written since goes, the snapshot and the newer ones stay."""
        db = self._db()
        now = time.time()
        dropped: list[str] = []

        def change(current: Volume) -> Volume:
            nonlocal dropped
            changed, dropped = layers.reverted(current, name, now)
            return changed

        entry = await db.update(Volume, keys.volume(volume.id), change)
        if dropped:
            txn = Txn()
            self._tombstones(txn, dropped)
            await db.commit(txn)
        await self.wait_layers([entry.value])

    async def snapshots(self, volume: Volume) -> list[VolumeSnapshot]:
        record = volume
        if self.db is not None:
            found = await self.db.get(Volume, keys.volume(volume.id))
            record = found.value if found is not None else volume
        taken = [x for x in layers.layers_of(record) if x.snapshot is not None and x.volume is None]
        taken.sort(key=lambda x: x.created_at)
        # The size is what the snapshot's own layer holds, as the owner's agent last wrote it
        # from its heron-io (agent/ardfs.py): None until then.
        return [VolumeSnapshot(name=x.snapshot or "", created_at=x.created_at, size=x.bytes)
                for x in taken]  # fmt: skip

    async def clone(
        self,
        source: Volume,
        snapshot: str | None,
        target: Volume,
        linked: bool,
        progress: Progress | None,
    ) -> None:
        """Linked: the target's stack is the source's frozen layers (of the snapshot, or of
        the source's top frozen now) under an empty top of its own: no data copied, whatever
        the size. Full: every block copied (qemu-img) from the source as it is now."""
        db = self._db()
        now = time.time()
        if not linked and snapshot is not None:
            # Linked first, then every block it reads written into its own top: independent.
            await self.clone(source, snapshot, target, True, None)
            await self._flatten(target, progress)
            return
        if not linked:
            size = -(-source.size // SECTOR) * SECTOR
            await self._set_size(target, size)
            await self.wait_members()
            await self.wait_served(target, size)
            await qemuimg.convert(
                self.image(source), "raw", self.image(target), "raw", progress,
                existing_zero_target=True,
            )  # fmt: skip
            return
        if snapshot is not None:
            found = await db.get(Volume, keys.volume(source.id))
            if found is None:
                raise StorageError(f"volume {source.name} no longer exists")
            fresh = found.value
            layer = layers.snapshot_layer(fresh, snapshot)
            if layer is None:
                raise StorageError(f"volume {source.name} has no snapshot {snapshot}")
            base = layer.id
        else:
            base = ""

            def freeze(current: Volume) -> Volume:
                nonlocal base
                changed, base = layers.frozen(current, now)
                return changed

            fresh = (await db.update(Volume, keys.volume(source.id), freeze)).value
        origin = VolumeOrigin(volume=source.id, snapshot=snapshot, linked=True)

        def link(current: Volume) -> Volume:
            changed = layers.linked(fresh, base, current, now)
            return changed.model_copy(
                update={"size": max(current.size, fresh.size), "origin": current.origin or origin}
            )

        entry = await db.update(Volume, keys.volume(target.id), link)
        await self.wait_members()
        await self.wait_served(entry.value, -(-entry.value.size // SECTOR) * SECTOR)

    async def _flatten(self, volume: Volume, progress: Progress | None) -> None:
        """Copy every block a linked clone reads from its source's layers into its own top
        (read through its stack and written back whole), then let go of those layers."""
        db = self._db()
        found = await db.get(Volume, keys.volume(volume.id))
        if found is None:
            raise StorageError(f"volume {volume.name} no longer exists")
        image = self.image(found.value)
        await qemuimg.convert(image, "raw", image, "raw", progress, existing_zero_target=True)

        def independent(current: Volume) -> Volume:
            top = layers.top_of(current)
            own = [
                x.model_copy(update={"parent": None}) if x.id == top else x
                for x in current.layers
                if x.volume is None
            ]
            origin = current.origin.model_copy(update={"linked": False}) if current.origin else None
            return current.model_copy(update={"layers": own, "origin": origin})

        entry = await db.update(Volume, keys.volume(volume.id), independent)
        await self.wait_layers([entry.value])

    async def wait_layers(self, volumes: Sequence[Volume]) -> None:
        """Until this node's heron-io serves each volume's stack (as the owner, where this
        node owns it)."""
        wanted = {v.id: (layers.stack(v), v.owner) for v in volumes}
        why = ""

        async def switched() -> bool:
            nonlocal why
            status = await asyncio.to_thread(self.status)
            served = status.get("volumes", {})
            for volume_id, (chain, owner) in wanted.items():
                seen = served.get(volume_id, {})
                if seen.get("layers") != chain:
                    why = f"{volume_id} served with layers {seen.get('layers')}, not {chain}"
                    return False
                if owner == status.get("node") and not seen.get("owned"):
                    why = f"{volume_id} not served as its owner yet"
                    return False
            return True

        if await until(switched, SERVE_TIMEOUT, 0.05) is None:
            raise StorageError(f"heron-io on this node did not switch layers: {why}")

    def status(self) -> dict[str, Any]:
        """What this node's heron-io of the pool last wrote about itself (empty if nothing)."""
        path = self.state_dir / "ardfs" / self.pool.name / "state" / "status.json"
        try:
            found = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def _tombstones(self, txn: Txn, ids: Sequence[str]) -> None:
        now = time.time()
        for item in dict.fromkeys(ids):
            mark = ArdfsTombstone(pool=self.pool.name, volume=item, deleted_at=now)
            txn.put(keys.ardfs_deleted(self.pool.name, item), mark)

    async def _volumes(self) -> list[Volume]:
        return [e.value for e in await self._db().list(Volume, keys.VOLUMES)]

    def _db(self) -> ConfigDB:
        if self.db is None:
            raise StorageError("an ardfs pool changes volumes only through the node agent")
        return self.db

    async def wait_members(self, patience: float = MEMBERS_PATIENCE) -> None:
        """Until every member's heron-io accepts connections (they restart when the pool's
        membership changes), so a new volume is not written degraded from its first block;
        after `patience` go on anyway: writes then record what the absent ones miss."""
        assert self.db is not None
        prefix = f"{keys.ARDFS_MEMBERS}{self.pool.name}/"
        db = self.db

        async def all_listen() -> bool:  # heron-io processes are (re)starting
            members = [e.value for e in await db.list(ArdfsMember, prefix)]
            listening = await asyncio.gather(*(_listens(m.address) for m in members))
            return bool(members) and all(listening)

        await until(all_listen, patience, 0.2)

    async def wait_served(self, volume: Volume, size: int | None = None) -> None:
        """Until this node's heron-io exports the volume (at `size`, if given)."""
        why = ""

        async def served() -> bool:  # heron-io applies configuration changes in the background
            nonlocal why
            try:
                found = int((await qemuimg.info(self.image(volume), "raw"))["virtual-size"])
            except QemuImgError as exc:
                why = str(exc)
                return False
            why = f"served at {found} bytes, not {size}"
            return size is None or found == size

        if await until(served, SERVE_TIMEOUT, 0.2) is None:
            raise StorageError(f"heron-io on this node does not serve {volume.name}: {why}")

    async def _set_size(self, volume: Volume, size: int) -> None:
        if self.db is None:
            raise StorageError("an ardfs pool changes volumes only through the node agent")

        def change(current: Volume) -> Volume:
            return current.model_copy(update={"size": size})

        await self.db.update(Volume, keys.volume(volume.id), change)


async def _listens(address: str | None) -> bool:
    if not address:
        return False
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), 1)
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    return True
