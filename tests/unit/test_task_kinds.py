"""Typed operations: every kind has a parameter model and a handler, and stored tasks of
earlier releases (plain dicts) still read."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from heron.agent.handlers import Handlers
from heron.models.migration import DEFAULT_MAX_DOWNTIME_MS, Migration
from heron.models.task import (
    PARAMS,
    BadParams,
    MigrateParams,
    NoParams,
    PowerParams,
    Task,
    TaskKind,
    VMCreateParams,
    VolumeResizeParams,
    new_task,
)


def test_every_kind_has_parameters_and_a_handler() -> None:
    assert set(PARAMS) == set(TaskKind)
    none = cast(Any, None)
    migrations = cast(Any, SimpleNamespace(migrate=None, receive=None))
    handlers = Handlers(none, "n1", Path("/nonexistent"), none, migrations).table()
    assert set(handlers) == set(TaskKind)


def test_a_task_carries_its_parameters_as_json_and_reads_them_back() -> None:
    task = new_task(TaskKind.vm_migrate, "n1", "vm-1", "alice", MigrateParams(target="n2"))
    assert task.params == {
        "max_downtime_ms": DEFAULT_MAX_DOWNTIME_MS,
        "auto_converge": True,
        "max_bandwidth_mib": 1024,
        "target": "n2",
    }
    again = Task.model_validate_json(task.model_dump_json())
    assert again.kind is TaskKind.vm_migrate
    assert again.params_as(MigrateParams).target == "n2"


def test_the_wrong_model_for_a_kind_is_refused() -> None:
    with pytest.raises(TypeError, match=r"vm\.migrate takes MigrateParams"):
        new_task(TaskKind.vm_migrate, "n1", "vm-1", "u", PowerParams())
    task = new_task(TaskKind.vm_start, "n1", "vm-1", "u", PowerParams(graceful=False))
    with pytest.raises(BadParams):
        task.params_as(MigrateParams)


def test_a_kind_without_parameters_gets_its_defaults() -> None:
    task = new_task(TaskKind.node_drain, "n1", "n1", "u")
    assert task.params == {} and task.params_as(NoParams) == NoParams()


def test_a_task_stored_by_the_previous_release_still_reads() -> None:
    # As written before kinds were typed: strings, partial params, no defaults filled in.
    stored = {
        "id": "t1",
        "kind": "vm.create",
        "node": "n1",
        "target": "vm-1",
        "params": {"volumes": [{"id": "v1", "source": None}, {"id": "v2"}]},
        "created_at": 1.0,
        "updated_at": 1.0,
    }
    task = Task.model_validate(stored)
    volumes = task.params_as(VMCreateParams).volumes
    assert [(v.id, v.source) for v in volumes] == [("v1", None), ("v2", None)]
    migrate = Task.model_validate({**stored, "kind": "vm.migrate", "params": {"target": "n2"}})
    assert migrate.params_as(MigrateParams).max_downtime_ms == DEFAULT_MAX_DOWNTIME_MS


def test_a_kind_from_a_newer_release_still_lists_but_has_no_parameters() -> None:
    stored = {"id": "t1", "kind": "vm.snapshot", "node": "n1", "created_at": 1, "updated_at": 1}
    task = Task.model_validate(stored)
    assert task.kind == "vm.snapshot" and not isinstance(task.kind, TaskKind)
    assert task.known_kind is None
    assert Task.model_validate({**stored, "kind": "vm.start"}).known_kind is TaskKind.vm_start
    with pytest.raises(BadParams):
        task.params_as(NoParams)


def test_bad_stored_parameters_are_a_clear_error() -> None:
    task = Task.model_validate(
        {"id": "t", "kind": "volume.resize", "node": "n", "params": {"size": "big"},
         "created_at": 1, "updated_at": 1}
    )  # fmt: skip
    with pytest.raises(BadParams, match=r"volume\.resize"):
        task.params_as(VolumeResizeParams)


def test_the_migration_default_downtime_is_written_once() -> None:
    record = Migration(vm="v", source="a", target="b", created_at=0)
    assert record.max_downtime_ms == DEFAULT_MAX_DOWNTIME_MS
    assert MigrateParams(target="b").max_downtime_ms == DEFAULT_MAX_DOWNTIME_MS
