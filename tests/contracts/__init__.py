"""Tests that a fake and the real part it stands in for must both pass.

Each contract is a class of tests without a `Test` prefix; a test module subclasses it once per
implementation and supplies the fixtures (and the few hooks) it names.
"""

import pytest

# Their asserts live outside test modules: have pytest explain them as it does in tests.
pytest.register_assert_rewrite("contracts.configdb", "contracts.qemu")
