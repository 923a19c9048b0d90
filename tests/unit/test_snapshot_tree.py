"""Snapshots without processes: the tree, the service's checks, and the agent's native-pool
path with a stand-in driver, and with the rbd driver over a stand-in `rbd` tool."""

import os
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

import pytest
from fakes.configdb import FakeConfigDB

from heron.agent import migration
from heron.agent.snapshots import Snapshots
from heron.agent.tasks import TaskContext, TaskFailed
from heron.configdb import Txn, keys
from heron.models.common import new_id
from heron.models.migration import pinned
from heron.models.node import Node
from heron.models.snapshot import (
    Snapshot,
    SnapshotCreate,
    SnapshotDisk,
    SnapshotHead,
    SnapshotState,
    head_after_delete,
    is_snapshot_id,
    new_snapshot_id,
    reparented,
    tree_order,
)
from heron.models.storage import Pool, Volume, VolumeFormat, VolumeOrigin
from heron.models.task import SnapshotParams, TaskKind, new_task
from heron.models.vm import VM, DiskSpec, PowerState, VMSpec
from heron.services import snapshots as service
from heron.services.errors import Conflict, Invalid, NotFound
from heron.storage import registry
from heron.storage.dirpool import DirPool
from heron.storage.driver import Capabilities, StorageError, VolumeSnapshot


def snap(name: str, parent: str | None = None, at: float = 1.0, **extra: object) -> Snapshot:
    return Snapshot(id=new_snapshot_id(), vm="v", name=name, parent=parent, created_at=at, **extra)


# -- the tree ------------------------------------------------------------------------------


def test_ids_are_short_and_safe_for_every_image_format() -> None:
    ids = {new_snapshot_id() for _ in range(100)}
    assert len(ids) == 100 and all(is_snapshot_id(i) and len(i) == 13 for i in ids)
    assert not is_snapshot_id("s12") and not is_snapshot_id("S0123456789ab")


def test_deleting_a_middle_snapshot_gives_its_children_its_parent() -> None:
    a = snap("a")
    b = snap("b", a.id, 2)
    c = snap("c", b.id, 3)
    d = snap("d", b.id, 4)
    moved = reparented([a, b, c, d], b.id)
    assert {(s.name, s.parent) for s in moved} == {("c", a.id), ("d", a.id)}
    assert reparented([a, b, c, d], c.id) == []
    # A root's children become roots.
    assert [(s.name, s.parent) for s in reparented([a, b], a.id)] == [("b", None)]


def test_the_current_snapshot_moves_to_the_parent_of_the_deleted_one() -> None:
    a = snap("a")
    b = snap("b", a.id, 2)
    assert head_after_delete(b.id, [a, b], b.id) == a.id
    assert head_after_delete(b.id, [a, b], a.id) == b.id
    assert head_after_delete(a.id, [a], a.id) is None


def test_tree_order_is_depth_first_by_age() -> None:
    a = snap("a", at=1)
    b = snap("b", a.id, 2)
    c = snap("c", a.id, 5)
    d = snap("d", b.id, 3)
    orphan = snap("e", "s000000000000", 0)
    order = [(depth, s.name) for depth, s in tree_order([c, d, b, a, orphan])]
    assert order == [(0, "e"), (0, "a"), (1, "b"), (2, "d"), (1, "c")]


def test_snapshots_or_a_linked_clone_on_node_local_pools_pin_a_vm_to_its_node() -> None:
    from heron.models.snapshot import SnapshotDisk

    def volume(id_: str, pool: str, **extra: object) -> Volume:
        return Volume(id=id_, pool=pool, name=f"d-{id_}", format="qcow2", size=1,
                      state="ready", created_at=1, **extra)  # fmt: skip

    vm = VM(id="v", spec=VMSpec(name="web", disks=[DiskSpec(volume="v1"), DiskSpec(volume="v2")]),
            node="n1", created_at=1)  # fmt: skip
    volumes = {"v1": volume("v1", "local"), "v2": volume("v2", "nfs")}
    on_local = SnapshotDisk(index=0, volume="v1", pool="local", method="qcow2")
    on_nfs = SnapshotDisk(index=1, volume="v2", pool="nfs", method="qcow2")
    taken = [snap("b", disks=[on_local, on_nfs]), snap("a", disks=[on_nfs])]
    # A mirror copies only the current data of node-local disks: snapshot b would be lost.
    assert "has snapshots (b) of disks or memory on node-local pools" in str(
        pinned(vm, volumes, {"nfs"}, taken)
    )
    assert pinned(vm, volumes, {"nfs"}, taken[1:]) is None
    assert pinned(vm, volumes, {"nfs", "local"}, taken) is None
    # A linked clone on a node-local pool stays with the source it reads.
    linked = {**volumes, "v1": volume("v1", "local", origin=VolumeOrigin(volume="t", linked=True))}
    assert "d-v1 is a linked clone on the node-local pool local" in str(
        pinned(vm, linked, {"nfs"}, [])
    )
    assert pinned(vm, linked, {"nfs", "local"}, []) is None
    # A memory state left behind on a node-local pool is lost as well.
    memory = snap("c", disks=[on_nfs], memory=True, state_volume="m1")
    states = {**volumes, "m1": volume("m1", "local")}
    assert "has snapshots (c) of disks or memory on node-local pools" in str(
        pinned(vm, states, {"nfs"}, [memory])
    )
    assert pinned(vm, states, {"nfs", "local"}, [memory]) is None


