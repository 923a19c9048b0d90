"""Which driver serves each pool type: the one place that names them all.

Apart from `driver.py` because every driver module imports the interface from there: with
the table in the interface's module, each would import the other.
"""

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from heron.configdb import ConfigDB
from heron.models.storage import Pool, PoolSpec, PoolType
from heron.storage.ardfspool import ArdfsPool
from heron.storage.dirpool import DirPool, NfsPool
from heron.storage.driver import Capabilities, PoolDriver
from heron.storage.lunpool import BlockPool, IscsiPool
from heron.storage.rbdpool import RbdPool

DRIVERS: Mapping[PoolType, type[PoolDriver]] = MappingProxyType(
    {
        "dir": DirPool,
        "nfs": NfsPool,
        "iscsi": IscsiPool,
        "block": BlockPool,
        "rbd": RbdPool,
        "ardfs": ArdfsPool,
    }
)


def driver_for(pool: Pool, state_dir: Path, db: ConfigDB | None = None) -> PoolDriver:
    """The driver of `pool` on this node; `db` lets ardfs pools change their volume records."""
    return DRIVERS[pool.type](pool, state_dir, db)


def capabilities(pool: PoolSpec) -> Capabilities:
    """What `pool` can do, without a driver for a node (the API and the leader ask this)."""
    return DRIVERS[pool.type].capabilities_of(pool)


def definition_problem(pool: PoolSpec) -> tuple[str, str] | None:
    """(field, reason) when a pool definition the model accepts cannot work; else None."""
    return DRIVERS[pool.type].definition_problem(pool)
