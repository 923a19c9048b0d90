"""Growing and shrinking etcd with the cluster: 1, then 3, then 5 voting members.

The leader's `MembershipController` adds a member when there are enough capable nodes: it
adds the chosen node as a *learner* (no effect on quorum), writes an `EtcdJoin` for it, and
promotes it to voter once the node has started it and it has caught up; one member at a time.
On each node a `MemberKeeper` carries out the join (or, when its join is withdrawn because
the node leaves, stops the member and removes its data).
"""

import asyncio
import logging
import shutil
from pathlib import Path

import aetcd.exceptions

from heron.audit import AuditLog
from heron.configdb import ConfigDB, Txn, keys
from heron.configdb.client import EtcdTls
from heron.configdb.election import Election
from heron.configdb.etcd import EtcdMember
from heron.configdb.membership import Membership, voters_wanted
from heron.configdb.store import parse
from heron.models.node import EtcdJoin, NodeSettings
from heron.scheduler.inventory import live_nodes

log = logging.getLogger(__name__)

_TICK = 1.0


class MembershipController:
    def __init__(self, db: ConfigDB, audit: AuditLog):
        self.db = db
        self.audit = audit
        self.members = Membership(db)

    async def run(self, election: Election) -> None:
        while True:
            try:
                await self.step(election)
            except aetcd.exceptions.ClientError as exc:
                log.info("etcd membership: %r; trying again", exc)
            await asyncio.sleep(_TICK)  # membership changes are slow and rare

    async def step(self, election: Election) -> None:
        members = await self.members.list()
        if any(not m.started for m in members):
            return  # a member is starting: one change at a time
        for member in members:
            if member.learner:
                try:
                    await self.members.promote(member.id)
                except aetcd.exceptions.ClientError:
                    return  # not caught up yet
                self._record(member.name, f"promoted etcd member {member.name} to voter")
                return
        nodes = await live_nodes(self.db)
        left = {
            e.key.rsplit("/", 1)[1]
            for e in await self.db.list(NodeSettings, keys.NODE_SETTINGS)
            if e.value.left
        }
        capable = {n: node for n, node in nodes.items() if node.etcd_peer_url and n not in left}
        names = {m.name for m in members}
        spare = sorted(set(capable) - names)
        if len(members) >= voters_wanted(len(capable | dict.fromkeys(names))) or not spare:
            return
        chosen = capable[spare[0]]
        assert chosen.etcd_peer_url is not None and chosen.etcd_client_url is not None
        member_id = await self.members.add_learner(chosen.etcd_peer_url)
        initial = {m.name: m.peer_urls[0] for m in members}
        initial[chosen.name] = chosen.etcd_peer_url
        join = EtcdJoin(
            node=chosen.name,
            member_id=member_id,
            client_url=chosen.etcd_client_url,
            peer_url=chosen.etcd_peer_url,
            initial_cluster=initial,
        )
        await self.db.commit(election.fence(Txn()).put(keys.etcd_join(chosen.name), join))
        self._record(
            chosen.name,
            f"adding {chosen.name} to etcd as a learner "
            f"({len(members)} -> {len(members) + 1} members)",
        )

    def _record(self, node: str, reason: str) -> None:
        self.audit.record(
            user="cluster",
            method="ETCD",
            path=f"/nodes/{node}",
            status=0,
            result="ok",
            target=node,
            reason=reason,
        )
        log.info("%s", reason)


class MemberKeeper:
    """On every node that can host a member: do what its EtcdJoin says."""

    def __init__(
        self,
        db: ConfigDB,
        node: str,
        state_dir: Path,
        host: str,
        client_port: int,
        peer_port: int,
        tls: EtcdTls | None = None,
    ):
        self.db = db
        self.tls = tls
        self.node = node
        self.state_dir = state_dir
        self.host = host
        self.client_port = client_port
        self.peer_port = peer_port

    def member(self, join: EtcdJoin | None) -> EtcdMember:
        return EtcdMember(
            name=self.node,
            data_dir=self.state_dir / "etcd",
            host=self.host,
            client_port=self.client_port,
            peer_port=self.peer_port,
            initial_cluster=join.initial_cluster if join else {},
            cluster_state="existing",
            tls=self.tls,
        )

    async def run(self) -> None:
        key = keys.etcd_join(self.node)
        entry = await self.db.get(EtcdJoin, key)
        revision = await self.db.revision()
        if entry is not None:
            await self._join(entry.value)
        async for event in self.db.watch(key, revision + 1):
            if event.type == "put":
                await self._join(parse(EtcdJoin, event.value))
            elif event.type == "delete":
                await self._leave()

    async def _join(self, join: EtcdJoin) -> None:
        member = self.member(join)
        if member.pid() is None:
            log.info("starting etcd member %s to join %s", self.node, sorted(join.initial_cluster))
            member.start()
        await asyncio.to_thread(member.wait_healthy, 120.0)

    async def _leave(self) -> None:
        member = self.member(None)
        await asyncio.to_thread(member.stop)
        # A removed member must never start again with its old identity.
        shutil.rmtree(member.data_dir, ignore_errors=True)
        log.info("etcd member %s stopped and removed", self.node)
