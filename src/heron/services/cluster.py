"""The cluster as a whole: etcd's members, the state of dynamic balancing (DRS), and what a
new node needs to join."""

import logging
import shlex
from collections.abc import Iterable
from typing import Any

import aetcd.exceptions

from heron.configdb import ConfigDB, keys
from heron.configdb.membership import Member, Membership, client_endpoints
from heron.models.cluster import (
    DRSDecision,
    DRSProposal,
    DRSStatus,
    EtcdMemberView,
    JoinCommand,
    JoinInstructions,
    NodeMemoryLoad,
)
from heron.models.settings import ClusterSettings
from heron.scheduler.balancer import spread, why_none
from heron.scheduler.drs import assess
from heron.scheduler.inventory import Inventory

log = logging.getLogger(__name__)


async def members(db: ConfigDB) -> list[EtcdMemberView]:
    membership = Membership(db)
    found = await membership.list()
    try:
        leader = await membership.leader()
    except aetcd.exceptions.ClientError as exc:
        log.info("etcd's leader not told: %s", exc)  # the list is still worth showing
        leader = None
    return member_views(found, leader)


def member_views(found: Iterable[Member], leader: int | None) -> list[EtcdMemberView]:
    return [
        EtcdMemberView(
            id=f"{m.id:x}",
            name=m.name,
            peer_urls=list(m.peer_urls),
            client_urls=list(m.client_urls),
            learner=m.learner,
            leader=m.id == leader,
        )
        for m in sorted(found, key=lambda m: (m.name or "~", m.id))
    ]


async def drs_status(db: ConfigDB, inventory: Inventory) -> DRSStatus:
    """The settings, the loads, the spread and the move DRS would make now; the decisions
    are added by the caller (they live in the nodes' audit logs)."""
    found = await db.get(ClusterSettings, keys.SETTINGS)
    drs = (found.value if found else ClusterSettings()).drs
    inv = await inventory.ready()
    assessment = assess(inv, drs.threshold)
    loads = sorted(assessment.loads, key=lambda n: n.name)
    now = spread(loads)
    move = assessment.move
    return DRSStatus(
        settings=drs,
        loads=[
            NodeMemoryLoad(
                node=n.name,
                memory_mib=n.memory_mib,
                memory_used_mib=n.memory_used_mib,
                load=n.memory_used_mib / n.memory_mib,
                maintenance=n.maintenance,
            )
            for n in loads
        ],
        spread=now,
        exceeded=now > drs.threshold,
        proposal=None
        if move is None
        else DRSProposal(
            vm=move.vm.id,
            vm_name=move.vm.spec.name,
            memory_mib=move.vm.spec.memory_mib,
            source=move.source,
            destination=move.target,
            spread_after=move.after,
            explanation=move.explanation,
        ),
        why_none=why_none(loads, drs.threshold) if move is None else None,
    )


# What every line of a DRS decision holds as written (the audit log's compact JSON): lines
# without it are not parsed.
DRS_MARKER = '"method":"DRS"'


def is_drs_decision(entry: dict[str, Any]) -> bool:
    """An audit entry the balancer wrote for a move it made."""
    return entry.get("user") == "drs" and entry.get("method") == "DRS"


def drs_decisions(entries: Iterable[dict[str, Any]]) -> list[DRSDecision]:
    """DRS's decisions among audit entries."""
    return [
        DRSDecision(
            time=e.get("time", 0.0),
            node=e.get("node", ""),
            vm=e.get("target") or "",
            vm_name=e.get("vm_name"),
            source=e.get("source"),
            destination=e.get("destination"),
            reason=e.get("reason") or "",
            task=e.get("task"),
        )
        for e in entries
        if is_drs_decision(e)
    ]


def newest(decisions: Iterable[DRSDecision], limit: int) -> list[DRSDecision]:
    """Decisions gathered from several nodes: newest first, at most `limit`."""
    return sorted(decisions, key=lambda d: d.time, reverse=True)[:limit]


async def join_instructions(db: ConfigDB) -> JoinInstructions:
    return instructions(await client_endpoints(db))


def instructions(endpoints: list[str]) -> JoinInstructions:
    """The command lines of docs/operations.md "Several nodes", filled in for this cluster."""
    etcd = shlex.quote(",".join(endpoints))
    return JoinInstructions(
        etcd_endpoints=endpoints,
        commands=[
            JoinCommand(
                kind="client",
                description="on the new node, from the Heron source tree: a client of the "
                "cluster's etcd; it registers itself and takes VMs at once",
                command=f"HERON_ADDRESS=<address of the new node> HERON_ETCD={etcd} ./install.sh",
            ),
            JoinCommand(
                kind="etcd-capable",
                description="or an agent that may also host an etcd member: the leader adds "
                "it as a learner and promotes it while the cluster has fewer than 3 or 5 voters",
                command=f"herond --name <name> --address <address of the new node> "
                f"--etcd {etcd} --etcd-member-ports 2379:2380 "
                "--state-dir /var/lib/heron",
            ),
        ],
    )
