"""Hotplug into a running test guest (TCG), each change seen from inside the guest: a vCPU,
memory (a DIMM), a disk and a NIC plugged in, the disk taken out again; per-disk QoS: an
IOPS limit set and changed live, measured by direct reads in the guest within 10 %; CPU and
memory limits in the QEMU's cgroup (v1 here); and the grown VM live-migrated with all of it."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netguests import BOOT, network_cluster, shell, vm_dir
from support import Api, cli, wait_for

from heron.devcluster import DevCluster
from heron.testguest.build import READY_MARKER
from heron.testguest.net import CommandChannel

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, testguest: Path
) -> Iterator[tuple[DevCluster, Api]]:
    yield from network_cluster(tmp_path_factory, testguest, "hotplug", nodes=2)


@pytest.fixture(scope="module")
def guest(env: tuple[DevCluster, Api]) -> Iterator[tuple[dict[str, Any], CommandChannel]]:
    cluster, api = env
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": "grow",
            "vcpus": 1,
            "max_vcpus": 2,
            "memory_mib": 256,
            "max_memory_mib": 512,
            "node": "node1",
            "start": True,
            "disks": [{"pool": "shared", "source": "shared/testguest"}],
        },
    )
    api.wait_task(reply["task"])
    for name in ("extra", "extra2"):
        made = api.ok("POST", "/pools/shared/volumes", json={"name": name, "size": 16 * 2**20})
        api.wait_task(made["task"])
    vm = api.vm("grow")
    log = vm_dir(cluster, vm) / "console.log"
    # A request sent while the firmware and kernel still own the console is lost.
    wait_for(
        lambda: log.exists() and READY_MARKER in log.read_text(errors="replace"),
        BOOT,
        "the guest to boot",
    )
    with shell(cluster, vm) as channel:
        assert channel.run("true").rc == 0
        yield vm, channel


def run(channel: CommandChannel, command: str) -> str:
    result = channel.run(command, timeout=60)
    assert result.rc == 0, result.output
    return result.output


def change(api: Api, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Make a change and wait for the task that gives it to the running VM."""
    view = api.ok(method, path, json=body) if body is not None else api.ok(method, path)
    assert view["task"], view
    api.wait_task(view["task"])
    return api.vm("grow")


def until_guest(channel: CommandChannel, command: str, expected: str, what: str) -> str:
    def seen() -> str | None:
        out = run(channel, command)
        return out if expected in out else None

    return wait_for(seen, 60, what)


def mem_total_kib(channel: CommandChannel) -> int:
    return int(run(channel, "grep MemTotal /proc/meminfo").split()[1])


def test_a_vcpu_plugged_in_comes_online_in_the_guest(
    env: tuple[DevCluster, Api], guest: tuple[dict[str, Any], CommandChannel]
) -> None:
    _, api = env
    _, channel = guest
    assert run(channel, "cat /sys/devices/system/cpu/online") == "0"
    vm = change(api, "PATCH", "/vms/grow", {"vcpus": 2})
    assert vm["status"]["hardware"]["vcpus"] == 2 and vm["pending"] == []
    # No udev in the test guest: bring the new CPU online as udev would.
    until_guest(channel, "ls /sys/devices/system/cpu", "cpu1", "the guest to see cpu1")
    run(channel, "echo 1 > /sys/devices/system/cpu/cpu1/online")
    assert run(channel, "cat /sys/devices/system/cpu/online") == "0-1"
    # Past the maximum: waits for the next start, and says so.
    assert api.ok("PATCH", "/vms/grow", json={"vcpus": 3, "max_vcpus": 4})["task"] is None
    assert api.vm("grow")["pending"] == ["vcpus", "max_vcpus"]
    api.ok("PATCH", "/vms/grow", json={"vcpus": 2, "max_vcpus": 2})
    assert api.vm("grow")["pending"] == []
    # Bad input: 422 naming the field, nothing changed.
    bad = api.patch("/vms/grow", json={"max_vcpus": 1})
    assert bad.status_code == 422 and "max_vcpus" in bad.text, bad.text
    bad = api.post("/vms", json={"name": "small", "vcpus": 4, "max_vcpus": 2})
    assert bad.status_code == 422 and "max_vcpus" in bad.text, bad.text
    assert api.vm("grow")["spec"]["max_vcpus"] == 2


