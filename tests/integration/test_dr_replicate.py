"""DR replication rounds (hypervisor.qmp_replica) of a running test guest into a replica store.

One QEMU (TCG) runs the test guest with its boot disk and a blank qcow2 data disk; the guest
writes known data (runs of `seq`) to its data disk over its console. Rounds replicate both
disks at one instant:

* round 1 is full; the guest overwrites data while it runs, and the point holds the data as
  it was at the round's instant (the fleecing view);
* round 2 is incremental and sends only the chunks the guest changed;
* a round whose store write fails midway (a progress callback raises) leaves no point and
  nothing of its view in QEMU, and the next round still sends those changes; so does one
  that leaves its view behind (as when its agent dies), which the next round removes;
* after a clean shutdown and a new start of QEMU, the round is incremental again (the
  persistent bitmap survived in the qcow2 image);
* after QEMU was killed, the bitmap is inconsistent, and the round is a resync that sends
  only the chunks whose hashes differ from the last point's;
* while the guest counts on both disks in turn, a round's point holds counts that can be
  seen at one instant.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fakes.running import short_directory
from support import eventually

from heron.dr.replicate import Progress, RoundReport
from heron.dr.store import Store
from heron.hypervisor import command, qmp_replica
from heron.hypervisor.command import ResolvedDisk, RuntimePaths
from heron.hypervisor.qemu import QemuVM
from heron.hypervisor.qmp_replica import PREFIX, ReplicaDisk, replicate
from heron.models.common import new_id
from heron.models.vm import VM, VMSpec
from heron.storage import qemuimg
from heron.testguest import build
from heron.testguest.net import CommandChannel

pytestmark = pytest.mark.integration

BOOT = 300  # TCG on a shared machine
MiB = 1024**2
CHUNK = 4 * MiB
RAM_KIB = 128 * 1024 + 8  # as command.py gives TCG guests
COUNT_ON_DATA = 30 * MiB  # chunk 7 of the data disk
COUNT_ON_BOOT = 512 * 1024  # between the boot disk's partition table and its partition
DISKS = [ReplicaDisk(f"disk{i}", f"disk{i}", command.disk_backend(i, "virtio")) for i in range(2)]


class Guest:
    def __init__(self, root: Path, testguest: Path):
        self.root = root
        self.vm = VM(id=new_id(), spec=VMSpec(name="dr", memory_mib=128), node="n", created_at=1)
        self.qemu = QemuVM(self.vm.id, RuntimePaths(root / "run"))
        self.boot = root / "boot.qcow2"
        self.data = root / "data.qcow2"
        self.testguest = testguest
        self.channel: CommandChannel | None = None

    async def make_disks(self) -> None:
        made = await asyncio.create_subprocess_exec(
            "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(self.testguest),
            str(self.boot),
        )  # fmt: skip
        assert await made.wait() == 0
        await qemuimg.create(self.data, "qcow2", 32 * MiB)

    async def start(self) -> None:
        self.qemu.paths.console_log.unlink(missing_ok=True)
        disks = [
            ResolvedDisk("virtio", {"driver": "file", "filename": str(image)}, "qcow2")
            for image in (self.boot, self.data)
        ]
        args = command.build(self.vm, disks, self.qemu.paths, "tcg", ram=RAM_KIB)
        await self.qemu.launch(args)

        async def ready() -> bool:
            log = self.qemu.paths.console_log
            return log.exists() and build.READY_MARKER in log.read_text(errors="replace")

        await eventually(ready, BOOT, "the guest to boot")
        self.channel = CommandChannel(self.qemu.paths.serial)
        # The data disk's device node appears a moment after the guest says it is ready.
        result = self.channel.run("timeout 60 sh -c 'until [ -b /dev/vdb ]; do sleep 0.2; done'")
        assert result.rc == 0, result.output

    def write(self, offset: int, first: int, last: int) -> bytes:
        """The guest writes the numbers first..last, a line each, at `offset` of its data
        disk, and fsyncs; returns what it wrote."""
        assert self.channel is not None and offset % 4096 == 0
        result = self.channel.run(
            f"[ -b /dev/vdb ] && seq {first} {last} | dd of=/dev/vdb bs=4096 seek={offset // 4096} "
            "conv=notrunc,fsync 2>/dev/null && echo written",
            timeout=60,
        )
        assert result.rc == 0 and "written" in result.output, result.output
        return "".join(f"{n}\n" for n in range(first, last + 1)).encode()

    async def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        await self.qemu.powerdown()
        assert await self.qemu.wait_gone(120), "the guest did not power off"

    async def round(
        self, store: Store, progress: Callable[[Progress], None] | None = None
    ) -> RoundReport:
        return await replicate(
            self.qemu, self.vm.id, DISKS, store, self.qemu.paths.root, progress=progress
        )


@pytest.fixture
async def guest(testguest: Path) -> AsyncIterator[Guest]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    with short_directory() as root:
        found = Guest(root, testguest)
        try:
            await found.make_disks()
            await found.start()
            yield found
        finally:
            if found.channel is not None:
                found.channel.close()
            await found.qemu.kill()
            await found.qemu.close()


def count_at(image: Path, offset: int) -> int:
    """The number the counting loop wrote at `offset` of a restored disk."""
    with image.open("rb") as file:
        file.seek(offset)
        return int(file.read(32).split(b"\n", 1)[0])


def restored(store: Store, vm: str, point: str, target: Path) -> bytes:
    store.restore(vm, point, "disk1", target)
    return target.read_bytes()


async def leftovers(guest: Guest) -> list[str]:
    """What a round may leave in QEMU or the run directory: it must leave nothing."""
    nodes = await guest.qemu.block_nodes()
    found = [name for name in nodes if name.startswith(PREFIX)]
    found += await guest.qemu.block_exports()
    found += [p.name for p in guest.qemu.paths.root.iterdir() if p.name.startswith(PREFIX)]
    found += [p.name for p in guest.qemu.paths.root.iterdir() if p.name.endswith("nbd.sock")]
    for disk in DISKS:
        bitmaps = [b for b in nodes[disk.node].bitmaps if b.name.startswith(PREFIX)]
        if len(bitmaps) != 1:
            found.append(f"{disk.node}: bitmaps {[b.name for b in bitmaps]}")
    return found


async def test_full_incremental_failed_and_after_a_restart(
    guest: Guest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.create(tmp_path / "store")
    vm = guest.vm.id
    first = guest.write(1 * MiB, 1, 20000)  # chunk 0 of the data disk
    second = guest.write(9 * MiB, 100000, 120000)  # chunk 2
    overwritten: list[bytes] = []

    def overwrite_once(progress: Progress) -> None:
        # While round 1 reads the boot disk (before it reads the data disk), the guest
        # overwrites chunk 2: the point must keep what was there at the round's instant.
        if not overwritten and progress.disk == "disk0":
            overwritten.append(guest.write(9 * MiB, 500000, 520000))

    full = await guest.round(store, progress=overwrite_once)
    assert full.kind == "full" and full.point.parent is None
    assert overwritten, "the guest wrote during the round"
    assert full.point.disks == {"disk0": full.point.disks["disk0"], "disk1": 32 * MiB}
    image = restored(store, vm, full.point.id, tmp_path / "r1.raw")
    assert image[1 * MiB : 1 * MiB + len(first)] == first
    assert image[9 * MiB : 9 * MiB + len(second)] == second
    # Only allocated chunks were read: the data disk's two, and the boot disk's.
    assert full.chunks_read >= 2 and full.bytes_read <= full.chunks_read * CHUNK
    assert await leftovers(guest) == []

    third = guest.write(17 * MiB, 700000, 710000)  # chunk 4
    incremental = await guest.round(store)
    assert incremental.kind == "incremental"
    assert incremental.point.parent == full.point.id
    # Chunks 2 (overwritten during round 1) and 4 of the data disk; the boot disk's root
    # file system is read-only, but let the guest's kernel touch a chunk or two of it.
    assert 2 <= incremental.chunks_sent <= 4, incremental
    assert incremental.chunks_read == incremental.chunks_sent
    image = restored(store, vm, incremental.point.id, tmp_path / "r2.raw")
    assert image[1 * MiB : 1 * MiB + len(first)] == first
    assert image[9 * MiB : 9 * MiB + len(overwritten[0])] == overwritten[0]
    assert image[17 * MiB : 17 * MiB + len(third)] == third
    assert await leftovers(guest) == []

    # A round whose store write fails midway: no point, nothing left, changes kept.
    fourth = guest.write(25 * MiB, 900000, 910000)  # chunk 6

    def fail(progress: Progress) -> None:
        raise RuntimeError("injected: the store write fails")

    with pytest.raises(RuntimeError, match="injected"):
        await guest.round(store, progress=fail)
    assert [p.id for p in store.points(vm)] == [full.point.id, incremental.point.id]
    assert await leftovers(guest) == []

    # A round whose agent dies midway leaves its view behind (here: a failure without the
    # cleanup, which also leaves its new bitmap, still exported, unmerged); the next round
    # removes all that first.
    real_teardown = qmp_replica._teardown

    async def leftovers_only(*args: Any, leftovers: bool = False) -> None:
        if leftovers:
            await real_teardown(*args, leftovers=True)

    monkeypatch.setattr(qmp_replica, "_teardown", leftovers_only)
    with pytest.raises(RuntimeError, match="injected"):
        await guest.round(store, progress=fail)
    monkeypatch.setattr(qmp_replica, "_teardown", real_teardown)
    assert (await guest.qemu.device_roots())[DISKS[1].qdev] == DISKS[1].cbw
    assert await leftovers(guest) != []
    again = await guest.round(store)
    assert again.kind == "incremental" and again.point.parent == incremental.point.id
    assert 1 <= again.chunks_sent <= 3, again
    assert await leftovers(guest) == []
    image = restored(store, vm, again.point.id, tmp_path / "r3.raw")
    assert image[25 * MiB : 25 * MiB + len(fourth)] == fourth
    assert image[17 * MiB : 17 * MiB + len(third)] == third

    # A clean shutdown writes the bitmaps into the images; the next QEMU finds them.
    await guest.stop()
    await guest.start()
    fifth = guest.write(5 * MiB, 1200000, 1210000)  # chunk 1
    after = await guest.round(store)
    assert after.kind == "incremental" and after.point.parent == again.point.id
    assert 1 <= after.chunks_sent <= 3, after
    image = restored(store, vm, after.point.id, tmp_path / "r4.raw")
    assert image[5 * MiB : 5 * MiB + len(fifth)] == fifth
    assert image[25 * MiB : 25 * MiB + len(fourth)] == fourth
    assert image[1 * MiB : 1 * MiB + len(first)] == first
    assert await leftovers(guest) == []

    # QEMU killed while its bitmap was loaded from the image (so marked in use there): QEMU
    # loads it as inconsistent, and the round is a resync: it reads every allocated chunk but
    # sends only those whose hash differs from the last point's.
    await guest.stop()
    await guest.start()
    sixth = guest.write(13 * MiB, 1300000, 1310000)  # chunk 3
    assert guest.channel is not None
    guest.channel.close()
    guest.channel = None
    pid = guest.qemu.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # not qemu.kill(): it asks QEMU to quit (a clean exit) first
    assert await guest.qemu.wait_gone(30)
    await guest.start()
    nodes = await guest.qemu.block_nodes()
    assert [b.inconsistent for b in nodes["disk1"].bitmaps] == [True]
    resync = await guest.round(store)
    assert resync.kind == "resync" and resync.point.parent == after.point.id
    assert resync.chunks_read > resync.chunks_sent
    assert 1 <= resync.chunks_sent <= 3, resync
    image = restored(store, vm, resync.point.id, tmp_path / "r5.raw")
    assert image[13 * MiB : 13 * MiB + len(sixth)] == sixth
    assert image[5 * MiB : 5 * MiB + len(fifth)] == fifth
    assert await leftovers(guest) == []
    follows = await guest.round(store)
    assert follows.kind == "incremental" and follows.chunks_sent <= 2

    # All disks at one instant: the guest counts on both disks in turn, each write done
    # (fsync) before the next: the data disk first, then the boot disk (in the gap between
    # its partition table and its partition). At any instant the data disk's count is the
    # boot disk's or one more; so it must be in the point.
    assert guest.channel is not None
    loop = (
        "i=0; while :; do i=$((i+1)); "
        f"echo $i | dd of=/dev/vdb bs=512 seek={COUNT_ON_DATA // 512} conv=notrunc,fsync; "
        f"echo $i | dd of=/dev/vda bs=512 seek={COUNT_ON_BOOT // 512} conv=notrunc,fsync; "
        "done"
    )
    started = guest.channel.run(f"( {loop} ) >/dev/null 2>&1 & echo $! > /tmp/count.pid")
    assert started.rc == 0, started.output
    counted = guest.channel.run(
        f"timeout 60 sh -c 'until dd if=/dev/vdb bs=512 skip={COUNT_ON_DATA // 512} count=1 "
        "2>/dev/null | grep -q 5; do sleep 0.1; done'"
    )
    assert counted.rc == 0, counted.output
    counting = await guest.round(store)
    stopped = guest.channel.run("kill $(cat /tmp/count.pid)")
    assert stopped.rc == 0, stopped.output
    store.restore(vm, counting.point.id, "disk0", tmp_path / "boot.raw")
    store.restore(vm, counting.point.id, "disk1", tmp_path / "data.raw")
    on_boot = count_at(tmp_path / "boot.raw", COUNT_ON_BOOT)
    on_data = count_at(tmp_path / "data.raw", COUNT_ON_DATA)
    assert on_data >= 5 and on_data in (on_boot, on_boot + 1), (on_boot, on_data)
    assert store.verify().ok
