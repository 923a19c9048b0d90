"""The staging folder of vSphere downloads and warm copies keeps the node's disk from
filling up: below the reserve, the copy stops with the folder and what is left."""

from pathlib import Path

import pytest

from heron.agent import vsphere


def test_the_reserve_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vsphere.check_space(tmp_path)  # this machine's disk has more than 2 GiB free
    monkeypatch.setattr(vsphere, "SPACE_RESERVE", 1 << 62)
    with pytest.raises(vsphere.VsphereError, match=f"staging folder {tmp_path} has \\d+ MiB free"):
        vsphere.check_space(tmp_path)
