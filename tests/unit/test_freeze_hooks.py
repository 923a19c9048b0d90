"""The fsfreeze hooks Heron ships for guests (guest/fsfreeze-hook.d): they parse, pass
shellcheck, and the MySQL one's decisions (hold the read lock from freeze to thaw, tell a
stopped server from one that refuses it, refuse a lazy InnoDB commit) against a stand-in `mysql`
client that plays each case. Both hooks run against real servers in the Debian guest's tests
(tests/integration/test_snapshot_consistency.py: PostgreSQL 15 and MariaDB 10.11)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

HOOKS = Path(__file__).parents[2] / "guest" / "fsfreeze-hook.d"
SHELLS = {"postgresql": "sh", "mysql": "bash"}


@pytest.mark.parametrize("name", sorted(SHELLS))
def test_a_hook_parses_and_is_executable(name: str) -> None:
    hook = HOOKS / name
    assert os.stat(hook).st_mode & stat.S_IXUSR
    assert hook.read_text().startswith(f"#!/bin/{SHELLS[name]}\n")
    subprocess.run([SHELLS[name], "-n", str(hook)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("name", sorted(SHELLS))
def test_a_hook_passes_shellcheck(name: str) -> None:
    proc = subprocess.run(["shellcheck", str(HOOKS / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# A stand-in client: a locking session prints its id and "locked" and then sleeps like the
# server's SLEEP() (recording its pid, so the stand-in's PROCESSLIST can see whether it lives);
# KILL and the other statements are recorded. FAKE_DOWN and FAKE_DENIED answer as a client
# does without a server and with one that refuses the user; FAKE_TRX_COMMIT is the setting.
FAKE_MYSQL = """#!/bin/bash
statements=${@: -1}
echo "$statements" | tr '\\n' ' ' >>"$FAKE_LOG"; echo >>"$FAKE_LOG"
[[ -n ${FAKE_DOWN:-} ]] && {
    echo "ERROR 2002 (HY000): Can't connect to local server through socket" >&2; exit 1; }
[[ -n ${FAKE_DENIED:-} ]] && {
    echo "ERROR 1045 (28000): Access denied for user 'root'@'localhost'" >&2; exit 1; }
case "$statements" in
*"FLUSH TABLES WITH READ LOCK"*)
    [[ -n ${FAKE_REFUSE:-} ]] && { echo "ERROR 1205: Lock wait timeout exceeded" >&2; exit 1; }
    echo $$ >"$FAKE_LOG.session"
    echo 42; echo locked; exec sleep 300 ;;
*"innodb_flush_log_at_trx_commit"*) echo "${FAKE_TRX_COMMIT:-1}" ;;
*"SHOW MASTER STATUS"*) printf 'binlog.000003\\t1234\\t\\t\\n' ;;
*PROCESSLIST*) kill -0 "$(cat "$FAKE_LOG.session")" 2>/dev/null && echo 1 || echo 0 ;;
esac
"""


def run_hook(tmp_path: Path, action: str, **env: str) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    client = bin_dir / "mysql"
    client.write_text(FAKE_MYSQL)
    client.chmod(0o755)
    environ = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HERON_MYSQL": "mysql",
        "HERON_MYSQL_STATE": str(tmp_path / "state"),
        "HERON_MYSQL_LOCK_WAIT": "5",
        "HERON_FSFREEZE_LOG": str(tmp_path / "fsfreeze.log"),
        "FAKE_LOG": str(tmp_path / "statements"),
        **env,
    }
    return subprocess.run(
        [str(HOOKS / "mysql"), action], env=environ, capture_output=True, text=True, timeout=60
    )


def holder_alive(tmp_path: Path) -> int | None:
    pid = int((tmp_path / "state" / "holder").read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def test_the_mysql_hook_holds_the_lock_from_freeze_to_thaw(tmp_path: Path) -> None:
    frozen = run_hook(tmp_path, "freeze")
    assert frozen.returncode == 0, frozen.stderr
    pid = holder_alive(tmp_path)
    assert pid is not None  # the session with the lock outlives the hook
    try:
        log = (tmp_path / "fsfreeze.log").read_text()
        assert "freeze locked connection=42 binlog=binlog.000003:1234" in log
        thawed = run_hook(tmp_path, "thaw")
        assert thawed.returncode == 0, thawed.stderr
        assert "KILL 42" in (tmp_path / "statements").read_text()
        assert not (tmp_path / "state" / "holder").exists()
        log = (tmp_path / "fsfreeze.log").read_text()
        assert "thaw unlocked connection=42: the lock was held until the thaw" in log
    finally:
        # `timeout` passes SIGTERM on to the client it runs (as the thaw's kill does).
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def test_the_mysql_hook_says_so_when_the_lock_ended_before_the_thaw(tmp_path: Path) -> None:
    assert run_hook(tmp_path, "freeze").returncode == 0
    session = int((tmp_path / "statements.session").read_text())
    os.kill(session, signal.SIGKILL)  # the session dies during the freeze, its lock with it
    wait_for_exit(session)
    assert run_hook(tmp_path, "thaw").returncode == 0  # a thaw never fails
    assert "thaw: connection=42 was gone" in (tmp_path / "fsfreeze.log").read_text()


def wait_for_exit(pid: int) -> None:
    """Until `pid` is gone or reaped (the stand-in session is a grandchild: init reaps it)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{pid} did not exit")


