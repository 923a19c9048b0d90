"""Running the VM controller on the fakes: the fake QEMU on PATH, waiting on conditions, and
clearing away every fake QEMU a test started."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from support import eventually

from fakes import qemu
from heron.agent.vms import VMController
from heron.util.proc import find_running

T = TypeVar("T")


def fake_qemu_on_path(directory: Path, monkeypatch: pytest.MonkeyPatch) -> qemu.Script:
    """Make `qemu-system-x86_64` the fake for this test (the VM controller launches QEMU by
    that name from PATH); returns the script the fake follows."""
    program = qemu.install(directory / "bin")
    monkeypatch.setenv("PATH", f"{program.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    script = qemu.Script(directory / "fake-qemu.json")
    monkeypatch.setenv(qemu.SCRIPT_VARIABLE, str(script.path))
    return script


@contextlib.contextmanager
def short_directory() -> Iterator[Path]:
    """A node's state directory: short, as a unix socket's path must fit in 108 bytes (and
    pytest's tmp_path does not leave room for `vms/<id>/qmp.sock`). Any fake QEMU still
    running from it is killed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="heron-", dir="/tmp"))
    try:
        yield directory
    finally:
        kill_fakes_under(directory)
        shutil.rmtree(directory, ignore_errors=True)


async def stop_agent(controller: VMController) -> None:
    """What an agent's death does to its VM controller: its monitors stop and its QMP
    sessions close; the QEMUs it started run on."""
    for runtime in list(controller._vms.values()):
        if runtime.monitor is not None:
            runtime.monitor.cancel()
            # Let it unwind before closing its QMP session under it.
            await asyncio.gather(runtime.monitor, return_exceptions=True)
        await runtime.qemu.close()


def kill_fakes_under(directory: Path) -> None:
    """SIGKILL the fake QEMUs whose command line names `directory` (only this test's own:
    their pidfile and sockets live there)."""
    for pid in find_running(str(directory)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def until(
    predicate: Callable[[], Awaitable[T | None]], what: str, timeout: float = 10.0
) -> T:
    """support.eventually with the fakes' pace: they answer within milliseconds."""
    return await eventually(predicate, timeout, what, interval=0.02)
