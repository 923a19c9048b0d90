"""The leader's rebalance of ardfs pools: copies held by disks that are gone get made again,
and volumes spread onto disks that joined.

A member node that has been down for longer than its pool's `rebuild_grace_s`, or has left
the cluster, a disk its heron-io has reported failed for that long (not mounted, unreadable),
or a disk taken out of a member, no longer counts: every volume placed on one of
its disks is given a destination (`moving_to`: the pool's disks that do count) and an owner
that is alive (claimed with a new epoch when its own is down or there is none). The owner's
heron-io copies each block's missing copies or shards there while the volume stays in use,
and the owner's agent switches `placement` to the destination when all are made
(`agent/ardfs.py`). A `volume.rebalance` task follows each move with progress.

A pool that asks for a device class counts only its disks of that class (for a volume that
asks for one of its own, those of its class): a disk whose class is set to another is moved
off like a disk taken out, copies are only ever made again on disks of the class, and a disk
given the class is spread onto.

A volume placed on fewer disks than count (disks added, a node back after its copies were
moved off) is moved onto all of them the same way, a few volumes at a time: rendezvous
placement moves only the blocks the new disks win, about their share of the data.

The grace is counted from when this leader first saw the node down: a new leader starts
counting again, which delays a move and never hastens one.
"""

import asyncio
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any

from heron.audit import AuditLog
from heron.configdb import Conflict, Txn, keys
from heron.configdb.election import Election
from heron.models.storage import ArdfsMember, PlacedDisk, Pool, Volume, of_class
from heron.models.task import RebalanceParams, TaskKind, new_task
from heron.scheduler.inventory import Inventory
from heron.storage.registry import capabilities

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _View:
    """A pool's disks of one device class, as a step of the rebalance sees them."""

    counted: list[PlacedDisk]  # those that count
    ids: set[str]
    up: list[PlacedDisk]  # of those, the ones that answer now
    target: list[PlacedDisk]  # where copies lost are made: up, unless too few are
    gone: set[str]  # member nodes that do not count


CHECK = 2.0  # seconds between two looks
# Volumes spreading onto disks that joined, at once per pool (copies lost are made again
# without waiting for these).
SPREAD_AT_ONCE = 2


