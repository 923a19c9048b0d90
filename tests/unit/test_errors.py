"""The error tree: every error Heron raises on purpose is caught by its family's root, and
keeps the builtin base its callers relied on before the roots existed."""

import pytest

from heron.agent.tasks import TaskCancelled, TaskFailed
from heron.agent.vms import VMError
from heron.api.errors import ApiError, Forbidden, Unauthorized
from heron.ardfs.client import IoError
from heron.ardfs.errors import ArdfsError
from heron.ardfs.nbd import Disconnect
from heron.ardfs.nbdtools import ToolError
from heron.ardfs.peerauth import AuthError, PeerKeyError
from heron.ardfs.placement import PlacementError
from heron.ardfs.receiver import Closed
from heron.ardfs.volume import ChecksumError, FencedError, UnavailableError, VolumeError
from heron.configdb import Conflict as CasConflict
from heron.configdb.etcd import EtcdError
from heron.devcluster import DevClusterError
from heron.dr import errors as dr
from heron.errors import (
    AgentError,
    ConfigDBError,
    DRError,
    HeronError,
    HypervisorError,
    SchedulingError,
    StorageError,
)
from heron.hypervisor.qemu import QemuError
from heron.scheduler.placement import NoCapacity
from heron.services.errors import Conflict, Invalid, NotFound, ServiceError
from heron.storage import driver
from heron.storage.qemuimg import QemuImgError
from heron.testguest.build import BuildError

FAMILIES = [
    (ConfigDBError, [CasConflict, EtcdError]),
    (HypervisorError, [QemuError]),
    (StorageError, [QemuImgError]),
    (SchedulingError, [NoCapacity]),
    (AgentError, [TaskCancelled, TaskFailed, VMError]),
    (ApiError, [Unauthorized, Forbidden]),
    (ServiceError, [Invalid, Conflict, NotFound]),
    (HeronError, [DevClusterError, BuildError]),
    (
        DRError,
        [
            dr.InvalidArgument,
            dr.StoreNotFound,
            dr.PointNotFound,
            dr.PointCorrupt,
            dr.ChunkMissing,
            dr.ChunkCorrupt,
            dr.WriterBusy,
            dr.PointBusy,
            dr.GcBusy,
        ],
    ),
]

ARDFS = [
    IoError,
    Disconnect,
    ToolError,
    AuthError,
    PeerKeyError,
    PlacementError,
    Closed,
    VolumeError,
    ChecksumError,
    FencedError,
    UnavailableError,
]


@pytest.mark.parametrize(("root", "members"), FAMILIES)
def test_each_family_has_one_root_under_heron_error(
    root: type[Exception], members: list[type[Exception]]
) -> None:
    assert issubclass(root, HeronError)
    for member in members:
        assert issubclass(member, root), member


def test_pool_drivers_raise_the_family_root() -> None:
    assert driver.StorageError is StorageError


@pytest.mark.parametrize("member", ARDFS)
def test_ardfs_errors_have_their_own_root(member: type[Exception]) -> None:
    # The data path imports nothing else from Heron: its root is not a HeronError.
    assert issubclass(member, ArdfsError)
    assert not issubclass(member, HeronError)


def test_builtin_bases_callers_catch_are_kept() -> None:
    with pytest.raises(ValueError):
        raise PeerKeyError("no key")
    with pytest.raises(ConnectionError):
        raise Closed()
    with pytest.raises(OSError):
        raise Closed()
    with pytest.raises(ValueError):
        raise dr.InvalidArgument("bad name")
    with pytest.raises(LookupError):
        raise dr.PointNotFound("gone")