def test_a_freeze_limit_is_bounded() -> None:
    with pytest.raises(ValueError, match="freeze_limit_s"):
        SnapshotCreate(name="x", freeze_limit_s=0.5)
    with pytest.raises(ValueError, match="freeze_limit_s"):
        SnapshotCreate(name="x", freeze_limit_s=600)
    assert SnapshotCreate(name="x").freeze_limit_s == 10


# -- a pool that snapshots by itself (stand-in) ------------------------------------------


class StandInNativePool(DirPool):
    """Stands in for a pool with native snapshots (heron-io, Ceph): keeps its snapshots in
    memory, and fails a `snapshot_create` of a volume named in `fail`."""

    CAPABILITIES = Capabilities(shared=True, formats=(VolumeFormat.raw,), native_snapshots=True)
    taken: dict[str, list[str]] = {}
    fail: set[str] = set()

    async def snapshot_create(self, volumes: Sequence[Volume], name: str) -> None:
        if any(v.name in self.fail for v in volumes):
            raise StorageError(f"pool {self.pool.name}: refused")
        for volume in volumes:
            self.taken.setdefault(volume.id, []).append(name)

    async def snapshot_delete(self, volume: Volume, name: str) -> None:
        self.taken[volume.id].remove(name)

    async def snapshot_revert(self, volume: Volume, name: str) -> None:
        assert name in self.taken[volume.id]

    async def snapshots(self, volume: Volume) -> list[VolumeSnapshot]:
        return [VolumeSnapshot(n, 1.0, 4096) for n in self.taken.get(volume.id, [])]


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> type[StandInNativePool]:
    StandInNativePool.taken = {}
    StandInNativePool.fail = set()
    drivers = dict(registry.DRIVERS)
    drivers["rbd"] = StandInNativePool  # the type's driver, replaced for the test
    monkeypatch.setattr(registry, "DRIVERS", MappingProxyType(drivers))
    return StandInNativePool


async def a_vm(db: FakeConfigDB, disks: list[tuple[str, VolumeFormat]]) -> VM:
    """A stopped VM on the live node n1 with a volume per (pool, format)."""
    await db.put(
        keys.node("n1"),
        Node(name="n1", address="x", api_url="x", cpus=1, memory_mib=1024,
             accelerator="tcg", started_at=1),
    )  # fmt: skip
    specs = []
    for index, (pool, fmt) in enumerate(disks):
        if await db.get(Pool, keys.pool(pool)) is None:
            kind = "dir" if pool == "local" else "rbd"
            extra = {"rbd_pool": "r"} if kind == "rbd" else {}
            await db.put(keys.pool(pool), Pool(name=pool, type=kind, created_at=1, **extra))
        volume = Volume(id=new_id(), pool=pool, name=f"d{index}", format=fmt, size=1,
                        state="ready", created_at=1)  # fmt: skip
        await db.put(keys.volume(volume.id), volume)
        specs.append(DiskSpec(volume=volume.id))
    vm = VM(id=new_id(), spec=VMSpec(name="web", disks=specs), node="n1", created_at=1)
    await db.commit(Txn().put(keys.vm(vm.id), vm).put(keys.vm_name("web"), vm.id))
    return vm


