"""Snapshots on a real QEMU (hypervisor.qmp_snapshot, storage.qemuimg): two qcow2 disks on
files, taken together while the guest runs, deleted in the middle while it runs, reverted
offline (disk-only) and online with the memory state (the test guest counts on from the
saved instant).

Data goes into the disks through the guest devices' own block backends (HMP `qemu-io -d`):
what a guest write does, without a guest that writes.
"""

import asyncio
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from fakes.running import short_directory
from support import eventually

from heron.hypervisor import command
from heron.hypervisor.command import ResolvedDisk, RuntimePaths
from heron.hypervisor.qemu import QemuVM
from heron.hypervisor.qmp_base import QMPCommandError
from heron.hypervisor.qmp_snapshot import Job
from heron.models.common import new_id
from heron.models.vm import VM, VMSpec
from heron.storage import qemuimg
from heron.testguest import console

pytestmark = pytest.mark.integration

MiB = 1024**2
NODES = ["disk0", "disk1"]
Launch = Callable[..., Awaitable[QemuVM]]


@pytest.fixture
def root() -> Iterator[Path]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    with short_directory() as directory:
        yield directory


@pytest.fixture
async def launch(root: Path) -> AsyncIterator[Launch]:
    """Start a QEMU (TCG, daemonized, as the agent does) with the given qcow2 files as its
    virtio disks disk0, disk1, ..., and extra arguments; quit at the end."""
    started: list[QemuVM] = []

    async def start(images: list[Path], *extra: str) -> QemuVM:
        vm = VM(id=new_id(), spec=VMSpec(name="s", memory_mib=128), node="n", created_at=1)
        qemu = QemuVM(vm.id, RuntimePaths(root / vm.id))
        disks = [
            ResolvedDisk("virtio", {"driver": "file", "filename": str(image)}, "qcow2")
            for image in images
        ]
        # 128 MiB + 8 KiB: not a multiple of 256 KiB, as command.py gives TCG guests.
        args = command.build(vm, disks, qemu.paths, "tcg", ram=128 * 1024 + 8)
        await qemu.launch([*args, *extra])
        started.append(qemu)
        return qemu

    yield start
    for qemu in started:
        await qemu.kill()
        await qemu.close()


async def blank_disks(root: Path) -> list[Path]:
    images = [root / f"data{index}.qcow2" for index in range(len(NODES))]
    for image in images:
        await qemuimg.create(image, "qcow2", 16 * MiB)
    return images


async def qemu_io(qemu: QemuVM, node: str, io: str) -> None:
    """Run a qemu-io command on the guest device of `node`. QEMU prints qemu-io's report on
    its own stdout, not on the monitor: the monitor says only what failed."""
    said = await qemu.execute(
        "human-monitor-command",
        {"command-line": f'qemu-io -d {node}-dev/virtio-backend "{io}"'},
    )
    assert said == "", said


async def write(qemu: QemuVM, pattern: int) -> None:
    """Fill the first MiB of every disk with `pattern`."""
    for node in NODES:
        await qemu_io(qemu, node, f"write -P {pattern} 0 1M")


