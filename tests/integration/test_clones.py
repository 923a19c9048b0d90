"""Templates and clones through the API, on a real node with real test guests and qcow2 disks
on a node-local dir pool: a template does not start; linked clones are qcow2 overlays over its
disks (a few hundred KiB, whatever the disk's size) and full clones are copies; a linked clone
boots; the template and what linked clones read cannot be deleted or changed while they do;
a snapshot is cloned as it was; /vms/batch clones a template with fresh MACs; bad requests
are refused and change nothing."""

import json
import subprocess
from pathlib import Path

import pytest
from support import Api, cli, serial_lines, wait_for

from heron.devcluster import DevCluster
from heron.hypervisor import cloudinit

pytestmark = pytest.mark.integration
CLUSTER_NODES = 1  # cluster1 for the `api` and `image` fixtures (tests/conftest.py)

BOOT = 180
MiB = 1024**2


def pool_dir(cluster: DevCluster) -> Path:
    return Path(cluster.nodes[0].state_dir) / "pools" / "local"


def qemu_io(image: Path, command: str) -> str:
    said = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(image)],
        capture_output=True,
        text=True,
        check=False,
    )
    return said.stdout + said.stderr


def write(image: Path, pattern: int) -> None:
    assert "wrote 1048576/1048576" in qemu_io(image, f"write -P {pattern} 0 1M")


def holds(image: Path, pattern: int) -> bool:
    said = qemu_io(image, f"read -P {pattern} 0 1M")
    assert "read 1048576/1048576" in said or "Pattern verification failed" in said, said
    return "Pattern verification failed" not in said


def info(image: Path) -> dict:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", str(image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def stopped_vm(api: Api, name: str, image: str, data_mib: int = 16) -> str:
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": name,
            "memory_mib": 128,
            "disks": [
                {"pool": "local", "source": image},
                {"pool": "local", "size": data_mib * MiB},
            ],
            "nics": [{"network": "user"}],
        },
    )
    api.wait_task(reply["task"])
    return str(reply["vm"])


def clone(api: Api, source: str, **body: object) -> dict:
    reply = api.ok("POST", f"/vms/{source}/clone", json=body)
    api.wait_task(reply["task"], timeout=300)
    return api.vm(reply["vm"])


def volume(api: Api, vm: dict, index: int) -> dict:
    volumes = api.ok("GET", "/pools/local/volumes")
    wanted = vm["spec"]["disks"][index]["volume"]
    return next(v for v in volumes if v["id"] == wanted)


def refused(api: Api, method: str, path: str, code: int, *words: str, **kwargs: object) -> dict:
    reply = api.request(method, path, **kwargs)
    assert reply.status_code == code, reply.text
    for word in words:
        assert word in reply.text, reply.text
    return reply.json()


def test_template_linked_and_full_clones(cluster1: tuple[DevCluster, str], api: Api, image: str):
    cluster, _ = cluster1
    pool = pool_dir(cluster)
    tpl = stopped_vm(api, "tpl", image, data_mib=1024)
    write(pool / "tpl-disk1.qcow2", 0x5A)

    # Not a template yet: no linked clone of disks that may change.
    refused(api, "POST", "/vms/tpl/clone", 422, "body.linked", json={"name": "x", "linked": True})
    view = api.ok("PUT", "/vms/tpl/template", json={"template": True})
    assert view["template"] is True
    before = api.ok("GET", "/vms/tpl")
    refused(api, "POST", "/vms/tpl/actions/start", 409, "template")
    assert api.ok("GET", "/vms/tpl")["power"] == "stopped"
    assert api.ok("GET", "/vms/tpl")["revision"] == before["revision"]

    linked = clone(api, "tpl", name="lc1", linked=True)
    full = clone(api, "tpl", name="fc1")
    # Fresh MACs: a clone is a machine of its own on the network.
    macs = {vm["spec"]["nics"][0]["mac"] for vm in (before, linked, full)}
    assert len(macs) == 3
    for index in (0, 1):
        made = volume(api, linked, index)
        assert made["origin"]["linked"] is True
        assert made["origin"]["volume"] == before["spec"]["disks"][index]["volume"]
        overlay = info(pool / f"lc1-disk{index}.qcow2")
        # Relative: the pool's directory may be mounted elsewhere on another node.
        assert overlay["backing-filename"] == f"tpl-disk{index}.qcow2"
        assert volume(api, full, index)["origin"]["linked"] is False
        assert "backing-filename" not in info(pool / f"fc1-disk{index}.qcow2")
    # Copy-on-write: the 1 GiB disk's linked clone holds only metadata.
    assert (pool / "lc1-disk1.qcow2").stat().st_blocks * 512 < 4 * MiB
    assert holds(pool / "lc1-disk1.qcow2", 0x5A)
    assert holds(pool / "fc1-disk1.qcow2", 0x5A)

    # What the clone writes stays its own.
    write(pool / "lc1-disk1.qcow2", 0x33)
    assert holds(pool / "tpl-disk1.qcow2", 0x5A)

    # A linked clone boots from the template's disk.
    api.wait_task(api.ok("POST", "/vms/lc1/actions/start")["task"])
    log = Path(cluster.nodes[0].state_dir) / "vms" / linked["id"] / "console.log"
    wait_for(
        lambda: serial_lines(log, f"HERON-GUEST-READY uuid={linked['id']}"), BOOT, "lc1 to boot"
    )

    # The template stays while linked clones read it; the full clone does not hold it.
    refused(api, "DELETE", "/vms/tpl", 409, "lc1-disk0", params={"volumes": "true"})
    refused(api, "PUT", "/vms/tpl/template", 409, "linked clones", json={"template": False})
    refused(api, "DELETE", "/vms/tpl/disks/1", 409, "lc1-disk1")
    assert api.ok("GET", "/vms/tpl")["revision"] == before["revision"]
    assert (pool / "tpl-disk1.qcow2").exists()

    api.wait_task(api.ok("DELETE", "/vms/lc1", params={"volumes": "true"})["task"])
    assert not (pool / "lc1-disk1.qcow2").exists()
    # Nothing reads the template's disks now: it may become a VM again, or go.
    assert api.ok("PUT", "/vms/tpl/template", json={"template": False})["template"] is False
    api.wait_task(api.ok("DELETE", "/vms/tpl", params={"volumes": "true"})["task"])
    assert not (pool / "tpl-disk1.qcow2").exists()
    assert holds(pool / "fc1-disk1.qcow2", 0x5A)
    assert tpl not in {vm["id"] for vm in api.ok("GET", "/vms")}