async def test_a_raw_disk_on_a_pool_without_snapshots_is_named(db: FakeConfigDB) -> None:
    vm = await a_vm(db, [("local", VolumeFormat.qcow2), ("local", VolumeFormat.raw)])
    with pytest.raises(Conflict) as refused:
        await service.create(db, "web", SnapshotCreate(name="a"), "t")  # type: ignore[arg-type]
    assert refused.value.fields[0]["field"] == "disks.1"
    assert "raw" in refused.value.fields[0]["reason"]
    assert await db.list(Snapshot, keys.snapshots(vm.id)) == []


async def test_memory_needs_a_running_vm_and_a_qcow2_disk(
    db: FakeConfigDB, native: type[StandInNativePool]
) -> None:
    await a_vm(db, [("ceph", VolumeFormat.raw)])
    with pytest.raises(Invalid, match="not running"):
        await service.create(db, "web", SnapshotCreate(name="a", memory=True), "t")  # type: ignore[arg-type]


async def test_memory_of_a_vm_without_a_qcow2_disk_goes_into_a_volume_of_its_own(
    db: FakeConfigDB, native: type[StandInNativePool]
) -> None:
    from heron.models.vm import RunState, VMStatus
    from heron.services import vms, volumes
    from heron.storage import vmstate

    vm = await a_vm(db, [("ceph", VolumeFormat.raw)])
    await db.put(keys.vm_status(vm.id), VMStatus(state=RunState.running, node="n1", updated_at=1))
    memory = SnapshotCreate(name="a", memory=True)
    # The (stand-in) Ceph pool keeps no memory state, and there is no other pool.
    with pytest.raises(Invalid) as refused:
        await service.create(db, "web", memory, "t")  # type: ignore[arg-type]
    assert refused.value.fields[0]["field"] == "body.memory"
    assert "ceph (rbd) holds no memory states" in refused.value.fields[0]["reason"]
    assert await db.list(Snapshot, keys.snapshots(vm.id)) == []

    await db.put(keys.pool("local"), Pool(name="local", type="dir", created_at=1))
    taken, task = await service.create(db, "web", memory, "t")  # type: ignore[arg-type]
    assert taken.state_pool == "local" and not any(d.vm_state for d in taken.disks)
    found = await db.get(Volume, keys.volume(taken.state_volume or ""))
    assert found is not None
    state = found.value
    assert state.state_of is not None and state.state_of.snapshot == taken.id
    assert (state.pool, state.format, state.node) == ("local", VolumeFormat.qcow2, "n1")
    assert state.size == vmstate.state_size(512 * 1024**2)  # the VM's memory, and room
    # It is no disk: not to be attached, deleted or grown as one.
    with pytest.raises(Invalid, match="memory state"):
        await vms.volume_by_ref(db, f"local/{state.name}", "body.volume")  # type: ignore[arg-type]
    with pytest.raises(Conflict, match="delete the snapshot instead"):
        await volumes.delete(db, "n1", "local", state.name, "t")  # type: ignore[arg-type]
    with pytest.raises(Conflict, match="memory state"):
        await volumes.resize(db, "n1", "local", state.name, 2 * state.size, "t")  # type: ignore[arg-type]
    # On a node-local pool, it would stay behind in a live migration.
    refusal = await migration.refusal(db, vm)  # type: ignore[arg-type]
    assert refusal is not None and "(a)" in refusal
    # Nor is the VM reverted to it from another node (moved while off).
    await db.delete(keys.task(task.id))
    ready = {"state": SnapshotState.ready}
    await db.update(Snapshot, keys.snapshot(vm.id, taken.id), lambda s: s.model_copy(update=ready))
    elsewhere = {"node": "n2"}
    await db.update(Volume, keys.volume(state.id), lambda v: v.model_copy(update=elsewhere))
    with pytest.raises(Conflict, match="memory state of snapshot a is on node n2"):
        await service.revert(db, "web", "a", "t")  # type: ignore[arg-type]


