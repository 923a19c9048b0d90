"""DR protection without QEMU: when rounds are due, what retention removes, the inventory's
RPO, the scheduler's one-round-per-VM rule and the checks of protect."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from fakes.configdb import FakeConfigDB

from heron.agent.dr import KEEP_ROUNDS, DRScheduler, listed, prune
from heron.configdb import keys
from heron.dr import policy
from heron.dr.replicate import RoundReport
from heron.dr.store import Store
from heron.models.dr import DRPoint, DRStatus, Protection, ProtectionPolicy, ProtectRequest
from heron.models.settings import ClusterSettings
from heron.models.storage import Volume, VolumeFormat
from heron.models.task import MigrateParams, Task, TaskKind, TaskState, new_task
from heron.models.vm import VM, DiskSpec, VMSpec
from heron.services import dr as service
from heron.services.errors import Conflict, Invalid, NotFound

MiB = 1024**2


def protection(interval: int = 60, retention: int = 3) -> Protection:
    policy_ = ProtectionPolicy(interval_seconds=interval, retention=retention)
    return Protection(vm="v1", policy=policy_, since=0, user="u")


def status(**changes: Any) -> DRStatus:
    return DRStatus(vm="v1", node="n1", store="/s").model_copy(update=changes)


def point(id_: str, created: float, kind: str = "incremental") -> DRPoint:
    return DRPoint(id=id_, created=created, kind=kind, disks={"disk0": MiB})  # type: ignore[arg-type]


def test_a_round_is_due_once_an_interval_has_passed_since_the_last_one_started() -> None:
    p = protection(interval=60)
    assert policy.due(p, None, 1000)  # never ran
    assert policy.due(p, status(), 1000)
    ran = status(last_attempt=1000.0)
    assert not policy.due(p, ran, 1059.9)
    assert policy.due(p, ran, 1060)
    # A failed round is retried at the next interval, not at once.
    failed = status(last_attempt=1000.0, last_error="boom")
    assert not policy.due(p, failed, 1001)
    assert policy.next_round(p, ran, 1010) == 1060
    assert policy.next_round(p, ran, 2000) == 2000


def test_retention_keeps_the_newest_points_and_never_the_last() -> None:
    points = [(f"p{i}", 1000.0 + i) for i in range(6)]
    keep = ProtectionPolicy(retention=3)
    assert policy.expired(points[::-1], keep) == ["p0", "p1", "p2"]
    assert policy.expired(points, ProtectionPolicy(retention=6)) == []
    assert policy.expired(points, ProtectionPolicy(retention=10)) == []
    assert policy.expired(points[:1], ProtectionPolicy(retention=1)) == []


def test_retention_tiers_keep_the_newest_point_of_each_period() -> None:
    hour, day = 3600.0, 86400.0
    start = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    # A point every 20 minutes for three days.
    points = [(f"p{i:04d}", start + i * 1200.0) for i in range(3 * 72)]
    newest = points[-1][0]
    hourly = policy.expired(points, ProtectionPolicy(retention=2, hourly=5))
    kept = sorted(set(p for p, _ in points) - set(hourly))
    # The two newest, and the newest of each of the last five hours (the last hour's newest
    # is among the two).
    assert len(kept) == 2 + 4 and newest in kept
    for pid in kept[:-2]:
        created = dict(points)[pid]
        assert (created + 1200.0) % hour == 0, pid  # the last of its hour
    daily = policy.expired(points, ProtectionPolicy(retention=1, daily=2, monthly=1))
    kept = sorted(set(p for p, _ in points) - set(daily))
    # The newest (also the newest of day 3 and of the month), and the last of day 2.
    assert kept == [f"p{2 * 72 - 1:04d}", newest]
    assert dict(points)[kept[0]] == start + 2 * day - 1200.0


def test_a_policy_keeps_a_bounded_number_of_points() -> None:
    with pytest.raises(ValueError, match="at most 200"):
        ProtectionPolicy(retention=100, hourly=100, daily=1)


def test_the_inventory_shows_the_rpo_of_protected_vms_only() -> None:
    points = [point("a", 100.0, "full"), point("b", 160.0)]
    row = policy.inventory_row("v1", "web", "n1", protection(), status(points=points), 200.0)
    assert row.protected and row.last_point == "b" and row.last_point_at == 160.0
    assert row.rpo_seconds == 40.0 and row.points == 2 and row.retention == 3
    gone = policy.inventory_row("v1", "web", "n1", None, status(points=points), 200.0)
    assert not gone.protected and gone.rpo_seconds is None and gone.last_point == "b"
    never = policy.inventory_row("v1", "web", "n1", protection(), None, 200.0)
    assert never.protected and never.rpo_seconds is None and never.points == 0


def test_store_retention_deletes_old_points_and_collects_their_chunks(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "store", chunk_size=64 * 1024)
    made = []
    with store.writer("v1") as writer:
        for n in range(4):
            data = bytes([n + 1]) * (64 * 1024)
            made.append(writer.write_chunks({"d": 64 * 1024}, {"d": iter([(0, data)])}).id)
    removed = prune(store, "v1", ProtectionPolicy(retention=2), made[-1])
    assert removed == made[:2]
    assert [p.id for p in store.points("v1")] == made[2:]
    assert store.verify().ok
    report = RoundReport(kind="incremental", point=store.points("v1")[-1], chunks_sent=1)
    known = [point(made[2], 1.0, "resync")]
    points = listed(store, "v1", known, report)
    assert [p.id for p in points] == made[2:]
    assert [p.kind for p in points] == ["resync", "incremental"]


async def add_vm(db: FakeConfigDB, fmt: VolumeFormat = VolumeFormat.qcow2) -> VM:
    volume = Volume(id="vol1", pool="local", name="web-disk0", format=fmt, size=MiB, created_at=1)
    await db.put(keys.volume(volume.id), volume)
    spec = VMSpec(name="web", disks=[DiskSpec(volume=volume.id)])
    vm = VM(id="v1", spec=spec, node="n1", created_at=1)
    await db.put(keys.vm(vm.id), vm)
    await db.put(keys.vm_name("web"), "v1")
    return vm


async def test_protect_checks_the_interval_and_the_disks(db: FakeConfigDB) -> None:
    await add_vm(db)
    with pytest.raises(Invalid) as short:
        await service.protect(db, "v1", ProtectRequest(interval_seconds=5), "u")
    assert short.value.fields[0]["field"] == "body.interval_seconds"
    settings = ClusterSettings()
    settings.dr.min_interval_seconds = 1
    await db.put(keys.SETTINGS, settings)
    made = await service.protect(db, "v1", ProtectRequest(interval_seconds=5, retention=2), "u")
    assert made.policy == ProtectionPolicy(interval_seconds=5, retention=2)
    again = await service.protect(db, "v1", ProtectRequest(interval_seconds=9), "u")
    assert again.since == made.since and again.policy.interval_seconds == 9
    rows = await service.inventory(db)
    assert [(r.name, r.protected, r.interval_seconds) for r in rows] == [("web", True, 9)]
    await service.unprotect(db, "v1")
    with pytest.raises(NotFound):
        await service.unprotect(db, "v1")
    assert not (await service.inventory(db))[0].protected


async def test_a_vm_on_a_raw_volume_is_refused(db: FakeConfigDB) -> None:
    await add_vm(db, VolumeFormat.raw)
    with pytest.raises(Conflict) as refused:
        await service.protect(db, "web", ProtectRequest(), "u")
    assert refused.value.fields[0]["field"] == "disks.0"
    assert "ReplicationUnsupported" in refused.value.fields[0]["reason"]
    assert await db.get(Protection, keys.dr_protection("v1")) is None


async def test_the_scheduler_starts_one_round_at_a_time_per_vm(db: FakeConfigDB) -> None:
    await add_vm(db)
    vms = cast(Any, SimpleNamespace(running_here=lambda: ["v1"]))
    scheduler = DRScheduler(db, "n1", vms)
    assert await scheduler.round(1000.0) == []  # nothing protected
    await db.put(keys.dr_protection("v1"), protection(interval=60))
    made = await scheduler.round(1000.0)
    assert [(t.kind, t.target, t.node) for t in made] == [(TaskKind.dr_replicate, "v1", "n1")]
    assert await scheduler.round(1001.0) == []  # the first is still queued
    task = made[0].model_copy(update={"state": TaskState.succeeded})
    await db.put(keys.task(task.id), task)
    await db.put(keys.dr_status("v1"), status(last_attempt=1000.0))
    assert await scheduler.round(1030.0) == []  # not due yet
    # Not on another node's agent, nor while the VM migrates.
    assert await DRScheduler(db, "n2", vms).round(1100.0) == []
    migrating = new_task(TaskKind.vm_migrate, "n1", "v1", "u", MigrateParams(target="n2"))
    await db.put(keys.task(migrating.id), migrating)
    assert await scheduler.round(1100.0) == []
    await db.delete(keys.task(migrating.id))
    assert len(await scheduler.round(1100.0)) == 1


async def test_the_scheduler_keeps_the_last_rounds_of_each_vm(db: FakeConfigDB) -> None:
    await add_vm(db)
    vms = cast(Any, SimpleNamespace(running_here=lambda: []))
    ended = []
    for n in range(KEEP_ROUNDS + 3):
        task = new_task(TaskKind.dr_replicate, "n1", "v1", "dr")
        task = task.model_copy(update={"state": TaskState.succeeded, "updated_at": 100.0 + n})
        await db.put(keys.task(task.id), task)
        ended.append(task.id)
    other = new_task(TaskKind.vm_start, "n1", "v1", "u").model_copy(
        update={"state": TaskState.succeeded, "updated_at": 1.0}
    )
    await db.put(keys.task(other.id), other)
    await db.put(keys.dr_protection("v1"), protection())
    await DRScheduler(db, "n1", vms).round(1000.0)
    left = {e.value.id for e in await db.list(Task, keys.TASKS)}
    assert left == {*ended[-KEEP_ROUNDS:], other.id}
