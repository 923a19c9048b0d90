"""The cluster CA in the ConfigDB, and this node's certificate, issued and renewed in place.

The first node of a cluster makes the CA (or stores the administrator's own) with a
create-if-absent, so nodes starting together agree on one. Every node signs its own
certificate with it when it has none, when its names changed, or when less than a third of
its life is left; the API's server context then loads the new chain, so new connections get
it while open ones, the agent and the VMs go on.
"""

import asyncio
import contextlib
import json
import logging
import os
import secrets
import ssl
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from heron.configdb import ConfigDB, Conflict, keys
from heron.models.cluster import ClusterAuthority
from heron.tls import (
    Authority,
    Issued,
    NodeCredentials,
    TlsError,
    due_for_renewal,
    fingerprint,
    issue,
    load_authority,
)
from heron.tls.certs import NODE_LIFETIME, make_authority, make_request

log = logging.getLogger(__name__)

# How often a running node looks at its certificate's age: renewal starts months before the
# end, so once an hour is plenty.
CHECK_INTERVAL = 3600.0


async def cluster_authority(
    db: ConfigDB, own: tuple[Path, Path] | None = None, local: Authority | None = None
) -> Authority:
    """The cluster's CA: the one in the ConfigDB, else a new one (or `own`, the
    administrator's certificate and key files, or `local`, the one this node made before its
    etcd started with TLS) stored there first by whichever node gets there first. An `own` or
    `local` CA that differs from the stored one is refused: a CA is changed on purpose, not by
    restarting a node with other files."""
    provided = None
    if own is not None:
        provided = load_authority(own[0].read_text(), own[1].read_text(), time.time())
    given = local or provided
    for _ in range(3):
        found = await db.get(ClusterAuthority, keys.CLUSTER_CA)
        if found is not None:
            stored = Authority(found.value.certificate, found.value.key)
            if given is not None and given.fingerprint != stored.fingerprint:
                raise TlsError(
                    f"the cluster already has a CA ({stored.fingerprint}); the one given "
                    f"is {given.fingerprint}"
                )
            return stored
        made = given or make_authority(secrets.token_hex(4), time.time())
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


# The CA a first node made (or was given) before etcd ran, kept beside its credentials (0600)
# until it is stored in the ConfigDB: a node stopped in between finds it again.
PENDING_CA = "pending-ca.json"


def local_authority(
    credentials: NodeCredentials,
    names: Sequence[str],
    own: tuple[Path, Path] | None,
    now: float | None = None,
) -> Authority:
    """Bootstrap of a cluster whose etcd speaks TLS: etcd cannot start before the node has a
    certificate, nor hold the CA before it runs. So the CA is made here (or `own` is loaded,
    or the pending one found again), this node's certificate is signed with it and written,
    and the CA is returned to be stored in the ConfigDB once etcd is up (then
    `forget_pending` removes the local copy of its key)."""
    now = time.time() if now is None else now
    pending = credentials.directory / PENDING_CA
    if pending.exists():
        data = json.loads(pending.read_text())
        authority = Authority(data["certificate"], data["key"])
    elif own is not None:
        authority = load_authority(own[0].read_text(), own[1].read_text(), now)
    else:
        authority = make_authority(secrets.token_hex(4), now)
    credentials.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not pending.exists():
        fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump({"certificate": authority.certificate, "key": authority.key}, file)
    due = due_for_renewal(credentials.certificate(), authority.certificate, names, now)
    if due is not None or credentials.authority() != authority.certificate:
        credentials.write(issue(authority, names, now), authority.certificate)
        log.info("node certificate signed by the local CA %s", authority.fingerprint)
    return authority


def pending_authority(credentials: NodeCredentials) -> bool:
    return (credentials.directory / PENDING_CA).exists()


def forget_pending(credentials: NodeCredentials) -> None:
    """The CA is in the ConfigDB now: its key need not stay on this node's disk."""
    with contextlib.suppress(FileNotFoundError):
        (credentials.directory / PENDING_CA).unlink()


async def join_cluster(
    api_url: str,
    token: str,
    ca_fingerprint: str,
    credentials: NodeCredentials,
    names: Sequence[str],
) -> None:
    """A new node's certificate for a cluster whose etcd speaks TLS: fetch the CA from a
    node of the cluster (`GET /auth/ca`, trusting nothing yet), accept it only if its SHA-256
    fingerprint is the one the administrator gave, then send the join token and a signing
    request (the key stays here) over a connection checked against that CA."""
    if not api_url.startswith("https://"):
        # The token would cross the network readable, and the node could not be checked.
        raise TlsError(f"join through a node's https:// API URL, not {api_url}")
    base = api_url.rstrip("/") + "/api/v1"
    # Not verified yet: the fingerprint check below is what makes the CA trusted.
    async with httpx.AsyncClient(timeout=30, verify=False) as bare:
        reply = await bare.get(f"{base}/auth/ca")
        reply.raise_for_status()
        authority = str(reply.json()["certificate"])
    want = ca_fingerprint.replace(":", "").upper()
    got = fingerprint(authority)
    if got.replace(":", "") != want:
        raise TlsError(f"the cluster CA at {api_url} is {got}, not the {ca_fingerprint} given")
    key, request = make_request(list(names))
    context = ssl.create_default_context(cadata=authority)
    async with httpx.AsyncClient(timeout=30, verify=context) as checked:
        reply = await checked.post(f"{base}/auth/join", json={"token": token, "csr": request})
    if reply.status_code != 200:
        raise TlsError(f"joining through {api_url} was refused ({reply.status_code}): {reply.text}")
    signed = reply.json()
    credentials.write(Issued(signed["certificate"], key), signed["ca_certificate"])
    log.info("joined: node certificate signed by the cluster CA %s", got)


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
