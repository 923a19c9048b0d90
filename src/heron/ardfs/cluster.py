"""This node's view of the cluster: every disk, how to reach it, where a block group goes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence

from heron.ardfs.placement import Disk, group_key, place
from heron.ardfs.target import ChunkTarget
from heron.ardfs.volume import UnavailableError

PLACEMENT_CACHE = 65536


class GoneTarget:
    """A disk a volume is placed on that is no longer in the cluster, or that failed: every
    copy on it is unavailable (the volume runs degraded) until a rebalance moves its blocks
    elsewhere."""

    local = False

    def __init__(self, disk: str, node: str, why: str = "left the cluster"):
        self.disk = disk
        self.node = node
        self.why = why

    def __getattr__(self, name: str) -> Callable[..., Awaitable[None]]:
        async def unavailable(*args: object, **kwargs: object) -> None:
            raise UnavailableError(f"disk {self.disk} of node {self.node}: {self.why}")

        return unavailable


def _gone(disk: str, node: str, why: str = "left the cluster") -> ChunkTarget:
    """A GoneTarget as what it stands for: a ChunkTarget whose every method fails."""
    return GoneTarget(disk, node, why)  # type: ignore[return-value]  # methods by __getattr__


class Cluster:
    def __init__(self, node: str, disks: Sequence[Disk], targets: Mapping[str, ChunkTarget]):
        self.node = node
        self.disks = list(disks)
        self.targets = dict(targets)
        self.pinned: dict[str, list[Disk]] = {}  # volume -> the disks it is placed over
        # volume -> the disks it is being moved onto (a rebalance): its block groups have
        # copies or shards there as well, written with the others, stale until copied.
        self.moving: dict[str, list[Disk]] = {}
        self._cache: OrderedDict[tuple[str, int, int, bool], list[ChunkTarget]] = OrderedDict()

    def pin(self, volume: str, disks: Sequence[Disk]) -> None:
        """Place `volume` over `disks` (some perhaps gone from the cluster) from now on."""
        self.pinned[volume] = self._known(disks)
        self.moving.pop(volume, None)
        self._forget(volume)

    def move(self, volume: str, disks: Sequence[Disk] | None) -> None:
        """Give `volume` a destination placement beside its own (None: none any more)."""
        if disks is None:
            self.moving.pop(volume, None)
        else:
            self.moving[volume] = self._known(disks)
        self._forget(volume)

    def fail(self, disk: str, node: str, why: str) -> None:
        """A disk of this node stopped working: its copies are unavailable from now on."""
        self.targets[disk] = _gone(disk, node, f"failed: {why}")
        self._cache.clear()

    def _known(self, disks: Sequence[Disk]) -> list[Disk]:
        for disk in disks:
            if disk.id not in self.targets:
                self.targets[disk.id] = _gone(disk.id, disk.node)
        return list(disks)

    def _forget(self, volume: str) -> None:
        for key in [k for k in self._cache if k[0] == volume]:
            del self._cache[key]

    def place(self, volume: str, group: int, width: int) -> list[ChunkTarget]:
        """The targets of a block group in shard order (placement is pure and cached)."""
        return self._place(volume, group, width, False)

    def destination(self, volume: str, group: int, width: int) -> list[ChunkTarget] | None:
        """Where a block group is being moved to, in shard order; None if it is not moving."""
        if volume not in self.moving:
            return None
        return self._place(volume, group, width, True)

    def plan(self, volume: str, disks: Sequence[Disk], group: int, width: int) -> list[ChunkTarget]:
        """Where a block group would go over `disks` (not cached: for moves and clean-ups)."""
        chosen = place(self._known(disks), group_key(volume, group), width)
        return [self.targets[d.id] for d in chosen]

    def _place(self, volume: str, group: int, width: int, moving: bool) -> list[ChunkTarget]:
        key = (volume, group, width, moving)
        found = self._cache.get(key)
        if found is None:
            disks = self.moving[volume] if moving else self.pinned.get(volume, self.disks)
            chosen = place(disks, group_key(volume, group), width)
            found = [self.targets[d.id] for d in chosen]
            self._cache[key] = found
            if len(self._cache) > PLACEMENT_CACHE:
                self._cache.popitem(last=False)
        return found

    def all_targets(self) -> list[ChunkTarget]:
        return list(self.targets.values())
