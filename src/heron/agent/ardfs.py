"""heron-io on this node, kept in line with the ConfigDB.

For every ardfs pool the node is a member of it (it registers itself, with the port its
heron-io listens on for peers, and the disks the administrator gave it), and runs one heron-io
process: started detached like etcd and QEMU, so restarting the agent never touches the data
path. Its configuration file is written from the pool, its members and its volumes; volume
changes (new, grown, deleted, a new owner) are applied by SIGHUP, membership changes by a
restart, which QEMU rides out by reconnecting to the NBD socket.

heron-io speaks TLS to its peers with this node's certificate (ardfs/peertls.py): it is given
the files of the node's credentials, which it reads again when they are renewed. While some
member of the pool runs a release without it (no ARDFS_PEER_TLS among its node's features),
heron-io talks to such a peer in the clear; once every member's node announces it, heron-io
is told (SIGHUP) to require TLS.
"""

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from heron.ardfs.config import DiskSpec, IoConfig, NodeSpec, Scheme, VolumeSpec
from heron.ardfs.config import PlacedDisk as IoPlacedDisk
from heron.ardfs.io import READY
from heron.ardfs.peerauth import new_key, write_key
from heron.configdb import UNREACHABLE, ConfigDB, Conflict, Txn, keys
from heron.configdb.cache import Cache
from heron.models.node import ARDFS_PEER_TLS, Node
from heron.models.snapshot import Snapshot, SnapshotState
from heron.models.storage import (
    ArdfsDisk,
    ArdfsMember,
    ArdfsNodeStatus,
    ArdfsTombstone,
    DiskUsage,
    PlacedDisk,
    Pool,
    Protection,
    Volume,
    VolumeHealth,
)
from heron.models.task import Task, TaskKind, new_task
from heron.storage import devclass, layers
from heron.storage.ardfspool import SECTOR, socket_path
from heron.storage.registry import capabilities
from heron.tls import NodeCredentials
from heron.util.ports import free_port_in
from heron.util.proc import (
    alive,
    find_running,
    read_pidfile,
    spawn_detached,
    terminate,
    wait_until,
)
from heron.util.wait import any_set

log = logging.getLogger(__name__)

CHECK = 5.0  # also look this often whether heron-io still runs
DETECT_TIMEOUT = 10.0  # seconds: telling a disk's class from the kernel
PUBLISH = 0.25  # how often the owner looks at its volumes' redundancy (a file read)
DISK_REPORT = 60.0  # disks' free space is reported at least this often
TOMBSTONE_KEEP = 7 * 24 * 3600.0
SETTLE = 5.0
PEER_PORTS = (20000, 32000)  # where heron-io listens for peers, unless the record says
START_TIMEOUT = 60.0


def scheme(protection: str) -> Scheme:
    wanted = Protection.parse(protection)
    if wanted.erasure_coded:
        return Scheme(kind="ec", data=wanted.data)
    return Scheme(kind="replicated", copies=wanted.copies)