async def run(*args: str) -> tuple[int, str]:
    """Run a program; its exit status and what it printed (stdout and stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return await proc.wait(), out.decode(errors="replace")


async def image_holds(image: Path, pattern: int) -> bool:
    """Whether the first MiB of `image` holds `pattern`, as qemu-io reads the file (shared
    with a running QEMU: flush its disk first)."""
    _, said = await run(
        "qemu-io", "-U", "-r", "-f", "qcow2", "-c", f"read -P {pattern} 0 1M", str(image)
    )
    if "Pattern verification failed" in said:
        return False
    assert "read 1048576/1048576 bytes" in said, said
    return True


async def holds(images: list[Path], pattern: int, qemu: QemuVM | None = None) -> bool:
    """Whether the first MiB of every disk holds `pattern`; a running `qemu` is flushed first
    (its qcow2 metadata may still be in its cache)."""
    if qemu is not None:
        for node in NODES:
            await qemu_io(qemu, node, "flush")
    return all([await image_holds(image, pattern) for image in images])


async def names(qemu: QemuVM) -> dict[str, list[str]]:
    return {n.node: n.names() for n in await qemu.disk_snapshots(NODES)}


async def test_all_disks_are_snapshotted_at_once_and_reverted_offline(
    launch: Launch, root: Path
) -> None:
    images = await blank_disks(root)
    qemu = await launch(images)
    await write(qemu, 1)
    await qemu.snapshot_disks(NODES, "before")
    await write(qemu, 2)
    assert await names(qemu) == {"disk0": ["before"], "disk1": ["before"]}

    # One transaction: a name taken on one disk refuses the snapshot on both.
    await qemu.delete_disk_snapshot("disk1", "before")
    with pytest.raises(QMPCommandError, match="already exists"):
        await qemu.snapshot_disks(NODES, "before")
    assert await names(qemu) == {"disk0": ["before"], "disk1": []}
    await qemu.delete_disk_snapshot("disk0", "before")
    await qemu.snapshot_disks(NODES, "before")
    await write(qemu, 3)
    assert await holds(images, 3, qemu)

    # A disk-only snapshot is no whole-VM snapshot: QEMU reverts it only offline.
    await qemu.snapshot_load("load-before", "before", vmstate="disk0", devices=NODES)
    failed = await qemu.wait_job("load-before", 30)
    assert failed is not None and "disk-only snapshot" in failed.error
    # QEMU 7.2 stops the guest for the load and runs it again only after a success.
    assert await qemu.run_state() == "restore-vm"
    await qemu.resume()
    assert await qemu.run_state() == "running"
    assert await holds(images, 3, qemu)

    # Its image is locked while QEMU runs: qemu-img refuses to touch it.
    with pytest.raises(qemuimg.QemuImgError, match="Is another process using the image"):
        await qemuimg.snapshot_revert(images[0], "before")
    await qemu.kill()
    for image in images:
        await qemuimg.snapshot_revert(image, "before")
    assert await holds(images, 2)


async def test_a_middle_snapshot_is_deleted_while_running(launch: Launch, root: Path) -> None:
    images = await blank_disks(root)
    qemu = await launch(images)
    for index, name in enumerate(["first", "middle", "last"], start=1):
        await write(qemu, index)
        await qemu.snapshot_disks(NODES, name)
    await write(qemu, 4)

    for node in NODES:
        deleted = await qemu.delete_disk_snapshot(node, "middle")
        assert (deleted.name, deleted.vm_state_size) == ("middle", 0)
    with pytest.raises(QMPCommandError, match="does not exist"):
        await qemu.delete_disk_snapshot("disk0", "middle")

    listed = await qemu.disk_snapshots(NODES)
    assert [n.names() for n in listed] == [["first", "last"]] * 2
    for node in listed:
        assert node.virtual_size == 16 * MiB
        # The current MiB and the two snapshots' MiBs are clusters of their own.
        assert node.actual_size >= 3 * MiB
        assert all(s.vm_state_size == 0 and s.date_sec > 0 for s in node.snapshots)
    assert await holds(images, 4, qemu)

    await qemu.kill()
    for pattern, name in [(3, "last"), (1, "first")]:
        for image in images:
            assert await qemuimg.snapshot_names(image) == ["first", "last"]
            await qemuimg.snapshot_revert(image, name)
        assert await holds(images, pattern)
    for image in images:
        await qemuimg.snapshot_create(image, "offline")
        await qemuimg.snapshot_delete(image, "first")
        assert await qemuimg.snapshot_names(image) == ["last", "offline"]
        status, said = await run("qemu-img", "check", str(image))
        assert status == 0, said


TICK = re.compile(r"heron-tick (\d+)")


def ticks(text: str) -> list[int]:
    return [int(found) for found in TICK.findall(text)]


async def test_a_memory_snapshot_resumes_the_guest_where_it_was(
    launch: Launch, root: Path, testguest: Path
) -> None:
    boot = root / "boot.qcow2"
    await qemuimg.convert(testguest, "raw", boot, "qcow2")
    data = root / "data.qcow2"
    await qemuimg.create(data, "qcow2", 16 * MiB)
    qemu = await launch([boot, data])
    log = qemu.paths.console_log

    async def ticked(count: int) -> list[int] | None:
        seen = ticks(log.read_text(errors="replace")) if log.exists() else []
        return seen if len(seen) >= count else None

    await eventually(lambda: ticked(2), 120, "the guest to tick")
    await qemu_io(qemu, "disk1", "write -P 7 0 1M")

    # Stopped first, so the last tick on the console is the last the snapshot has seen.
    await qemu.pause()
    saved_at = ticks(log.read_text())[-1]
    progress: list[tuple[int, int]] = []

    async def follow(job: Job) -> None:
        progress.append((job.current, job.total))

    await qemu.snapshot_save("save", "with-memory", vmstate="disk0", devices=NODES)
    saved = await qemu.wait_job("save", 120, follow)
    assert saved is not None and saved.error == "", saved
    assert progress[-1] == (1, 1)
    assert await qemu.run_state() == "paused"  # as it was
    await qemu.resume()

    listed = {n.node: n for n in await qemu.disk_snapshots(NODES)}
    memory = listed["disk0"].snapshots[0]
    assert memory.name == "with-memory"
    assert memory.vm_state_size > 16 * MiB  # the guest's RAM, less what is zero
    assert [s.vm_state_size for s in listed["disk1"].snapshots] == [0]

    ran_on = len(ticks(log.read_text())) + 3
    await eventually(lambda: ticked(ran_on), 30, "the guest to tick on after the save")
    await qemu_io(qemu, "disk1", "write -P 8 0 1M")
    before_load = len(log.read_text())

    await qemu.snapshot_load("load", "with-memory", vmstate="disk0", devices=NODES)
    loaded = await qemu.wait_job("load", 120)
    assert loaded is not None and loaded.error == "", loaded
    assert await qemu.run_state() == "running"

    async def tick_after_load() -> int | None:
        after = ticks(log.read_text(errors="replace")[before_load:])
        return after[0] if after else None

    assert await eventually(tick_after_load, 30, "a tick after the load") == saved_at + 1

    # Its memory is what it was: the checker finds every word it wrote before the save.
    async def checked_after_load() -> console.GuestReport | None:
        report = console.read(log.read_text(errors="replace")[before_load:], booted_here=False)
        return report if report.verifications >= 2 else None

    report = await eventually(checked_after_load, 30, "memory checks after the load")
    assert report.intact, report.problems
    await qemu_io(qemu, "disk1", "flush")
    assert await image_holds(data, 7)

    # A whole-VM snapshot is deleted from every disk by one job.
    await qemu.snapshot_delete("delete", "with-memory", devices=NODES)
    deleted = await qemu.wait_job("delete", 60)
    assert deleted is not None and deleted.error == ""
    assert await names(qemu) == {"disk0": [], "disk1": []}
    assert await qemu.jobs() == []


async def test_no_snapshot_while_a_disk_is_mirrored(launch: Launch, root: Path) -> None:
    images = await blank_disks(root)
    qemu = await launch(images)
    target = root / "target.qcow2"
    await qemuimg.create(target, "qcow2", 16 * MiB)
    await qemu.blockdev_add(
        "target", {"driver": "qcow2", "file": {"driver": "file", "filename": str(target)}}
    )
    await qemu.blockdev_mirror(
        "move", device="disk1", target="target", sync="full", copy_mode="background"
    )
    # The mirror puts a filter node above disk1: a snapshot names a root node, so a storage
    # move and a snapshot exclude each other, and the transaction takes none on disk0 either.
    with pytest.raises(QMPCommandError, match="Need a root block node"):
        await qemu.snapshot_disks(NODES, "during-move")
    assert await names(qemu) == {"disk0": [], "disk1": []}
    await qemu.block_job_cancel("move")


async def test_a_throttle_filter_above_a_disk_passes_snapshots_down(
    launch: Launch, root: Path
) -> None:
    # QoS may put a throttle node above a disk's format node: it is then the node to name.
    qemu = await launch([])
    image = root / "throttled.qcow2"
    await qemuimg.create(image, "qcow2", 16 * MiB)
    await qemu.execute(
        "object-add", {"qom-type": "throttle-group", "id": "qos0", "limits": {"iops-total": 100}}
    )
    await qemu.blockdev_add(
        "disk0", {"driver": "qcow2", "file": {"driver": "file", "filename": str(image)}}
    )
    await qemu.blockdev_add(
        "qos0", {"driver": "throttle", "throttle-group": "qos0", "file": "disk0"}
    )
    await qemu.snapshot_disks(["qos0"], "disks")
    await qemu.snapshot_save("save", "whole", vmstate="qos0", devices=["qos0"])
    saved = await qemu.wait_job("save", 60)
    assert saved is not None and saved.error == ""
    assert await qemu.run_state() == "running"  # stopped for the save only
    # A name taken fails the job, not the command.
    await qemu.snapshot_save("again", "whole", vmstate="qos0", devices=["qos0"])
    again = await qemu.wait_job("again", 60)
    assert again is not None and "Snapshot 'whole' already exists" in again.error, again
    assert await qemu.run_state() == "running"
    listed = {n.node: n.names() for n in await qemu.disk_snapshots(["qos0", "disk0"])}
    assert listed == {"qos0": ["disks", "whole"], "disk0": ["disks", "whole"]}
    await qemu.kill()
    assert await qemuimg.snapshot_names(image) == ["disks", "whole"]


async def test_the_memory_goes_into_an_image_no_device_uses(launch: Launch, root: Path) -> None:
    # A VM without a qcow2 disk (none at all, here): its memory goes into an image opened for
    # the save (agent/snapshots.py), which must be among `devices` (QEMU 7.2 saves nothing
    # without one), and is closed after; it is opened again for the load.
    qemu = await launch([])
    image = root / "state.qcow2"
    await qemuimg.create(image, "qcow2", MiB)
    protocol = {"driver": "file", "filename": str(image)}
    await qemu.open_image("mem-s1", protocol)
    await qemu.snapshot_save("none", "whole", vmstate="mem-s1", devices=[])
    refused = await qemu.wait_job("none", 60)
    assert refused is not None and "At least one device" in refused.error, refused
    await qemu.snapshot_save("save", "whole", vmstate="mem-s1", devices=["mem-s1"])
    saved = await qemu.wait_job("save", 60)
    assert saved is not None and saved.error == "", saved
    assert await qemu.run_state() == "running"
    await qemu.close_image("mem-s1")
    assert "mem-s1" not in {n.node for n in await qemu.disk_snapshots()}
    info = await qemuimg.info(image)
    assert [s["name"] for s in info["snapshots"]] == ["whole"]
    assert info["snapshots"][0]["vm-state-size"] > 0
    await qemu.open_image("mem-s1", protocol)
    await qemu.snapshot_load("load", "whole", vmstate="mem-s1", devices=["mem-s1"])
    loaded = await qemu.wait_job("load", 60)
    assert loaded is not None and loaded.error == "", loaded
    assert await qemu.run_state() == "running"
    await qemu.close_image("mem-s1")


async def test_snapshots_travel_with_the_images_in_a_live_migration(
    launch: Launch, root: Path
) -> None:
    # Both QEMUs open the same files, as on a shared pool (NFS).
    images = await blank_disks(root)
    source = await launch(images)
    await write(source, 1)
    await source.snapshot_disks(NODES, "before-move")
    await write(source, 2)
    target = await launch(images, "-incoming", "defer")
    channel = f"unix:{root / 'migration.sock'}"
    await target.migrate_incoming(channel)
    await source.migrate(channel)

    async def moved() -> bool:
        return (await source.outgoing_migration()).status == "completed"

    await eventually(moved, 120, "the migration to complete")
    await target.resume()
    assert await names(target) == {"disk0": ["before-move"], "disk1": ["before-move"]}
    # The source let go of the images: only the target snapshots them now. QEMU 7.2 says so
    # as if qcow2 had no snapshots (an inactive image is not writable).
    with pytest.raises(QMPCommandError, match="does not support internal snapshots"):
        await source.snapshot_disks(NODES, "left-behind")
    await target.snapshot_disks(NODES, "after-move")
    await target.delete_disk_snapshot("disk0", "before-move")
    await target.delete_disk_snapshot("disk1", "before-move")
    assert await holds(images, 2, target)
    await target.kill()
    await source.kill()
    for image in images:
        assert await qemuimg.snapshot_names(image) == ["after-move"]
