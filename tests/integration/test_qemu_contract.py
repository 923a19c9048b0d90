"""The QEMU contract on qemu-system-x86_64 itself: what the fake QEMU is held to."""

import shutil

import pytest
from contracts.qemu import QemuContract

pytestmark = pytest.mark.integration


class TestRealQemu(QemuContract):
    @pytest.fixture
    def qemu_on_path(self) -> None:
        if shutil.which("qemu-system-x86_64") is None:
            pytest.skip("qemu-system-x86_64 is not installed")
