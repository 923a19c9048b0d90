"""V2V imports through the API and the CLI on a real node: a folder laid out as a VMware
datastore and a Hyper-V export, its disks made by qemu-img from the bootable test guest in
several VMDK variants and as VHD/VHDX; scanned, imported into a pool (converted, compared
with their sources), one of them booted to its READY line with its MAC kept, on SATA as
its guest (running from its initramfs) is none the guest fix can read. A queue of
imports with one broken disk: the others finish, the broken one fails with its reason and
leaves nothing behind; a queued import cancelled leaves nothing either; requests that cannot
be imported are refused whole and make nothing."""

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from datastores import (
    fixed_vhd,
    hyperv_disk,
    make_differencing_vhd,
    make_differencing_vhdx,
    qemu_img,
    vmware_vm,
)
from support import Api, cli, serial_lines, wait_for

from heron.devcluster import DevCluster

pytestmark = pytest.mark.integration
CLUSTER_NODES = 1

BOOT = 180
MAC = "00:50:56:a1:b2:c3"


@pytest.fixture(scope="module")
def datastore(tmp_path_factory: pytest.TempPathFactory, testguest: Path) -> Path:
    ds = tmp_path_factory.mktemp("datastore")
    vmware_vm(ds, "web01", testguest, "monolithicSparse", MAC)
    vmware_vm(ds, "db02", testguest, "twoGbMaxExtentFlat", "00:50:56:a1:b2:c4")
    vmware_vm(ds, "app03", testguest, "streamOptimized", "00:50:56:a1:b2:c5")
    vmware_vm(ds, "broken05", testguest, "monolithicFlat", "00:50:56:a1:b2:c6")
    vmware_vm(ds, "evil07", testguest, "monolithicFlat", "00:50:56:a1:b2:c7")
    hyperv_disk(ds, "hv04", testguest)
    fixed_vhd(ds, "fixed06", testguest)
    return ds


