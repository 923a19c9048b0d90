"""The v2v.import task's clean-up on the in-memory ConfigDB: a failure or a cancel removes
the VM and volumes it made; an agent stopping mid-import (its jobs cancelled) leaves them for
the task to resume at the agent's restart. (test_v2v_import runs whole imports for real.)"""

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from fakes.configdb import FakeConfigDB

from heron.agent.imports import Imports
from heron.agent.tasks import TaskContext, TaskFailed
from heron.configdb import keys
from heron.models.imports import ImportSource
from heron.models.storage import Volume
from heron.models.task import ImportParams, TaskKind, new_task
from heron.storage.driver import PoolDriver


async def importer(
    db: FakeConfigDB, folder: Path, failure: BaseException
) -> tuple[Imports, list[str], TaskContext]:
    """An import of one disk whose volume lookup fails with `failure`."""
    await db.create(keys.import_source("ds"), ImportSource(
        name="ds", type="directory", path=str(folder), node="n1",
        created_at=time.time(), created_by="u"))  # fmt: skip
    removed: list[str] = []

    async def volume(volume_id: str) -> tuple[Volume, PoolDriver]:
        raise failure

    async def delete_vm(vm_id: str, volumes: bool, progress: Any) -> None:
        removed.append(vm_id)

    async def unused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("not reached")

    params = ImportParams(source="ds", vm=str(folder / "a.vmx"), root=str(folder), disks=[
        {"volume": "v1", "source": str(folder / "a.vmdk"), "format": "vmdk"}])  # fmt: skip
    task = new_task(TaskKind.v2v_import, "n1", "vm1", "u", params)
    await db.create(keys.task(task.id), task)
    imports = Imports(db, "n1", folder, volume, unused, delete_vm, unused)  # type: ignore[arg-type]
    return imports, removed, TaskContext(db, task)


async def test_a_failed_import_removes_what_it_made(db: FakeConfigDB, tmp_path: Path) -> None:
    imports, removed, ctx = await importer(db, tmp_path, TaskFailed("volume v1 does not exist"))
    with pytest.raises(TaskFailed):
        await imports.run(ctx)
    assert removed == ["vm1"]


async def test_an_agent_stopping_mid_import_keeps_it_to_resume(
    db: FakeConfigDB, tmp_path: Path
) -> None:
    imports, removed, ctx = await importer(db, tmp_path, asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await imports.run(ctx)
    assert removed == []
