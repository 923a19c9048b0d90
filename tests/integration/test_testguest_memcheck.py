"""The test guest's memory checker finds a corrupted page: proof that migration tests can fail.

The guest's RAM is a file shared with this process (`memory-backend-file,share=on`), so the
test can do what a faulty live migration does: change a page behind the guest's back. The
guest must name the page's guest-physical address, and the console reader must call it a
problem.
"""

import mmap
import re
import struct
import subprocess
from pathlib import Path

import pytest
from support import wait_for

from heron.testguest import console

pytestmark = pytest.mark.integration

MASK = (1 << 64) - 1


def seed(page: int, word: int) -> int:
    """What memcheck.c writes into word `word` of page `page` at generation 0."""
    z = (page * 8 + word + 0x48524F4E) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_a_page_changed_behind_the_guest_is_reported(testguest: Path, tmp_path: Path) -> None:
    ram = Path("/dev/shm") / f"heron-memcheck-{tmp_path.name}"
    log = tmp_path / "console.log"
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "pc,accel=tcg,memory-backend=ram", "-m", "128",
         "-object", f"memory-backend-file,id=ram,size=128M,mem-path={ram},share=on",
         "-nodefaults", "-display", "none", "-serial", f"file:{log}",
         "-drive", f"file={testguest},format=raw,if=virtio,snapshot=on"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        start = wait_for(
            lambda: log.exists() and re.search(r"memcheck start .* pages=(\d+)", log.read_text()),
            120,
            "the memory checker to start",
        )
        wait_for(
            lambda: console.read_log(log, booted_here=True).verifications >= 2,
            60,
            "two clean verifications",
        )
        assert console.read_log(log, booted_here=True).intact
        # The last page: the slow sweep rewrites it only after half a minute, so it still
        # holds generation 0 when it is changed here.
        page = int(start.group(1)) - 1
        with ram.open("r+b") as handle, mmap.mmap(handle.fileno(), 0) as memory:
            where = memory.find(struct.pack("<Q", seed(page, 0)))
            assert where >= 0 and where % 4096 == 0, "the page's pattern is not in the guest RAM"
            memory[where + 3] ^= 0x40

        report = wait_for(
            lambda: (r := console.read_log(log, booted_here=True)).problems and r,
            30,
            "the guest to report the changed page",
        )
        assert re.search(
            rf"MISMATCH gpa=0x{where:x} page={page} word=0 .* stale=-?\d+", report.problems[0]
        ), report.problems
        # Reported once, then repaired: the checker goes on and counts the error.
        wait_for(
            lambda: console.read_log(log, booted_here=True).memcheck_errors == 1,
            30,
            "the error to be counted",
        )
        assert len(console.read_log(log, booted_here=True).problems) == 1
    finally:
        qemu.kill()
        qemu.wait()
        ram.unlink(missing_ok=True)