def by_name(scan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {vm["name"]: vm for vm in scan["report"]["vms"]}


def volumes(api: Api) -> set[str]:
    return {v["name"] for v in api.ok("GET", "/pools/local/volumes")}


def test_scan_import_verify_and_boot(
    cluster1: tuple[DevCluster, str], api: Api, datastore: Path
) -> None:
    cluster, _ = cluster1
    node = cluster.nodes[0].name
    api.ok("POST", "/imports/sources", json={
        "name": "ds1", "type": "directory", "path": str(datastore), "node": node})  # fmt: skip
    ref = api.ok("POST", "/imports/sources/ds1/scan")
    api.wait_task(ref["task"])
    scan = api.ok("GET", "/imports/sources/ds1/scan")
    found = by_name(scan)
    assert {"Web01", "Db02", "App03", "Broken05", "hv04", "fixed06", "Evil07"} <= set(found)
    web = found["Web01"]
    assert web["disks"][0]["format"] == "vmdk" and web["nics"][0]["mac"] == MAC
    assert found["fixed06"]["disks"][0]["format"] == "vpc"
    # A fixed VHD is its data and a 512-byte footer: read as raw it would be 512 bytes more.
    vhd = datastore / "fixed06.vhd"
    assert found["fixed06"]["disks"][0]["capacity"] == vhd.stat().st_size - 512
    assert found["hv04"]["vcpus"] is None  # a disk without its configuration

    # Refused whole, nothing made: not scanned, an unmapped network, hardware not read.
    before = (volumes(api), {v["name"] for v in api.ok("GET", "/vms")})
    base = {"source": "ds1", "pool": "local", "networks": {"VM Network": "user"}}
    for body, field in [
        ({**base, "vms": [{"vm": "/nowhere.vmx"}]}, "body.vms.0.vm"),
        ({**base, "networks": {}, "vms": [{"vm": web["path"]}]}, "body.networks"),
        ({**base, "vms": [{"vm": web["path"]}, {"vm": found["hv04"]["path"]}]}, "body.vms.1.vcpus"),
    ]:
        reply = api.request("POST", "/imports", json=body)
        assert reply.status_code == 422, reply.text
        assert reply.json()["fields"][0]["field"] == field, reply.text
    assert (volumes(api), {v["name"] for v in api.ok("GET", "/vms")}) == before

    # A Linux guest is fixed to boot on virtio; one the fix cannot read (the test guest runs
    # from its initramfs: no root filesystem) keeps buses it has drivers for.
    reply = api.ok("POST", "/imports", json={**base, "vms": [{"vm": web["path"]}]})
    web01 = api.wait_task(reply["vms"][0]["task"], 600)
    assert any("verified" in line for line in web01["log"])
    assert any("guest not fixed (" in line for line in web01["log"]), web01["log"]
    vm = api.ok("GET", "/vms/web01")
    assert vm["spec"]["disks"][0]["bus"] == "sata" and vm["spec"]["nics"][0]["model"] == "e1000"

    # One at a time on the node: the others wait, queued, in their order.
    api.ok("PUT", "/cluster/settings", json={"imports": {"parallel": 1}})
    # The broken VM's disk is lost after the scan: its import fails, the others go on.
    (datastore / "broken05" / "broken05-flat.vmdk").write_bytes(b"")
    # Another's descriptor now names a file of the node's own as its data.
    descriptor = datastore / "evil07" / "evil07.vmdk"
    descriptor.write_text(descriptor.read_text().replace('"evil07-flat.vmdk"', '"/etc/hostname"'))
    names = ("Broken05", "Db02", "App03", "Evil07")
    items = [{"vm": found[n]["path"]} for n in names]
    items += [{"vm": found["hv04"]["path"], "vcpus": 1, "memory_mib": 128}]
    items += [{"vm": found["fixed06"]["path"], "vcpus": 1, "memory_mib": 128}]
    queue = {**base, "vms": items, "guest_fix": "none"}  # as they are: SATA and e1000
    reply = api.ok("POST", "/imports", json=queue)
    tasks = {vm["name"]: vm["task"] for vm in reply["vms"]}
    assert list(tasks) == ["broken05", "db02", "app03", "evil07", "hv04", "fixed06"]
    # The last is cancelled while it waits its turn.
    api.ok("POST", f"/tasks/{tasks['fixed06']}/cancel")
    ended = {name: api.task_end(task, 300) for name, task in tasks.items()}
    assert {n: t["state"] for n, t in ended.items()} == {
        "broken05": "failed", "db02": "succeeded", "app03": "succeeded",
        "evil07": "failed", "hv04": "succeeded", "fixed06": "cancelled",
    }  # fmt: skip
    # A data file cut short would be read on as zeroes: refused with what it holds.
    assert "broken05-disk0:" in ended["broken05"]["error"]
    assert "holds 0 bytes" in ended["broken05"]["error"]
    assert "outside it: /etc/hostname" in ended["evil07"]["error"]
    names = {v["name"] for v in api.ok("GET", "/vms")}
    assert {"web01", "db02", "app03", "hv04"} <= names
    assert not {"broken05", "evil07", "fixed06"} & names
    made = {"broken05-disk0", "evil07-disk0", "fixed06-disk0"}
    assert not made & volumes(api)  # nothing half-imported

    # The imported VM boots, with its MAC.
    assert vm["spec"]["nics"][0]["mac"] == MAC
    api.wait_task(api.ok("POST", "/vms/web01/actions/start")["task"])
    log = Path(cluster.nodes[0].state_dir) / "vms" / vm["id"] / "console.log"
    wait_for(lambda: serial_lines(log, f"HERON-GUEST-READY uuid={vm['id']}"), BOOT, "web01")
    api.ok("POST", "/vms/web01/actions/stop")


def test_the_cli(cluster1: tuple[DevCluster, str], api: Api, datastore: Path, tmp_path: Path):
    cluster, token = cluster1
    env = {
        "HERON_URL": cluster.nodes[0].url,
        "HERON_TOKEN": token,
        "HERON_CONFIG": str(tmp_path / "cli.json"),
        "HERON_CA_FILE": str(cluster.ca_file),
    }
    node = cluster.nodes[0].name
    cli(env, "import", "source", "add", "ds2", "--dir", str(datastore / "app03"), "--node", node)
    listed = cli(env, "import", "scan", "ds2").stdout
    assert "App03" in listed and "yes" in listed
    refused = cli(env, "import", "start", "ds2", "App03", "--pool", "local", check=False)
    assert refused.returncode != 0 and "VM Network" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    warm = cli(env, "import", "start", "ds2", "App03", "--pool", "local", "--network",
               "VM Network=user", "--warm", check=False)  # fmt: skip
    assert warm.returncode != 0 and "only a vsphere source" in warm.stderr, warm.stderr
    again = ["import", "start", "ds2", "App03", "--pool", "local", "--network",
             "VM Network=user", "--name", "app03-cli", "--no-guest-fix", "--wait"]  # fmt: skip
    # app03, imported before, has its MAC: a second copy must take a new one.
    taken = cli(env, *again, check=False)
    assert taken.returncode != 0 and "00:50:56:a1:b2:c5 is another NIC's" in taken.stderr
    done = cli(env, *again, "--no-keep-macs")
    assert "app03-cli" in done.stdout
    nic = api.ok("GET", "/vms/app03-cli")["spec"]["nics"][0]
    assert nic["network"] == "user" and nic["mac"] != "00:50:56:a1:b2:c5"
    listed = cli(env, "import", "list").stdout
    assert "succeeded" in listed and "app03.vmx" in listed


def chain_of(folder: Path, guest: Path, fmt: str, name: str) -> bytes:
    """A differencing chain as Hyper-V leaves one: `base` (the guest) and `name` over it,
    where qemu-io wrote two patterns: qemu-img allocates whole blocks (1 MiB for the VHDX, as
    made here; 2 MiB for a VHD), the rest of each zeroed. Returns the disk's bytes as the
    chain reads: the base's, and the child's in each block a write touched."""
    base, child = folder / ("base.vhdx" if fmt == "vhdx" else "base.vhd"), folder / name
    qemu_img("convert", "-f", "raw", "-O", fmt, str(guest), str(base))
    size = json.loads(qemu_info(base, fmt))["virtual-size"]
    options = ["-o", "block_size=1M,block_state_zero=off"] if fmt == "vhdx" else []
    qemu_img("create", "-f", fmt, *options, str(child), str(size))
    block = (1 if fmt == "vhdx" else 2) << 20
    expected = bytearray(raw_of(base, fmt, folder / "base.raw"))
    touched = set()
    for pattern, offset, length in ((0x5A, 3 << 20, 64 << 10), (0xC3, 17 << 20, 1 << 20)):
        subprocess.run(
            ["qemu-io", "-f", fmt, "-c", f"write -P {pattern} {offset} {length}", str(child)],
            check=True, capture_output=True,
        )  # fmt: skip
        touched |= set(range(offset // block, (offset + length - 1) // block + 1))
    child_bytes = raw_of(child, fmt, folder / "child.raw")
    for index in touched:
        expected[index * block : (index + 1) * block] = child_bytes[
            index * block : (index + 1) * block
        ]
    if fmt == "vhdx":
        make_differencing_vhdx(child, base.name)
    else:
        make_differencing_vhd(child, base.name)
    return bytes(expected[:size])


def qemu_info(image: Path, fmt: str) -> str:
    return subprocess.run(
        ["qemu-img", "info", "--output=json", "-f", fmt, str(image)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


def raw_of(image: Path, fmt: str, raw: Path) -> bytes:
    qemu_img("convert", "-f", fmt, "-O", "raw", str(image), str(raw))
    data = raw.read_bytes()
    raw.unlink()
    return data


def test_differencing_chains_are_merged(
    cluster1: tuple[DevCluster, str], api: Api, testguest: Path, tmp_path: Path
) -> None:
    """A differencing VHDX and a differencing VHD (qemu-img follows neither parent) are
    imported with their parents' data under theirs: the volumes read as the chains do."""
    cluster, _ = cluster1
    expected = {}
    for fmt, name, suffix in (("vhdx", "hvx", "avhdx"), ("vpc", "hvd", "vhd")):
        folder = tmp_path / name
        folder.mkdir()
        expected[name] = chain_of(folder, testguest, fmt, f"{name}.{suffix}")
    node = cluster.nodes[0].name
    api.ok("POST", "/imports/sources", json={
        "name": "chains", "type": "directory", "path": str(tmp_path), "node": node})  # fmt: skip
    api.wait_task(api.ok("POST", "/imports/sources/chains/scan")["task"])
    found = by_name(api.ok("GET", "/imports/sources/chains/scan"))
    assert {"hvx", "hvd"} <= set(found), found
    for name in ("hvx", "hvd"):
        assert not found[name]["blockers"], found[name]
        assert len(found[name]["disks"][0]["chain"]) == 1
    reply = api.ok("POST", "/imports", json={
        "source": "chains", "pool": "local", "guest_fix": "none",
        "vms": [{"vm": found[n]["path"], "vcpus": 1, "memory_mib": 128} for n in ("hvx", "hvd")],
    })  # fmt: skip
    for vm in reply["vms"]:
        task = api.wait_task(vm["task"], 180)
        assert any("merging" in line for line in task["log"]), task["log"]
    state = Path(cluster.nodes[0].state_dir)
    for name, data in expected.items():
        volume = next(
            v for v in api.ok("GET", "/pools/local/volumes") if v["name"] == f"{name}-disk0"
        )
        image = next(state.rglob(f"{name}-disk0.{volume['format']}"))
        imported = raw_of(image, volume["format"], tmp_path / "out.raw")
        # A VHD's volume has its footer's size; qemu-img reads it to its geometry's, smaller
        assert imported[: len(data)] == data, name
        assert not imported[len(data) :].strip(b"\0"), name
