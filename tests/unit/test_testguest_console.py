"""The reader of the test guest's console: what counts as a guest that stayed whole."""

from heron.testguest import console

BOOT = """\x1b[2J
HERON-GUEST-READY uuid=1234
heron-memcheck start mib=32 pages=8192 hot=64 rate=256
heron-tick 1
heron-memcheck verified=1 errors=0 pass=0
heron-tick 2
heron-memcheck verified=2 errors=0 pass=0
"""


def test_a_clean_boot_is_intact() -> None:
    report = console.read(BOOT, booted_here=True)
    assert report.intact and report.boots == 1
    assert report.ticks == [1, 2] and (report.verified, report.verifications) == (2, 2)


def test_a_migrated_guest_goes_on_where_it_was() -> None:
    before = console.read(BOOT, booted_here=True)
    # The target's log may begin with the tail of a line the source had started.
    after = console.read(
        "ick 3\nheron-tick 4\nheron-memcheck verified=3 errors=0 pass=0\n", booted_here=False
    )
    assert after.intact and after.ticks == [4] and after.verifications == 1
    assert console.follows(before.ticks[-1], after) == []


def test_a_boot_on_the_target_or_a_second_boot_is_a_problem() -> None:
    assert not console.read(BOOT, booted_here=False).intact
    assert not console.read(BOOT + BOOT, booted_here=True).intact
    after = console.read("heron-tick 1\n", booted_here=False)
    assert console.follows(2, after) == ["tick 1 on arrival after 2 before"]


def test_memory_and_kernel_trouble_are_problems() -> None:
    lines = [
        "heron-memcheck MISMATCH gpa=0xc5c9000 page=2 word=0 expected=0x1 found=0x2 stale=10",
        "heron-memcheck CLOCK-BACKWARDS by=1000",
        "[   27.1] BUG: kernel NULL pointer dereference, address: 0000000000000001",
        "Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b",
        "init[1]: segfault at 8 ip 00000000004a1b2c sp 00007ffd error 4",
        "heron-tick 7",
        "heron-tick 9",
    ]
    report = console.read("\n".join(lines), booted_here=False)
    assert report.problems == [*lines[:5], "tick 9 after 7"]


def test_what_tests_run_in_the_guest_is_not_its_health() -> None:
    commands = (
        "heron-run a1 dmesg | grep WARNING:\n"
        "heron-out a1 [    1.0] WARNING: CPU: 0 PID: 1 at somewhere\n"
        "heron-out a1 HERON-GUEST-READY uuid=1234\n"
        "heron-done a1 rc=0\n"
    )
    report = console.read(BOOT + commands, booted_here=True)
    assert report.intact and report.boots == 1