async def test_names_are_unique_per_vm_and_busy_vms_refuse(
    db: FakeConfigDB, native: type[StandInNativePool]
) -> None:
    vm = await a_vm(db, [("ceph", VolumeFormat.raw), ("local", VolumeFormat.qcow2)])
    taken, task = await service.create(db, "web", SnapshotCreate(name="a"), "t")  # type: ignore[arg-type]
    assert [d.method for d in taken.disks] == ["native", "qcow2"]
    assert task.kind == TaskKind.snapshot_create and task.node == "n1"
    # Its task is still queued: the VM is busy with it.
    with pytest.raises(Conflict, match="busy"):
        await service.create(db, "web", SnapshotCreate(name="b"), "t")  # type: ignore[arg-type]
    await db.delete(keys.task(task.id))
    with pytest.raises(Conflict) as refused:
        await service.create(db, "web", SnapshotCreate(name="a"), "t")  # type: ignore[arg-type]
    assert refused.value.fields == [
        {"field": "body.name", "reason": "is taken by another snapshot of this VM"}
    ]
    with pytest.raises(Conflict, match="creating"):
        await service.delete(db, "web", "a", "t")  # type: ignore[arg-type]
    with pytest.raises(Conflict, match="creating"):
        await service.revert(db, "web", taken.id, "t")  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        await service.revert(db, "web", "nothing", "t")  # type: ignore[arg-type]
    assert len(await db.list(Snapshot, keys.snapshots(vm.id))) == 1


async def run_task(
    db: FakeConfigDB, snapshots: Snapshots, kind: TaskKind, vm: VM, snapshot_id: str
) -> dict[str, object]:
    task = new_task(kind, "n1", vm.id, "t", SnapshotParams(snapshot=snapshot_id))
    await db.create(keys.task(task.id), task)
    handler = {
        TaskKind.snapshot_create: snapshots.create,
        TaskKind.snapshot_revert: snapshots.revert,
        TaskKind.snapshot_delete: snapshots.delete,
    }[kind]
    try:
        return await handler(TaskContext(db, task))  # type: ignore[arg-type]
    finally:
        await db.delete(keys.task(task.id))  # as if the runner had finished it