class RebalanceController:
    def __init__(self, inventory: Inventory, audit: AuditLog):
        self.inventory = inventory
        self.db = inventory.db
        self.audit = audit
        self.down_since: dict[str, float] = {}  # node -> when this leader saw it down
        # (pool, disk) -> when this leader saw the disk reported failed by its node
        self.failing_since: dict[tuple[str, str], float] = {}
        self._said: set[tuple[str, str]] = set()  # warnings given once per pool and reason

    async def run(self, election: Election) -> None:
        while True:
            try:
                await self.step(election)
            except Conflict:
                pass  # a record changed under us: look again
            except Exception:
                log.exception("ardfs rebalance step failed")
            await asyncio.sleep(CHECK)

    def counted(
        self, pool: Pool, members: list[ArdfsMember], wanted: str | None
    ) -> tuple[list[PlacedDisk], set[str], set[str]]:
        """The pool's disks that count (of the device class `wanted`, if any; on members
        alive or down for less than the grace, not reported failed for longer), the members
        that do not, and the disks reported failed."""
        inv = self.inventory
        live = inv.live_nodes()
        now = time.monotonic()
        for node in [n for n in self.down_since if n in live]:
            del self.down_since[node]
        failing = {
            disk
            for name, entry in inv.ardfs_status.items()
            if name.startswith(f"{pool.name}/")
            for disk, usage in entry.value.disks.items()
            if usage.error
        }
        for key in [k for k in self.failing_since if k[0] == pool.name and k[1] not in failing]:
            del self.failing_since[key]
        disks, gone = [], set()
        for member in members:
            settings = inv.node_settings.get(member.node)
            if settings is not None and settings.value.left:
                gone.add(member.node)
                continue
            if member.node not in live:
                since = self.down_since.setdefault(member.node, now)
                if now - since >= pool.rebuild_grace_s:
                    gone.add(member.node)
                    continue
            disks += [
                PlacedDisk(id=d.id, node=member.node, site=member.site, weight=d.weight)
                for d in member.disks
                if of_class(wanted, d)  # copies are made again within the device class
                and (
                    d.id not in failing
                    or now - self.failing_since.setdefault((pool.name, d.id), now)
                    < pool.rebuild_grace_s
                )
            ]
        return sorted(disks, key=lambda d: d.id), gone, failing

    async def step(self, election: Election) -> None:
        inv = await self.inventory.ready()
        live = inv.live_nodes()
        for pool in [p for p in inv.pools.values() if capabilities(p).member_disks]:
            members = [m for m in inv.ardfs_members.values() if m.pool == pool.name]
            hosts = sorted({m.node for m in members if m.node in live and m.address})
            volumes = [e for e in inv.volumes if e.value.pool == pool.name and e.value.placement]
            moving = sum(1 for e in volumes if e.value.moving_to is not None)
            # The disks that count, by device class: a volume's own, else its pool's.
            # (The pool's own at once, as every step: the grace of a node seen down counts
            # from this look, volumes or not.)
            views = {pool.device_class: self._view(pool, members, pool.device_class, hosts)}
            for entry in volumes:
                volume = entry.value
                assert volume.placement is not None
                wanted = volume.device_class or pool.device_class
                if wanted not in views:
                    views[wanted] = self._view(pool, members, wanted, hosts)
                view = views[wanted]
                counted, ids, up = view.counted, view.ids, view.up
                current = volume.moving_to or volume.placement
                if all(d.id in ids for d in current):
                    if volume.moving_to is not None:
                        if volume.owner not in view.gone | {None}:
                            continue  # its move has an owner
                        destination = volume.moving_to  # the move lost its owner: hand it on
                    elif (
                        {d.id for d in volume.placement} == ids
                        or len(up) < len(counted)
                        or moving >= SPREAD_AT_ONCE
                    ):
                        continue  # on every disk, a node is away, or enough moves under way
                    else:
                        destination = counted  # disks joined: spread onto them too
                        moving += 1
                elif len(ids) < pool.width:
                    kind = f"{wanted} disks" if wanted else "disks"
                    self._once(pool.name, f"narrow {kind}", "ardfs pool %s: %d %s left, %s needs "
                               "%d: volumes stay degraded", pool.name, len(ids), kind,
                               pool.protection, pool.width)  # fmt: skip
                    continue
                else:
                    destination = view.target
                if hosts:
                    await self._move(election, entry.key, entry.revision, volume, destination,
                                     hosts)  # fmt: skip

    def _view(self, pool: Pool, members: list[ArdfsMember], wanted: str | None,
              hosts: list[str]) -> "_View":  # fmt: skip
        counted, gone, failing = self.counted(pool, members, wanted)
        # Copies go to disks that answer now (a node down within its grace still counts,
        # but a move onto it would wait for it), unless too few do.
        up = [d for d in counted if d.node in hosts and d.id not in failing]
        target = up if len(up) >= pool.width else counted
        return _View(counted, {d.id for d in counted}, up, target, gone)

    async def _move(
        self,
        election: Election,
        key: str,
        revision: int,
        volume: Volume,
        destination: list[PlacedDisk],
        hosts: list[str],
    ) -> None:
        update: dict[str, Any] = {"moving_to": destination}
        owner = volume.owner
        if owner not in hosts:
            # Its owner is down (or it has none): a live member takes it over to do the move.
            owner = hosts[zlib.crc32(volume.id.encode()) % len(hosts)]
            update |= {"owner": owner, "epoch": volume.epoch + 1, "standby": None}
        moved = volume.model_copy(update=update)
        before = {d.id for d in volume.moving_to or volume.placement or []}
        after = {d.id for d in destination}
        params = RebalanceParams(to=[d.id for d in destination])
        task = new_task(TaskKind.volume_rebalance, owner, volume.id, "rebalance", params)
        txn = (
            election.fence(Txn())
            .require_revision(key, revision)
            .put(key, moved)
            .put(keys.task(task.id), task)
        )
        revision = await self.db.commit(txn)
        await self.inventory.volumes.wait_for(revision)  # the next step sees it moving
        if before - after:
            reason = f"disks gone: {', '.join(sorted(before - after))}"
        elif after - before:
            reason = f"disks joined: {', '.join(sorted(after - before))}"
        else:
            reason = f"its owner is gone, {owner} takes the move over"
        reason += f"; moving onto {len(destination)} disks"
        log.warning("ardfs volume %s (%s): %s, by %s", volume.name, volume.id, reason, owner)
        self.audit.record(
            user="rebalance",
            method="REBALANCE",
            path=f"/pools/{volume.pool}/volumes/{volume.id}",
            status=0,
            result="ok",
            target=volume.id,
            reason=reason,
            task=task.id,
        )

    def _once(self, pool: str, reason: str, message: str, *args: object) -> None:
        if (pool, reason) not in self._said:
            self._said.add((pool, reason))
            log.warning(message, *args)
