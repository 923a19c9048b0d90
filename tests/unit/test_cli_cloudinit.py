"""The cloud-init options of the CLI: the seed they give, and how `heron vm update` changes a
VM's seed with them (field by field, made when there is none, removed by --no-cloud-init)."""

from pathlib import Path

import pytest
import typer

from heron.cli import cloudinit

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHeronTestKeyOnly alice@test"
HAS = {"hostname": "old", "users": [{"name": "bob", "ssh_keys": [], "sudo": False}]}


def test_the_options_give_only_what_they_say(tmp_path: Path) -> None:
    assert cloudinit.seed(None, None, [], None, False, None) == {}
    key_file = tmp_path / "id.pub"
    key_file.write_text(KEY + "\n")
    data = tmp_path / "user-data"
    data.write_text("#cloud-config\npackages: [htop]\n")
    assert cloudinit.seed("web", "alice", [f"@{key_file}"], None, True, data) == {
        "hostname": "web",
        "users": [{"name": "alice", "ssh_keys": [KEY], "password_hash": None, "sudo": True}],
        "user_data": "#cloud-config\npackages: [htop]\n",
    }
    with pytest.raises(typer.BadParameter, match="--user"):
        cloudinit.seed(None, None, [KEY], None, False, None)
    with pytest.raises(typer.BadParameter, match="cannot read"):
        cloudinit.seed(None, None, [], None, False, tmp_path / "missing")


def test_an_update_replaces_the_fields_given_and_keeps_the_rest() -> None:
    assert cloudinit.updated(HAS, None, {"hostname": "new"}) == {**HAS, "hostname": "new"}
    alice = [{"name": "alice", "ssh_keys": [KEY], "password_hash": None, "sudo": False}]
    assert cloudinit.updated(HAS, None, {"users": alice}) == {"hostname": "old", "users": alice}
    assert cloudinit.updated(None, None, {"hostname": "new"}) == {"hostname": "new"}


def test_cloud_init_alone_makes_an_empty_seed_or_keeps_the_one_there() -> None:
    assert cloudinit.updated(None, True, {}) == {}
    assert cloudinit.updated(HAS, True, {}) == HAS
    assert cloudinit.updated(HAS, None, {}) is cloudinit.UNCHANGED


def test_no_cloud_init_removes_the_seed_and_takes_no_other_option() -> None:
    assert cloudinit.updated(HAS, False, {}) is None
    with pytest.raises(typer.BadParameter, match="--no-cloud-init"):
        cloudinit.updated(HAS, False, {"hostname": "x"})
