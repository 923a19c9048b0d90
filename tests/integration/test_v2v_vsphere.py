"""V2V from an ESXi host over its vSphere API, against a stand-in: govmomi's simulator
(`vcsim`, built by install-deps from Debian's govmomi; no VMware runs here). The stand-in
answers the SOAP API and serves a datastore backed by a folder of the test, where qemu-img
made the VMs' disks from the bootable test guest (a monolithicFlat VMDK: a descriptor and
its -flat extent, as ESXi keeps them). A source is added with its certificate pinned, its
inventory scanned, a VM imported cold (downloaded over the datastore's HTTPS file access,
converted, compared), a running VM refused unless the import may power it off, the
password never shown, and a changed certificate refused."""

import datetime as dt
import hashlib
import json
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from datastores import vmware_vm
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim
from support import Api, cli, wait_for

from heron.devcluster import DevCluster

pytestmark = pytest.mark.integration
CLUSTER_NODES = 1

CACHE = Path(os.environ.get("HERON_CACHE_DIR", "/var/cache/heron"))
VCSIM = CACHE / "vcsim" / "heron-vcsim"
PASSWORD = "stand-in-secret"
MAC = "00:50:56:a1:b2:d1"


def certificate(folder: Path, name: str) -> tuple[Path, Path, str]:
    """A self-signed certificate as an ESXi host has one: its files and SHA-256 fingerprint."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "esx1.stand-in")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / f"{name}.crt", folder / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pin = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return cert_file, key_file, pin


@dataclass
class StandIn:
    process: subprocess.Popen[bytes]
    port: int
    pin: str
    folder: Path

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def start_vcsim(folder: Path, name: str, port: int = 0) -> StandIn:
    cert, key, pin = certificate(folder, name)
    out = folder / f"{name}.out"
    with out.open("wb") as stdout, (folder / f"{name}.err").open("wb") as stderr:
        process = subprocess.Popen(
            [str(VCSIM), "-listen", f"127.0.0.1:{port}", "-cert", str(cert), "-key", str(key),
             "-password", PASSWORD],
            stdout=stdout, stderr=stderr,
        )  # fmt: skip
    line = wait_for(lambda: out.read_text().strip(), 30, "the vcsim stand-in's URL")
    url = json.loads(line.splitlines()[0])["url"]
    return StandIn(process, int(url.rsplit(":", 1)[1].split("/")[0]), pin, folder)


def connect(stand_in: StandIn) -> Any:
    """The test's own session with the stand-in, to lay out its inventory."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return SmartConnect(
        host="127.0.0.1", port=stand_in.port, user="root", pwd=PASSWORD, sslContext=context
    )


def wait(task: Any) -> Any:
    return wait_for(
        lambda: task.info.state in ("success", "error") and task.info, 60, "a stand-in task"
    ).result


def make_vm(
    content: Any, name: str, mac: str, capacity: int, power_on: bool, writes: bool = False
) -> Any:
    """Register a VM whose disk is the VMDK the test put in the datastore's folder;
    `writes`: the stand-in writes to its disk while it runs, as a guest would (cbt.go)."""
    dc = content.rootFolder.childEntity[0]
    host = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True).view[
        0
    ]
    network = host.network[0]
    controller = vim.vm.device.VirtualLsiLogicController(
        key=1000, busNumber=0, sharedBus="noSharing"
    )
    disk = vim.vm.device.VirtualDisk(
        key=2000, controllerKey=1000, unitNumber=0, capacityInKB=capacity // 1024,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            fileName=f"[heron-ds] {name}/{name}.vmdk", diskMode="persistent"),
    )  # fmt: skip
    nic = vim.vm.device.VirtualVmxnet3(
        key=4000, addressType="manual", macAddress=mac,
        backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
            deviceName=network.name, network=network),
    )  # fmt: skip
    spec = vim.vm.ConfigSpec(
        name=name, numCPUs=1, memoryMB=128, guestId="debian12_64Guest",
        files=vim.vm.FileInfo(vmPathName="[heron-ds]"),
        extraConfig=[vim.option.OptionValue(key="heron.sim.guest-writes", value="TRUE")]
        if writes else [],
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", device=d)
                      for d in (controller, disk, nic)],
    )  # fmt: skip
    vm = wait(dc.vmFolder.CreateVM_Task(config=spec, pool=host.parent.resourcePool, host=host))
    if power_on:
        wait(vm.PowerOnVM_Task())
    return vm