def test_clone_of_a_snapshot(cluster1: tuple[DevCluster, str], api: Api, image: str):
    cluster, _ = cluster1
    pool = pool_dir(cluster)
    stopped_vm(api, "snapsrc", image)
    write(pool / "snapsrc-disk1.qcow2", 0x11)
    reply = api.ok("POST", "/vms/snapsrc/snapshots", json={"name": "p1"})
    api.wait_task(reply["task"], timeout=300)
    write(pool / "snapsrc-disk1.qcow2", 0x22)

    # A snapshot inside a qcow2 image cannot back an overlay: refused, or copied if allowed.
    refused(
        api, "POST", "/vms/snapsrc/clone", 422, "body.linked", "qcow2",
        json={"name": "x", "snapshot": "p1", "linked": True},
    )  # fmt: skip
    refused(
        api,
        "POST",
        "/vms/snapsrc/clone",
        422,
        "body.snapshot",
        json={"name": "x", "snapshot": "nope"},
    )
    copy = clone(api, "snapsrc", name="from-p1", snapshot="p1", linked=True, full_if_unlinked=True)
    made = volume(api, copy, 1)
    assert made["origin"] == {
        "volume": made["origin"]["volume"],
        "snapshot": reply["snapshot"],
        "linked": False,
    }
    assert holds(pool / "from-p1-disk1.qcow2", 0x11)
    assert holds(pool / "snapsrc-disk1.qcow2", 0x22)
    # Its copy has none of the source's snapshots.
    assert not info(pool / "from-p1-disk1.qcow2").get("snapshots")

    # A running VM's disks change while they would be copied: only its snapshots are cloned.
    api.wait_task(api.ok("POST", "/vms/snapsrc/actions/start")["task"])
    refused(api, "POST", "/vms/snapsrc/clone", 409, "running", json={"name": "x"})
    running = clone(api, "snapsrc", name="from-p1-live", snapshot="p1")
    assert holds(pool / "from-p1-live-disk1.qcow2", 0x11)
    assert running["power"] == "stopped"
    # A full clone does not hold the snapshot: it may go.
    api.wait_task(api.ok("DELETE", "/vms/snapsrc/snapshots/p1")["task"], timeout=300)
    names = {vm["name"] for vm in api.ok("GET", "/vms")}
    assert "x" not in names


def test_batch_from_a_template(api: Api, image: str):
    stopped_vm(api, "btpl", image)
    refused(
        api, "POST", "/vms/batch", 422, "body.template", "not a template",
        json={"name": "desk", "count": 2, "template": "btpl"},
    )  # fmt: skip
    api.ok("PUT", "/vms/btpl/template", json={"template": True})
    refused(
        api, "POST", "/vms/batch", 422, "body.disks",
        json={"name": "desk", "count": 2, "template": "btpl", "disks": [{"volume": image}]},
    )  # fmt: skip
    reply = api.ok("POST", "/vms/batch", json={"name": "desk", "count": 3, "template": "btpl"})
    assert [v["name"] for v in reply["vms"]] == ["desk-001", "desk-002", "desk-003"]
    for item in reply["vms"]:
        task = api.wait_task(item["task"], timeout=300)
        assert task["kind"] == "vm.clone"
    vms = [api.vm(v["vm"]) for v in reply["vms"]]
    assert len({vm["spec"]["nics"][0]["mac"] for vm in vms}) == 3
    for vm in vms:
        assert volume(api, vm, 0)["origin"]["linked"] is True