def io_config(
    node: str,
    state_dir: Path,
    pool: Pool,
    members: list[ArdfsMember],
    volumes: list[Volume],
    credentials: NodeCredentials | None = None,
    require_tls: bool = False,
) -> IoConfig:
    """What this node's heron-io for `pool` is to serve (raises ValueError if impossible):
    with TLS to its peers if `credentials` are given, required if `require_tls`."""
    root = state_dir / "ardfs" / pool.name
    tls: dict[str, Any] = {}
    if credentials is not None:
        tls = {
            "peer_tls_key": credentials.key_file,
            "peer_tls_cert": credentials.cert_file,
            "peer_tls_ca": credentials.ca_file,
            "peer_tls": "require" if require_tls else "prefer",
        }
    return IoConfig(
        node=node,
        nbd_socket=socket_path(state_dir, pool.name),
        state_dir=root / "state",
        peer_key_file=root / "peer.key",
        **tls,
        nodes=[
            NodeSpec(
                name=m.node,
                site=m.site,
                address=str(m.address),
                disks=[_disk(d, mine=m.node == node) for d in m.disks],
            )
            for m in sorted(members, key=lambda m: m.node)
            if m.address
        ],
        volumes=[
            VolumeSpec(
                id=uuid.UUID(v.id).hex,
                name=v.id,
                size=-(-v.size // SECTOR) * SECTOR,
                scheme=scheme(pool.protection),
                epoch=max(v.epoch, 1),
                owner=v.owner,
                standby=v.standby,
                placement=_placed(v.placement),
                moving_to=_placed(v.moving_to),
                layers=layers.stack(v) if v.layers else [],
                kept=layers.kept(v),
                merges=layers.merging(v),
            )
            for v in sorted(volumes, key=lambda v: v.id)
            if v.pool == pool.name and v.size > 0
        ],
    )


def _disk_sized(volume_id: str, size: int) -> Callable[[Snapshot], Snapshot]:
    """A snapshot record with the size of its disk on that volume."""

    def change(snapshot: Snapshot) -> Snapshot:
        disks = [d.model_copy(update={"size": size}) if d.volume == volume_id else d
                 for d in snapshot.disks]  # fmt: skip
        return snapshot.model_copy(update={"disks": disks})

    return change


def _placed(disks: list[PlacedDisk] | None) -> list[IoPlacedDisk] | None:
    if disks is None:
        return None
    return [IoPlacedDisk(id=d.id, node=d.node, site=d.site, weight=d.weight) for d in disks]


def _disk(disk: ArdfsDisk, mine: bool) -> DiskSpec:
    """Other nodes' disks are known by id only; their paths mean nothing here."""
    return DiskSpec(id=disk.id, path=Path(disk.path) if mine else None, weight=disk.weight)


def adopt(pidfile: Path, marker: str) -> int | None:
    """A heron-io running for this pool that no pidfile names (its starter died between
    starting it and writing the file, or the file was lost): taken back, not doubled. Two
    processes would serve the same disks, and the second would find its port taken. If
    there are several, the oldest is kept and the others stopped."""
    found = find_running(marker)
    if not found:
        return None
    for extra in found[1:]:
        terminate(extra, marker, 60.0)
    pidfile.write_text(f"{found[0]}\n")
    log.warning("found heron-io %d running without its pidfile: taken back", found[0])
    return found[0]


class IoSupervisor:
    def __init__(
        self,
        db: ConfigDB,
        node: str,
        address: str,
        state_dir: Path,
        on_start: Callable[[int], None] = lambda _: None,
        credentials: NodeCredentials | None = None,
    ):
        self.db = db
        self.node = node
        self.address = address
        self.state_dir = state_dir
        self.on_start = on_start  # e.g. onto the cores reserved for I/O
        self.credentials = credentials  # heron-io's TLS to its peers (None: plain)
        self.pools = Cache(db, Pool, keys.POOLS)
        self.volumes = Cache(db, Volume, keys.VOLUMES)
        self.members = Cache(db, ArdfsMember, keys.ARDFS_MEMBERS)
        self.deleted = Cache(db, ArdfsTombstone, keys.ARDFS_DELETED)
        # Read, not followed: whether every member's node can speak TLS to its peers.
        self.nodes = Cache(db, Node, keys.NODES)
        self._published: dict[str, tuple[str, int, int, int, int]] = {}
        self._rebuilds: dict[str, str] = {}  # volume id -> its rebuild task
        self._disks_published: dict[str, tuple[float, dict[str, DiskUsage]]] = {}

    async def run(self) -> None:
        caches = (self.pools, self.volumes, self.members, self.deleted)
        for cache in (*caches, self.nodes):
            await cache.start()
        wakes = [cache.listen() for cache in caches]
        publisher = asyncio.create_task(self._publish_forever())
        try:
            while True:
                for pool in self._served():
                    try:
                        await self.step(pool)
                    except Exception as exc:
                        log.warning("ardfs pool %s: %s", pool.name, exc)
                try:
                    await self._stop_deleted_pools()
                except UNREACHABLE as exc:  # asked again next round: never a reason to stop
                    log.warning("ardfs: deleted pools not checked: %r", exc)
                await any_set(wakes, CHECK)
        finally:
            publisher.cancel()
            for cache in (*caches, self.nodes):
                await cache.stop()

    def _served(self) -> list[Pool]:
        """The pools a heron-io on this node serves: those over their members' disks."""
        return [p for p in self.pools.values() if capabilities(p).member_disks]

    async def _stop_deleted_pools(self) -> None:
        """Stop the heron-io of a pool that was deleted, and forget its state and key."""
        pools = {p.name for p in self._served()}
        root = self.state_dir / "ardfs"
        for folder in root.iterdir() if root.is_dir() else []:
            if folder.name in pools or not (folder / "io.json").exists():
                continue
            if await self.db.get_raw(keys.pool(folder.name)) is not None:
                continue  # not an ardfs pool in the copy, yet there: never stop a data path idly
            marker = str(folder / "io.json")
            for pid in await asyncio.to_thread(find_running, marker):  # pidfile or not
                await asyncio.to_thread(terminate, pid, marker, 60.0)
            await asyncio.to_thread(shutil.rmtree, folder, True)
            log.info("ardfs pool %s was deleted: its heron-io stopped", folder.name)

    # -- health --------------------------------------------------------------------------

    async def _publish_forever(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH)  # a live migration waits for what this reports
            try:
                await self.publish()
            except Exception as exc:
                log.warning("publishing ARDFS health: %r", exc)

    async def publish(self) -> None:
        """For each volume this node owns: its health in the ConfigDB when it changed, and a
        `volume.rebuild` task following the rebuild while copies are stale."""
        for pool in self._served():
            status = io_status(self.state_dir, pool.name)
            await self._publish_disks(pool.name, status.get("disks", {}))
            served = status.get("volumes", {})
            for volume in self.volumes.values():
                seen = served.get(volume.id)
                if volume.pool != pool.name or volume.owner != self.node or seen is None:
                    continue
                if not seen.get("owned", True):
                    continue  # still taking over: its word counts once it serves as owner
                stale = seen["stale_chunks"] + seen.get("layers_stale_chunks", 0)
                health = VolumeHealth(
                    state="degraded" if stale else seen["state"],
                    stale_chunks=stale,
                    rebuilt_chunks=seen["rebuilt_chunks"],
                    rebuild_bytes_per_s=seen.get("rebuild_bytes_per_s", 0),
                    move_left=seen.get("move_left", 0) + seen.get("layers_move_left", 0),
                    node=self.node,
                    epoch=volume.epoch,
                    updated_at=time.time(),
                )
                summary = (
                    health.state,
                    health.stale_chunks,
                    health.rebuilt_chunks,
                    health.move_left,
                    volume.epoch,
                )
                if self._published.get(volume.id) != summary:
                    await self.db.put(keys.volume_health(volume.id), health)
                    self._published[volume.id] = summary
                if seen.get("merged"):
                    await self._finish_merges(pool, volume, seen["merged"])
                sizes = layers.resized(volume, seen.get("layer_bytes", {}))
                if sizes:
                    await self._publish_sizes(volume, sizes)
                if volume.moving_to is not None:
                    await self._finish_move(volume, seen)  # a volume.rebalance task follows
                elif health.stale_chunks:
                    await self._follow_rebuild(volume)

    async def _publish_sizes(self, volume: Volume, sizes: dict[str, int]) -> None:
        """Write what its snapshots' layers hold (heron-io's word, as their only writer)
        into their snapshots' records, then into the volume's record, which says they are
        written. A snapshot still being taken is left for a later look: its task writes its
        record last."""
        by_layer = {x.id: x.snapshot for x in volume.layers if x.id in sizes}
        taken = {
            e.value.id: e for e in await self.db.list(Snapshot, keys.SNAPSHOTS)
            if e.value.id in by_layer.values()
        }  # fmt: skip
        done: dict[str, int] = {}
        for layer_id, size in sizes.items():
            entry = taken.get(by_layer[layer_id] or "")
            if entry is not None and entry.value.state == SnapshotState.creating:
                continue
            if entry is not None:
                with contextlib.suppress(KeyError):  # deleted meanwhile
                    await self.db.update(Snapshot, entry.key, _disk_sized(volume.id, size))
            done[layer_id] = size
        if done:
            await self.db.update(
                Volume, keys.volume(volume.id), lambda current: layers.with_bytes(current, done)
            )

    async def _finish_move(self, volume: Volume, seen: dict[str, Any]) -> None:
        """Make the destination of a move the placement once heron-io has made every copy
        there; heron-io then forgets the disks left and removes what they hold."""
        assert volume.moving_to is not None
        target = [d.id for d in volume.moving_to]
        if seen.get("moving_to") != target or seen.get("move_left") != 0:
            return
        if seen.get("layers_move_left", 0):
            return  # the snapshots' layers are moved too before the placement changes

        def switch(current: Volume) -> Volume:
            if current.moving_to != volume.moving_to or current.owner != self.node:
                return current  # changed meanwhile: the next look decides
            return current.model_copy(update={"placement": current.moving_to, "moving_to": None})

        await self.db.update(Volume, keys.volume(volume.id), switch)
        log.info("ardfs volume %s placed on %s", volume.id, ", ".join(target))

    async def _finish_merges(self, pool: Pool, volume: Volume, done: list[str]) -> None:
        """Drop the layers of deleted snapshots heron-io has merged into the layers above
        them, and have their chunks removed."""
        dropped: list[str] = []

        def drop(current: Volume) -> Volume:
            dropped.clear()
            if current.owner != self.node:
                return current  # handed over meanwhile: the new owner merges again
            for layer in current.layers:
                if layer.merging and layer.id in done:
                    current = layers.merged(current, layer.id)
                    dropped.append(layer.id)
            return current

        await self.db.update(Volume, keys.volume(volume.id), drop)
        now = time.time()
        for layer_id in dropped:
            mark = ArdfsTombstone(pool=pool.name, volume=layer_id, deleted_at=now)
            await self.db.put(keys.ardfs_deleted(pool.name, layer_id), mark)
            log.info("ardfs volume %s: layer %s merged and dropped", volume.id, layer_id)

    async def _publish_disks(self, pool: str, disks: dict[str, Any]) -> None:
        """This node's disks' space, when it moved by 1 % or a minute has passed, and at
        once when one fails (the leader moves its copies elsewhere after the grace)."""
        usage = {
            disk: DiskUsage(
                total_bytes=d.get("total_bytes", 0),
                free_bytes=d.get("free_bytes", 0),
                error=d.get("error", ""),
            )
            for disk, d in disks.items()
        }
        last = self._disks_published.get(pool)
        if (
            last is not None
            and time.monotonic() - last[0] < DISK_REPORT
            and {d: u.error for d, u in usage.items()} == {d: u.error for d, u in last[1].items()}
            and all(
                abs(usage[d].free_bytes - last[1][d].free_bytes) <= usage[d].total_bytes // 100
                for d in usage
            )
        ):
            return
        record = ArdfsNodeStatus(disks=usage, updated_at=time.time())
        await self.db.put(keys.ardfs_status(pool, self.node), record)
        self._disks_published[pool] = (time.monotonic(), usage)

    async def _follow_rebuild(self, volume: Volume) -> None:
        task_id = self._rebuilds.get(volume.id)
        if task_id is not None:
            found = await self.db.get(Task, keys.task(task_id))
            if found is not None and not found.value.state.finished:
                return
        task = new_task(TaskKind.volume_rebuild, self.node, volume.id, "ardfs")
        await self.db.create(keys.task(task.id), task)
        self._rebuilds[volume.id] = task.id

    async def step(self, pool: Pool) -> None:
        if not await self._registered(pool) or not await self._classified(pool):
            return  # the record changes: this runs again
        members = [e.value for e in self.members if e.value.pool == pool.name]
        require = self.credentials is not None and self._all_speak_tls(members)
        try:
            config = io_config(
                self.node,
                self.state_dir,
                pool,
                members,
                self.volumes.values(),
                self.credentials,
                require,
            )
        except ValueError as exc:
            log.warning("ardfs pool %s cannot be served yet: %s", pool.name, exc)
            return
        root = self.state_dir / "ardfs" / pool.name
        path, pidfile = root / "io.json", root / "heron-io.pid"
        rekeyed = await self._peer_key(pool, config.peer_key_file)
        marker = str(path)
        pid = read_pidfile(pidfile, marker) or await asyncio.to_thread(adopt, pidfile, marker)
        try:
            running = IoConfig.load(path) if pid is not None else None
        except (OSError, ValueError):
            running = None
        if rekeyed or (pid is not None and _newer(config.peer_key_file, pidfile)):
            running = None  # heron-io reads its key when it starts: it restarts to use a new one
        if running is not None and running.tls_files != config.tls_files:
            # A heron-io of before (TLS files appear) or other files: a SIGHUP would not
            # change what it offers its peers.
            running = None
        if running == config:
            await self._remove_deleted(pool, config)
            return
        root.mkdir(parents=True, exist_ok=True)
        for disk in config.me.disks:
            assert disk.path is not None
            disk.path.mkdir(parents=True, exist_ok=True)
        config.save(path)
        if pid is not None and running is not None and running.nodes == config.nodes:
            os.kill(pid, 1)  # SIGHUP: apply the volumes
            return
        if pid is not None:
            log.info("ardfs pool %s: membership or key changed, restarting heron-io", pool.name)
            await asyncio.to_thread(terminate, pid, marker, 60.0)
        command = [sys.executable, "-m", "heron.ardfs.io", "--config", str(path)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        logfile = root / "heron-io.log"
        offset = logfile.stat().st_size if logfile.exists() else 0
        pid = spawn_detached(command, logfile, pidfile, env)
        self.on_start(pid)
        # Settle before anything else: a restart must not overtake a start still under way.
        if await asyncio.to_thread(_wait_ready, logfile, offset, pid, marker):
            log.info("ardfs pool %s: heron-io %d serving", pool.name, pid)
        else:
            tail = logfile.read_text(errors="replace")[offset:][-500:]
            log.error("ardfs pool %s: heron-io did not start: %s", pool.name, tail)
            if "Address already in use" in tail:
                await self._new_address(pool)  # someone took the port: pick another

    def _all_speak_tls(self, members: list[ArdfsMember]) -> bool:
        """Whether every member's node is up and announces ARDFS_PEER_TLS: its heron-io may
        then refuse plain peers. A member whose node is down may come back with an older
        release: it is talked to in the clear until it is seen again. (From the cache, not
        the ConfigDB: a step must not wait longer before it applies a volume's change.)"""
        nodes = {node.name: node for node in self.nodes.values()}
        return all(m.node in nodes and ARDFS_PEER_TLS in nodes[m.node].features for m in members)

    async def _peer_key(self, pool: Pool, path: Path) -> bool:
        """Write the pool's peer key to `path` (mode 0600); True if the file changed (heron-io
        must restart to use it). The first agent to need the key makes it, only while the pool
        exists (a pool deleted meanwhile must not get a key again)."""
        key = keys.ardfs_secret(pool.name)
        found = await self.db.get_raw(key)
        entry = self.pools.get(pool.name)
        if found is None and entry is not None:
            made = Txn().require_absent(key).require_revision(entry.key, entry.revision)
            with contextlib.suppress(Conflict):  # another agent was first, or the pool changed
                await self.db.commit(made.put(key, new_key()))
            found = await self.db.get_raw(key)
        if found is None:
            raise ValueError("the pool has no peer key yet")
        return await asyncio.to_thread(write_key, path, found[0].decode())

    async def _remove_deleted(self, pool: Pool, serving: IoConfig) -> None:
        """The chunks (and degraded log) of deleted volumes heron-io no longer serves."""
        served = {v.name for v in serving.volumes}
        served |= {layer for v in serving.volumes for layer in v.chain + v.kept}
        for entry in self.deleted:
            mark = entry.value
            if mark.pool != pool.name or mark.volume in served:
                continue
            if time.time() - mark.deleted_at < SETTLE:
                continue  # give every heron-io a moment to let the volume go
            hexid = uuid.UUID(mark.volume).hex
            doomed = [Path(str(d.path)) / "volumes" / hexid for d in serving.me.disks]
            doomed.append(serving.state_dir / "degraded" / f"{hexid}.log")
            for path in doomed:
                if path.is_dir():
                    await asyncio.to_thread(shutil.rmtree, path, True)
                    log.info("ardfs pool %s: removed %s", pool.name, path)
                elif path.exists():
                    path.unlink(missing_ok=True)
            if time.time() - mark.deleted_at > TOMBSTONE_KEEP:
                # Members away longer than this keep that garbage: a week is plenty.
                with contextlib.suppress(Conflict):
                    await self.db.delete(entry.key, revision=entry.revision)

    async def _new_address(self, pool: Pool) -> None:
        entry = self.members.get(f"{pool.name}/{self.node}")
        if entry is not None:
            member = entry.value.model_copy(update={"address": None})
            with contextlib.suppress(Conflict):
                await self.db.put(entry.key, member, revision=entry.revision)

    async def _classified(self, pool: Pool) -> bool:
        """This node's disks in the pool each have a device class; False if this had to
        detect some (from the kernel: storage/devclass.py) and write them into the record.
        A class an administrator set is never replaced."""
        entry = self.members.get(f"{pool.name}/{self.node}")
        if entry is None or all(d.device_class is not None for d in entry.value.disks):
            return True
        found: dict[str, devclass.Detected] = {}
        for disk in [d for d in entry.value.disks if d.device_class is None]:
            try:
                # A hung filesystem (a dead NFS server) must not stop this loop: assumed,
                # once, rather than a blocked thread per round.
                found[disk.id] = await asyncio.wait_for(
                    asyncio.to_thread(devclass.detect, disk.path), DETECT_TIMEOUT
                )
            except TimeoutError:
                note = f"{disk.path} did not answer within {DETECT_TIMEOUT:.0f} s"
                found[disk.id] = devclass.Detected("ssd", "assumed", f"{note}; ssd assumed")
        disks = [
            d.model_copy(
                update={
                    "device_class": found[d.id].device_class,
                    "class_source": found[d.id].source,
                    "class_note": found[d.id].note[:300],
                }
            )
            if d.id in found
            else d
            for d in entry.value.disks
        ]
        for disk in disks:
            if disk.id in found:
                log.info("ardfs pool %s: disk %s (%s) is %s: %s", pool.name, disk.id,
                         disk.path, disk.device_class, disk.class_note)  # fmt: skip
        member = entry.value.model_copy(update={"disks": disks})
        with contextlib.suppress(Conflict):  # changed meanwhile: detected again next round
            await self.db.put(entry.key, member, revision=entry.revision)
        return False

    async def _registered(self, pool: Pool) -> bool:
        """This node is a member with a peer address; False if the record had to change."""
        entry = self.members.get(f"{pool.name}/{self.node}")
        if entry is not None and entry.value.address:
            return True
        address = f"{self.address}:{free_port_in(PEER_PORTS, self.address)}"
        key = keys.ardfs_member(pool.name, self.node)
        if entry is None:
            member = ArdfsMember(pool=pool.name, node=self.node, address=address)
            with contextlib.suppress(Conflict):
                await self.db.create(key, member)
        else:
            member = entry.value.model_copy(update={"address": address})
            with contextlib.suppress(Conflict):
                await self.db.put(key, member, revision=entry.revision)
        return False


def io_status(state_dir: Path, pool: str) -> dict[str, Any]:
    """What this node's heron-io of `pool` last wrote about itself (empty if nothing yet)."""
    try:
        return json.loads((state_dir / "ardfs" / pool / "state" / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _newer(path: Path, than: Path) -> bool:
    """`path` was written after `than` (a key written after heron-io started, by an agent that
    died before restarting it)."""
    try:
        return path.stat().st_mtime_ns > than.stat().st_mtime_ns
    except OSError:
        return False


def _wait_ready(logfile: Path, offset: int, pid: int, marker: str) -> bool:
    """Until heron-io says it serves (True) or exits (False)."""
    ready = READY.encode()
    return (
        wait_until(
            lambda: ready in logfile.read_bytes()[offset:] or not alive(pid, marker), START_TIMEOUT
        )
        and ready in logfile.read_bytes()[offset:]
    )
