"""Stand-ins for the real parts (etcd, QEMU) that keep the same contract, for fast unit tests.

Each fake is held to its real counterpart by a contract test that runs the same functions
against both (tests/contracts/), so a unit test on a fake says something about the real thing.
"""
