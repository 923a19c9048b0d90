"""The fakes the unit tests run on: an in-memory ConfigDB, and the fake QEMU on PATH with a
state directory short enough for its unix sockets."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import qemu as fake_qemu
from fakes.configdb import FakeConfigDB
from fakes.running import fake_qemu_on_path, short_directory


@pytest.fixture
def db() -> FakeConfigDB:
    return FakeConfigDB()


@pytest.fixture
def state_dir() -> Iterator[Path]:
    with short_directory() as directory:
        yield directory


@pytest.fixture
def script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> fake_qemu.Script:
    return fake_qemu_on_path(tmp_path, monkeypatch)
