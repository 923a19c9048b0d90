"""The cluster as a whole: etcd's members, the state of dynamic balancing (DRS), and what a
new node needs to join."""

import hashlib
import logging
import secrets
import shlex
import time
from collections.abc import Iterable
from typing import Any

import aetcd.exceptions

from heron.configdb import ConfigDB, Conflict, cas, keys
from heron.configdb.membership import Member, Membership, client_endpoints
from heron.models.cluster import (
    DRSDecision,
    DRSProposal,
    DRSStatus,
    EtcdMemberView,
    JoinCommand,
    JoinInstructions,
    JoinToken,
    NodeLoadView,
)
from heron.models.settings import ClusterSettings, ClusterSettingsUpdate
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
    assessment = assess(inv, drs)
    basis = assessment.basis
    loads = sorted(assessment.loads, key=lambda n: n.name)
    now = spread(loads, basis)
    move = assessment.move
    measured = basis == "demand"
    return DRSStatus(
        settings=drs,
        basis=basis,
        basis_note=assessment.note,
        loads=[
            NodeLoadView(
                node=n.name,
                memory_mib=n.memory_mib,
                memory_used_mib=n.memory_used_mib,
                load=n.memory_used_mib / n.memory_mib,
                maintenance=n.maintenance,
                cpus=n.cpus,
                cpu_demand=round(n.cpu_demand, 3) if measured else None,
                memory_demand_mib=round(n.memory_demand_mib, 1) if measured else None,
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
            cpu_demand=None if move.demand is None else round(move.demand.cpu_demand, 3),
            memory_demand_mib=None if move.demand is None else round(move.demand.memory_mib, 1),
        ),
        why_none=why_none(loads, drs.threshold, basis) if move is None else None,
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


async def join_instructions(
    db: ConfigDB, join: tuple[str, JoinToken, str, str] | None = None
) -> JoinInstructions:
    """`join`: a token just made (token, record, this node's API URL, the CA's fingerprint)."""
    return instructions(await client_endpoints(db), join)


async def new_join_token(db: ConfigDB, user: str, ttl: int) -> tuple[str, JoinToken]:
    """A one-time join token: random, stored only as its SHA-256, gone with its lease."""
    token = secrets.token_urlsafe(32)
    now = time.time()
    record = JoinToken(created_by=user, created_at=now, expires_at=now + ttl)
    lease = await db.grant(ttl)
    await db.create(keys.join_token(join_token_hash(token)), record, lease=lease)
    return token, record


def join_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def redeem_join_token(db: ConfigDB, token: str) -> JoinToken | None:
    """Use the token up: deleted in the same step it is checked, so two nodes racing with
    one token get one certificate. None: unknown, already used, or expired."""
    key = keys.join_token(join_token_hash(token))
    found = await db.get(JoinToken, key)
    if found is None or found.value.expires_at <= time.time():
        return None
    try:
        await db.delete(key, revision=found.revision)
    except Conflict:
        return None  # another request used it first
    return found.value


def instructions(
    endpoints: list[str], join: tuple[str, JoinToken, str, str] | None = None
) -> JoinInstructions:
    """The command lines of docs/operations.md "Several nodes", filled in for this cluster."""
    etcd = shlex.quote(",".join(endpoints))
    tls = any(e.startswith("https://") for e in endpoints)
    if not tls:
        return _plain_instructions(endpoints, etcd)
    token, record, api_url, fingerprint = join or ("<token>", None, "<API URL>", "<fingerprint>")
    joining = (
        f"--join {shlex.quote(api_url)} --join-token {shlex.quote(token)} "
        f"--ca-fingerprint {shlex.quote(fingerprint)}"
    )
    return JoinInstructions(
        etcd_endpoints=endpoints,
        etcd_tls=True,
        token=token if join else None,
        expires_at=record.expires_at if record else None,
        api_url=api_url if join else None,
        ca_fingerprint=fingerprint if join else None,
        commands=[
            JoinCommand(
                kind="client",
                description="on the new node, from the Heron source tree: it checks the "
                "cluster CA's fingerprint, has its certificate signed with the one-time "
                "token, then joins as a client of the cluster's etcd",
                command=f"HERON_ADDRESS=<address of the new node> HERON_ETCD={etcd} "
                f"HERON_JOIN={shlex.quote(api_url)} HERON_JOIN_TOKEN={shlex.quote(token)} "
                f"HERON_CA_FINGERPRINT={shlex.quote(fingerprint)} ./install.sh",
            ),
            JoinCommand(
                kind="etcd-capable",
                description="or an agent that may also host an etcd member: the leader adds "
                "it as a learner and promotes it while the cluster has fewer than 3 or 5 voters",
                command=f"herond --name <name> --address <address of the new node> "
                f"--etcd {etcd} --etcd-tls --etcd-member-ports 2379:2380 {joining} "
                "--state-dir /var/lib/heron",
            ),
        ],
    )


def _plain_instructions(endpoints: list[str], etcd: str) -> JoinInstructions:
    """A cluster whose etcd is plain (made before etcd's TLS): no token to join."""
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


async def update_settings(db: ConfigDB, update: ClusterSettingsUpdate) -> ClusterSettings:
    """Replace the sections `update` gives, keep the others; a write by someone else in
    between (another section changed by another admin) is read again, not overwritten."""
    given = {name: getattr(update, name) for name in update.model_fields_set}
    changes = {name: section for name, section in given.items() if section is not None}

    async def attempt() -> ClusterSettings:
        found = await db.get(ClusterSettings, keys.SETTINGS)
        settings = (found.value if found else ClusterSettings()).model_copy(update=changes)
        await db.put(keys.SETTINGS, settings, revision=found.revision if found else 0)
        return settings

    return await cas.retry(attempt, "the cluster settings")
