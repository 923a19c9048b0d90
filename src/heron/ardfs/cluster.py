"""This node's view of the cluster: every disk, how to reach it, where a block group goes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

from heron.ardfs.placement import Disk, group_key, place
from heron.ardfs.target import ChunkTarget

PLACEMENT_CACHE = 65536


class Cluster:
    def __init__(self, node: str, disks: Sequence[Disk], targets: Mapping[str, ChunkTarget]):
        self.node = node
        self.disks = list(disks)
        self.targets = dict(targets)
        self._cache: OrderedDict[tuple[str, int, int], list[ChunkTarget]] = OrderedDict()

    def place(self, volume: str, group: int, width: int) -> list[ChunkTarget]:
        """The targets of a block group in shard order (placement is pure and cached)."""
        key = (volume, group, width)
        found = self._cache.get(key)
        if found is None:
            chosen = place(self.disks, group_key(volume, group), width)
            found = [self.targets[d.id] for d in chosen]
            self._cache[key] = found
            if len(self._cache) > PLACEMENT_CACHE:
                self._cache.popitem(last=False)
        return found

    def all_targets(self) -> list[ChunkTarget]:
        return list(self.targets.values())