@pytest.fixture(scope="module")
def esx(tmp_path_factory: pytest.TempPathFactory, testguest: Path) -> Iterator[StandIn]:
    if not VCSIM.is_file():
        pytest.fail(f"{VCSIM} is missing: run scripts/install-deps")
    folder = tmp_path_factory.mktemp("vcsim")
    ds = folder / "datastore"
    ds.mkdir()
    vmware_vm(ds, "web01", testguest, "monolithicFlat", MAC)
    vmware_vm(ds, "db02", testguest, "monolithicFlat", "00:50:56:a1:b2:d2")
    vmware_vm(ds, "app03", testguest, "monolithicFlat", "00:50:56:a1:b2:d3")
    stand_in = start_vcsim(folder, "esx1")
    try:
        si = connect(stand_in)
        content = si.RetrieveContent()
        host = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.HostSystem], True
        ).view[0]
        host.configManager.datastoreSystem.CreateLocalDatastore(name="heron-ds", path=str(ds))
        size = testguest.stat().st_size
        make_vm(content, "web01", MAC, size, power_on=False)
        make_vm(content, "db02", "00:50:56:a1:b2:d2", size, power_on=True)
        make_vm(content, "app03", "00:50:56:a1:b2:d3", size, power_on=True, writes=True)
        Disconnect(si)
        yield stand_in
    finally:
        stand_in.stop()


def power_state(stand_in: StandIn, name: str) -> str:
    si = connect(stand_in)
    try:
        vm = si.RetrieveContent().searchIndex.FindByInventoryPath(f"ha-datacenter/vm/{name}")
        return str(vm.runtime.powerState)
    finally:
        Disconnect(si)


def assert_volume_holds(api: Api, cluster: DevCluster, name: str, raw: Path) -> None:
    """The local pool's volume `name` is ready and reads as the raw image `raw`."""
    volume = next(v for v in api.ok("GET", "/pools/local/volumes") if v["name"] == name)
    assert volume["state"] == "ready"
    image = next(Path(cluster.nodes[0].state_dir).rglob(f"{name}.{volume['format']}"))
    compared = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", volume["format"], str(raw), str(image)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert compared.returncode == 0, compared.stdout + compared.stderr


def test_add_scan_and_import_cold(
    cluster1: tuple[DevCluster, str], api: Api, esx: StandIn, testguest: Path
) -> None:
    cluster, _ = cluster1
    base = {"name": "esx1", "type": "vsphere", "host": "127.0.0.1", "port": esx.port,
            "user": "root", "password": PASSWORD}  # fmt: skip
    # A fingerprint given must be the one the server shows.
    reply = api.request("POST", "/imports/sources", json={**base, "fingerprint": "ab" * 32})
    assert reply.status_code == 422, reply.text
    assert reply.json()["fields"][0]["field"] == "body.fingerprint"
    assert esx.pin in reply.text
    # None given: the one shown now is pinned and returned; the password is never shown.
    made = api.ok("POST", "/imports/sources", json=base)
    assert made["fingerprint"] == esx.pin and made["password"] == "set"
    listed = api.ok("GET", "/imports/sources")
    assert PASSWORD not in json.dumps(listed)

    api.wait_task(api.ok("POST", "/imports/sources/esx1/scan")["task"])
    scan = api.ok("GET", "/imports/sources/esx1/scan")
    found = {vm["name"]: vm for vm in scan["report"]["vms"]}
    assert set(found) == {"web01", "db02", "app03"}, scan
    web = found["web01"]
    assert web["path"] == "/ha-datacenter/vm/web01"
    assert (web["vcpus"], web["memory_mib"], web["guest_os"]["family"]) == (1, 128, "linux")
    disk = web["disks"][0]
    assert disk["file"] == "[heron-ds] web01/web01.vmdk" and disk["format"] == "vmdk"
    assert disk["capacity"] == testguest.stat().st_size
    nic = web["nics"][0]
    assert (nic["mac"], nic["network"], nic["model"]) == (MAC, "VM Network", "vmxnet3")
    assert not web["blockers"]
    assert "powered-on" in {w["code"] for w in found["db02"]["warnings"]}

    # A running VM is refused, unless the import may power it off.
    body = {"source": "esx1", "pool": "local", "networks": {"VM Network": "user"},
            "guest_fix": "none"}  # fmt: skip
    reply = api.request("POST", "/imports", json={**body, "vms": [{"vm": found["db02"]["path"]}]})
    assert reply.status_code == 422, reply.text
    assert reply.json()["fields"][0]["field"] == "body.vms.0.vm"
    assert "power_off" in reply.text

    reply = api.ok("POST", "/imports", json={
        **body, "power_off": True,
        "vms": [{"vm": web["path"]}, {"vm": found["db02"]["path"]}]})  # fmt: skip
    ended = {vm["name"]: api.wait_task(vm["task"], 150) for vm in reply["vms"]}
    for task in ended.values():
        assert any(line.startswith("downloaded ") for line in task["log"]), task["log"]
        assert any("verified" in line for line in task["log"]), task["log"]
    assert any("powered off at the source" in line for line in ended["db02"]["log"])
    assert not any("powered off" in line for line in ended["web01"]["log"])
    assert power_state(esx, "db02") == "poweredOff"
    staging = Path(cluster.nodes[0].state_dir) / "import-staging"
    assert not staging.exists() or not any(staging.iterdir())  # cleaned up
    vm = api.ok("GET", "/vms/web01")
    assert vm["spec"]["nics"][0]["mac"] == MAC
    # The volume holds the guest's bytes, as the task's own comparison said.
    assert_volume_holds(api, cluster, "web01-disk0", testguest)


