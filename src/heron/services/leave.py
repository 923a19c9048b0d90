"""What a node's leaving the cluster would do: the plan the admin reads first and the leave
itself obeys (it refuses exactly what the plan calls blocking). Pure logic, no I/O."""

from dataclasses import dataclass

from heron.configdb.membership import Member
from heron.models.cluster import ArdfsLeave, LeaveBlocker, LeavePlan, LocalVolumeLeft
from heron.models.storage import ArdfsMember, Pool, Volume
from heron.storage.registry import capabilities


@dataclass(frozen=True)
class ClusterState:
    """The records a leave plan reads."""

    live: set[str]
    left: set[str]  # nodes that already left
    vms_on: list[str]  # names of the VMs assigned to the node
    members: list[Member]
    pools: dict[str, Pool]
    ardfs_members: list[ArdfsMember]
    volumes: list[Volume]


def plan(name: str, state: ClusterState) -> LeavePlan:
    blockers: list[LeaveBlocker] = []
    vms = sorted(state.vms_on)
    if vms:
        shown = ", ".join(vms[:5]) + (f" and {len(vms) - 5} more" if len(vms) > 5 else "")
        blockers.append(
            LeaveBlocker(
                kind="vms",
                message=f"node {name} still has VMs ({shown}): drain it first with "
                "maintenance enter",
            )
        )
    mine = next((m for m in state.members if m.name == name), None)
    voters = [m for m in state.members if not m.learner]
    only_voter = mine is not None and voters == [mine]
    if only_voter:
        blockers.append(
            LeaveBlocker(
                kind="only-voter", message=f"node {name} runs the cluster's only etcd voter"
            )
        )
    ardfs = [
        _ardfs(name, name in state.live, pool, state)
        for pool in sorted(state.pools.values(), key=lambda p: p.name)
        if capabilities(pool).member_disks
        and any(m.pool == pool.name and m.node == name and m.disks for m in state.ardfs_members)
    ]
    blockers += [LeaveBlocker(kind="ardfs", message=a.message) for a in ardfs if a.blocking]
    local = [
        LocalVolumeLeft(pool=v.pool, id=v.id, name=v.name)
        for v in state.volumes
        if v.node == name and v.pool in state.pools and not capabilities(state.pools[v.pool]).shared
    ]
    return LeavePlan(
        node=name,
        live=name in state.live,
        can_leave=not blockers,
        blockers=blockers,
        vms=vms,
        etcd_member=mine is not None,
        only_voter=only_voter,
        ardfs=ardfs,
        local_volumes=sorted(local, key=lambda v: (v.pool, v.name)),
    )


def _ardfs(name: str, live: bool, pool: Pool, state: ClusterState) -> ArdfsLeave:
    members = [m for m in state.ardfs_members if m.pool == pool.name]
    mine = {d.id for m in members if m.node == name for d in m.disks}
    # The disks its volumes may be moved onto: on the other nodes, of the pool's class.
    left = sum(
        1
        for m in members
        if m.node != name and m.node not in state.left
        for d in m.disks
        if pool.takes(d)
    )
    protection = pool.redundancy
    # How many of a block's copies or shards may be missing with the block still readable.
    tolerance = 1 if protection.erasure_coded else protection.copies - 1
    placed = [v for v in state.volumes if v.pool == pool.name]
    on_it = [v for v in placed if mine & _disks(v)]
    # A block has its copies on distinct disks: one on as many of the node's disks as the
    # volume spans, at worst; more than the tolerance there and the node holds its last ones.
    at_risk = [v for v in on_it if min(len(mine & _disks(v)), pool.width) > tolerance]
    label = protection.label()
    base = ArdfsLeave(
        pool=pool.name,
        protection=label,
        disks=sorted(mine),
        volumes=len(on_it),
        disks_left=left,
        disks_needed=pool.width,
        outcome="none",
        blocking=False,
        message=f"pool {pool.name}: no volume has blocks on its disks",
    )
    if not on_it:
        return base
    count = f"{len(on_it)} volume{'s' if len(on_it) != 1 else ''}"
    if left < pool.width:
        return base.model_copy(
            update={
                "outcome": "degraded",
                "blocking": True,
                "message": f"pool {pool.name} would keep {left} disks on other nodes, {label} "
                f"needs {pool.width}: add a disk there first ({count} on its disks)",
            }
        )
    if at_risk and not live:
        return base.model_copy(
            update={
                "outcome": "lost",
                "message": f"pool {pool.name} ({label}): {len(at_risk)} of {count} had their "
                "only copies of some blocks on this node, which is down: those blocks are "
                "lost; the rest is made again on the other disks",
            }
        )
    if at_risk:
        return base.model_copy(
            update={
                "outcome": "copied-off",
                "message": f"pool {pool.name} ({label}): {count} have blocks whose only "
                "copies are on this node: they are copied onto the other disks while it runs; "
                "keep its herond running until no volume.rebalance task runs",
            }
        )
    return base.model_copy(
        update={
            "outcome": "rebuilt",
            "message": f"pool {pool.name} ({label}): the copies on its disks of {count} are "
            "made again on the other disks from the remaining copies",
        }
    )


def _disks(volume: Volume) -> set[str]:
    return {d.id for d in (volume.placement or [])} | {d.id for d in (volume.moving_to or [])}


def refusal(plan: LeavePlan) -> str:
    """The leave's error message: every blocker, in the plan's order."""
    return "; ".join(b.message for b in plan.blockers)
