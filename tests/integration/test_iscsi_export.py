"""An ARDFS volume exported as an iSCSI LUN through the API: the node agent's real tgtd, its
backing store a FUSE file of qemu-storage-daemon over heron-io's NBD export, and QEMU's own
initiator (libiscsi, in qemu-io) logging in with CHAP. No guest: beside the guests' lane."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from support import Api, cli, rf2_pool_on_two_disks, wait_for

from heron.devcluster import DevCluster

pytestmark = pytest.mark.integration
CLUSTER_NODES = 1

MiB = 1024**2
ESX = "iqn.1998-01.com.vmware:esx-test-1"
OTHER = "iqn.1998-01.com.vmware:esx-not-allowed"


def iscsi_io(portal: str, target: str, user: str, secret: str, initiator: str, *cmds: str) -> str:
    """qemu-io through libiscsi: LUN 1 of `target`, CHAP `user`/`secret`, as `initiator`."""
    args = ["qemu-io", "--object", f"secret,id=chap,data={secret}", "--image-opts"]
    args.append(
        f"driver=iscsi,transport=tcp,portal={portal},target={target},lun=1,user={user},"
        f"password-secret=chap,initiator-name={initiator}"
    )
    for cmd in cmds:
        args += ["-c", cmd]
    said = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    return said.stdout + said.stderr


def nbd_io(cluster: DevCluster, volume_id: str, *cmds: str) -> str:
    sock = Path(cluster.nodes[0].state_dir) / "ardfs" / "hci" / "nbd.sock"
    args = ["qemu-io", "-f", "raw"]
    for cmd in cmds:
        args += ["-c", cmd]
    args.append(f"nbd+unix:///{volume_id}?socket={sock}")
    said = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    return said.stdout + said.stderr


@pytest.fixture(scope="module")
def volume(cluster1: tuple[DevCluster, str], api: Api) -> dict:
    """A 64 MiB volume of the rf2 ARDFS pool "hci" over two disks of the node."""
    node = cluster1[0].nodes[0]
    rf2_pool_on_two_disks(node.name, node.state_dir, api)
    task = api.wait_task(
        api.ok("POST", "/pools/hci/volumes", json={"name": "lun", "size": 64 * MiB})["task"]
    )
    assert task["state"] == "succeeded", task
    return dict(api.ok("GET", "/pools/hci/volumes/lun"))


def test_export_write_read_back_refusals_and_unexport(
    cluster1: tuple[DevCluster, str], api: Api, volume: dict, tmp_path: Path
) -> None:
    cluster, token = cluster1
    env = {
        "HERON_URL": cluster.nodes[0].url,
        "HERON_TOKEN": token,
        "HERON_CA_FILE": str(cluster.ca_file),
        "HERON_CONFIG": str(tmp_path / "cli.json"),
    }
    # Bad input: 422 with the field.
    bad = api.post("/pools/hci/volumes/lun/iscsi", json={"initiators": ["esx"]})
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"].startswith(
        "body.initiators"
    ), bad.text
    bad = api.post(
        "/pools/hci/volumes/lun/iscsi", json={"initiators": [ESX], "chap_secret": "short"}
    )
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "body.chap_secret"

    made = json.loads(
        cli(env, "volume", "export", "hci", "lun", "--initiator", ESX, "--json").stdout
    )
    secret, iqn, user = made["chap_secret"], made["iqn"], made["chap_user"]
    assert len(secret) == 16 and iqn.startswith("iqn.2026-12.org.heron:hci.lun.")
    assert api.post("/pools/hci/volumes/lun/iscsi", json={"initiators": [ESX]}).status_code == 409
    assert api.delete("/pools/hci/volumes/lun").status_code == 409  # exported: kept

    def serving() -> dict | None:
        [found] = api.ok("GET", "/pools/hci/iscsi")
        assert found["state"] != "failed", found
        return found if found["state"] == "serving" else None

    export = wait_for(serving, 90, "the node to serve the target")
    assert "chap_secret" not in export and secret not in str(export)  # never shown again
    portal = export["portal"]

    said = iscsi_io(portal, iqn, user, secret, ESX, "write -P 0x5a 0 4M", "read -P 0x5a 0 4M")
    assert "wrote 4194304/4194304" in said and "read 4194304/4194304" in said, said
    said = iscsi_io(portal, iqn, user, secret, ESX, "write -P 0xc3 8M 1M", "flush")
    assert "wrote 1048576/1048576" in said, said
    # The data is in the volume: read through heron-io's own NBD export.
    said = nbd_io(cluster, volume["id"], "read -P 0x5a 0 4M", "read -P 0xc3 8M 1M")
    assert said.count("read ") == 2 and "verification failed" not in said, said

    refused = iscsi_io(portal, iqn, user, "wrong-secret-1", ESX, "read 0 4k")
    assert "Authentication failure" in refused, refused
    refused = iscsi_io(portal, iqn, user, secret, OTHER, "read 0 4k")
    assert "Failed to log in" in refused and "read 4096" not in refused, refused

    # The agent restarted: tgtd and the storage daemon go on, the target is left as it is.
    node = cluster.nodes[0]
    cluster.stop_node(node.name)
    said = iscsi_io(portal, iqn, user, secret, ESX, "write -P 0x3c 12M 1M", "read -P 0x5a 0 1M")
    assert "wrote 1048576/1048576" in said and "read 1048576/1048576" in said, said
    cluster.start_node(node.name)
    cluster.wait_api(node, 60)

    # heron-io killed: writes through the LUN meanwhile wait for it to be back (the agent
    # restarts it, the storage daemon reconnects) and none that was acknowledged is lost.
    pidfile = Path(node.state_dir) / "ardfs" / "hci" / "heron-io.pid"
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    said = iscsi_io(portal, iqn, user, secret, ESX, *(f"write -P {0x40 + i} {16 + i}M 1M"
                                                      for i in range(8)))  # fmt: skip
    assert said.count("wrote 1048576/1048576") == 8, said
    said = nbd_io(cluster, volume["id"], "read -P 0x3c 12M 1M",
                  *(f"read -P {0x40 + i} {16 + i}M 1M" for i in range(8)))  # fmt: skip
    assert said.count("read 1048576/1048576") == 9 and "failed" not in said, said

    cli(env, "volume", "unexport", "hci", "lun")
    assert json.loads(cli(env, "volume", "exports", "hci", "--json").stdout) == []
    wait_for(
        lambda: "Failed to" in iscsi_io(portal, iqn, user, secret, ESX, "read 0 4k"),
        60,
        "the target to be removed",
    )
    said = nbd_io(cluster, volume["id"], "read -P 0x5a 0 4M")
    assert "read 4194304/4194304" in said and "verification failed" not in said, said
    events = api.ok("GET", "/events", params={"limit": 50})
    changes = [e for e in events if "/iscsi" in str(e.get("path", ""))]
    assert {e["method"] for e in changes} >= {"POST", "DELETE"}, changes