def test_a_running_vm_imported_warm(
    cluster1: tuple[DevCluster, str], api: Api, esx: StandIn, testguest: Path
) -> None:
    """app03 runs and writes to its disk all along (the stand-in's guest): its disk is
    copied in full and then in rounds of changed blocks while it runs, then it is powered
    off and its last changes copied; the volume equals its disk as the power-off left it."""
    cluster, _ = cluster1
    scan = api.ok("GET", "/imports/sources/esx1/scan")  # scanned by the first test
    app = next(vm for vm in scan["report"]["vms"] if vm["name"] == "app03")
    body = {"source": "esx1", "pool": "local", "networks": {"VM Network": "user"},
            "guest_fix": "none", "vms": [{"vm": app["path"]}]}  # fmt: skip
    reply = api.request("POST", "/imports", json={**body, "warm": {"max_rounds": 0}})
    assert reply.status_code == 422, reply.text
    assert reply.json()["fields"][0]["field"] == "body.warm.max_rounds"

    warm = {"interval_seconds": 1, "small_enough_mib": 0, "max_rounds": 3}
    reply = api.ok("POST", "/imports", json={**body, "warm": warm})
    task = api.wait_task(reply["vms"][0]["task"], 150)
    log = "\n".join(task["log"])
    assert "changed-block tracking turned on" in log, log
    assert "while the VM runs" in log and "app03 powered off at the source" in log, log
    copied = task["result"]["warm"]
    assert len(copied["rounds"]) == 3, copied  # small_enough 0: every round, then the cutover
    # each delta: whole 64 KiB blocks the guest wrote meanwhile
    assert all(r > 0 and r % (64 << 10) == 0 for r in copied["rounds"][1:]), copied
    assert copied["cutover_bytes"] > 0, copied  # written between the last round and the stop
    assert power_state(esx, "app03") == "poweredOff"
    si = connect(esx)
    try:
        vm = si.RetrieveContent().searchIndex.FindByInventoryPath("ha-datacenter/vm/app03")
        assert vm.config.changeTrackingEnabled
        assert not vm.layoutEx.snapshot  # the warm snapshot removed
    finally:
        Disconnect(si)

    flat = esx.folder / "datastore" / "app03" / "app03-flat.vmdk"
    assert flat.read_bytes() != testguest.read_bytes()  # the guest wrote while it was copied
    assert_volume_holds(api, cluster, "app03-disk0", flat)


def test_the_cli_and_a_changed_certificate(
    cluster1: tuple[DevCluster, str], api: Api, esx: StandIn, tmp_path: Path
) -> None:
    cluster, token = cluster1
    env = {
        "HERON_URL": cluster.nodes[0].url,
        "HERON_TOKEN": token,
        "HERON_CONFIG": str(tmp_path / "cli.json"),
        "HERON_CA_FILE": str(cluster.ca_file),
        "HERON_SOURCE_PASSWORD": PASSWORD,
    }
    colons = ":".join(esx.pin[i : i + 2] for i in range(0, 64, 2)).upper()
    added = cli(env, "import", "source", "add", "esx2", "--type", "vsphere", "--host",
                "127.0.0.1", "--port", str(esx.port), "--user", "root",
                "--fingerprint", colons)  # fmt: skip
    assert f"root@127.0.0.1:{esx.port}" in added.stdout and PASSWORD not in added.stdout
    # The host's certificate is replaced (the same address, another key): refused.
    esx.stop()
    with socket.socket() as probe:  # the port is free again before the new one takes it
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", esx.port))
    other = start_vcsim(esx.folder, "esx1-new", esx.port)
    try:
        task = api.task_end(api.ok("POST", "/imports/sources/esx2/scan")["task"], 60)
        assert task["state"] == "failed", task
        assert "not the pinned" in task["error"] and other.pin in task["error"]
    finally:
        other.stop()
