"""The cluster CA in the ConfigDB, and this node's certificate, issued and renewed in place.

The first node of a cluster makes the CA (or stores the administrator's own) with a
create-if-absent, so nodes starting together agree on one. Every node signs its own
certificate with it when it has none, when its names changed, or when less than a third of
its life is left; the API's server context then loads the new chain, so new connections get
it while open ones, the agent and the VMs go on.
"""

import asyncio
import contextlib
import logging
import secrets
import ssl
import time
from collections.abc import Sequence
from pathlib import Path

from heron.configdb import ConfigDB, Conflict, keys
from heron.models.cluster import ClusterAuthority
from heron.tls import Authority, NodeCredentials, TlsError, due_for_renewal, issue, load_authority
from heron.tls.certs import NODE_LIFETIME, make_authority

log = logging.getLogger(__name__)

# How often a running node looks at its certificate's age: renewal starts months before the
# end, so once an hour is plenty.
CHECK_INTERVAL = 3600.0


async def cluster_authority(db: ConfigDB, own: tuple[Path, Path] | None = None) -> Authority:
    """The cluster's CA: the one in the ConfigDB, else a new one (or `own`, the
    administrator's certificate and key files) stored there first by whichever node gets there
    first. An `own` CA that differs from the stored one is refused: a CA is changed on
    purpose, not by restarting a node with other files."""
    provided = None
    if own is not None:
        provided = load_authority(own[0].read_text(), own[1].read_text(), time.time())
    for _ in range(3):
        found = await db.get(ClusterAuthority, keys.CLUSTER_CA)
        if found is not None:
            stored = Authority(found.value.certificate, found.value.key)
            if provided is not None and provided.fingerprint != stored.fingerprint:
                raise TlsError(
                    f"the cluster already has a CA ({stored.fingerprint}); the one given "
                    f"is {provided.fingerprint}"
                )
            return stored
        made = provided or make_authority(secrets.token_hex(4), time.time())
        record = ClusterAuthority(
            certificate=made.certificate,
            key=made.key,
            created_at=time.time(),
            provided=provided is not None,
        )
        with contextlib.suppress(Conflict):
            await db.create(keys.CLUSTER_CA, record)
            log.info("cluster CA stored, SHA-256 fingerprint %s", made.fingerprint)
            return made
    raise TlsError("the cluster CA could not be read nor stored")


def node_names(name: str, address: str, extra: Sequence[str] = ()) -> list[str]:
    """What a node's certificate is valid for: its name, the address it serves on, names an
    administrator added, and the loopback names the node's own CLI and tools use."""
    names = [name, address, *extra]
    if address in ("0.0.0.0", "::"):  # listening everywhere: the address is no name
        names.remove(address)
    return list(dict.fromkeys([*names, "localhost", "127.0.0.1", "::1"]))


class CertificateKeeper:
    """Keeps this node's certificate issued and fresh, and the contexts that serve it up to
    date (`serving`: the contexts to reload after a renewal)."""

    def __init__(
        self,
        db: ConfigDB,
        credentials: NodeCredentials,
        names: Sequence[str],
        lifetime: float = NODE_LIFETIME,
        interval: float = CHECK_INTERVAL,
    ):
        self.db = db
        self.credentials = credentials
        self.names = list(names)
        self.lifetime = lifetime
        self.interval = interval
        self.serving: list[ssl.SSLContext] = []

    async def ensure(self, now: float | None = None) -> bool:
        """Issue the certificate if it is due; True if a new one was written (and loaded)."""
        now = time.time() if now is None else now
        found = await self.db.get(ClusterAuthority, keys.CLUSTER_CA)
        if found is None:
            raise TlsError("the cluster has no CA in the ConfigDB")
        authority = Authority(found.value.certificate, found.value.key)
        reason = due_for_renewal(
            self.credentials.certificate(), authority.certificate, self.names, now
        )
        if reason is None and self.credentials.authority() == authority.certificate:
            return False
        issued = issue(authority, self.names, now, self.lifetime)
        self.credentials.write(issued, authority.certificate)
        for context in self.serving:
            self.credentials.reload(context)
        log.info("node certificate issued for %s (%s)", ", ".join(self.names), reason or "new CA")
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.ensure()
            except Exception:  # the ConfigDB away: the certificate has months left; retry
                log.exception("could not renew the node certificate")
