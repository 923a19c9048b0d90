"""cloud-init's NoCloud seed: what its files say for a VM (its own identity, users and keys,
static addresses from the NIC's subnet, DHCP elsewhere, the user's own user-data beside
Heron's), the ISO that carries them, and where QEMU gets it."""

import json
from email import message_from_bytes
from pathlib import Path

import pytest
from pydantic import ValidationError

from heron.hypervisor import cloudinit, command
from heron.hypervisor.command import ResolvedDisk, RuntimePaths
from heron.models.network import Network, Subnet
from heron.models.vm import VM, CloudInit, CloudUser, NicSpec, VMSpec

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbc+/= alice@laptop"
HASH = "$6$salt$0123456789abcdefABCDEF./"


def vm(seed: CloudInit | None, *nics: NicSpec, name: str = "web-001") -> VM:
    spec = VMSpec(name=name, cloud_init=seed, nics=list(nics))
    return VM(id="v0123456789ab", spec=spec, node="n1", created_at=0)


NETS = {
    "lan": Network(
        name="lan",
        switch="sw",
        kind="untagged",
        subnet=Subnet(cidr="10.9.0.0/24", gateway="10.9.0.1", dns=["10.9.0.53"]),
        created_at=0,
    )
}


def test_each_vm_is_its_own_instance_named_after_it() -> None:
    files = cloudinit.seed_files(vm(CloudInit()), {})
    assert json.loads(files["meta-data"]) == {
        "instance-id": "v0123456789ab",
        "local-hostname": "web-001",
    }
    config = files["user-data"].decode()
    assert config.startswith("#cloud-config\n")
    parsed = json.loads(config.split("\n", 1)[1])
    assert parsed["hostname"] == "web-001" and parsed["users"] == ["default"]
    assert "network-config" not in files  # no NICs
    named = cloudinit.seed_files(vm(CloudInit(hostname="db")), {})
    assert json.loads(named["meta-data"])["local-hostname"] == "db"
    assert cloudinit.seed_files(vm(None), {}) == {}


def test_users_keys_and_passwords() -> None:
    seed = CloudInit(
        users=[
            CloudUser(name="alice", ssh_keys=[KEY], sudo=True),
            CloudUser(name="bob", password_hash=HASH),
        ]
    )
    config = json.loads(cloudinit.user_data(vm(seed), seed).decode().split("\n", 1)[1])
    alice, bob = config["users"]
    assert alice["ssh_authorized_keys"] == [KEY] and alice["sudo"].startswith("ALL=")
    assert "hashed_passwd" not in alice
    assert bob["hashed_passwd"] == HASH and bob["lock_passwd"] is False
    assert config["ssh_pwauth"] is True


def test_static_addresses_from_the_subnet_and_dhcp_elsewhere() -> None:
    nics = (
        NicSpec(network="lan", mac="52:54:00:00:00:01", address="10.9.0.20"),
        NicSpec(network="user", mac="52:54:00:00:00:02"),
        NicSpec(network="none", mac="52:54:00:00:00:03"),
    )
    files = cloudinit.seed_files(vm(CloudInit(), *nics), NETS)
    network = json.loads(files["network-config"])
    assert network == {
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": {"macaddress": "52:54:00:00:00:01"},
                "set-name": "eth0",
                "addresses": ["10.9.0.20/24"],
                "routes": [{"to": "default", "via": "10.9.0.1"}],
                "nameservers": {"addresses": ["10.9.0.53"]},
            },
            "eth1": {
                "match": {"macaddress": "52:54:00:00:00:02"},
                "set-name": "eth1",
                "dhcp4": True,
            },
        },
    }
    assert "network-config" not in cloudinit.seed_files(vm(CloudInit(network=False), *nics), NETS)


def test_the_users_own_user_data_goes_beside_heron_s() -> None:
    seed = CloudInit(user_data="#!/bin/sh\necho hi > /tmp/hi\n")
    raw = cloudinit.user_data(vm(seed), seed)
    assert raw == cloudinit.user_data(vm(seed), seed)  # the same bytes every time
    parts = [p for p in message_from_bytes(raw).walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in parts] == ["text/cloud-config", "text/x-shellscript"]
    assert "echo hi" in parts[1].get_payload(decode=True).decode()


def test_the_iso_carries_the_files_and_is_made_once(tmp_path: Path) -> None:
    files = cloudinit.seed_files(vm(CloudInit(users=[CloudUser(name="alice", ssh_keys=[KEY])])), {})
    path = tmp_path / "cidata.iso"
    assert cloudinit.write_iso(files, path)
    assert cloudinit.read_iso(path) == files
    stamp = path.stat().st_mtime_ns
    assert not cloudinit.write_iso(files, path)  # the same seed: the image stays
    assert path.stat().st_mtime_ns == stamp
    changed = {**files, "meta-data": b'{"instance-id": "other"}\n'}
    assert cloudinit.write_iso(changed, path)
    assert cloudinit.read_iso(path)["meta-data"] == changed["meta-data"]
    with path.open("rb") as iso:  # the volume label cloud-init looks for
        iso.seek(16 * 2048 + 40)
        assert iso.read(32).decode().strip() == "cidata"


def test_qemu_gets_the_seed_last_and_read_only(tmp_path: Path) -> None:
    paths = RuntimePaths(tmp_path)
    disk = ResolvedDisk(bus="virtio", protocol={"driver": "file", "filename": "/d"}, format="raw")
    the_vm = vm(CloudInit())
    the_vm.spec.disks = []
    args = command.build(the_vm, [disk], paths, "tcg", seed=tmp_path / "cidata.iso")
    assert args[-2:] == ["-device", "virtio-blk-pci,drive=cidata,id=cidata-dev"]
    node = json.loads(args[-3])
    assert node["read-only"] is True and node["file"]["filename"].endswith("cidata.iso")
    assert "cidata" not in " ".join(command.build(the_vm, [disk], paths, "tcg"))


@pytest.mark.parametrize(
    "bad",
    [
        {"hostname": "Not_A_Host"},
        {"users": [{"name": "Root!"}]},
        {"users": [{"name": "alice", "ssh_keys": ["not a key"]}]},
        {"users": [{"name": "alice", "password_hash": "plaintext"}]},
        {"user_data": "x" * 70000},
    ],
)
def test_bad_seeds_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        CloudInit.model_validate(bad)