def test_the_mysql_hook_fails_the_freeze_without_the_lock(tmp_path: Path) -> None:
    refused = run_hook(tmp_path, "freeze", FAKE_REFUSE="1")
    assert refused.returncode == 1
    assert "did not succeed" in refused.stderr and "Lock wait timeout" in refused.stderr
    assert "freeze refused" in (tmp_path / "fsfreeze.log").read_text()


def test_a_stopped_server_is_skipped_but_a_refusing_one_fails_the_freeze(tmp_path: Path) -> None:
    down = run_hook(tmp_path, "freeze", FAKE_DOWN="1")
    assert down.returncode == 0, down.stderr
    assert "freeze server=down" in (tmp_path / "fsfreeze.log").read_text()
    denied = run_hook(tmp_path, "freeze", FAKE_DENIED="1")
    assert denied.returncode == 1 and "Access denied" in denied.stderr
    assert not (tmp_path / "state" / "holder").exists()
    assert "FLUSH TABLES" not in (tmp_path / "statements").read_text()


def test_a_lazy_innodb_commit_is_refused_unless_accepted(tmp_path: Path) -> None:
    lazy = run_hook(tmp_path, "freeze", FAKE_TRX_COMMIT="0")
    assert lazy.returncode == 1 and "innodb_flush_log_at_trx_commit is 0" in lazy.stderr
    assert "FLUSH TABLES" not in (tmp_path / "statements").read_text()
    accepted = run_hook(tmp_path, "freeze", FAKE_TRX_COMMIT="0", HERON_MYSQL_ALLOW_ASYNC_COMMIT="1")
    assert accepted.returncode == 0, accepted.stderr
    assert run_hook(tmp_path, "thaw").returncode == 0
    assert "thaw unlocked connection=42" in (tmp_path / "fsfreeze.log").read_text()


def test_a_thaw_without_a_freeze_is_a_no_op(tmp_path: Path) -> None:
    assert run_hook(tmp_path, "thaw").returncode == 0


# -- the runner (/etc/qemu/fsfreeze-hook) ------------------------------------------------------

RUNNER = HOOKS.parent / "fsfreeze-hook"


def test_the_runner_parses_and_passes_shellcheck() -> None:
    subprocess.run(["sh", "-n", str(RUNNER)], check=True)
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", str(RUNNER)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def runner(tmp_path: Path, action: str, fail: dict[str, str]) -> tuple[int, list[str]]:
    """Run the runner over hooks a, b, c (plus files it must skip); `fail` maps a hook to the
    action it fails. Returns its status and the calls the hooks saw, in order."""
    hooks, calls = tmp_path / "hooks", tmp_path / "calls"
    hooks.mkdir(exist_ok=True)
    for name in ("a", "b", "c", "d.dpkg-old", ".hidden", "e"):
        script = hooks / name
        failing = fail.get(name, "none")
        script.write_text(
            f'#!/bin/sh\necho "{name} $1" >>{calls}\n[ "$1" = {failing} ] && exit 7\nexit 0\n'
        )
        script.chmod(0o644 if name == "e" else 0o755)
    proc = subprocess.run(
        ["sh", str(RUNNER), action],
        env={**os.environ, "HERON_HOOK_DIR": str(hooks), "HERON_HOOK_LOG": str(tmp_path / "l")},
        capture_output=True,
        timeout=60,
    )
    return proc.returncode, calls.read_text().splitlines() if calls.exists() else []


def test_the_runner_freezes_in_order_and_unwinds_at_the_first_failure(tmp_path: Path) -> None:
    assert runner(tmp_path, "freeze", {}) == (0, ["a freeze", "b freeze", "c freeze"])
    (tmp_path / "calls").unlink()
    status, calls = runner(tmp_path, "freeze", {"b": "freeze"})
    assert status == 7
    assert calls == ["a freeze", "b freeze", "a thaw"]  # c never froze; a is released


def test_the_runner_thaws_everything_in_reverse_and_never_fails(tmp_path: Path) -> None:
    assert runner(tmp_path, "thaw", {"b": "thaw"}) == (0, ["c thaw", "b thaw", "a thaw"])
