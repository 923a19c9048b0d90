"""The fsfreeze hooks Heron ships for guests (guest/fsfreeze-hook.d): they parse, pass
shellcheck, and the MySQL one holds its read lock from freeze to thaw, here against a stand-in
`mysql` client (the PostgreSQL one runs for real in the Debian guest's tests)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
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
# server's SLEEP(); KILL and the other statements are recorded.
FAKE_MYSQL = """#!/bin/bash
statements=${@: -1}
echo "$statements" | tr '\\n' ' ' >>"$FAKE_LOG"; echo >>"$FAKE_LOG"
case "$statements" in
*"FLUSH TABLES WITH READ LOCK"*)
    [[ -n ${FAKE_REFUSE:-} ]] && { echo "ERROR 1205: Lock wait timeout exceeded" >&2; exit 1; }
    echo 42; echo locked; exec sleep 300 ;;
*"SHOW MASTER STATUS"*) printf 'binlog.000003\\t1234\\t\\t\\n' ;;
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
        assert "thaw unlocked" in (tmp_path / "fsfreeze.log").read_text()
    finally:
        # `timeout` passes SIGTERM on to the client it runs (as the thaw's kill does).
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def test_the_mysql_hook_fails_the_freeze_without_the_lock(tmp_path: Path) -> None:
    refused = run_hook(tmp_path, "freeze", FAKE_REFUSE="1")
    assert refused.returncode == 1
    assert "did not succeed" in refused.stderr
    assert "freeze refused" in (tmp_path / "fsfreeze.log").read_text()


def test_a_thaw_without_a_freeze_is_a_no_op(tmp_path: Path) -> None:
    assert run_hook(tmp_path, "thaw").returncode == 0
