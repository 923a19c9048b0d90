"""Where the copies or shards of a block group go: rendezvous hashing over failure domains.

Pure logic. Each site, node and disk gets a weighted rendezvous score per key (highest random
weight); copies are placed one after another on the disk that maximises, in order:
fewest copies already in its site, its site's score, fewest copies already on its node, its
node's score, its own score. So copies spread over as many sites as there are (RF=2 in a
two-site metro cluster puts one copy in each), then over nodes, then over disks; and because
every choice is a rendezvous, a disk, node or site that joins or leaves only moves the keys it
wins or held: about 1/N of the data, not a reshuffle.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from heron.ardfs.errors import ArdfsError


class PlacementError(ArdfsError):
    """Fewer disks than the copies or shards asked for."""


@dataclass(frozen=True)
class Disk:
    id: str
    node: str
    site: str = "default"
    weight: float = 1.0  # relative capacity


def score(key: bytes, name: str, weight: float) -> float:
    """Weighted rendezvous score: the highest wins; a weight w wins w times as often."""
    digest = hashlib.blake2b(key + b"\0" + name.encode(), digest_size=8).digest()
    uniform = (int.from_bytes(digest, "big") + 0.5) / 2**64  # in (0, 1)
    return -weight / math.log(uniform)


def place(disks: Sequence[Disk], key: bytes, count: int) -> list[Disk]:
    """`count` distinct disks for `key`, in shard order; deterministic for the same inputs."""
    if count > len(disks):
        raise PlacementError(f"{count} copies asked for, {len(disks)} disks known")
    # Counter[str] holds ints; the weights are floats, so plain dicts.
    site_weight: dict[str, float] = {}
    node_weight: dict[str, float] = {}
    for disk in disks:
        site_weight[disk.site] = site_weight.get(disk.site, 0.0) + disk.weight
        node_weight[disk.node] = node_weight.get(disk.node, 0.0) + disk.weight
    site_score = {s: score(key, "site:" + s, w) for s, w in site_weight.items()}
    node_score = {n: score(key, "node:" + n, w) for n, w in node_weight.items()}
    disk_score = {d.id: score(key, "disk:" + d.id, d.weight) for d in disks}
    in_site: Counter[str] = Counter()
    on_node: Counter[str] = Counter()
    chosen: list[Disk] = []
    left = list(disks)
    for _ in range(count):
        best = max(
            left,
            key=lambda d: (
                -in_site[d.site],
                site_score[d.site],
                -on_node[d.node],
                node_score[d.node],
                disk_score[d.id],
            ),
        )
        chosen.append(best)
        left.remove(best)
        in_site[best.site] += 1
        on_node[best.node] += 1
    return chosen


def group_key(volume: str, group: int) -> bytes:
    """The placement key of a block (replication) or stripe (erasure coding) of a volume."""
    return f"{volume}/{group}".encode()
