"""Users, roles and the tokens that carry them."""

import hashlib
import secrets
from collections.abc import Iterable
from enum import StrEnum
from typing import Literal

from pydantic import Field

from heron.models.common import Name, Record


class Role(StrEnum):
    """Roles nest: an admin may do all an operator may, an operator all a viewer may."""

    viewer = "viewer"
    operator = "operator"
    admin = "admin"

    @property
    def rank(self) -> int:
        return ["viewer", "operator", "admin"].index(self.value)

    def allows(self, needed: "Role") -> bool:
        return self.rank >= needed.rank

    @property
    def permissions(self) -> frozenset["Permission"]:
        return ROLE_PERMISSIONS[self]

    def may(self, permission: "Permission") -> bool:
        return permission in ROLE_PERMISSIONS[self]


class Permission(StrEnum):
    """What a role lets its holder do. Most checks still ask for a role (roles nest); a
    permission exists where the nesting is not the whole story.

    `console` is one: the serial log holds whatever the guest printed (boot messages, a
    password typed at a prompt, keys), and the serial and graphical consoles type into the
    guest. Viewers read a VM's configuration and state, not its screen.
    """

    read = "read"
    console = "console"
    operate = "operate"
    administer = "administer"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.viewer: frozenset({Permission.read}),
    Role.operator: frozenset({Permission.read, Permission.console, Permission.operate}),
    Role.admin: frozenset(Permission),
}


class LoginFailures(Record):
    """Failed logins of one user name or one client address in the current window.

    Kept in the ConfigDB (every node counts into the same record, with compare-and-swap) under
    a lease that outlives the window and the lock, so records of names nobody tries any more
    vanish by themselves. `id` is the record's key under LOGIN_FAILURES: a hash of kind and
    subject, since a tried user name may be any string.
    """

    id: str
    kind: Literal["user", "address"]
    subject: str
    count: int = Field(ge=1)
    first_at: float
    last_at: float
    locked_until: float | None = None

    def locked(self, now: float) -> bool:
        return self.locked_until is not None and now < self.locked_until


def count_failure(
    previous: "LoginFailures | None",
    *,
    id: str,
    kind: Literal["user", "address"],
    subject: str,
    now: float,
    limit: int,
    window: float,
    lockout: float,
) -> LoginFailures:
    """The record after one more failure: a fresh count once the window or a lock has passed,
    and a lock when the count reaches `limit`."""
    stale = previous is None or (
        now >= previous.locked_until
        if previous.locked_until is not None
        else now - previous.first_at > window
    )
    if stale or previous is None:
        count, first_at = 1, now
    else:
        count, first_at = previous.count + 1, previous.first_at
    locked_until = previous.locked_until if previous and not stale else None
    if locked_until is None and count >= limit:
        locked_until = now + lockout
    return LoginFailures(
        id=id,
        kind=kind,
        subject=subject,
        count=count,
        first_at=first_at,
        last_at=now,
        locked_until=locked_until,
    )


def password_problem(
    user: str, password: str, *, min_length: int, refuse_user_name: bool
) -> str | None:
    """Why `password` is refused for `user` under the cluster's rules, or None."""
    if len(password) < min_length:
        return f"must be at least {min_length} characters long"
    if refuse_user_name and password.casefold() == user.casefold():
        return "must not be the user name"
    return None


class User(Record):
    name: Name
    # None: no cluster-wide role; the user reaches only what grants give (models Grant).
    role: Role | None
    password_hash: str = Field(repr=False)
    created_at: float


# A session ends with its lease (a login); an API token lives until revoked or it expires.
TokenKind = Literal["session", "api"]


def token_hash(token: str) -> str:
    """How a token is known in the ConfigDB (`keys.token`): never as itself."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "hrn_" + secrets.token_urlsafe(32)


class TokenRecord(Record):
    """Stored under the token's SHA-256, never the token itself."""

    id: str
    user: Name
    role: Role | None = Field(description="the cluster-wide role it carries; null: none")
    kind: TokenKind
    description: str = ""
    created_at: float
    expires_at: float | None = None
    limit: Role | None = Field(
        default=None,
        description="made with a lower role: the most it carries on any scope too; null: "
        "whatever the user's grants give",
    )


# What a role can be granted on besides the whole cluster (Proxmox's ACL paths, flattened):
# a VM group (its VMs), a pool (its volumes), a switch (its networks).
ScopeKind = Literal["group", "pool", "switch"]
Scope = tuple[ScopeKind, str]


class Grant(Record):
    """A role on one scope, on top of the user's cluster-wide role (which it never lowers).

    An operator of group `web` changes, starts, deletes and opens the consoles of the VMs in
    `web`, and of no other; a user whose cluster-wide role is none sees only what grants show.
    """

    id: str
    user: Name
    role: Role
    scope: ScopeKind
    name: Name = Field(description="the group, pool or switch")
    created_at: float


def effective_role(
    cluster_role: Role | None,
    grants: Iterable[Grant],
    user: str,
    scopes: Iterable[Scope],
    limit: Role | None = None,
) -> Role | None:
    """The role `user` has on an object that lies in `scopes` (a VM: its group): the highest
    of the cluster-wide role and the roles granted on those scopes, capped by `limit` (an API
    token made with a lower role carries no more anywhere). None: the object is out of reach.
    """
    where = set(scopes)
    best = cluster_role
    for grant in grants:
        mine = grant.user == user and (grant.scope, grant.name) in where
        if mine and (best is None or grant.role.rank > best.rank):
            best = grant.role
    if best is not None and limit is not None and best.rank > limit.rank:
        best = limit
    return best


def reachable(
    cluster_role: Role | None,
    grants: Iterable[Grant],
    user: str,
    kind: ScopeKind,
    needed: Role,
    limit: Role | None = None,
) -> set[str] | None:
    """The names of the scopes of `kind` on which `user` has at least `needed`; None: all of
    them (the cluster-wide role suffices), which is what lists filter with."""
    if cluster_role is not None and cluster_role.allows(needed):
        return None
    if limit is not None and not limit.allows(needed):
        return set()
    return {g.name for g in grants if g.user == user and g.scope == kind and g.role.allows(needed)}
