"""Freeze hooks inside a running guest, listed, installed and removed through its agent.

qemu-ga runs /etc/qemu/fsfreeze-hook around every freeze and thaw (when its configuration
names it, as Debian's, Ubuntu's and RHEL's packages can), and that script runs each executable
file of /etc/qemu/fsfreeze-hook.d in name order with "freeze" or "thaw"; the first non-zero
exit on freeze fails the freeze. It skips backup-looking names (`*~`, `*.bak`, `*.dpkg-*`...)
and, through its glob, hidden ones: names here are plain words, and an install writes a
hidden temporary file that a rename makes visible whole (a freeze never runs half a script).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from heron.hypervisor.qga import AgentCommandError, GuestAgent, GuestAgentError
from heron.models.guest import HOOK_NAME_PATTERN, MAX_HOOK_BYTES

HOOK_DIR = "/etc/qemu/fsfreeze-hook.d"
HOOK_RUNNER = "/etc/qemu/fsfreeze-hook"
TIMEOUT = 30.0
_NAME = re.compile(HOOK_NAME_PATTERN)

_LIST = r"""
[ -x "$2" ] && echo runner || echo no-runner
cd "$1" 2>/dev/null || exit 0
for f in *; do
    [ -f "$f" ] || continue
    [ -x "$f" ] && x=1 || x=0
    printf '%s %s %s %s\n' "$(stat -c %s "$f")" "$x" "$(sha256sum <"$f" | cut -d' ' -f1)" "$f"
done
"""


class HookError(GuestAgentError):
    """A hook could not be listed, installed or removed: the guest's command failed."""


class NoSuchHook(HookError):
    """The guest has no hook of that name."""


@dataclass(frozen=True)
class GuestHook:
    name: str
    size: int
    executable: bool  # the runner skips a file that is not
    sha256: str


@dataclass(frozen=True)
class GuestHooks:
    runner: bool  # /etc/qemu/fsfreeze-hook is there to run them
    hooks: list[GuestHook]


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def parse_listing(text: str) -> GuestHooks:
    lines = text.splitlines()
    runner = bool(lines) and lines[0] == "runner"
    hooks = []
    for line in lines[1:]:
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[0].isdigit():
            hooks.append(GuestHook(parts[3], int(parts[0]), parts[1] == "1", parts[2]))
    return GuestHooks(runner, hooks)


async def _sh(agent: GuestAgent, script: str, *args: str, timeout: float = TIMEOUT) -> str:
    result = await agent.exec("/bin/sh", ["-c", script, "sh", *args], timeout)
    if result.exitcode != 0:
        message = result.stderr.decode(errors="replace").strip() or f"exit {result.exitcode}"
        raise HookError(message)
    return result.stdout.decode(errors="replace")


async def list_hooks(agent: GuestAgent, timeout: float = TIMEOUT) -> GuestHooks:
    """The guest's hooks, in the order they run.

    Raises AgentUnavailable, AgentCommandError (guest-exec disabled; the guest is frozen),
    HookError.
    """
    return parse_listing(await _sh(agent, _LIST, HOOK_DIR, HOOK_RUNNER, timeout=timeout))


async def install_hook(
    agent: GuestAgent, name: str, script: bytes, timeout: float = TIMEOUT
) -> None:
    """Install (or replace) hook `name` with `script`, executable, atomically.

    Raises ValueError (a bad name, too large), AgentUnavailable, AgentCommandError, HookError.
    """
    if not valid_name(name):
        raise ValueError(f"a hook name is 1-64 letters, digits, '-' or '_': {name!r}")
    if len(script) > MAX_HOOK_BYTES:
        raise ValueError(f"a hook is at most {MAX_HOOK_BYTES} bytes")
    temporary, final = f"{HOOK_DIR}/.{name}.heron-new", f"{HOOK_DIR}/{name}"
    async with agent.held():
        await _sh(agent, 'mkdir -p "$1"', HOOK_DIR, timeout=timeout)
        try:
            await agent.write_file(temporary, script, timeout)
        except AgentCommandError as exc:
            raise HookError(f"cannot write {temporary}: {exc.desc}") from exc
        await _sh(agent, 'chmod 0755 "$1" && mv -f "$1" "$2"', temporary, final, timeout=timeout)


async def remove_hook(agent: GuestAgent, name: str, timeout: float = TIMEOUT) -> None:
    """Remove hook `name`.

    Raises ValueError (a bad name), NoSuchHook, AgentUnavailable, AgentCommandError, HookError.
    """
    if not valid_name(name):
        raise ValueError(f"a hook name is 1-64 letters, digits, '-' or '_': {name!r}")
    result = await agent.exec(
        "/bin/sh",
        ["-c", '[ -e "$1" ] || exit 3; rm -f "$1"', "sh", f"{HOOK_DIR}/{name}"],
        timeout,
    )
    if result.exitcode == 3:
        raise NoSuchHook(f"the guest has no hook {name!r}")
    if result.exitcode != 0:
        raise HookError(result.stderr.decode(errors="replace").strip() or "rm failed")
