"""The owner of a volume whose pool has one writing node per volume (`Capabilities.owned`).

The owner is the node that runs the volume's VM; each new owner raises the volume's epoch, and
the pool's data path refuses writes from an older epoch, so a node that lost the VM (failed
over, migrated away) cannot damage the volume any more.
"""

from heron.configdb import ConfigDB, keys
from heron.models.storage import Volume


async def claim(db: ConfigDB, volume_id: str, node: str) -> Volume:
    """Make `node` the volume's owner (a new epoch) unless it already is."""
    found = await db.get(Volume, keys.volume(volume_id))
    if found is not None and found.value.owner == node:
        return found.value

    def change(volume: Volume) -> Volume:
        if volume.owner == node:
            return volume
        return volume.model_copy(update={"owner": node, "epoch": volume.epoch + 1, "standby": None})

    return (await db.update(Volume, keys.volume(volume_id), change)).value
