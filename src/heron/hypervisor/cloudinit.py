"""cloud-init's NoCloud seed for a VM: what its files say (pure), and the ISO that carries
them (labelled `cidata`, given to QEMU as the VM's last disk, read-only).

Each VM has its own identity: its id is the instance-id (a clone, or a VM of a batch, is a new
instance, so cloud-init runs again there) and its name the hostname unless one is given.
YAML is a superset of JSON: the files are written as JSON, which cloud-init reads as YAML.
"""

import hashlib
import io
import json
import os
from collections.abc import Mapping
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import pycdlib

from heron.models.network import Network
from heron.models.vm import VM, CloudInit

LABEL = "cidata"
# Fixed, so the same seed is the same user-data whatever made it.
_BOUNDARY = "==heron-cloud-init=="


def meta_data(vm: VM, seed: CloudInit) -> dict[str, Any]:
    return {"instance-id": vm.id, "local-hostname": seed.hostname or vm.spec.name}


def cloud_config(vm: VM, seed: CloudInit) -> dict[str, Any]:
    users: list[Any] = ["default"] if not seed.users else []
    for user in seed.users:
        entry: dict[str, Any] = {"name": user.name, "shell": "/bin/bash"}
        if user.ssh_keys:
            entry["ssh_authorized_keys"] = list(user.ssh_keys)
        if user.password_hash:
            entry["hashed_passwd"] = user.password_hash
            entry["lock_passwd"] = False
        if user.sudo:
            entry["sudo"] = "ALL=(ALL) NOPASSWD:ALL"
        users.append(entry)
    hostname = seed.hostname or vm.spec.name
    config: dict[str, Any] = {
        "hostname": hostname,
        "fqdn": hostname,
        "preserve_hostname": False,
        "users": users,
    }
    if any(u.password_hash for u in seed.users):
        config["ssh_pwauth"] = True
    return config


def user_data(vm: VM, seed: CloudInit) -> bytes:
    """The cloud-config Heron makes; with the user's own user-data, a MIME multipart of both
    (cloud-init merges the parts)."""
    ours = "#cloud-config\n" + json.dumps(cloud_config(vm, seed), indent=2, sort_keys=True) + "\n"
    if not seed.user_data:
        return ours.encode()
    message = MIMEMultipart(boundary=_BOUNDARY)
    for index, (text, kind) in enumerate(((ours, "cloud-config"), (seed.user_data, None))):
        subtype = kind or _subtype(text)
        part = MIMEText(text, subtype, "utf-8")
        part.add_header("Content-Disposition", f'attachment; filename="part-{index}"')
        message.attach(part)
    return message.as_bytes()


def _subtype(text: str) -> str:
    """The MIME subtype cloud-init expects for user-data that starts this way."""
    if text.startswith("#cloud-config"):
        return "cloud-config"
    if text.startswith("#!"):
        return "x-shellscript"
    if text.startswith("#cloud-boothook"):
        return "cloud-boothook"
    return "x-shellscript" if text.startswith("#") else "plain"


def network_config(vm: VM, networks: Mapping[str, Network]) -> dict[str, Any] | None:
    """Netplan-style version 2: each NIC found by its MAC; a static address where its network
    has a subnet and the NIC an address from it, DHCP elsewhere; none without NICs."""
    ethernets: dict[str, Any] = {}
    for index, nic in enumerate(vm.spec.nics):
        if nic.network == "none" or nic.mac is None:
            continue
        entry: dict[str, Any] = {"match": {"macaddress": nic.mac}, "set-name": f"eth{index}"}
        network = networks.get(nic.network)
        subnet = network.subnet if network is not None else None
        if subnet is not None and nic.address is not None:
            prefix = subnet.cidr.split("/")[1]
            entry["addresses"] = [f"{nic.address}/{prefix}"]
            if subnet.gateway:
                entry["routes"] = [{"to": "default", "via": subnet.gateway}]
            if subnet.dns:
                entry["nameservers"] = {"addresses": list(subnet.dns)}
        else:
            entry["dhcp4"] = True
        ethernets[f"eth{index}"] = entry
    if not ethernets:
        return None
    return {"version": 2, "ethernets": ethernets}


def seed_files(vm: VM, networks: Mapping[str, Network]) -> dict[str, bytes]:
    """The seed's files by name; empty when the VM has no cloud-init."""
    seed = vm.spec.cloud_init
    if seed is None:
        return {}
    files = {
        "meta-data": json.dumps(meta_data(vm, seed), indent=2, sort_keys=True).encode() + b"\n",
        "user-data": user_data(vm, seed),
    }
    network = network_config(vm, networks) if seed.network else None
    if network is not None:
        files["network-config"] = json.dumps(network, indent=2, sort_keys=True).encode() + b"\n"
    return files


def _iso_name(name: str) -> str:
    """An ISO 9660 level-1 name for the plain directory (Joliet and Rock Ridge carry the
    real one, which is what Linux mounts show)."""
    base = "".join(c for c in name.upper() if c.isalnum())[:8]
    return f"/{base}.;1"


def write_iso(files: Mapping[str, bytes], path: Path) -> bool:
    """Write the seed ISO at `path` unless the one there already carries `files`; True when
    it wrote one. A sidecar holds the files' digest, so a restart reuses the same image."""
    digest = hashlib.sha256(
        b"".join(name.encode() + b"\0" + data + b"\0" for name, data in sorted(files.items()))
    ).hexdigest()
    marker = path.with_name(path.name + ".sha256")
    if path.exists() and marker.exists() and marker.read_text() == digest:
        return False
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL)
    for name, data in sorted(files.items()):
        iso.add_fp(
            io.BytesIO(data),
            len(data),
            _iso_name(name),
            rr_name=name,
            joliet_path=f"/{name}",
        )
    partial = path.with_name(path.name + ".partial")
    try:
        iso.write(str(partial))
    finally:
        iso.close()
    os.replace(partial, path)
    marker.write_text(digest)
    return True


def read_iso(path: Path) -> dict[str, bytes]:
    """The files of a seed ISO by their Joliet names (for tests and checks)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        found = {}
        for child in iso.list_children(joliet_path="/"):
            name = child.file_identifier().decode("utf-16-be")
            if name in (".", "..", "\x00", "\x01") or child.is_dir():
                continue
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
            found[name] = out.getvalue()
        return found
    finally:
        iso.close()
