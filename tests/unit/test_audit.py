"""The audit log (heron.audit.AuditLog): a JSON-lines file per node, rotated by size."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from heron import audit
from heron.audit import AuditLog


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> itertools.count:
    """A clock for the audit module only: entry i is recorded at time 1000 + i."""
    ticks = itertools.count(1000)
    monkeypatch.setattr(audit, "time", SimpleNamespace(time=lambda: float(next(ticks))))
    return ticks


@pytest.fixture
def log(tmp_path: Path, clock: itertools.count) -> AuditLog:
    return AuditLog(tmp_path / "state" / "audit" / "audit.jsonl", node="n1")


def test_creates_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "audit.jsonl"
    AuditLog(path, node="n1")
    assert path.parent.is_dir()


def test_empty_log_reads_nothing(log: AuditLog) -> None:
    assert log.read(limit=10) == []
    assert not log.path.exists()


def test_record_writes_one_json_line_each(log: AuditLog) -> None:
    log.record(user="alice", action="vm.create", status=201)
    log.record(user="bob", action="vm.delete", status=403, detail={"why": "role"})
    lines = log.path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first == {
        "time": 1000.0,
        "node": "n1",
        "user": "alice",
        "action": "vm.create",
        "status": 201,
    }
    assert json.loads(lines[1])["detail"] == {"why": "role"}


def test_unserialisable_values_are_written_as_text(log: AuditLog) -> None:
    log.record(path=Path("/x/y"))
    assert log.read(limit=1)[0]["path"] == "/x/y"


def test_read_newest_first(log: AuditLog) -> None:
    for i in range(5):
        log.record(seq=i)
    assert [e["seq"] for e in log.read(limit=100)] == [4, 3, 2, 1, 0]


def test_read_limit(log: AuditLog) -> None:
    for i in range(10):
        log.record(seq=i)
    assert [e["seq"] for e in log.read(limit=3)] == [9, 8, 7]
    assert [e["seq"] for e in log.read(limit=1)] == [9]
    assert len(log.read(limit=10)) == 10
    assert len(log.read(limit=11)) == 10


def test_read_since_is_exclusive(log: AuditLog) -> None:
    for i in range(6):
        log.record(seq=i)  # at times 1000..1005
    assert [e["seq"] for e in log.read(limit=100, since=1002.0)] == [5, 4, 3]
    assert [e["seq"] for e in log.read(limit=2, since=1002.0)] == [5, 4]
    assert log.read(limit=100, since=1005.0) == []
    assert len(log.read(limit=100, since=0.0)) == 6


def test_rotation_past_max_bytes(log: AuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "MAX_BYTES", 300)
    rotated = log.path.with_suffix(".1.jsonl")
    count = 0
    while not rotated.exists():
        log.record(seq=count, pad="x" * 20)
        count += 1
        assert count < 100, "never rotated"
    # The live file was moved aside only once it was over the limit, and the entry that
    # triggered the rotation starts the new file.
    assert rotated.stat().st_size > 300
    assert [json.loads(line)["seq"] for line in log.path.read_text().splitlines()] == [count - 1]
    # Reading spans both files, newest first, with nothing lost or repeated.
    assert [e["seq"] for e in log.read(limit=1000)] == list(range(count - 1, -1, -1))
    # `limit` and `since` work across the boundary.
    assert [e["seq"] for e in log.read(limit=3)] == [count - 1, count - 2, count - 3]
    assert [e["seq"] for e in log.read(limit=1000, since=1000.0 + count - 3)] == [
        count - 1,
        count - 2,
    ]


def test_only_one_rotated_file_is_kept(log: AuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "MAX_BYTES", 200)
    for i in range(60):
        log.record(seq=i, pad="y" * 20)
    files = sorted(p.name for p in log.path.parent.iterdir())
    assert files == ["audit.1.jsonl", "audit.jsonl"]
    seqs = [e["seq"] for e in log.read(limit=1000)]
    # The newest entries are all there, contiguous; the oldest were dropped with the file.
    assert seqs[0] == 59
    assert seqs == list(range(59, 59 - len(seqs), -1))
    assert 0 not in seqs
    for path in log.path.parent.iterdir():
        assert path.stat().st_size <= 200 + 100  # at most one line over the limit


def test_truncated_last_line_is_skipped(log: AuditLog) -> None:
    for i in range(3):
        log.record(seq=i)
    with open(log.path, "a") as out:
        out.write('{"time":1003.0,"node":"n1","seq":3,"pa')  # a crash mid-write
    assert [e["seq"] for e in log.read(limit=10)] == [2, 1, 0]
    assert [e["seq"] for e in log.read(limit=1)] == [2]


def test_entry_after_a_truncated_line_is_kept(log: AuditLog) -> None:
    log.record(seq=0)
    with open(log.path, "a") as out:
        out.write('{"time":1001.0,"node":"n1","se')  # a crash mid-write
    log.record(seq=2)
    assert [e["seq"] for e in log.read(limit=10)] == [2, 0]


def test_concurrent_records_are_whole_lines(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", node="n1")

    def writer(worker: int) -> None:
        for i in range(200):
            log.record(worker=worker, seq=i, pad="z" * 200)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entries = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert len(entries) == 800
    for worker in range(4):
        assert [e["seq"] for e in entries if e["worker"] == worker] == list(range(200))


def test_a_filter_picks_entries_and_its_marker_skips_lines_unparsed(log: AuditLog) -> None:
    from heron.services.cluster import DRS_MARKER, is_drs_decision

    for i in range(5):
        log.record(user="drs" if i % 2 else "admin", method="DRS" if i % 2 else "PUT", n=i)
    found = log.read(10, where=is_drs_decision, marker=DRS_MARKER)
    assert [e["n"] for e in found] == [3, 1]
    assert [e["n"] for e in log.read(1, where=is_drs_decision, marker=DRS_MARKER)] == [3]
    with open(log.path, "a") as out:
        out.write('{"method":"DRS", cut short\n')  # carries the marker, yet is no entry
    assert [e["n"] for e in log.read(10, where=is_drs_decision, marker=DRS_MARKER)] == [3, 1]
