"""The disk log's judge: an acknowledged record missing at a restart or at the end is a loss;
records never acknowledged may be missing. The guest's writer itself runs here too (the same
C program, on a file)."""

import subprocess
from pathlib import Path

from heron.testguest import build, disklog

W1, W2, W3 = "a1", "b2", "c3"


def resume(writer: str, start: int, t: float) -> str:
    return f"heron-disklog resume dev=/dev/vdb from={start} writer={writer} t={t:.3f}\n"


def ack(writer: str, number: int) -> str:
    return f"heron-disklog ack={number} writer={writer}\n"


def test_a_log_carried_across_moves_and_restarts_loses_nothing() -> None:
    first_node = resume(W1, 0, 100) + ack(W1, 9) + "heron-tick 5\n" + ack(W1, 19)
    second_node = ack(W1, 29) + resume(W2, 35, 200) + ack(W2, 44)  # moved, then restarted
    log = disklog.read([second_node, first_node])  # in any order
    log.verified = 50  # records 30..34 were written, unacknowledged, before the crash: kept
    assert log.acked == 44 and log.problems() == []


def test_a_restart_below_what_was_acknowledged_is_a_loss() -> None:
    log = disklog.read([resume(W1, 0, 100) + ack(W1, 29), resume(W2, 20, 200) + ack(W2, 60)])
    log.verified = 61  # the new writer wrote the lost records again: only its start tells
    (problem,) = log.problems()
    assert "records 20..29 were lost" in problem


def test_a_prefix_short_of_the_last_acknowledgement_is_a_loss() -> None:
    log = disklog.read([resume(W1, 0, 100) + ack(W1, 9), resume(W3, 10, 300) + ack(W3, 19)])
    log.verified = 15
    (problem,) = log.problems()
    assert "ends at record 15" in problem and "up to 19" in problem


def test_the_guests_writer_resumes_after_its_valid_prefix(tmp_path: Path) -> None:
    binary = build.compile_disklog(tmp_path)
    program = tmp_path / "heron-disklog"
    assert binary == program.read_bytes()
    image = disklog.prepare(tmp_path / "log.img", 1)
    with image.open("r+b") as f:
        f.truncate(disklog.BLOCK * 41)  # 40 records: a writer done in a second
    plain = tmp_path / "plain.img"
    plain.write_bytes(b"\0" * 8192)
    assert subprocess.run([program, "probe", plain]).returncode == 2  # never touched
    first = subprocess.run([program, "write", image], capture_output=True, text=True, timeout=30)
    log = disklog.read([first.stdout])
    assert log.acked == 39 and "full at=40" in first.stdout
    # A torn record (a crash in the middle of a write): the next writer starts there.
    with image.open("r+b") as f:
        f.seek(disklog.BLOCK * 21 + 100)
        f.write(b"garbage")
    out = subprocess.run([program, "verify", image], capture_output=True, text=True).stdout
    assert disklog.verified(out) == 20
    second = subprocess.run([program, "write", image], capture_output=True, text=True, timeout=30)
    assert "from=20 " in second.stdout
    log = disklog.read([first.stdout, second.stdout])
    log.verified = 40
    assert log.problems() == [f"writer {list(log.writers)[1]} started at record 20, but "
                              "records up to 39 had been acknowledged: records 20..39 were "
                              "lost"]  # fmt: skip
