"""What the test guest said on its serial console, read back: did it stay whole?

Tests and benchmarks judge a guest by its own words. A guest that was live-migrated must go on
counting where it was (no new READY line, no counter that restarts or skips), its memory
checker must keep finding every word it wrote, and its kernel must not complain. Anything else
is a problem, listed with the line that shows it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from heron.testguest.build import READY_MARKER, TICK_PREFIX
from heron.testguest.net import DONE_PREFIX, OUT_PREFIX, RUN_PREFIX

MEMCHECK_PREFIX = "heron-memcheck"

_TICK = re.compile(rf"{TICK_PREFIX} (\d+)$")
_VERIFIED = re.compile(rf"{MEMCHECK_PREFIX} verified=(\d+) errors=(\d+) pass=(\d+)")
# What tests run in the guest (heron.testguest.net) says nothing about its health: a `dmesg`
# there must not read as a kernel complaint.
_COMMAND_TRAFFIC = re.compile(rf"(?:{RUN_PREFIX}|{OUT_PREFIX}|{DONE_PREFIX}) ")
_MEMCHECK_BAD = re.compile(rf"{MEMCHECK_PREFIX} (MISMATCH|CLOCK-BACKWARDS|cannot run)")
# The guest boots with `quiet`: the kernel prints only warnings and worse, so any of these is
# news. Covers oopses, panics, BUG/WARN splats, soft lockups, RCU stalls and crashed processes.
_KERNEL_BAD = re.compile(
    r"BUG:|Oops|Kernel panic|general protection fault|WARNING:|Call Trace:|"
    r"segfault at|traps:|invalid opcode|soft lockup|hard LOCKUP|rcu_.*stall|"
    r"Unable to handle|double fault|Attempted to kill init|Kernel BUG"
)


@dataclass
class GuestReport:
    """The test guest's console, parsed."""

    boots: int = 0
    ticks: list[int] = field(default_factory=list)
    verified: int = 0  # the checker's own count of full verifications, as last printed
    verifications: int = 0  # how many of them this log shows
    memcheck_errors: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


def read(text: str, *, booted_here: bool) -> GuestReport:
    """Parse one console log. `booted_here` is False for the log of a node the guest was
    migrated to: a READY line there means it was restarted, not moved."""
    report = GuestReport()
    for raw in text.splitlines():
        line = raw.strip()
        if _COMMAND_TRAFFIC.match(line):
            continue
        if READY_MARKER in line:
            report.boots += 1
            if report.boots > 1 or not booted_here:
                report.problems.append(f"the guest booted again: {line}")
        elif tick := _TICK.search(line):
            value = int(tick.group(1))
            if report.ticks and value != report.ticks[-1] + 1:
                report.problems.append(f"tick {value} after {report.ticks[-1]}")
            report.ticks.append(value)
        elif verified := _VERIFIED.search(line):
            report.verified = int(verified.group(1))
            report.verifications += 1
            report.memcheck_errors = int(verified.group(2))
        elif _MEMCHECK_BAD.search(line) or _KERNEL_BAD.search(line):
            report.problems.append(line)
    return report


def read_log(path: Path, *, booted_here: bool) -> GuestReport:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        text = ""
    return read(text, booted_here=booted_here)


def follows(last_tick: int | None, after: GuestReport) -> list[str]:
    """Problems of a move after which the guest wrote `after`: its counter must go on from
    `last_tick`, the last one it printed before, not restart."""
    if last_tick is not None and after.ticks and after.ticks[0] <= last_tick:
        return [f"tick {after.ticks[0]} on arrival after {last_tick} before"]
    return []
