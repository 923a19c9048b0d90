"""Replicated ARDFS volumes across several heron-io processes (one per simulated node):
copies where placement says, degraded writes through a kill -9, repair of corrupt copies,
and fencing of an old owner."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from support import wait_for

from heron.ardfs.checksum import CHUNK_SIZE
from heron.ardfs.client import IoProcess, io_cluster, start
from heron.ardfs.config import IoConfig, Scheme, VolumeSpec
from heron.ardfs.degraded import DegradedLog
from heron.ardfs.nbdtools import ToolError, qemu_io
from heron.ardfs.placement import group_key, place

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def chunk_files(io: IoProcess, volume: VolumeSpec) -> set[int]:
    found: set[int] = set()
    for disk in io.config.me.disks:
        assert disk.path is not None
        directory = disk.path / "volumes" / volume.id
        if directory.exists():
            found |= {int(n, 16) for n in os.listdir(directory) if len(n) == 16}
    return found


def chunk_path(io: IoProcess, volume: VolumeSpec, chunk: int) -> Path:
    disk = io.config.me.disks[0]
    assert disk.path is not None
    return disk.path / "volumes" / volume.id / f"{chunk:016x}"


def holders(config: IoConfig, volume: VolumeSpec, block: int) -> list[str]:
    chosen = place(config.placement_disks(), group_key(volume.id, block), volume.scheme.width)
    return [d.node for d in chosen]


def stale_copies(io: IoProcess, volume: VolumeSpec) -> int:
    log = DegradedLog.read(io.config.state_dir / "degraded" / f"{volume.id}.log")
    return sum(len(disks) for disks in log.values())


def state(io: IoProcess, name: str) -> tuple[str, int]:
    """A volume's state and rebuilt chunks, from heron-io's status file."""
    found = io.status().get("volumes", {}).get(name, {})
    return found.get("state", "unknown"), found.get("rebuilt_chunks", 0)


def test_copies_land_where_placement_says_and_any_node_reads_them(tmp_path: Path) -> None:
    volume = VolumeSpec(name="r2", size=64 * MiB, scheme=Scheme(copies=2))
    with io_cluster(tmp_path, 3, [volume]) as nodes:
        qemu_io(nodes[0].uri("r2"), "write -P 0x61 0 40M", "flush")
        for block in range(10):
            where = holders(nodes[0].config, volume, block)
            assert len(set(where)) == 2
            for io in nodes:
                assert (block in chunk_files(io, volume)) == (io.config.node in where)
        for io in nodes:
            qemu_io(io.uri("r2"), "read -P 0x61 0 40M", "read -P 0 40M 24M")


def test_two_sites_keep_one_copy_each(tmp_path: Path) -> None:
    volume = VolumeSpec(name="metro", size=64 * MiB, scheme=Scheme(copies=2))
    with io_cluster(tmp_path, 4, [volume], sites=["east", "west"]) as nodes:
        qemu_io(nodes[0].uri("metro"), "write -P 0x62 0 64M", "flush")
        sites = {io.config.node: io.config.me.site for io in nodes}
        for block in range(16):
            owners = [io.config.node for io in nodes if block in chunk_files(io, volume)]
            assert sorted(sites[n] for n in owners) == ["east", "west"]


def test_kill_9_of_a_chunk_server_during_a_large_write(tmp_path: Path) -> None:
    """The write completes degraded, every byte reads back, the missed copies are recorded."""
    size = 1024 * MiB
    volume = VolumeSpec(name="big", size=size, scheme=Scheme(copies=2))
    with io_cluster(tmp_path, 3, [volume]) as nodes:
        owner, victim = nodes[0], nodes[2]
        writer = subprocess.Popen(
            ["qemu-io", "-f", "raw", "-c", "write -P 0xa5 0 1G", "-c", "flush", owner.uri("big")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            # Kill it once it holds a good part of its share, with much of the write to come.
            wait_for(lambda: len(chunk_files(victim, volume)) >= 20, 120, "copies on the victim")
            victim.kill()
            out, _ = writer.communicate(timeout=600)
        finally:
            if writer.poll() is None:
                writer.kill()
        assert writer.returncode == 0 and "failed" not in out, out
        assert "wrote 1073741824/1073741824" in out
        assert stale_copies(owner, volume) > 0
        qemu_io(owner.uri("big"), "read -P 0xa5 0 1G")
        qemu_io(nodes[1].uri("big"), "read -P 0xa5 0 512M")
        assert owner.status()["volumes"]["big"]["state"] == "degraded"

        # The node comes back: the owner rebuilds what it missed, and the volume is whole.
        back = start(victim.config, tmp_path / victim.config.node)
        try:

            def healthy() -> bool:
                found = owner.status().get("volumes", {}).get("big", {})
                return found.get("state") == "healthy" and found.get("rebuilt_chunks", 0) > 0

            wait_for(healthy, 300, "the rebuild of the copies the killed node missed")
            expected = {
                b for b in range(256) if victim.config.node in holders(victim.config, volume, b)
            }
            assert chunk_files(back, volume) == expected
            for block in expected:
                assert chunk_path(back, volume, block).read_bytes() == b"\xa5" * CHUNK_SIZE, block
        finally:
            back.kill()  # started here, not by io_cluster: stopped here too


def test_a_corrupt_copy_is_read_around_and_repaired(tmp_path: Path) -> None:
    volume = VolumeSpec(name="heal", size=32 * MiB, scheme=Scheme(copies=2))
    with io_cluster(tmp_path, 2, [volume]) as nodes:
        qemu_io(nodes[0].uri("heal"), "write -P 0x71 0 32M", "flush")
        # Damage node 1's copy of block 3: node 1 reads its local copy first.
        damaged = chunk_path(nodes[0], volume, 3)
        with open(damaged, "r+b") as handle:
            handle.seek(CHUNK_SIZE // 2)
            handle.write(b"garbage")
            handle.flush()
            os.fsync(handle.fileno())
        qemu_io(nodes[0].uri("heal"), f"read -P 0x71 {3 * CHUNK_SIZE} 4M")

        def repaired() -> bool:
            data = damaged.read_bytes()
            return data == b"\x71" * CHUNK_SIZE and stale_copies(nodes[0], volume) == 0

        wait_for(repaired, 60, "the corrupt copy to be rewritten from the good one")
        qemu_io(nodes[0].uri("heal"), "read -P 0x71 0 32M")


def test_the_scrubber_finds_a_corrupt_copy_and_its_owner_repairs_it(tmp_path: Path) -> None:
    volume = VolumeSpec(name="scrub", size=16 * MiB, scheme=Scheme(copies=2), owner="n1")
    settings = {"scrub_mb_s": 400, "scrub_pause_s": 0.2}
    with io_cluster(tmp_path, 2, [volume], settings=settings) as nodes:
        qemu_io(nodes[0].uri("scrub"), "write -P 0x5e 0 16M", "flush")
        # Rot on node 2, which does not own the volume: nobody reads it, the scrubber finds it.
        damaged = chunk_path(nodes[1], volume, 2)
        # (node 2 may have started after the owner's first write: then wait for the rebuild)
        wait_for(lambda: stale_copies(nodes[0], volume) == 0, 60, "both copies written")
        with open(damaged, "r+b") as handle:
            handle.seek(3 * 4096 + 5)
            handle.write(b"bitrot")

        def repaired() -> bool:
            return damaged.read_bytes() == b"\x5e" * CHUNK_SIZE

        wait_for(repaired, 120, "the scrubbed copy repaired by the owner")
        wait_for(lambda: nodes[1].status()["scrub"]["reported"] >= 1, 30, "the scrub report")
        wait_for(lambda: nodes[0].status()["volumes"]["scrub"]["state"] == "healthy", 30, "ok")
        qemu_io(nodes[0].uri("scrub"), "read -P 0x5e 0 16M")


def test_rf3_survives_losing_two_copies(tmp_path: Path) -> None:
    volume = VolumeSpec(name="r3", size=64 * MiB, scheme=Scheme(copies=3))
    with io_cluster(tmp_path, 4, [volume]) as nodes:
        qemu_io(nodes[0].uri("r3"), "write -P 0x33 0 64M", "flush")
        nodes[2].kill()
        nodes[3].kill()
        qemu_io(nodes[0].uri("r3"), "read -P 0x33 0 64M")
        qemu_io(nodes[1].uri("r3"), "read -P 0x33 0 64M")
        # and it still takes writes, degraded
        qemu_io(nodes[0].uri("r3"), "write -P 0x34 8M 8M", "read -P 0x34 8M 8M")


def test_the_old_owner_is_fenced_after_a_handover(tmp_path: Path) -> None:
    volume = VolumeSpec(name="vm-disk", size=16 * MiB, scheme=Scheme(copies=2), owner="n1")
    with io_cluster(tmp_path, 2, [volume]) as (old, new):
        qemu_io(old.uri("vm-disk"), "write -P 0x01 0 8M", "flush")
        # HA hands the VM to node 2: it owns the volume at a newer epoch and claims it on
        # every chunk store at once, before it has written anything.
        handed = new.config.model_copy(deep=True)
        handed.volumes[0].epoch = 2
        handed.volumes[0].owner = "n2"
        new.update(handed)

        def old_owner_refused() -> bool:
            try:
                qemu_io(old.uri("vm-disk"), "write -P 0x03 0 4k")
            except ToolError as exc:
                assert "Operation not permitted" in str(exc)
                return True
            return False

        wait_for(old_owner_refused, 30, "the chunk stores to refuse the old owner")
        qemu_io(new.uri("vm-disk"), "read -P 0x01 4k 8188k", "write -P 0x02 0 8M", "flush")
        qemu_io(new.uri("vm-disk"), "read -P 0x02 0 8M")
        with pytest.raises(ToolError, match="Operation not permitted"):
            qemu_io(old.uri("vm-disk"), "write -P 0x03 0 4k")


def test_a_frozen_chunk_server_is_written_around(tmp_path: Path) -> None:
    """SIGSTOP: the peer neither answers nor closes; after the peer timeout it counts as down."""
    volume = VolumeSpec(name="stop", size=32 * MiB, scheme=Scheme(copies=2))
    with io_cluster(tmp_path, 2, [volume], settings={"peer_timeout_s": 2}) as (owner, frozen):
        qemu_io(owner.uri("stop"), "write -P 0x10 0 32M", "flush")
        os.kill(frozen.process.pid, signal.SIGSTOP)
        try:
            qemu_io(owner.uri("stop"), "write -P 0x11 0 16M", "flush", "read -P 0x11 0 16M")
            assert stale_copies(owner, volume) > 0
            wait_for(lambda: state(owner, "stop") == ("degraded", 0), 30, "degraded status")
        finally:
            os.kill(frozen.process.pid, signal.SIGCONT)
        wait_for(lambda: state(owner, "stop")[0] == "healthy", 120, "the copies rebuilt")
        assert state(owner, "stop")[1] >= 4
        qemu_io(frozen.uri("stop"), "read -P 0x11 0 16M", "read -P 0x10 16M 16M")


def test_a_new_owner_takes_over_what_the_old_one_knew_was_stale(tmp_path: Path) -> None:
    """The owner writes around a dead node, then dies itself; the dead node comes back and
    becomes the owner (HA): it must not read its own stale copies."""
    volume = VolumeSpec(name="ha", size=16 * MiB, scheme=Scheme(copies=3), owner="n1")
    with io_cluster(tmp_path, 3, [volume]) as (first, other, late):
        wait_for(lambda: state(first, "ha")[0] == "healthy", 30, "the owner's claim")
        qemu_io(first.uri("ha"), "write -P 0x01 0 16M", "flush")
        wait_for(lambda: stale_copies(first, volume) == 0, 60, "three copies")
        late.kill()
        qemu_io(first.uri("ha"), "write -P 0x02 0 16M", "flush")
        assert stale_copies(first, volume) == 4  # every block's copy on the dead node
        first.kill()

        handed = late.config.model_copy(deep=True)
        handed.volumes[0].owner = "n3"
        handed.volumes[0].epoch = 2
        late.config_path.write_text(handed.model_dump_json())
        back = start(handed, tmp_path / "n3")
        try:
            wait_for(lambda: stale_copies(back, volume) == 4, 30, "the stale notes taken over")
            qemu_io(back.uri("ha"), "read -P 0x02 0 16M")
            # and it rebuilds its own copies from node 2, the one good copy left
            wait_for(lambda: stale_copies(back, volume) == 0, 60, "the rebuild")
            assert chunk_path(back, volume, 1).read_bytes() == b"\x02" * CHUNK_SIZE
            assert other.alive()
        finally:
            back.kill()  # started here, not by io_cluster: stopped here too


def test_a_joining_node_does_not_move_or_hide_existing_blocks(tmp_path: Path) -> None:
    """Placement is pinned per volume: a third node joining gets none of the old volume's
    blocks (until a rebalance copies them), while a new volume spreads over all three."""
    old = VolumeSpec(name="old", size=32 * MiB, scheme=Scheme(copies=2))
    with io_cluster(tmp_path, 2, [old]) as nodes:
        qemu_io(nodes[0].uri("old"), "write -P 0x6f 0 32M", "flush")
        wait_for(lambda: stale_copies(nodes[0], old) == 0, 60, "both copies")
        for io in nodes:
            io.stop()
    new = VolumeSpec(name="new", size=32 * MiB, scheme=Scheme(copies=2))
    with io_cluster(tmp_path, 3, [old, new]) as nodes:
        for io in nodes[:2]:
            qemu_io(io.uri("old"), "read -P 0x6f 0 32M")
        qemu_io(nodes[0].uri("old"), "write -P 0x70 0 32M", "flush")
        qemu_io(nodes[0].uri("new"), "write -P 0x71 0 32M", "flush")
        assert chunk_files(nodes[2], old) == set()
        assert chunk_files(nodes[2], new)  # the new node takes part in new volumes
        qemu_io(nodes[1].uri("old"), "read -P 0x70 0 32M")
        # node 3 never served the volume: it finds the pin the others left on the chunk stores
        qemu_io(nodes[2].uri("old"), "read -P 0x70 0 32M")
