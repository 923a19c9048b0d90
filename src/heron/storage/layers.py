"""The layers of an ardfs volume as its record keeps them (pure): what a snapshot, a revert,
a delete and a linked clone change, and what heron-io is told to serve.

A volume's data is its top layer over the top's parent, and so on down (`Volume.layers`,
`Volume.top`); a volume without layers is one layer named by its id. A snapshot's data is
the layer it froze and the layers below. Layers form a tree: after a revert to an older
snapshot, the newer snapshots' layers stay (off the stack, kept) and the new top grows from
the snapshot's layer. A linked clone lists its source's layers it reads (`volume` = the
source), which the source then may not drop.
"""

import uuid
from collections.abc import Iterable

from heron.errors import StorageError
from heron.models.storage import Volume, VolumeLayer


def new_layer_id() -> str:
    return uuid.uuid4().hex


def top_of(volume: Volume) -> str:
    return volume.top or uuid.UUID(volume.id).hex


def layers_of(volume: Volume) -> list[VolumeLayer]:
    """Its layers, the one of a volume never snapshotted included."""
    if volume.layers:
        return list(volume.layers)
    return [VolumeLayer(id=top_of(volume), created_at=volume.created_at)]


def stack(volume: Volume) -> list[str]:
    """The layers read, oldest first; the last is the top."""
    by_id = {layer.id: layer for layer in layers_of(volume)}
    found: list[str] = []
    current: str | None = top_of(volume)
    while current is not None:
        if current in found or current not in by_id:
            raise StorageError(f"volume {volume.name}: its layers do not form a stack")
        found.append(current)
        current = by_id[current].parent
    return found[::-1]


def snapshot_layer(volume: Volume, snapshot: str) -> VolumeLayer | None:
    return next((x for x in layers_of(volume) if x.snapshot == snapshot and x.volume is None), None)


def snapshotted(volume: Volume, snapshot: str, now: float) -> Volume:
    """Freeze the top as `snapshot` and start an empty top above it: no data copied."""
    if snapshot_layer(volume, snapshot) is not None:
        return volume  # taken already (a repeat)
    top = top_of(volume)
    fresh = new_layer_id()
    layers = [x.model_copy(update={"snapshot": snapshot}) if x.id == top else x
              for x in layers_of(volume)]  # fmt: skip
    layers.append(VolumeLayer(id=fresh, parent=top, created_at=now))
    return volume.model_copy(update={"layers": layers, "top": fresh})


def frozen(volume: Volume, now: float) -> tuple[Volume, str]:
    """Freeze the top (no snapshot of its own: the base of a linked clone) under a new
    empty top; the frozen layer's id."""
    top = top_of(volume)
    fresh = new_layer_id()
    layers = [*layers_of(volume), VolumeLayer(id=fresh, parent=top, created_at=now)]
    return volume.model_copy(update={"layers": layers, "top": fresh}), top


def reverted(volume: Volume, snapshot: str, now: float) -> tuple[Volume, list[str]]:
    """A new empty top above the snapshot's layer; the old top goes (its ids returned).
    The snapshot stays, and so do the newer ones (kept off the stack)."""
    base = snapshot_layer(volume, snapshot)
    if base is None:
        raise StorageError(f"volume {volume.name} has no snapshot {snapshot}")
    old = top_of(volume)
    dropped = [] if _children(volume, old) else [old]
    fresh = new_layer_id()
    layers = [x for x in layers_of(volume) if x.id not in dropped]
    layers.append(VolumeLayer(id=fresh, parent=base.id, created_at=now))
    return volume.model_copy(update={"layers": layers, "top": fresh}), dropped


