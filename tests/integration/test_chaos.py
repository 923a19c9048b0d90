"""Chaos, bounded for CI: API operations under random faults, Heron's invariants checked all
along (bench/chaos.py; `python -m bench.chaos` runs it longer). A failure prints its seed;
HERON_CHAOS_SEED=<seed> replays the same choices."""

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

from support import wait_for

from bench.chaos import chaos, prepare
from bench.linkcut import LinkCuts

DURATION = 60  # seconds of faults; the bench runs it for twenty minutes


def test_no_invariant_breaks_under_random_faults(cluster3, tmp_path: Path) -> None:
    cluster, token = cluster3
    seed = int(os.environ.get("HERON_CHAOS_SEED") or random.randrange(2**32))
    prepare(cluster, token, tmp_path, ardfs=True)
    run = chaos(cluster, token, seed, DURATION, vms=2, ardfs=True, settle=240)
    assert sum(run.faults.values()) >= 3, f"seed {seed}: too few faults to mean anything"
    assert run.operations["disk records acknowledged"] > 0
    assert not run.violations, f"seed {seed}: {run.violations}"


ECHO = """
import socket, sys, threading
def serve(c):
    while data := c.recv(64):
        c.sendall(data)
s = socket.create_server(("127.0.0.1", 0))
open(sys.argv[2], "w").write(str(s.getsockname()[1]))
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""

PROBE = """
import socket, sys, time
port = int(open(sys.argv[2]).read())
kept = socket.create_connection(("127.0.0.1", port), timeout=1)
fresh = lambda: socket.create_connection(("127.0.0.1", port), timeout=1)
with open(sys.argv[3], "a", buffering=1) as out:
    while True:
        for name, connect in (("kept", lambda: kept), ("new", fresh)):
            try:
                c = connect(); c.settimeout(1); c.sendall(b"x"); c.recv(64)
                out.write(f"{name} ok\\n")
            except OSError:
                out.write(f"{name} cut\\n")
        time.sleep(0.2)
"""


def test_a_link_cut_stops_both_ways_passes_the_rest_and_heals(tmp_path: Path) -> None:
    """bench/linkcut.py: what the chaos test's link cuts stand on."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    port_file, seen = tmp_path / "port", a / "seen"
    server = subprocess.Popen([sys.executable, "-c", ECHO, str(b), str(port_file)])
    probe = None
    try:
        wait_for(lambda: port_file.exists() and port_file.read_text(), 30, "the echo server")
        probe = subprocess.Popen([sys.executable, "-c", PROBE, str(a), str(port_file), str(seen)])
        port = int(port_file.read_text())

        def after(mark: int, *lines: str) -> bool:
            tail = seen.read_text()[mark:] if seen.exists() else ""
            return all(line in tail.splitlines() for line in lines)

        with LinkCuts({"a": [str(a)], "b": [str(b)]}) as cuts:
            wait_for(lambda: after(0, "kept ok", "new ok"), 30, "the probe through")
            cuts.isolate("a")
            mark = seen.stat().st_size
            wait_for(lambda: after(mark, "kept cut", "new cut"), 30, "both connections cut")
            # A process in neither node's cgroup (this test) still gets through.
            with socket.create_connection(("127.0.0.1", port), timeout=5) as own:
                own.sendall(b"y")
                assert own.recv(64) == b"y"
            cuts.heal("a")
            mark = seen.stat().st_size
            wait_for(lambda: after(mark, "kept ok", "new ok"), 60, "both connections back")
    finally:
        for process in (probe, server):
            if process is not None:
                process.kill()
                process.wait()
