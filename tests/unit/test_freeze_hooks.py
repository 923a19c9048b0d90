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