def deleting(volume: Volume, snapshot: str) -> tuple[Volume, list[str]]:
    """Delete a snapshot: its layer is merged into the layers above it (`merging`, then
    `merged` once heron-io copied it), or goes at once when none is above it. The ids
    dropped now are returned."""
    layer = snapshot_layer(volume, snapshot)
    if layer is None:
        return volume, []
    if not _children(volume, layer.id):
        return volume.model_copy(update={"layers": _without(volume, layer.id)}), [layer.id]
    layers = [x.model_copy(update={"merging": True, "snapshot": None}) if x.id == layer.id else x
              for x in layers_of(volume)]  # fmt: skip
    return volume.model_copy(update={"layers": layers}), []


def merged(volume: Volume, layer_id: str) -> Volume:
    """Drop a merged layer: the layers above it now sit on its parent."""
    layer = next((x for x in layers_of(volume) if x.id == layer_id), None)
    if layer is None:
        return volume
    layers = [x.model_copy(update={"parent": layer.parent}) if x.parent == layer_id else x
              for x in _without(volume, layer_id)]  # fmt: skip
    return volume.model_copy(update={"layers": layers})


def merging(volume: Volume) -> dict[str, list[str]]:
    """Layer -> the layers above it, for every layer being merged away."""
    return {x.id: _children(volume, x.id) for x in layers_of(volume) if x.merging}


def linked(source: Volume, base: str, target: Volume, now: float) -> Volume:
    """The target as a linked clone of the source's frozen layer `base`: that layer and
    those below it (shared, read-only) under a top of its own."""
    shared: list[VolumeLayer] = []
    current: str | None = base
    while current is not None:
        layer = _layer(source, current)
        owner = layer.volume or source.id
        shared.append(layer.model_copy(update={"volume": owner, "merging": False}))
        current = layer.parent
    fresh = new_layer_id()
    own = VolumeLayer(id=fresh, parent=base, created_at=now)
    return target.model_copy(update={"layers": [*shared[::-1], own], "top": fresh})


def readers(volume: Volume, others: Iterable[Volume]) -> list[Volume]:
    """The volumes (linked clones) that read layers of `volume`."""
    own = {x.id for x in layers_of(volume) if x.volume is None}
    return [
        other
        for other in others
        if other.id != volume.id and any(x.id in own and x.volume for x in other.layers)
    ]


def read_by_others(layer_id: str, volume: Volume, others: Iterable[Volume]) -> bool:
    return any(
        other.id != volume.id and any(x.id == layer_id for x in other.layers) for other in others
    )


def own_layers(volume: Volume) -> list[str]:
    """Every layer whose blocks are the volume's to remove when it is deleted."""
    return [x.id for x in layers_of(volume) if x.volume is None]


def kept(volume: Volume) -> list[str]:
    """Its own layers off the stack (snapshots newer than the one reverted to)."""
    on = set(stack(volume))
    return [x.id for x in layers_of(volume) if x.id not in on and x.volume is None]


def resized(volume: Volume, reported: dict[str, int]) -> dict[str, int]:
    """The volume's own snapshot layers whose size heron-io reports (layer id -> bytes)
    differently from the record: what to write into it, and into their snapshots."""
    return {
        x.id: reported[x.id]
        for x in layers_of(volume)
        if x.volume is None
        and x.snapshot is not None
        and x.id in reported
        and reported[x.id] != x.bytes
    }


def with_bytes(volume: Volume, sizes: dict[str, int]) -> Volume:
    """The record with these layers' sizes."""
    layers = [x.model_copy(update={"bytes": sizes[x.id]}) if x.id in sizes else x
              for x in volume.layers]  # fmt: skip
    return volume.model_copy(update={"layers": layers})


def _children(volume: Volume, layer_id: str) -> list[str]:
    return [x.id for x in layers_of(volume) if x.parent == layer_id]


def _without(volume: Volume, layer_id: str) -> list[VolumeLayer]:
    return [x for x in layers_of(volume) if x.id != layer_id]


def _layer(volume: Volume, layer_id: str) -> VolumeLayer:
    for layer in layers_of(volume):
        if layer.id == layer_id:
            return layer
    raise StorageError(f"volume {volume.name}: no layer {layer_id}")
