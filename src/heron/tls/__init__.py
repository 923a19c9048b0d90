"""The cluster's public-key infrastructure: its certificate authority, each node's
certificate, and the TLS contexts made from them.

`certs` is pure (makes and reads certificates, decides when one is due for renewal);
`store` keeps a node's credentials in its state directory and gives the server and client
contexts every part of Heron that speaks TLS uses (the API now; etcd, migration, heron-io and
the console relays later), so "this node's key and certificate, and the cluster CA" has one
place.
"""

from heron.tls.certs import (
    Authority,
    Issued,
    TlsError,
    authority_name,
    due_for_renewal,
    expires_at,
    fingerprint,
    issue,
    load_authority,
    make_authority,
)
from heron.tls.store import NodeCredentials

__all__ = [
    "Authority",
    "Issued",
    "NodeCredentials",
    "TlsError",
    "authority_name",
    "due_for_renewal",
    "expires_at",
    "fingerprint",
    "issue",
    "load_authority",
    "make_authority",
]
