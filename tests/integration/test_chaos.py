"""Chaos, bounded for CI: API operations under random faults, Heron's invariants checked all
along (bench/chaos.py; `python -m bench.chaos` runs it longer). A failure prints its seed;
HERON_CHAOS_SEED=<seed> replays the same choices."""

import os
import random
from pathlib import Path

from bench.chaos import chaos, prepare

DURATION = 60  # seconds of faults; the bench runs it for twenty minutes


def test_no_invariant_breaks_under_random_faults(cluster3, tmp_path: Path) -> None:
    cluster, token = cluster3
    seed = int(os.environ.get("HERON_CHAOS_SEED") or random.randrange(2**32))
    prepare(cluster, token, tmp_path, ardfs=True)
    run = chaos(cluster, token, seed, DURATION, vms=2, ardfs=True, settle=240)
    assert sum(run.faults.values()) >= 3, f"seed {seed}: too few faults to mean anything"
    assert run.operations["disk records acknowledged"] > 0
    assert not run.violations, f"seed {seed}: {run.violations}"
