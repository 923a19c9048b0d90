"""Choosing the accelerator without booting anything: what the environment and the cache say
is taken only when it names one."""

import json
import os
from pathlib import Path

import pytest

from heron.hypervisor import accel


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No QEMU here: the probe answers TCG and records that it ran."""
    ran: list[str] = []
    monkeypatch.delenv("HERON_ACCEL", raising=False)
    monkeypatch.setattr(accel, "probe_kernel", lambda cache_dir: None)
    monkeypatch.setattr(accel, "_qemu_version", lambda binary: "QEMU 9.9")

    def probe_kvm(*args: object) -> bool:
        ran.append("kvm")
        return False

    monkeypatch.setattr(accel, "probe_kvm", probe_kvm)
    return ran


def _key() -> dict[str, str]:
    return {"qemu": "QEMU 9.9", "kernel": os.uname().release, "probe": "bootsector"}


def test_the_environment_forces_a_known_accelerator_only(
    tmp_path: Path, probes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HERON_ACCEL", "kvm")
    assert accel.choose_accelerator(tmp_path) == "kvm"
    assert probes == []
    monkeypatch.setenv("HERON_ACCEL", "xen")
    assert accel.choose_accelerator(tmp_path) == "tcg"
    assert probes == ["kvm"]


def test_a_remembered_answer_is_used(tmp_path: Path, probes: list[str]) -> None:
    (tmp_path / "accelerator.json").write_text(json.dumps({"key": _key(), "accelerator": "kvm"}))
    assert accel.choose_accelerator(tmp_path) == "kvm"
    assert probes == []


def test_a_cache_naming_no_accelerator_is_probed_again(tmp_path: Path, probes: list[str]) -> None:
    cache = tmp_path / "accelerator.json"
    cache.write_text(json.dumps({"key": _key(), "accelerator": "xen"}))
    assert accel.choose_accelerator(tmp_path) == "tcg"
    assert probes == ["kvm"]
    assert json.loads(cache.read_text())["accelerator"] == "tcg"
