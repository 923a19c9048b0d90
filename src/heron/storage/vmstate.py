"""Memory-state volumes: where a memory snapshot of a VM without a qcow2 disk keeps the
guest's memory, and how big that volume is. Pure: the snapshot service plans with it, the
node agent makes, opens and deletes the volume.

QEMU writes a whole-VM snapshot's memory and device state (`snapshot-save`) into one qcow2
image among the snapshot's `devices`, never into a raw disk; a VM whose disks all live on
pools with snapshots of their own (ARDFS, Ceph: raw over NBD or RBD) has no such image.
Heron then makes one for the snapshot: a volume in a pool that `memory_state` (a qcow2 file
in a dir or NFS pool, or a qcow2 image written into a raw ARDFS volume, as redundant as the
disks), preferably the pool of the VM's own disks. The running QEMU opens it with
`blockdev-add` for the save and the load only, as a node no guest device uses, and lets it
go after: the guest never sees it, and a live migration has nothing more to carry (the
volume stays reachable in its shared pool). It is deleted with its snapshot.
"""

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from heron.models.storage import Pool, VolumeFormat
from heron.storage.registry import capabilities

MiB = 1024**2
# Room beyond the guest's RAM: the device state (a few MiB at most), and the qcow2 image's
# own header, L1, L2 and refcount tables, which the per-page share below does not cover.
MARGIN = 64 * MiB
BLOCK = 4 * MiB  # an ARDFS block: sizes are whole blocks
# The virtual disk of the image inside a raw volume: nothing is written to it (QEMU keeps
# the memory state past the end of the virtual disk), so it is as small as qcow2 allows.
INNER_SIZE = 1 * MiB


def state_size(memory_bytes: int) -> int:
    """Bytes a memory-state volume needs for a guest with `memory_bytes` of RAM (its
    maximum, hot-plugged memory included): every page of it as QEMU's migration stream
    writes it (a header of a few bytes per 4 KiB page), qcow2's tables for that many
    clusters (8 bytes of L2 and 2 of refcount per 64 KiB), the margin, in whole blocks."""
    pages = memory_bytes // 4096
    clusters = -(-memory_bytes // (64 * 1024))
    needed = memory_bytes + pages * 16 + clusters * 10 + MARGIN
    return -(-needed // BLOCK) * BLOCK


def state_format(pool: Pool) -> VolumeFormat:
    """The volume's own format in its pool: qcow2 where the pool holds qcow2 files (the
    driver makes the image); otherwise the pool's (raw), and Heron writes the qcow2 image
    into it (`needs_inner_image`)."""
    formats = capabilities(pool).formats
    return VolumeFormat.qcow2 if VolumeFormat.qcow2 in formats else formats[0]


def needs_inner_image(fmt: VolumeFormat) -> bool:
    return fmt != VolumeFormat.qcow2


def state_volume_name(vm_name: str, snapshot_id: str) -> str:
    """A volume name that says whose memory it holds, within the 63 characters of a name."""
    return f"{vm_name[:40]}-mem-{snapshot_id}"


@dataclass(frozen=True)
class StatePlan:
    """The pool chosen for a memory-state volume, or None and why no pool can hold it."""

    pool: Pool | None
    reason: str = ""


def _refusal(pool: Pool, node: str, served_here: Collection[str]) -> str | None:
    """Why `pool` cannot hold a memory state for a VM on `node`; None when it can."""
    can = capabilities(pool)
    if not can.memory_state:
        return f"{pool.name} ({pool.type}) holds no memory states"
    if can.member_disks and pool.name not in served_here:
        return f"{pool.name} ({pool.type}) is not served on node {node}"
    return None


def plan_state_pool(
    disk_pools: Sequence[Pool], pools: Sequence[Pool], node: str, served_here: Collection[str]
) -> StatePlan:
    """The pool for the memory state of a VM on `node` whose disks are in `disk_pools`
    (in disk order), among all `pools`; `served_here`: the pools with member disks (ARDFS)
    whose heron-io runs on `node`, the only ones it can write.

    The VM's own pools first (its state is then as redundant, shared and reachable as its
    disks), then shared pools (a live migration leaves nothing behind), then a pool local to
    the node, each group by name.
    """
    own = list(dict.fromkeys(p.name for p in disk_pools))
    by_name = {p.name: p for p in [*disk_pools, *pools]}

    def rank(pool: Pool) -> tuple[int, int, str]:
        mine = own.index(pool.name) if pool.name in own else len(own)
        return (mine, 0 if capabilities(pool).shared else 1, pool.name)

    refused = []
    for pool in sorted(by_name.values(), key=rank):
        why = _refusal(pool, node, served_here)
        if why is None:
            return StatePlan(pool, f"pool {pool.name}")
        refused.append(why)
    return StatePlan(
        None,
        "none of the VM's disks is qcow2, and no pool can hold the memory state in a volume "
        f"of its own ({'; '.join(refused) or 'there are no pools'}): add a dir, NFS or "
        "ARDFS pool, or take a disk-only snapshot",
    )