@pytest.fixture
async def agent(db: FakeConfigDB, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from fakes.running import fake_qemu_on_path, stop_agent

    from heron.agent.vms import VMController

    fake_qemu_on_path(tmp_path, monkeypatch)
    controller = VMController(db, "n1", state_dir, "tcg")  # type: ignore[arg-type]
    yield Snapshots(db, "n1", state_dir, controller)  # type: ignore[arg-type]
    await stop_agent(controller)


async def test_native_pools_of_a_stopped_vm(
    db: FakeConfigDB, native: type[StandInNativePool], agent: Snapshots
) -> None:
    vm = await a_vm(db, [("ceph", VolumeFormat.raw), ("ceph2", VolumeFormat.raw)])
    first, task = await service.create(db, "web", SnapshotCreate(name="a"), "t")  # type: ignore[arg-type]
    await db.delete(keys.task(task.id))
    await run_task(db, agent, TaskKind.snapshot_create, vm, first.id)
    done = (await db.get(Snapshot, keys.snapshot(vm.id, first.id))).value  # type: ignore[union-attr]
    assert done.state == SnapshotState.ready and [d.size for d in done.disks] == [4096, 4096]
    assert sorted(native.taken.values()) == [[first.id], [first.id]]
    head = await db.get(SnapshotHead, keys.snapshot_head(vm.id))
    assert head is not None and head.value.snapshot == first.id

    # The second pool refuses: nothing stays on the first, the record says why.
    native.fail = {"d1"}
    second, task = await service.create(db, "web", SnapshotCreate(name="b"), "t")  # type: ignore[arg-type]
    assert second.parent == first.id
    await db.delete(keys.task(task.id))
    with pytest.raises(TaskFailed, match="refused"):
        await run_task(db, agent, TaskKind.snapshot_create, vm, second.id)
    assert sorted(native.taken.values()) == [[first.id], [first.id]]
    failed = (await db.get(Snapshot, keys.snapshot(vm.id, second.id))).value  # type: ignore[union-attr]
    assert failed.state == SnapshotState.error and "refused" in failed.error

    result = await run_task(db, agent, TaskKind.snapshot_revert, vm, first.id)
    assert result == {"snapshot": first.id, "memory": False, "state": "shutoff"}
    # A failed one is deleted like any other (there is nothing of it in the pools).
    await run_task(db, agent, TaskKind.snapshot_delete, vm, second.id)
    await run_task(db, agent, TaskKind.snapshot_delete, vm, first.id)
    assert sorted(native.taken.values()) == [[], []]
    assert await db.list(Snapshot, keys.snapshots(vm.id)) == []
    head = await db.get(SnapshotHead, keys.snapshot_head(vm.id))
    assert head is not None and head.value.snapshot is None
    # Again, after a crash: nothing left to do.
    assert await run_task(db, agent, TaskKind.snapshot_delete, vm, first.id) == {
        "deleted": first.id
    }
    assert vm.power == PowerState.stopped


async def test_an_rbd_pool_snapshots_through_the_rbd_tool(
    db: FakeConfigDB, agent: Snapshots, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's tasks with the real rbd driver, over a stand-in rbd (no Ceph here)."""
    from fakes.rbd import Cluster, install

    program = install(tmp_path / "rbd-bin", tmp_path / "stand-in-rbd.json")
    monkeypatch.setenv("PATH", f"{program.parent}:{os.environ['PATH']}")
    ceph = Cluster(tmp_path / "stand-in-rbd.json")
    vm = await a_vm(db, [("ceph", VolumeFormat.raw), ("ceph", VolumeFormat.raw)])
    ceph.add("r/d0", 2**30, "boot")
    ceph.add("r/d1", 2**30, "data-1")
    ceph.write("r/d1", "data-1", 8192)
    taken, task = await service.create(db, "web", SnapshotCreate(name="a"), "t")  # type: ignore[arg-type]
    assert [d.method for d in taken.disks] == ["native", "native"]
    await db.delete(keys.task(task.id))
    await run_task(db, agent, TaskKind.snapshot_create, vm, taken.id)
    done = (await db.get(Snapshot, keys.snapshot(vm.id, taken.id))).value  # type: ignore[union-attr]
    assert done.state == SnapshotState.ready and [d.size for d in done.disks] == [0, 8192]
    assert [c for c in ceph.changes() if c.startswith("snap")] == [
        f"snap create r/d0@{taken.id}",
        f"snap create r/d1@{taken.id}",
    ]

    ceph.write("r/d1", "data-2", 4096)
    result = await run_task(db, agent, TaskKind.snapshot_revert, vm, taken.id)
    assert result["state"] == "shutoff" and ceph.image("r/d1")["data"] == "data-1"  # type: ignore[index]
    await run_task(db, agent, TaskKind.snapshot_delete, vm, taken.id)
    assert ceph.image("r/d0")["snaps"] == ceph.image("r/d1")["snaps"] == []  # type: ignore[index]
    assert await db.list(Snapshot, keys.snapshots(vm.id)) == []


async def test_a_memory_snapshot_that_fails_leaves_no_memory_state_behind(
    db: FakeConfigDB, native: type[StandInNativePool], agent: Snapshots, state_dir: Path
) -> None:
    # The fake QEMU knows no query-named-block-nodes: QEMU errs once the volume is made,
    # when it is to be opened, and again when it is to be closed.
    vm = await a_vm(db, [("ceph", VolumeFormat.raw)])
    await db.put(keys.pool("local"), Pool(name="local", type="dir", created_at=1))
    running = {"power": PowerState.running}
    await db.update(VM, keys.vm(vm.id), lambda v: v.model_copy(update=running))
    await agent.vms.reconcile(vm.id)
    qemu = agent.vms.runtime(vm.id).qemu
    taken, task = await service.create(db, "web", SnapshotCreate(name="a", memory=True), "t")  # type: ignore[arg-type]
    await db.delete(keys.task(task.id))
    state = (await db.get(Volume, keys.volume(taken.state_volume or ""))).value  # type: ignore[union-attr]
    image = DirPool(Pool(name="local", type="dir", created_at=1), state_dir).path(state)
    with pytest.raises(TaskFailed):
        await run_task(db, agent, TaskKind.snapshot_create, vm, taken.id)
    failed = (await db.get(Snapshot, keys.snapshot(vm.id, taken.id))).value  # type: ignore[union-attr]
    assert failed.state == SnapshotState.error and "query-named-block-nodes" in failed.error
    assert await db.get(Volume, keys.volume(state.id)) is None
    assert await db.get_raw(keys.volume_name("local", state.name)) is None
    assert not image.exists() and native.taken == {}
    assert await qemu.run_state() == "running"  # never paused: the volume came first


def test_the_cli_prints_the_tree_with_the_current_one_marked() -> None:
    from heron.cli.snapshot import rows

    a = snap("a", at=1)
    b = snap("b", a.id, 2)
    c = snap("c", a.id, 3)
    views = [{**s.model_dump(), "current": s is b, "revision": 1} for s in (c, b, a)]
    printed = [r["tree"] for r in rows({"vm": "v", "current": b.id, "snapshots": views})]
    assert printed == ["a", "  └ b *", "  └ c"]


def test_the_cli_gives_the_total_of_the_disks_that_tell_and_each_disk() -> None:
    from heron.cli.snapshot import COLUMNS, each_disk

    qcow2 = SnapshotDisk(index=0, volume="v0", pool="local", method="qcow2")
    ardfs = SnapshotDisk(index=1, volume="v1", pool="hci", method="native", size=12 * 2**20)
    view = snap("a", at=1).model_copy(update={"disks": [qcow2, ardfs]}).model_dump()
    total = dict(COLUMNS)["disk size"]
    assert (total(view), each_disk(view)) == ("12.0 MiB", "disk0 -, disk1 12.0 MiB")


# -- quiesce through the guest agent (the fake agent of test_qga) -------------------------


class AgentOnly:
    """The one thing `quiesced` asks of a QEMU: its guest agent."""

    def __init__(self, path: Path):
        from heron.hypervisor.qga import GuestAgent

        self.agent = GuestAgent(path)

    def guest_agent(self):  # type: ignore[no-untyped-def]
        return self.agent


@pytest.fixture
async def guest(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    import shutil
    import tempfile

    from test_qga import FakeAgent

    from heron.agent import snapshots as agent_module

    monkeypatch.setattr(agent_module, "AGENT_PING_S", 0.2)
    directory = Path(tempfile.mkdtemp(prefix="qga-", dir="/tmp"))  # short: sun_path limit
    fake = FakeAgent(directory / "qga.sock")
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def test_auto_freezes_when_the_agent_answers(guest) -> None:  # type: ignore[no-untyped-def]
    from heron.agent.snapshots import quiesced

    async with quiesced(AgentOnly(guest.path), "auto", 10) as quiet:  # type: ignore[arg-type]
        assert guest.state == "frozen"
    assert (quiet.consistency, guest.state, guest.thaws) == ("application", "thawed", 1)
    assert quiet.freeze_ms is not None and "2 filesystem(s)" in quiet.reason


async def test_without_an_agent_auto_is_crash_consistent_and_required_fails(
    guest,  # type: ignore[no-untyped-def]
) -> None:
    from heron.agent.snapshots import quiesced

    guest.silent = True
    async with quiesced(AgentOnly(guest.path), "auto", 10) as quiet:  # type: ignore[arg-type]
        pass
    assert (quiet.consistency, quiet.reason) == ("crash", "no guest agent answered")
    ran = False
    with pytest.raises(TaskFailed, match="required"):
        async with quiesced(AgentOnly(guest.path), "required", 10):  # type: ignore[arg-type]
            ran = True
    assert not ran


async def test_a_failing_hook_aborts_before_anything_is_taken(guest) -> None:  # type: ignore[no-untyped-def]
    from heron.agent.snapshots import quiesced

    guest.freeze_error = "hook /etc/qemu/fsfreeze-hook.d/pg failed"
    ran = False
    with pytest.raises(TaskFailed, match=r"could not be frozen.*pg failed"):
        async with quiesced(AgentOnly(guest.path), "auto", 10):  # type: ignore[arg-type]
            ran = True
    assert not ran and guest.state == "thawed"


async def test_a_body_past_the_limit_fails_with_the_guest_thawed(guest) -> None:  # type: ignore[no-untyped-def]
    from heron.agent.snapshots import quiesced

    with pytest.raises(TaskFailed, match=r"freeze limit.*removed"):
        async with quiesced(AgentOnly(guest.path), "auto", 0.3):  # type: ignore[arg-type]
            await guest.thawed.wait()  # the watchdog thaws at the limit, the body still runs
    assert guest.state == "thawed"


async def test_a_create_cut_off_by_a_restart_starts_again_from_nothing(
    db: FakeConfigDB, native: type[StandInNativePool], agent: Snapshots
) -> None:
    vm = await a_vm(db, [("ceph", VolumeFormat.raw), ("ceph2", VolumeFormat.raw)])
    taken, task = await service.create(db, "web", SnapshotCreate(name="a"), "t")  # type: ignore[arg-type]
    # The first pool had its snapshot when the agent died: half-made.
    volume = (await db.get(Volume, keys.volume(vm.spec.disks[0].volume))).value  # type: ignore[union-attr]
    native.taken[volume.id] = [taken.id]
    ctx = TaskContext(db, task, resumed=True)  # type: ignore[arg-type]
    assert await agent.create(ctx) == {"snapshot": taken.id, "consistency": "crash"}
    assert sorted(native.taken.values()) == [[taken.id], [taken.id]]
    # And once more: it is done.
    assert await agent.create(ctx) == {"snapshot": taken.id}
