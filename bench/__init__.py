"""Heron's benchmarks: run from the repository root, e.g. `python -m bench.run_all`."""
