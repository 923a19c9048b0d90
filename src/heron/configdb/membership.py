"""etcd's own membership: list, add as learner, promote, remove (the Cluster RPCs).

New members join as learners: a learner does not count towards quorum, so a member that
fails to start never blocks the cluster; it is promoted to voter once it has caught up.
"""

from dataclasses import dataclass
from typing import Any

import aetcd.exceptions
import aetcd.rpc

from heron.configdb.client import REQUEST_TIMEOUT
from heron.configdb.store import ConfigDB, member_removed


@dataclass(frozen=True)
class Member:
    id: int
    name: str  # empty until the member has started
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    learner: bool

    @property
    def started(self) -> bool:
        return bool(self.name)


class Membership:
    def __init__(self, db: ConfigDB):
        self.db = db

    # Any: the reply is one of etcd's protobuf messages, which aetcd does not type.
    async def _call(self, method: str, request: object, stub: str = "clusterstub") -> Any:
        client = self.db.client
        await client.connect()
        try:
            return await getattr(getattr(client, stub), method)(
                request, timeout=REQUEST_TIMEOUT, metadata=client.metadata
            )
        except aetcd.rpc.AioRpcError as exc:
            # The errors every other ConfigDB call raises (e.g. "unhealthy cluster" while a
            # member is down: ConnectionFailedError, which callers retry).
            if exc.code() == aetcd.rpc.StatusCode.UNAVAILABLE or member_removed(
                exc.details() or ""
            ):
                raise aetcd.exceptions.ConnectionFailedError(exc.details()) from exc
            raise aetcd.exceptions.ClientError(exc.details()) from exc

    async def list(self) -> list[Member]:
        reply = await self.db.retrying_read(
            lambda: self._call("MemberList", aetcd.rpc.MemberListRequest())
        )
        return [
            Member(m.ID, m.name, tuple(m.peerURLs), tuple(m.clientURLs), m.isLearner)
            for m in reply.members
        ]

    async def leader(self) -> int | None:
        """The id of the member leading raft, as the member answering sees it (None: none)."""
        reply = await self.db.retrying_read(
            lambda: self._call("Status", aetcd.rpc.StatusRequest(), "maintenancestub")
        )
        return int(reply.leader) or None

    async def add_learner(self, peer_url: str) -> int:
        request = aetcd.rpc.MemberAddRequest(peerURLs=[peer_url], isLearner=True)
        reply = await self._call("MemberAdd", request)
        return int(reply.member.ID)

    async def promote(self, member_id: int) -> None:
        await self._call("MemberPromote", aetcd.rpc.MemberPromoteRequest(ID=member_id))

    async def remove(self, member_id: int) -> None:
        await self._call("MemberRemove", aetcd.rpc.MemberRemoveRequest(ID=member_id))

    async def status(self) -> dict[str, Any]:
        """The answering member's own status: its version, database size, raft leader."""
        reply = await self.db.retrying_read(
            lambda: self._call("Status", aetcd.rpc.StatusRequest(), "maintenancestub")
        )
        return {
            "member": f"{reply.header.member_id:x}",
            "version": reply.version,
            "db_size": int(reply.dbSize),
            "db_size_in_use": int(reply.dbSizeInUse),
            "leader": f"{reply.leader:x}",
            "raft_term": int(reply.raftTerm),
            "raft_index": int(reply.raftIndex),
            "errors": list(reply.errors),
        }


async def client_endpoints(db: ConfigDB) -> list[str]:
    """host:port of every started voting member: where a client should send its requests
    (learners answer no client requests)."""
    members = await Membership(db).list()
    return sorted(
        url.removeprefix("http://")
        for m in members
        if m.started and not m.learner
        for url in m.client_urls
    )


def voters_wanted(capable_nodes: int) -> int:
    """1, 3 or 5 voting members: odd, for a clear majority, and never more than five."""
    if capable_nodes >= 5:
        return 5
    return 3 if capable_nodes >= 3 else 1