def test_memory_plugged_in_adds_to_the_guests_total(
    env: tuple[DevCluster, Api], guest: tuple[dict[str, Any], CommandChannel]
) -> None:
    _, api = env
    _, channel = guest
    before = mem_total_kib(channel)
    vm = change(api, "PATCH", "/vms/grow", {"memory_mib": 384})
    assert vm["status"]["hardware"]["dimms_mib"] == [128] and vm["pending"] == []
    online = (
        "for m in /sys/devices/system/memory/memory*; do "
        'if [ "$(cat $m/state)" = offline ]; then echo online > $m/state; fi; done'
    )

    def grown() -> int | None:
        run(channel, online)
        total = mem_total_kib(channel)
        return total if total >= before + 120 * 1024 else None

    total = wait_for(grown, 60, "the guest's memory to grow by the DIMM")
    assert total <= before + 128 * 1024


def test_a_disk_plugged_in_and_taken_out(
    env: tuple[DevCluster, Api], guest: tuple[dict[str, Any], CommandChannel]
) -> None:
    _, api = env
    _, channel = guest
    vm = change(api, "POST", "/vms/grow/disks", {"volume": "shared/extra"})
    assert vm["spec"]["disks"][1]["slot"] == 0 and vm["pending"] == []
    until_guest(channel, "ls /sys/block", "vdb", "the guest to see vdb")
    assert run(channel, "cat /sys/block/vdb/size") == str(16 * 2**20 // 512)
    # A disk not at the end cannot leave a running VM.
    refused = api.delete("/vms/grow/disks/0")
    assert refused.status_code == 409, refused.text
    vm = change(api, "DELETE", "/vms/grow/disks/1")
    assert len(vm["status"]["hardware"]["disks"]) == 1 and vm["pending"] == []
    wait_for(lambda: "vdb" not in run(channel, "ls /sys/block"), 60, "the guest to let vdb go")


def test_a_nic_plugged_in_shows_in_the_guest(
    env: tuple[DevCluster, Api], guest: tuple[dict[str, Any], CommandChannel]
) -> None:
    _, api = env
    _, channel = guest
    before = run(channel, "ls /sys/class/net").split()
    reply = api.ok("POST", "/vms/grow/nics", json={"network": "user"})
    api.wait_task(reply["task"])
    wait_for(
        lambda: len(run(channel, "ls /sys/class/net").split()) == len(before) + 1,
        60,
        "the guest to see the new NIC",
    )


def timed_reads(channel: CommandChannel, count: int, readers: int = 1) -> float:
    """Seconds `count` direct 4 KiB reads from vdb took, by the guest's own clock, made by
    `readers` dd processes side by side."""
    each = count // readers
    dds = " ".join(
        f"dd if=/dev/vdb of=/dev/null bs=4096 skip={i * each} count={each} iflag=direct "
        "2>/dev/null &"
        for i in range(readers)
    )
    script = f"read a _ < /proc/uptime; {dds} wait; read b _ < /proc/uptime; echo $a $b"
    start, end = run(channel, script).splitlines()[-1].split()
    return float(end) - float(start)


def measured_iops(channel: CommandChannel, limit: int) -> float:
    """The IOPS of reads from the throttled disk over about three seconds: long enough that
    starting dd and the short burst the throttle allows an idle disk (a tenth of a second's
    worth) stay within a few percent. Four readers keep requests waiting at the throttle
    even when the guest's vCPU is slow to issue the next (TCG on a busy host)."""
    count = 3 * limit // 4 * 4
    return count / timed_reads(channel, count, readers=4)


def test_an_iops_limit_holds_within_ten_percent_and_changes_live(
    env: tuple[DevCluster, Api], guest: tuple[dict[str, Any], CommandChannel]
) -> None:
    cluster, api = env
    _, channel = guest
    change(api, "POST", "/vms/grow/disks", {"volume": "shared/extra2", "qos": {"iops": 50}})
    until_guest(channel, "ls /sys/block", "vdb", "the guest to see vdb")
    first = measured_iops(channel, 50)
    print(f"IOPS limit 50: measured {first:.1f}")
    assert 45 <= first <= 55, first
    # The second change through the CLI, which waits for the task.
    cli_env = {
        "HERON_URL": api.url,
        "HERON_TOKEN": api.token or "",
        "HERON_CONFIG": str(Path(cluster.dir) / "cli.json"),
        "HERON_CA_FILE": str(cluster.ca_file),
    }
    shown = json.loads(
        cli(cli_env, "vm", "disk", "limit", "grow", "1", "--iops", "100", "--json").stdout
    )
    assert shown["task"] and shown["spec"]["disks"][1]["qos"]["iops"] == 100
    vm = api.vm("grow")
    assert vm["status"]["hardware"]["disks"][1]["qos"]["iops"] == 100
    second = measured_iops(channel, 100)
    print(f"IOPS limit 100: measured {second:.1f}")
    assert 90 <= second <= 110, second
    # Bad input changes nothing.
    bad = api.patch("/vms/grow/disks/1", json={"qos": {"iops": 10, "iops_burst": 5}})
    assert bad.status_code == 422 and "iops_burst" in bad.text
    bad = api.patch("/vms/grow/disks/9", json={"qos": {}})
    assert bad.status_code == 404
    limit = ["vm", "disk", "limit", "grow", "1", "--iops", "10", "--iops-burst", "5"]
    refused = cli(cli_env, *limit, check=False)
    assert refused.returncode != 0 and "iops_burst" in refused.stderr, refused.stderr
    assert api.vm("grow")["spec"]["disks"][1]["qos"]["iops"] == 100
    # No limit: much faster than the limit was.
    change(api, "PATCH", "/vms/grow/disks/1", {"qos": {}})
    unlimited = timed_reads(channel, 300)
    assert 300 / unlimited > 150


def test_cpu_and_memory_limits_put_qemu_in_its_cgroup(
    env: tuple[DevCluster, Api], guest: tuple[dict[str, Any], CommandChannel]
) -> None:
    """This host has cgroup v1: the limits land in the cpu and memory trees, live."""
    _, api = env
    vm = change(api, "PATCH", "/vms/grow", {"cpu_limit": 50, "cpu_weight": 200})
    assert vm["pending"] == [] and vm["status"]["hardware"]["cpu_limit"] == 50
    cpu = Path("/sys/fs/cgroup/cpu/heron") / f"vm-{vm['id']}"
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (cpu / "cpu.shares").read_text().strip() == "2048"
    assert str(vm["status"]["pid"]) in (cpu / "cgroup.procs").read_text().split()
    vm = change(api, "PATCH", "/vms/grow", {"cpu_limit": None, "memory_limit_mib": 2048})
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "-1"
    memory = Path("/sys/fs/cgroup/memory/heron") / f"vm-{vm['id']}"
    assert (memory / "memory.limit_in_bytes").read_text().strip() == str(2048 * 2**20)
    # QEMU's memory is charged to its group (moved along with it): a limit below what it
    # uses is refused by the kernel; the task says so, and the VM runs on.
    usage = int((memory / "memory.usage_in_bytes").read_text())
    assert usage > 64 * 2**20
    view = api.ok("PATCH", "/vms/grow", json={"memory_limit_mib": 16})
    failed = api.task_end(view["task"])
    assert failed["state"] == "failed" and "memory" in failed["error"], failed
    assert api.vm("grow")["state"] == "running"
    change(api, "PATCH", "/vms/grow", {"memory_limit_mib": None})
    assert int((memory / "memory.limit_in_bytes").read_text()) > 2**60


def test_the_grown_vm_migrates_with_what_was_plugged_in(
    env: tuple[DevCluster, Api], guest: tuple[dict[str, Any], CommandChannel]
) -> None:
    """The target starts from the running hardware: its DIMM, its vCPUs, its slotted disk."""
    cluster, api = env
    _, channel = guest
    memory = mem_total_kib(channel)
    channel.close()  # the source's serial socket goes with its QEMU
    before = api.vm("grow")["status"]["hardware"]
    assert before["dimms_mib"] == [128], before
    reply = api.ok("POST", "/vms/grow/actions/migrate", json={"target": "node2"})
    api.wait_task(reply["task"], timeout=300)
    moved = api.vm("grow")
    assert moved["node"] == "node2" and moved["state"] == "running", moved
    hardware = moved["status"]["hardware"]
    # Not started afresh there: the very QEMU that received the guest, DIMM and vCPU included.
    assert (hardware["vcpus"], hardware["memory_mib"], hardware["dimms_mib"]) == (2, 384, [128])
    assert len(hardware["plugged_vcpus"]) == 1
    assert len(hardware["disks"]) == 2 and moved["pending"] == []
    with shell(cluster, moved) as there:
        assert run(there, "cat /sys/devices/system/cpu/online") == "0-1"
        assert mem_total_kib(there) == memory
        assert "vdb" in run(there, "ls /sys/block")
    assert vm_dir(cluster, moved).exists()
