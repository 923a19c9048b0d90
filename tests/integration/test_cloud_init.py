"""cloud-init in a real guest: the Debian guest cloned twice from a template by /vms/batch with
one cloud_init (a user with an SSH key and sudo, and user-data of its own); each clone comes
up with its own hostname (its name) and instance-id (its id), and the user with its key
inside. One pair of TCG boots of the Debian guest: kept in a file of its own."""

from pathlib import Path

import pytest
from support import Api, serial_lines, wait_for

from heron.devcluster import DevCluster
from heron.testguest import debian
from heron.testguest.net import CommandChannel

pytestmark = pytest.mark.integration

BOOT = 600  # TCG on a shared machine: systemd, then cloud-init's four stages
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHeronCloudInitTestKey alice@heron"


@pytest.fixture(scope="module")
def api(cluster1: tuple[DevCluster, str]) -> Api:
    cluster, token = cluster1
    return Api(cluster.nodes[0].url, token)


def test_each_clone_gets_its_identity_and_the_user(
    cluster1: tuple[DevCluster, str], api: Api, debian_guest: debian.DebianGuest
) -> None:
    cluster, _ = cluster1
    reply = api.ok(
        "POST",
        "/pools/local/volumes/import",
        json={"name": "debian", "path": str(debian_guest.image), "format": "qcow2"},
    )
    api.wait_task(reply["task"], timeout=300)
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": "deb-tpl",
            "memory_mib": 768,
            "guest_agent": False,
            "disks": [{"volume": "local/debian"}],
            "nics": [{"network": "user"}],
        },
    )
    api.wait_task(reply["task"])
    api.ok("PUT", "/vms/deb-tpl/template", json={"template": True})
    # The user's own part, merged by cloud-init with Heron's: this guest has no locales and
    # no OpenSSH (the locale module would fail, host keys would not be made).
    extra = "#cloud-config\nlocale: false\nssh_genkeytypes: []\nssh_deletekeys: false\n"
    seed = {"users": [{"name": "alice", "ssh_keys": [KEY], "sudo": True}], "user_data": extra}
    body = {"name": "ci", "count": 2, "template": "deb-tpl", "cloud_init": seed, "start": True}
    made = api.ok("POST", "/vms/batch", json=body)["vms"]
    for item in made:
        api.wait_task(item["task"], timeout=300)
    for item in made:
        root = Path(cluster.nodes[0].state_dir) / "vms" / item["vm"]
        wait_for(
            lambda root=root, vm=item["vm"]: serial_lines(
                root / "console.log", f"HERON-GUEST-READY uuid={vm}"
            ),
            BOOT,
            f"{item['name']} to boot",
            interval=1,
        )
        with CommandChannel(root / "serial.sock") as channel:

            def run(command: str, timeout: float = 60) -> str:
                result = channel.run(command, timeout)
                assert result.rc == 0, (command, result)
                return result.output.strip()

            # Blocks until cloud-init has run all its stages in this boot.
            status = channel.run("cloud-init status --wait", BOOT)
            if "done" not in status.output:
                why = channel.run(
                    "cloud-init status --long; "
                    "grep -E 'WARNING|ERROR|Trace|Error' /var/log/cloud-init.log | tail -30"
                )
                raise AssertionError(f"cloud-init: {status.output}\n{why.output}")
            assert run("hostname") == item["name"]
            assert run("cat /var/lib/cloud/data/instance-id") == item["vm"]
            assert run("id -un alice") == "alice"
            assert KEY in run("cat /home/alice/.ssh/authorized_keys")
            assert "NOPASSWD:ALL" in run("cat /etc/sudoers.d/90-cloud-init-users")
    api.ok("DELETE", "/vms/ci-001", params={"volumes": True})
    api.ok("DELETE", "/vms/ci-002", params={"volumes": True})