def test_the_cli(cluster1: tuple[DevCluster, str], api: Api, tmp_path: Path) -> None:
    cluster, token = cluster1
    env = {
        "HERON_URL": cluster.nodes[0].url,
        "HERON_TOKEN": token,
        "HERON_CONFIG": str(tmp_path / "cli.json"),
        "HERON_CA_FILE": str(cluster.ca_file),
    }
    cli(env, "vm", "create", "cli-tpl", "--memory", "64M", "--disk", "local:1M")
    cli(env, "vm", "template", "cli-tpl")
    assert "template" in cli(env, "vm", "show", "cli-tpl").stdout
    refused = cli(env, "vm", "start", "cli-tpl", check=False)
    assert refused.returncode != 0 and "template" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    cli(env, "vm", "clone", "cli-tpl", "cli-linked", "--linked")
    cli(env, "vm", "create", "cli-desk", "--count", "2", "--template", "cli-tpl", "--full")
    for name in ("cli-linked", "cli-desk-001", "cli-desk-002"):
        disk = api.vm(name)["spec"]["disks"][0]["volume"]
        made = next(v for v in api.ok("GET", "/pools/local/volumes") if v["id"] == disk)
        assert made["origin"]["linked"] is (name == "cli-linked"), made
    gone = cli(env, "vm", "delete", "cli-tpl", check=False)
    assert gone.returncode != 0 and "cli-linked-disk0" in gone.stderr, gone.stderr
    cli(env, "vm", "delete", "cli-linked", "--volumes")
    cli(env, "vm", "template", "cli-tpl", "--off")
    assert api.vm("cli-tpl")["template"] is False

    key_file = tmp_path / "id.pub"
    key_file.write_text(KEY + "\n")
    cli(env, "vm", "create", "cli-ci", "--user", "alice", "--ssh-key", f"@{key_file}", "--sudo")
    seed = api.vm("cli-ci")["spec"]["cloud_init"]
    assert seed["users"] == [
        {"name": "alice", "ssh_keys": [KEY], "password_hash": None, "sudo": True}
    ]
    lonely = cli(env, "vm", "create", "cli-ci2", "--ssh-key", KEY, check=False)
    assert lonely.returncode == 2 and "--user" in lonely.stderr, lonely.stderr
    bad = cli(env, "vm", "create", "cli-ci2", "--user", "alice", "--ssh-key", "nope", check=False)
    assert bad.returncode == 1 and "ssh_keys" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1

    # An update changes the seed field by field; --no-cloud-init takes it away.
    data = tmp_path / "user-data"
    data.write_text("#cloud-config\nlocale: false\n")
    cli(env, "vm", "update", "cli-ci", "--hostname", "ci-host", "--user-data", str(data))
    seed = api.vm("cli-ci")["spec"]["cloud_init"]
    assert (seed["hostname"], seed["user_data"]) == ("ci-host", "#cloud-config\nlocale: false\n")
    assert [u["name"] for u in seed["users"]] == ["alice"]  # kept
    # (Options that contradict each other, and heron vm clone's, which make the seed the same
    # way: tests/unit/test_cli_cloudinit.py.)
    cli(env, "vm", "update", "cli-ci", "--no-cloud-init")
    assert api.vm("cli-ci")["spec"]["cloud_init"] is None


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHeronTestKeyOnly alice@test"


def test_batch_with_cloud_init_gives_each_vm_its_identity(
    cluster1: tuple[DevCluster, str], api: Api, image: str
):
    cluster, _ = cluster1
    stopped_vm(api, "ci-tpl", image)
    api.ok("PUT", "/vms/ci-tpl/template", json={"template": True})
    seed = {"users": [{"name": "alice", "ssh_keys": [KEY], "sudo": True}]}
    bad = {**seed, "users": [{"name": "alice", "ssh_keys": ["not a key"]}]}
    refused(
        api, "POST", "/vms/batch", 422, "body.cloud_init.users.0.ssh_keys.0",
        json={"name": "ci", "count": 2, "template": "ci-tpl", "cloud_init": bad},
    )  # fmt: skip
    body = {"name": "ci", "count": 2, "template": "ci-tpl", "cloud_init": seed, "start": True}
    reply = api.ok("POST", "/vms/batch", json=body)
    seen = set()
    for item in reply["vms"]:
        api.wait_task(item["task"], timeout=300)
        vm = api.vm(item["vm"])
        assert vm["spec"]["cloud_init"]["users"][0]["name"] == "alice"
        root = Path(cluster.nodes[0].state_dir) / "vms" / vm["id"]
        files = cloudinit.read_iso(root / "cidata.iso")
        meta = json.loads(files["meta-data"])
        assert meta == {"instance-id": vm["id"], "local-hostname": vm["name"]}
        assert KEY in files["user-data"].decode()
        seen.add(files["meta-data"])
        # Its QEMU has the seed, read-only, as its last disk.
        pid = vm["status"]["pid"]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"virtio-blk-pci,drive=cidata,id=cidata-dev" in cmdline
        assert json.loads(cmdline[cmdline.index(b"-blockdev", len(cmdline) - 6) + 1])["read-only"]
    assert len(seen) == 2
